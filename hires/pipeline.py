"""`generate()`: one job from prompt to image, stage by stage; the library API behind the CLI."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image

from hires import vae as tiled_vae
from hires.job import Job
from hires.lean import lean_unet
from hires.memory import chunked_feed_forward, on_device, peak_memory, reset_peak
from hires.models import Components, load
from hires.plan import Plan, Stage, make_plan
from hires.progress import Event, ProgressFn
from hires.sampling import (
    Conditioning,
    Denoiser,
    UpscaleKnobs,
    channel_stats,
    sample_base,
    sample_upscale,
    sigmas_for,
)

__all__ = ["Result", "StageReport", "generate", "load", "plan_for"]

# Stages at least this many times the base size in area run uncond and cond as separate UNet
# calls, chunk the feed-forward and run resnets in row bands (hires.lean): the same result with
# a fraction of the activation memory.
LOW_MEMORY_AREA = 16
DEFAULT_VAE_TILE = 1024  # px


@dataclass
class StageReport:
    """What one stage did and cost."""

    index: int
    width: int
    height: int
    strength: float
    steps: int
    unet_evaluations: int
    seconds: float
    peak_memory: int | None


@dataclass
class Result:
    """The image, the job as run (seed filled in), its plan and per-stage timings."""

    image: Image.Image
    job: Job
    plan: Plan
    stages: list[StageReport]
    seconds: float
    peak_memory: int | None
    stage_images: list[Image.Image] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    linfusion: str | None = None  # the LinFusion checkpoint that ran; None: original attention

    @property
    def seed(self) -> int:
        return self.job.seed  # type: ignore[return-value]


def plan_for(job: Job, components: Components) -> Plan:
    """The job's stage list for this model's native size and schedule."""
    cfg = components.pipe.scheduler.config
    return make_plan(
        job.width, job.height, steps=job.steps, strength=job.strength, native=components.native,
        spacing=cfg.get("timestep_spacing", "leading"), train_steps=cfg["num_train_timesteps"],
        offset=cfg.get("steps_offset", 0),
    )


def generate(
    job: Job | None = None,
    *,
    components: Components | None = None,
    progress: ProgressFn | None = None,
    save_stages: bool = False,
    **overrides: Any,
) -> Result:
    """Make one image. Keyword overrides are Job fields: `generate(prompt="a fox", width=4096)`."""
    job = (job or Job()).merged(overrides).validate()
    if job.seed is None:
        job = replace(job, seed=secrets.randbelow(2**32))
    comps = components or load(job.model, job.linfusion, job.dtype, job.device,
                               job.allow_pickle, job.offload)
    with torch.inference_mode():
        return _run(job, comps, progress, save_stages)


def _run(job: Job, comps: Components, progress: ProgressFn | None, save_stages: bool) -> Result:
    """The stages of one job, in order: base, then each x2 upscale, then the final decode."""
    plan = plan_for(job, comps)
    emit = progress or (lambda e: None)
    n = len(plan.stages)
    started = time.perf_counter()
    generator = torch.Generator("cpu").manual_seed(job.seed)
    cond = encode_prompt(comps, job, plan)
    alphas = comps.pipe.scheduler.alphas_cumprod
    # 1024 px tiles whatever the model: fewer, larger tiles waste less on overlaps, and a
    # 1024 px tile of the SDXL VAE is what diffusers decodes whole anyway.
    tile = job.vae_tile or DEFAULT_VAE_TILE
    knobs = UpscaleKnobs(job.cosine_scale_1, job.cosine_scale_2, job.cosine_scale_3, job.sigma,
                         job.dilate_downsamplers)
    reports: list[StageReport] = []
    stage_images: list[Image.Image] = []
    image: Image.Image | None = None
    latents = anchor = None
    for stage in plan.stages:
        t0 = time.perf_counter()
        reset_peak(comps.device)

        def on_step(done: int, total: int, stage: Stage = stage) -> None:
            emit(Event("denoise", stage.index, n, stage.width, stage.height, done, total))

        low_memory = stage.ratio**2 >= LOW_MEMORY_AREA
        denoiser = Denoiser(comps.unet, cond, job.guidance, split_cfg=low_memory)
        sigmas = sigmas_for(alphas, stage.timesteps)
        shape = (1, 4, stage.height // 8, stage.width // 8)
        if stage.index == 0:
            noise = torch.randn(shape, generator=generator).to(comps.device)
            with denoising(comps, low_memory):
                on_step(0, stage.steps)
                latents = sample_base(denoiser, noise, sigmas, stage.timesteps, on_step)
            anchor = channel_stats(latents)
        else:
            if job.upsample == "latent":
                x0 = F.interpolate(latents, size=shape[2:], mode="bicubic", align_corners=False)
            else:
                image = decode(comps, latents, tile, emit, stage.index - 1, n)
                if save_stages:
                    stage_images.append(image)
                emit(Event("resize", stage.index, n, stage.width, stage.height))
                image = image.resize((stage.width, stage.height), Image.LANCZOS)
                x0 = encode(comps, image, tile, emit, stage, n)
                image = None
            # One noise tensor per stage, from the job's generator: same seed, same image.
            noise = torch.randn(shape, generator=generator).to(comps.device)
            with denoising(comps, low_memory):
                on_step(0, stage.steps)
                latents = sample_upscale(denoiser, x0, noise, sigmas, stage.timesteps,
                                         stage.ratio, anchor, knobs, on_step)
            del x0, noise
        reports.append(StageReport(
            stage.index, stage.width, stage.height, stage.strength, stage.steps,
            denoiser.evaluations, time.perf_counter() - t0, peak_memory(comps.device)))
    last = plan.stages[-1]
    t0 = time.perf_counter()
    image = decode(comps, latents, tile, emit, last.index, n)
    reports[-1].seconds += time.perf_counter() - t0
    if save_stages:
        stage_images.append(image)
    if not plan.exact:
        image = fit(image, plan.requested_width, plan.requested_height)
    return Result(image, job, plan, reports, time.perf_counter() - started,
                  peak_memory(comps.device), stage_images, list(comps.warnings), comps.linfusion)


@contextmanager
def denoising(comps: Components, low_memory: bool) -> Iterator[None]:
    """The UNet on its device for a stage; in big stages, chunked feed-forward and row bands."""
    unet = comps.unet
    with on_device(comps, unet), lean_unet(unet, low_memory), \
            chunked_feed_forward(unet, low_memory):
        yield


def encode_prompt(comps: Components, job: Job, plan: Plan) -> Conditioning:
    """Both text encoders, once per job; micro-conditioning uses the final size at every stage."""
    pipe = comps.pipe
    with on_device(comps, pipe.text_encoder, pipe.text_encoder_2), torch.inference_mode():
        embeds, neg, pooled, neg_pooled = pipe.encode_prompt(
            prompt=job.prompt, device=comps.device, num_images_per_prompt=1,
            do_classifier_free_guidance=True, negative_prompt=job.negative or None)
    h, w = plan.height, plan.width
    time_ids = torch.tensor([[h, w, 0, 0, h, w]] * 2, dtype=comps.dtype, device=comps.device)
    return Conditioning(
        torch.cat([neg, embeds]).to(comps.dtype).clone(),
        torch.cat([neg_pooled, pooled]).to(comps.dtype).clone(), time_ids)


def decode(comps: Components, latents, tile: int, emit: ProgressFn, stage: int, n: int):
    """Latents to a PIL image through the tiled VAE."""
    h, w = latents.shape[2] * 8, latents.shape[3] * 8

    def on_tile(done: int, total: int) -> None:
        emit(Event("vae-decode", stage, n, w, h, done, total))

    on_tile(0, 0)  # the phase starts now (its tile count comes with the first tile)
    with on_device(comps, comps.vae), torch.inference_mode():
        pixels = tiled_vae.decode(comps.vae, latents, tile=tile, progress=on_tile)
    return Image.fromarray(pixels)


def encode(comps: Components, image: Image.Image, tile: int, emit: ProgressFn, stage: Stage,
           n: int):
    """A PIL image to UNet-space latents through the tiled VAE."""
    import numpy as np

    def on_tile(done: int, total: int) -> None:
        emit(Event("vae-encode", stage.index, n, stage.width, stage.height, done, total))

    on_tile(0, 0)
    with on_device(comps, comps.vae), torch.inference_mode():
        latents = tiled_vae.encode(comps.vae, np.asarray(image), tile=tile, progress=on_tile)
    return latents.to(comps.device, torch.float32)


def fit(image: Image.Image, width: int, height: int) -> Image.Image:
    """Scale to cover `width` x `height` (Lanczos), then crop the centre: no distortion."""
    scale = max(width / image.width, height / image.height)
    size = (max(width, round(image.width * scale)), max(height, round(image.height * scale)))
    if size != image.size:
        image = image.resize(size, Image.LANCZOS)
    left, top = (image.width - width) // 2, (image.height - height) // 2
    return image.crop((left, top, left + width, top + height))
