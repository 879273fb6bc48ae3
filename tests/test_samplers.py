"""DPM++ 2M and Karras sigmas: against diffusers' multistep scheduler, and in the upscale loop."""

import math
from contextlib import contextmanager
from types import SimpleNamespace

import pytest
import torch
from diffusers import DPMSolverMultistepScheduler

from hires.denoiser import Denoiser, dilated_convs
from hires.sampling import (
    SAMPLERS,
    channel_stats,
    dpmpp_2m_step,
    euler_step,
    karras_sigmas,
    sample_base,
    sample_upscale,
    sigma_schedule,
    sigmas_for,
)
from hires.tiny import tiny_scheduler


class Recording:
    """A denoiser that records the state x of every call (the latents before each step)."""

    def __init__(self, inner):
        self.inner, self.seen = inner, []

    def eps(self, x, sigma, t):
        self.seen.append(x.clone())
        return self.inner.eps(x, sigma, t)


def _denoiser(tiny) -> Denoiser:
    from hires.job import Job
    from hires.pipeline import encode_prompt

    side = tiny.native
    cond = encode_prompt(tiny, Job(prompt="a lighthouse at dusk"),
                         SimpleNamespace(width=side, height=side))
    return Denoiser(tiny.unet, cond, guidance=5.0)


def _diffusers_run(sched, denoiser, noise):
    """diffusers' own loop; returns its sample (VP scale) before each step and at the end."""
    x, states = noise * sched.init_noise_sigma, []
    for i, t in enumerate(sched.timesteps):
        states.append(x.clone())
        sigma = float(sched.sigmas[i])
        # Denoiser.eps takes the VE state and divides by sqrt(sigma^2 + 1): hand it the VP one.
        eps = denoiser.eps(x * math.sqrt(sigma**2 + 1), sigma, int(t))
        x = sched.step(eps, t, x, return_dict=False)[0]
    return states + [x]


@pytest.mark.parametrize("karras", [False, True])
def test_dpmpp_2m_matches_diffusers_step_for_step(tiny, karras):
    sched = DPMSolverMultistepScheduler.from_config(
        tiny.pipe.scheduler.config, algorithm_type="dpmsolver++", solver_order=2,
        use_karras_sigmas=karras, final_sigmas_type="zero")
    sched.set_timesteps(8)
    timesteps = [int(t) for t in sched.timesteps]
    sigmas = [float(s) for s in sched.sigmas]
    assert sigmas[-1] == 0.0 and len(sigmas) == len(timesteps) + 1
    if not karras:  # the table's sigmas at diffusers' own (multistep "leading") timesteps
        assert sigmas == pytest.approx(sigmas_for(sched.alphas_cumprod, timesteps), rel=1e-6)
    noise = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(3))
    denoiser = _denoiser(tiny)
    with torch.inference_mode():
        theirs = _diffusers_run(sched, denoiser, noise)
        rec = Recording(denoiser)
        out = sample_base(rec, noise, sigmas, timesteps, sampler="dpmpp-2m")
    ours = rec.seen + [out]
    assert len(ours) == len(theirs) == len(timesteps) + 1
    scales = [math.sqrt(s**2 + 1) for s in sigmas]  # VE -> VP: x / sqrt(sigma^2 + 1)
    for i, (a, b, k) in enumerate(zip(ours, theirs, scales, strict=True)):
        # The random UNet at guidance 5 drives the latents to |x| ~ 50, where fp32 rounding alone
        # is ~4e-6: the tolerance is 1e-5 of the latents' scale (at least 1e-5 absolute).
        diff, scale = (a / k - b).abs().max().item(), max(1.0, b.abs().max().item())
        assert diff < 1e-5 * scale, f"state {i}: max |diff| {diff:.2e}, scale {scale:.1f}"


def test_karras_sigmas_formula_and_endpoints():
    s = karras_sigmas(14.6, 0.03, 10)
    assert s[0] == pytest.approx(14.6) and s[-1] == pytest.approx(0.03)
    assert all(a > b for a, b in zip(s, s[1:]))
    ramp = [i / 9 for i in range(10)]
    expected = [(14.6 ** (1 / 7) + r * (0.03 ** (1 / 7) - 14.6 ** (1 / 7))) ** 7 for r in ramp]
    assert s == pytest.approx(expected, rel=1e-12)
    assert karras_sigmas(5.0, 0.1, 1) == pytest.approx([5.0])


