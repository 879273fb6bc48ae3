"""The step formulas of the upscale stages, on hand-made tensors."""

import math

import pytest
import torch
from torch import nn

from hires.denoiser import Denoiser, dilated_convs
from hires.sampling import (
    UpscaleKnobs,
    channel_stats,
    cosine_factor,
    euler_step,
    gaussian_blur,
    global_steps,
    renormalize,
    sample_upscale,
    sigmas_for,
)


def test_cosine_factor_at_known_timesteps():
    assert cosine_factor(1000) == pytest.approx(1.0)
    assert cosine_factor(500) == pytest.approx(0.5)
    assert cosine_factor(0) == pytest.approx(0.0)
    t = 981
    cf = 0.5 * (1 + math.cos(math.pi * (1000 - t) / 1000))
    assert cosine_factor(t) == pytest.approx(cf)
    # c1 = cf^3, c2 = cf, c3 = 0.99 cf + 0.01 with the reference scales
    assert cosine_factor(500) ** 3 == pytest.approx(0.125)


@pytest.mark.parametrize("ratio", [2, 4, 8])
def test_blur_kernel_is_2r_minus_1(ratio):
    k = 2 * ratio - 1
    x = torch.zeros(1, 1, 41, 41)
    x[0, 0, 20, 20] = 1.0
    y = gaussian_blur(x, k, 0.8 * 3)
    nonzero = (y[0, 0, 20].abs() > 0).nonzero().flatten()
    assert nonzero.min().item() == 20 - (k // 2) and nonzero.max().item() == 20 + (k // 2)
    assert y.sum().item() == pytest.approx(1.0, abs=1e-6)  # mass preserved away from borders


def test_blur_preserves_a_constant_field_at_the_borders():
    x = torch.full((1, 4, 9, 13), 3.0)
    assert torch.allclose(gaussian_blur(x, 7, 2.0), x)


def test_renormalize_to_anchor_statistics():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 16, 16, generator=g) * 3 + 5
    mean = torch.tensor([0.1, -0.2, 0.3, 0.0]).view(1, 4, 1, 1)
    std = torch.tensor([1.0, 0.5, 2.0, 0.8]).view(1, 4, 1, 1)
    m, s = channel_stats(renormalize(x, mean, std))
    assert torch.allclose(m, mean, atol=1e-5) and torch.allclose(s, std, atol=1e-4)


def test_euler_step_moves_along_eps():
    x, eps = torch.ones(2), torch.tensor([1.0, -2.0])
    assert torch.equal(euler_step(x, eps, 3.0, 1.0), torch.tensor([-1.0, 5.0]))


def test_sigmas_match_the_diffusers_scheduler():
    from hires.plan import timesteps_for
    from hires.tiny import tiny_scheduler

    sched = tiny_scheduler()
    sched.set_timesteps(50)
    ours = sigmas_for(sched.alphas_cumprod, timesteps_for(50))
    assert ours[-1] == 0.0
    assert torch.allclose(torch.tensor(ours, dtype=torch.float64), sched.sigmas.double(), atol=1e-5)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(4, 4, 3, padding=1)
        self.down = nn.Conv2d(4, 4, 3, stride=2, padding=1)
        self.one = nn.Conv2d(4, 4, 1)


def test_dilation_applies_to_3x3_convs_and_is_restored():
    net = Net()
    with dilated_convs(net, 4, downsamplers=True):
        assert net.a.dilation == (4, 4) and net.a.padding == (4, 4)
        assert net.down.dilation == (4, 4)
        assert net.one.dilation == (1, 1)
    assert net.a.dilation == (1, 1) and net.a.padding == (1, 1)
    with dilated_convs(net, 4, downsamplers=False):
        assert net.down.dilation == (1, 1)


def test_dilation_is_restored_when_the_unet_raises_mid_step():
    net = Net()

    class Boom(RuntimeError):
        pass

    class Raising:
        unet = net
        dilated = Denoiser.dilated

        def eps(self, x, sigma, t):
            if net.a.dilation != (1, 1):
                raise Boom  # the global (dilated) pass fails
            return torch.zeros_like(x)

    x0 = torch.zeros(1, 4, 8, 8)
    with pytest.raises(Boom):
        sample_upscale(Raising(), x0, torch.ones_like(x0), [1.0, 0.0], [500], 2,
                       channel_stats(x0 + 1))
    assert all(m.dilation == (1, 1) for m in net.modules() if isinstance(m, nn.Conv2d))


def test_upscale_step_formula_with_a_known_model():
    """One step by hand: skip residual, two passes, mix, then anchor renormalization."""
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(1, 4, 12, 12, generator=g)
    noise = torch.randn(1, 4, 12, 12, generator=g)
    t, sigma = 700, 2.0
    seen = []

    class Model:
        unet = Net()
        dilated = Denoiser.dilated

        def eps(self, x, s, tt):
            seen.append((x.clone(), s, tt, self.unet.a.dilation))
            return 0.1 * x

    anchor = (torch.zeros(1, 4, 1, 1), torch.ones(1, 4, 1, 1))
    out = sample_upscale(Model(), x0, noise, [sigma, 0.0], [t], 2, anchor)
    cf = cosine_factor(t)
    x = x0 + sigma * noise  # start from x_t; the skip residual then mixes x_t with itself
    assert torch.allclose(seen[0][0], x, atol=1e-6)
    assert seen[0][1:] == (sigma, t, (1, 1)) and seen[1][1:] == (sigma, t, (2, 2))
    blurred = renormalize(gaussian_blur(x, 3, 0.8 * (0.99 * cf + 0.01)), *channel_stats(x))
    assert torch.allclose(seen[1][0], blurred, atol=1e-5)
    x1 = euler_step(x, 0.1 * x, sigma, 0.0)
    x2 = euler_step(x, 0.1 * blurred, sigma, 0.0)
    expected = renormalize((1 - cf) * x1 + cf * x2, *anchor)
    assert torch.allclose(out, expected, atol=1e-5)


