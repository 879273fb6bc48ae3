"""The denoising loops: the base stage and the DemoFusion-style x2 upscale stages.

Steps (Euler, DPM++ 2M) are computed here from the sigma table (as k-diffusion does) rather than
through a diffusers scheduler: with two UNet passes per step a scheduler's hidden step index
drifts and the second pass sees the next step's sigma (a bug in both reference pipelines).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from hires.denoiser import Denoiser
from hires.job import SAMPLERS

StepCallback = Callable[[int, int], None]  # (steps done, steps in this stage)
# The global pass is run while its mix weight c2 is at least this: below it, it would move a
# step's update by under 1 % of the two passes' difference, at the price of a whole UNet pass
# (half the stage's work). 0 runs it at every step, as the reference does.
GLOBAL_FLOOR = 0.01


@dataclass
class UpscaleKnobs:
    """The upscale stage's knobs, with the reference defaults."""

    cosine_scale_1: float = 3.0  # skip residual
    cosine_scale_2: float = 1.0  # mix of the dilated global pass
    cosine_scale_3: float = 1.0  # blur strength of the global pass
    sigma: float = 0.8
    dilate_downsamplers: bool = True
    global_floor: float = GLOBAL_FLOOR  # skip the global pass once c2 falls below this


def sigmas_for(alphas_cumprod: Tensor, timesteps: Sequence[int]) -> list[float]:
    """sigma(t) = sqrt((1 - a_t) / a_t) for each timestep, then a final 0."""
    a = alphas_cumprod.double()[list(timesteps)]
    return [float(s) for s in ((1 - a) / a).sqrt()] + [0.0]


def karras_sigmas(sigma_max: float, sigma_min: float, n: int, rho: float = 7.0) -> list[float]:
    """n sigmas from sigma_max down to sigma_min, evenly spaced in sigma^(1/rho) (Karras eq. 5)."""
    hi, lo = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    return [(hi + i / max(n - 1, 1) * (lo - hi)) ** rho for i in range(n)]


def sigma_to_timestep(alphas_cumprod: Tensor, sigmas: Sequence[float]) -> list[int]:
    """The training timestep of each sigma: linear in log sigma between table entries, rounded."""
    a = alphas_cumprod.double()
    table = ((1 - a) / a).sqrt().log()  # increasing with t
    log_s = torch.tensor(list(sigmas), dtype=torch.float64).log()
    hi = torch.searchsorted(table, log_s).clamp(1, len(table) - 1)
    lo = hi - 1
    w = ((log_s - table[lo]) / (table[hi] - table[lo])).clamp(0, 1)
    return [int(t) for t in (lo + w).round()]


def sigma_schedule(
    alphas_cumprod: Tensor, timesteps: Sequence[int], karras: bool = False
) -> tuple[list[float], list[int]]:
    """The sigmas (then 0) and UNet timesteps of a stage; Karras keeps the first sigma.

    Starting the Karras ramp at sigma(timesteps[0]) rather than the table's top keeps an SDEdit
    stage's start noise level; it ends at the table's smallest sigma, as diffusers' does.
    """
    timesteps = list(timesteps)
    if not karras or not timesteps:
        return sigmas_for(alphas_cumprod, timesteps), timesteps
    a = alphas_cumprod.double()
    table = ((1 - a) / a).sqrt()
    sigmas = karras_sigmas(float(table[timesteps[0]]), float(table.min()), len(timesteps))
    return sigmas + [0.0], sigma_to_timestep(alphas_cumprod, sigmas)


def euler_step(x: Tensor, eps: Tensor, sigma: float, sigma_next: float) -> Tensor:
    """One Euler step of the probability-flow ODE for an epsilon-predicting model."""
    return x + (sigma_next - sigma) * eps


def dpmpp_2m_step(
    x: Tensor,
    denoised: Tensor,
    old_denoised: Tensor | None,
    sigma_prev: float | None,
    sigma: float,
    sigma_next: float,
) -> Tensor:
    """One DPM-Solver++(2M) step from sigma to sigma_next, in lambda = -log(sigma).

    First order (DPM-Solver++ 1, i.e. DDIM) without a previous estimate or onto sigma 0.
    """
    if sigma_next == 0:
        return denoised  # the first-order update's limit as h -> inf
    h = math.log(sigma / sigma_next)
    keep, pull = sigma_next / sigma, -math.expm1(-h)  # exp(-h), 1 - exp(-h)
    # A repeated sigma (a caller's repeated timestep) has no slope to extrapolate: first order.
    if old_denoised is None or sigma_prev is None or sigma_prev == sigma:
        return keep * x + pull * denoised
    half_over_r = 0.5 * h / math.log(sigma_prev / sigma)  # 1 / (2 r), r = h_last / h
    return keep * x + pull * ((1 + half_over_r) * denoised - half_over_r * old_denoised)


def check_sampler(sampler: str) -> None:
    """Raise ValueError unless `sampler` is one of SAMPLERS."""
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")


def _advance(
    sampler: str, x: Tensor, eps: Tensor, sigmas: Sequence[float], i: int, old: Tensor | None
) -> tuple[Tensor, Tensor | None]:
    """Step i of `sampler` (sigmas[i] -> sigmas[i + 1]); also this step's denoised, the history."""
    if sampler == "euler":
        return euler_step(x, eps, sigmas[i], sigmas[i + 1]), None
    denoised = x - sigmas[i] * eps
    prev = sigmas[i - 1] if i else None
    return dpmpp_2m_step(x, denoised, old, prev, sigmas[i], sigmas[i + 1]), denoised