def test_schedule_without_karras_is_sigmas_for():
    from hires.plan import timesteps_for

    alphas = tiny_scheduler().alphas_cumprod
    for ts in (timesteps_for(50), timesteps_for(50)[-12:], ()):
        sigmas, steps = sigma_schedule(alphas, ts)
        assert sigmas == sigmas_for(alphas, ts) and steps == list(ts)
    assert sigma_schedule(alphas, (), karras=True) == ([0.0], [])


def test_schedule_with_karras_keeps_the_start_sigma():
    from hires.plan import timesteps_for

    alphas = tiny_scheduler().alphas_cumprod
    table = sigmas_for(alphas, range(1000))[:-1]
    for ts in (timesteps_for(25), timesteps_for(50)[-8:]):
        sigmas, steps = sigma_schedule(alphas, ts, karras=True)
        assert sigmas[0] == pytest.approx(table[ts[0]], rel=1e-12) and steps[0] == ts[0]
        assert sigmas[-2] == pytest.approx(min(table), rel=1e-12) and sigmas[-1] == 0.0
        assert len(steps) == len(ts) and steps == sorted(steps, reverse=True)


def test_schedule_with_karras_matches_diffusers_from_the_top():
    """From t = 999 ("trailing" spacing) our ramp is diffusers' Karras schedule."""
    from hires.plan import timesteps_for

    sched = DPMSolverMultistepScheduler.from_config(tiny_scheduler().config,
                                                    use_karras_sigmas=True)
    sched.set_timesteps(20)
    sigmas, steps = sigma_schedule(sched.alphas_cumprod, timesteps_for(20, spacing="trailing"),
                                   True)
    assert sigmas == pytest.approx([float(s) for s in sched.sigmas], rel=1e-5)
    assert steps == [int(t) for t in sched.timesteps]


def test_dpmpp_2m_step_is_euler_at_first_order():
    g = torch.Generator().manual_seed(0)
    x, eps = torch.randn(8, generator=g), torch.randn(8, generator=g)
    sigma, sigma_next = 3.0, 1.5
    d = x - sigma * eps
    assert torch.allclose(dpmpp_2m_step(x, d, None, None, sigma, sigma_next),
                          euler_step(x, eps, sigma, sigma_next), atol=1e-6)
    assert torch.equal(dpmpp_2m_step(x, d, x, 4.0, sigma, 0.0), d)


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a = torch.nn.Conv2d(4, 4, 3, padding=1)


class StandIn:
    """A stand-in denoiser: a conv net to dilate, eps given by the subclass."""

    unet = Net()

    @contextmanager
    def dilated(self, r, downsamplers=True):
        with dilated_convs(self.unet, r, downsamplers):
            yield


class Linear(StandIn):
    """eps linear in its input, so both passes matter."""

    def eps(self, x, sigma, t):
        return 0.1 * x + 0.01 * t / 1000


class Constant(StandIn):
    """eps = (x - c) / sigma: the denoised estimate is c whatever x is."""

    def __init__(self, c):
        self.c = c

    def eps(self, x, sigma, t):
        return (x - self.c) / sigma


def _upscale_inputs():
    g = torch.Generator().manual_seed(2)
    x0 = torch.randn(1, 4, 12, 12, generator=g)
    noise = torch.randn(1, 4, 12, 12, generator=g)
    anchor = (torch.zeros(1, 4, 1, 1), torch.ones(1, 4, 1, 1))
    return x0, noise, anchor


def test_dpmpp_2m_upscale_runs_and_differs_from_euler():
    x0, noise, anchor = _upscale_inputs()
    ts = (401, 301, 201, 101)
    sigmas = sigmas_for(tiny_scheduler().alphas_cumprod, ts)
    euler = sample_upscale(Linear(), x0, noise, sigmas, ts, 2, anchor)
    dpm = sample_upscale(Linear(), x0, noise, sigmas, ts, 2, anchor, sampler="dpmpp-2m")
    assert torch.isfinite(dpm).all() and dpm.shape == x0.shape
    assert (dpm - euler).abs().max() > 1e-3
    m, s = channel_stats(dpm)
    assert torch.allclose(m, anchor[0], atol=1e-5) and torch.allclose(s, anchor[1], atol=1e-4)


