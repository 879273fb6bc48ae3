"""The trained tiny VAE: ships with the package, reloads, and reconstructs a held-out photo."""

from __future__ import annotations

import json
import math

import pytest
import skimage.data as skimage_data  # a test dependency: real photos
import torch
from diffusers import AutoencoderKL
from safetensors import safe_open

from hires.tiny import TINY_VAE_WEIGHTS, tiny_vae

CROP = 256  # the centre crop the training script scores (tools/train_tiny_vae.py)


def metadata() -> dict[str, str]:
    with safe_open(str(TINY_VAE_WEIGHTS), "pt") as f:
        return f.metadata()


def coffee_crop() -> torch.Tensor:
    """The centre 256 px of skimage's `coffee` (never trained on), 1 x 3 x H x W in [-1, 1]."""
    x = torch.from_numpy(skimage_data.coffee()).permute(2, 0, 1).float() / 127.5 - 1
    h, w = x.shape[-2:]
    top, left = (h - CROP) // 2, (w - CROP) // 2
    return x[None, :, top:top + CROP, left:left + CROP]


def psnr(vae: AutoencoderKL, x: torch.Tensor) -> float:
    """Round-trip PSNR through the latent mean, scored on 8-bit pixels as the trainer does."""
    with torch.no_grad():
        y = vae.decode(vae.encode(x).latent_dist.mean).sample
    q = lambda t: ((t.clamp(-1, 1) + 1) * 127.5).round()  # noqa: E731
    mse = (q(y) - q(x)).pow(2).mean().item()
    return 10 * math.log10(255**2 / mse)


def test_weights_are_small_and_carry_their_recipe():
    assert TINY_VAE_WEIGHTS.stat().st_size < 5_000_000
    meta = metadata()
    recipe, report = json.loads(meta["recipe"]), json.loads(meta["psnr"])
    assert "coffee" in recipe["held_out"] and "coffee" not in recipe["train_photos"]
    assert report["held_out"]["coffee"]["crop256"] == float(meta["coffee_crop256_psnr"])


def test_trained_vae_reconstructs_a_held_out_photo_as_recorded():
    recorded = float(metadata()["coffee_crop256_psnr"])
    assert psnr(tiny_vae().eval(), coffee_crop()) == pytest.approx(recorded, abs=0.5)


def test_random_vae_is_far_worse():
    recorded = float(metadata()["coffee_crop256_psnr"])
    assert psnr(tiny_vae(trained=False).eval(), coffee_crop()) < recorded - 4


def test_posterior_sample_is_the_mean():
    # Training used the mean only; the log-variance is pinned so sampling cannot add noise.
    vae = tiny_vae().eval()
    with torch.no_grad():
        dist = vae.encode(coffee_crop()[..., :64, :64]).latent_dist
        sample = dist.sample(torch.Generator().manual_seed(0))
    torch.testing.assert_close(sample, dist.mean, atol=1e-3, rtol=0)


def test_latents_have_about_unit_scale_in_unet_space():
    vae = tiny_vae().eval()
    with torch.no_grad():
        z = vae.encode(coffee_crop()).latent_dist.mean * vae.config.scaling_factor
    assert 0.5 < z.std().item() < 2


def test_tiny_model_and_its_saved_folder_use_the_trained_vae(tiny, tiny_folder):
    trained = tiny_vae().state_dict()
    for name, value in tiny.vae.state_dict().items():  # bf16 on bf16-capable CPUs (hires.models)
        assert torch.equal(value.cpu(), trained[name].to(value.dtype)), name
    saved = AutoencoderKL.from_pretrained(tiny_folder / "vae").eval()
    recorded = float(metadata()["coffee_crop256_psnr"])
    assert psnr(saved, coffee_crop()) == pytest.approx(recorded, abs=0.5)


def test_building_the_tiny_model_leaves_the_callers_random_stream_alone():
    """`hires.load("tiny")` reseeded the caller's torch RNG: a script's seed made no
    difference after it (QA 208). Its weights are still the same each time."""
    from hires.tiny import tiny_pipeline

    draws = []
    for seed in (123, 999):
        torch.manual_seed(seed)
        pipe = tiny_pipeline()
        draws.append(torch.rand(4))
        torch.manual_seed(seed)
        assert torch.equal(draws[-1], torch.rand(4))  # as if no model were built
    assert not torch.equal(*draws)
    again = tiny_pipeline()
    assert all(torch.equal(a, b) for a, b in zip(pipe.unet.state_dict().values(),
                                                 again.unet.state_dict().values()))


def test_loading_the_tiny_model_with_its_linfusion_leaves_the_random_stream_alone():
    """`hires.load("tiny")` still drew its LinFusion's MLPs from the caller's stream: a
    script's seed meant nothing after it, and the tiny LinFusion differed with what the
    script had drawn before (QA 211)."""
    import hires

    torch.manual_seed(5)
    expected = torch.rand(4)
    torch.manual_seed(5)
    first = hires.load("tiny")
    assert torch.equal(torch.rand(4), expected)
    torch.rand(1000)  # a script's own draws before the next load change nothing in it
    again = hires.load("tiny")
    assert all(torch.equal(a, b) for a, b in zip(first.pipe.unet.state_dict().values(),
                                                 again.pipe.unet.state_dict().values()))


def test_a_saved_tiny_folder_runs_as_the_tiny_model(tmp_path):
    """save_tiny drew its LinFusion from the caller's stream: two saves differed, and
    `--model FOLDER` ran another LinFusion than `--model tiny` (QA 212)."""
    import hires
    from hires.tiny import save_tiny

    torch.manual_seed(5)
    expected = torch.rand(4)
    torch.manual_seed(5)
    folder = save_tiny(tmp_path / "t")
    assert torch.equal(torch.rand(4), expected)
    saved, built = hires.load(str(folder)), hires.load("tiny")
    assert saved.linfusion is not None
    assert all(torch.equal(a, b) for a, b in zip(saved.pipe.unet.state_dict().values(),
                                                 built.pipe.unet.state_dict().values()))