def test_global_steps_are_the_first_steps_whose_weight_reaches_the_floor():
    # The default 16K stage (50 steps, strength 0.08): cf(61) = 0.009, so no global pass.
    assert global_steps((61, 41, 21, 1)) == 0
    assert global_steps((141, 121, 101, 81, 61, 41, 21, 1)) == 4  # cf(81) = 0.016
    assert global_steps((141, 121, 101, 81), floor=0.0) == 4  # 0: every step, as the reference
    assert global_steps((301, 281), cosine_scale_2=3.0) == 0  # cf^3 = 0.009 at t = 301
    assert global_steps((301, 281)) == 2
    assert global_steps(()) == 0


class Counting:
    """A UNet stand-in: eps = 0.1 x, plus `apart` in the global (dilated) pass; it counts its
    calls and the global ones."""

    unet = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1))
    dilated = Denoiser.dilated

    def __init__(self, apart: torch.Tensor | None = None):
        self.apart, self.calls, self.globals = apart, 0, 0

    def eps(self, x, sigma, t):
        self.calls += 1
        if self.unet[0].dilation != (1, 1):  # the global pass
            self.globals += 1
            return 0.1 * x + (0 if self.apart is None else self.apart)
        return 0.1 * x


def test_upscale_skips_the_global_pass_once_its_weight_is_below_the_floor():
    """Below the floor a step is its local pass alone, which moves x by what the global pass's
    share would have: c2 * |dsigma| * |eps2 - eps1| a step (Euler)."""
    g = torch.Generator().manual_seed(3)
    x0, noise = torch.randn(1, 4, 12, 12, generator=g), torch.randn(1, 4, 12, 12, generator=g)
    apart = 0.05 * torch.randn(1, 4, 12, 12, generator=g)  # where the passes disagree
    anchor = (torch.zeros(1, 4, 1, 1), torch.ones(1, 4, 1, 1))
    ts = (201, 141, 81, 61, 21)  # cf: 0.095, 0.048, 0.016 | 0.009, 0.001
    sigmas = sigmas_for(torch.linspace(0.9999, 0.01, 1000), ts)

    runs = {}
    for floor in (0.0, 0.01):
        m = Counting(apart)
        out = sample_upscale(m, x0, noise, sigmas, ts, 2, anchor, UpscaleKnobs(global_floor=floor))
        runs[floor] = out, m.globals
    assert runs[0.0][1] == 5 and runs[0.01][1] == 3
    diff = (runs[0.01][0] - runs[0.0][0]).abs().max()
    bound = sum(cosine_factor(t) * abs(sigmas[i + 1] - sigmas[i])
                for i, t in enumerate(ts) if i >= 3) * apart.abs().max()
    # The blur makes the global eps differ a little more; renormalization rescales by about 1.
    assert bound / 10 < diff <= 1.5 * bound


def test_a_stage_at_ratio_1_runs_no_global_pass():
    """At ratio 1 (a last stage under 1.5x the base: 1100 px on SDXL) the global pass is the
    local pass again, no dilation and a 1-wide blur: it doubled the stage's UNet calls for
    nothing. The plan prices none."""
    from hires.plan import make_plan

    g = torch.Generator().manual_seed(4)
    x0, noise = torch.randn(1, 4, 12, 12, generator=g), torch.randn(1, 4, 12, 12, generator=g)
    anchor = channel_stats(x0)
    ts = (301, 281, 261)
    sigmas = sigmas_for(torch.linspace(0.9999, 0.01, 1000), ts)

    once, twice = Counting(), Counting()
    alone = sample_upscale(once, x0, noise, sigmas, ts, 1, anchor)
    assert once.calls == len(ts)
    paired = sample_upscale(twice, x0, noise, sigmas, ts, 2, anchor)
    assert twice.calls == 2 * len(ts) and not torch.equal(alone, paired)
    last = make_plan(1100, 1100).stages[-1]
    assert (last.ratio, last.global_steps) == (1, 0) and last.steps > 0
    assert make_plan(2048, 2048).stages[-1].global_steps > 0


def test_a_one_value_latent_has_a_zero_spread_not_nan():
    """An 8 px input's 1x1 latent: the unbiased std was NaN, and the upscale came out black."""
    from hires.sampling import channel_stats, renormalize

    one = torch.tensor([[[[0.5]], [[-1.0]], [[2.0]], [[0.0]]]])
    mean, std = channel_stats(one)
    assert torch.equal(mean, one) and torch.equal(std, torch.zeros_like(one))
    x = torch.randn(1, 4, 1, 1)
    assert torch.isfinite(renormalize(x, mean, std)).all()
    wide = torch.randn(1, 4, 8, 8)
    assert torch.allclose(channel_stats(wide)[1].flatten(), wide.std(dim=(2, 3)).flatten())