def test_dpmpp_2m_upscale_is_exact_for_a_constant_denoiser():
    """With denoised = c, the stage ends on c exactly (then renormalized), any solver."""
    x0, noise, anchor = _upscale_inputs()
    c = torch.linspace(-1, 1, 4 * 12 * 12).view(1, 4, 12, 12)
    alphas = tiny_scheduler().alphas_cumprod
    for karras in (False, True):
        sigmas, ts = sigma_schedule(alphas, (501, 401, 301, 201, 101, 1), karras)
        for sampler in SAMPLERS:
            out = sample_upscale(Constant(c), x0, noise, sigmas, ts, 2, anchor, sampler=sampler)
            assert torch.allclose(out, (c - c.mean((2, 3), keepdim=True))
                                  / c.std((2, 3), keepdim=True), atol=1e-5), (karras, sampler)


def test_dpmpp_2m_upscale_follows_the_closed_form_without_residual_and_global_mix():
    """Skip residual and global mix off (c1 = c2 = 0): x_i = c + sigma_i / sigma_0 (x_0 - c)."""
    from hires.sampling import UpscaleKnobs

    x0, noise, anchor = _upscale_inputs()
    c = torch.linspace(-1, 1, 4 * 12 * 12).view(1, 4, 12, 12)
    sigmas, ts = sigma_schedule(tiny_scheduler().alphas_cumprod, (601, 451, 301, 151, 1),
                                karras=True)
    model = Constant(c)
    local = Recording(model)
    local.unet, local.dilated = model.unet, model.dilated
    local_eps = local.eps

    def eps(x, sigma, t):  # record only the local (undilated) pass
        return local_eps(x, sigma, t) if model.unet.a.dilation == (1, 1) else model.eps(x, sigma, t)

    local.eps = eps
    knobs = UpscaleKnobs(cosine_scale_1=1e9, cosine_scale_2=1e9)
    sample_upscale(local, x0, noise, sigmas, ts, 2, anchor, knobs, sampler="dpmpp-2m")
    start = x0 + sigmas[0] * noise
    assert len(local.seen) == len(ts)
    for i, x in enumerate(local.seen):
        assert torch.allclose(x, c + sigmas[i] / sigmas[0] * (start - c), atol=1e-5), i


def test_dpmpp_2m_base_is_exact_for_a_constant_denoiser_before_the_last_step():
    """Each step onto sigma_next > 0 lands on c + sigma_next (x - c) / sigma, solver-free."""
    c = torch.full((1, 4, 4, 4), 0.5)
    noise = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(5))
    sigmas, ts = sigma_schedule(tiny_scheduler().alphas_cumprod, (801, 601, 401), karras=False)
    rec = Recording(Constant(c))
    sample_base(rec, noise, sigmas, ts, sampler="dpmpp-2m")
    x_start = noise * math.sqrt(sigmas[0] ** 2 + 1)
    for i, x in enumerate(rec.seen):
        assert torch.allclose(x, c + sigmas[i] / sigmas[0] * (x_start - c), atol=1e-5)


def test_unknown_sampler_is_an_error():
    x0, noise, anchor = _upscale_inputs()
    with pytest.raises(ValueError, match="euler, dpmpp-2m"):
        sample_base(Linear(), noise, [1.0, 0.0], [500], sampler="heun")
    with pytest.raises(ValueError, match="unknown sampler 'ddim'"):
        sample_upscale(Linear(), x0, noise, [1.0, 0.0], [500], 2, anchor, sampler="ddim")


def test_a_repeated_sigma_falls_back_to_first_order():
    from hires.sampling import dpmpp_2m_step

    x, d, old = torch.ones(1, 4, 2, 2), torch.zeros(1, 4, 2, 2), torch.full((1, 4, 2, 2), 5.0)
    out = dpmpp_2m_step(x, d, old, 2.0, 2.0, 1.0)
    assert torch.isfinite(out).all()
    assert torch.allclose(out, dpmpp_2m_step(x, d, None, None, 2.0, 1.0))
