"""`--upsample latent` resizes the last stage's latents as the pixel path resizes its image:
scaled to cover, the centre cropped, not stretched where the base's rounding changed the
aspect (2560x1440: 1344x768, x1.905 across and x1.875 down)."""

import torch
import torch.nn.functional as F

from hires.pipeline import fit_latents
from hires.plan import make_plan


def test_an_exact_x2_stage_is_a_plain_bicubic_upsample():
    x = torch.randn(1, 4, 12, 21, generator=torch.Generator().manual_seed(0))
    plain = F.interpolate(x, size=(24, 42), mode="bicubic", align_corners=False)
    assert torch.equal(fit_latents(x, 24, 42), plain)


def test_another_aspect_is_scaled_alike_both_ways_and_cropped():
    stages = make_plan(2560, 1440, upsample="latent").stages
    (bw, bh), (w, h) = (stages[-2].width, stages[-2].height), (stages[-1].width, stages[-1].height)
    assert w / bw != h / bh  # the last stage's aspect is not the base's
    x = torch.randn(1, 4, bh // 8, bw // 8, generator=torch.Generator().manual_seed(1))
    fitted = fit_latents(x, h // 8, w // 8)
    assert fitted.shape[-2:] == (h // 8, w // 8)
    scale = max(w / bw, h / bh)  # one scale for both sides, then the centre
    cover = (round(bh // 8 * scale), round(bw // 8 * scale))
    whole = F.interpolate(x, size=cover, mode="bicubic", align_corners=False)
    top, left = (cover[0] - h // 8) // 2, (cover[1] - w // 8) // 2
    assert torch.equal(fitted, whole[..., top:top + h // 8, left:left + w // 8])