def cosine_factor(t: int, train_steps: int = 1000) -> float:
    """cf = 0.5 (1 + cos(pi (T - t) / T)): 1 at pure noise, 0 at the clean end."""
    return 0.5 * (1 + math.cos(math.pi * (train_steps - t) / train_steps))


def global_steps(timesteps: Sequence[int], cosine_scale_2: float = 1.0,
                 floor: float = GLOBAL_FLOOR) -> int:
    """How many of a stage's first steps run the global pass: those whose mix weight
    c2 = cf(t)^cosine_scale_2 is at least `floor` (c2 only falls as t does)."""
    n = 0
    while n < len(timesteps) and cosine_factor(timesteps[n]) ** cosine_scale_2 >= floor:
        n += 1
    return n


def gaussian_blur(x: Tensor, kernel_size: int, sigma: float) -> Tensor:
    """Separable Gaussian blur per channel with reflected borders (no dark edges)."""
    if kernel_size <= 1:
        return x
    half = kernel_size // 2
    grid = torch.arange(kernel_size, dtype=torch.float64, device=x.device) - half
    k = torch.exp(-(grid**2) / (2 * sigma**2))
    k = (k / k.sum()).to(x.dtype)
    c = x.shape[1]
    pad_h, pad_w = min(half, x.shape[2] - 1), min(half, x.shape[3] - 1)
    # Reflect as far as the tensor allows, zero beyond (only matters for tiny latents).
    y = F.pad(x, (pad_w, pad_w, 0, 0), mode="reflect") if pad_w else x
    y = F.conv2d(y, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c, padding=(0, half - pad_w))
    y = F.pad(y, (0, 0, pad_h, pad_h), mode="reflect") if pad_h else y
    return F.conv2d(y, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c, padding=(half - pad_h, 0))


def channel_stats(x: Tensor) -> tuple[Tensor, Tensor]:
    """Per sample and channel mean and std, in fp32."""
    x = x.float()
    # One value a channel (a 1x1 latent: an 8 px input) has no spread; the unbiased estimate
    # would be NaN, and NaN turns every later stage black.
    one = x.shape[2] * x.shape[3] == 1
    return x.mean(dim=(2, 3), keepdim=True), x.std(dim=(2, 3), keepdim=True,
                                                   correction=0 if one else 1)


def renormalize(x: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """Shift and scale `x` per channel to the given mean and std."""
    m, s = channel_stats(x)
    return ((x.float() - m) / (s + 1e-6) * std + mean).to(x.dtype)


def sample_base(
    denoiser: Denoiser,
    noise: Tensor,
    sigmas: Sequence[float],
    timesteps: Sequence[int],
    callback: StepCallback | None = None,
    *,
    sampler: str = "euler",
) -> Tensor:
    """Plain text-to-image over the whole schedule with `sampler`, starting from pure noise."""
    check_sampler(sampler)
    # sqrt(sigma^2 + 1) is diffusers' init_noise_sigma for SDXL's "leading" schedule.
    x = noise.float() * math.sqrt(sigmas[0] ** 2 + 1)
    old = None
    for i, t in enumerate(timesteps):
        x, old = _advance(sampler, x, denoiser.eps(x, sigmas[i], t), sigmas, i, old)
        if callback:
            callback(i + 1, len(timesteps))
    return x


def sample_upscale(
    denoiser: Denoiser,
    x0: Tensor,
    noise: Tensor,
    sigmas: Sequence[float],
    timesteps: Sequence[int],
    ratio: int,
    anchor: tuple[Tensor, Tensor],
    knobs: UpscaleKnobs | None = None,
    callback: StepCallback | None = None,
    *,
    sampler: str = "euler",
) -> Tensor:
    """One x2 stage: SDEdit from the upsampled latents `x0` with skip residual and global pass.

    `ratio` is the stage size over the base size (2, 4, ...); `anchor` is the base latents'
    per-channel (mean, std), restored at the end so tones do not drift stage to stage. The
    global pass stops once its mix weight falls below `knobs.global_floor` (global_steps).
    """
    check_sampler(sampler)
    knobs = knobs or UpscaleKnobs()
    x0, noise = x0.float(), noise.float()
    if not timesteps:
        return renormalize(x0, *anchor)
    # x_t = x0 + sigma_t * noise, made on the fly rather than stored for every step.
    x = x0 + sigmas[0] * noise
    # Own history per pass: 2M extrapolates one estimate's trend, not a jump between two passes.
    old1 = old2 = None
    # At ratio 1 the global pass is the local one again (no dilation, a 1-wide blur): skipped
    n_global = global_steps(timesteps, knobs.cosine_scale_2, knobs.global_floor) \
        if ratio > 1 else 0
    for i, t in enumerate(timesteps):
        sigma = sigmas[i]
        cf = cosine_factor(t)
        c1 = cf**knobs.cosine_scale_1
        x = (1 - c1) * x + c1 * (x0 + sigma * noise)
        x1, old1 = _advance(sampler, x, denoiser.eps(x, sigma, t), sigmas, i, old1)
        if i < n_global:
            c3 = 0.99 * cf**knobs.cosine_scale_3 + 0.01
            blurred = renormalize(gaussian_blur(x, 2 * ratio - 1, knobs.sigma * c3),
                                  *channel_stats(x))
            with denoiser.dilated(ratio, knobs.dilate_downsamplers):
                eps2 = denoiser.eps(blurred, sigma, t)
            x2, old2 = _advance(sampler, x, eps2, sigmas, i, old2)
            c2 = cf**knobs.cosine_scale_2
            x = (1 - c2) * x1 + c2 * x2
        else:  # c2 < floor: x2's share of the step would be negligible
            x = x1
        if callback:
            callback(i + 1, len(timesteps))
    return renormalize(x, *anchor)
