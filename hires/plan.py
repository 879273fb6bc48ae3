"""The plan of a job: its stages (sizes, strengths, timesteps) and how each one runs.

`make_plan` is a pure function of the request, the model's shape (`hires.costs.ModelShape`)
and a device budget: for each stage it picks the fastest `Strategy` whose estimated peak
memory fits, and records that estimate, the stage's FLOPs, scratch disk and time.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from fractions import Fraction
from functools import partial
from typing import TYPE_CHECKING, Any

from hires.costs import ModelShape, StageCost, stage_cost
from hires.gpus import FP32_SHARE
from hires.job import MAX_SIDE, MIN_SIDE, MIN_VAE_TILE
from hires.memory import GIB, HOST_MARGIN_BYTES, HOST_MARGIN_SHARE, scratch_folder
from hires.sampling import GLOBAL_FLOOR, global_steps, sigma_schedule
from hires.strategy import WEIGHTS, Strategy, all_strategies

if TYPE_CHECKING:
    from torch import Tensor

OFFLOAD_WEIGHTS = {"auto": WEIGHTS, "none": ("resident",), "model": ("model",),
                   "sequential": ("sequential",)}


# Kept free of the estimates: the caching allocator's slack and fragmentation, cuDNN's
# workspaces, the CUDA context's own use of the budget. Not yet calibrated on a real GPU.
MARGIN_BYTES, MARGIN_SHARE = 512 << 20, 0.05


def usable(budget: int | None) -> int | None:
    """The part of a device budget that estimates may fill."""
    return None if budget is None else int(budget * (1 - MARGIN_SHARE)) - MARGIN_BYTES


class PlanError(ValueError):
    """No strategy fits the budget; the message says what would."""

    host = False  # the CPU's memory, not the GPU's, is what ran short
    plan_kwargs: dict[str, Any] | None = None  # make_plan's settings, to plan again leaner
    size: tuple[int, int] | None = None  # the size asked for (width, height)
    job: Any = None  # the job planned, where hires.pipeline.plan_for planned one
    needed: float | None = None  # the device budget (bytes) the stage said would fit it
    host_needed: float | None = None  # the CPU memory (bytes, ModelShape.host's) it said


@dataclass(frozen=True)
class Stage:
    """One sampling stage; index 0 is the base (text-to-image) stage."""

    index: int
    width: int
    height: int
    ratio: int  # the global pass's dilation: the stage's scale over the base, rounded
    strength: float  # 1.0 for the base stage
    timesteps: tuple[int, ...]  # the timesteps this stage runs, high to low
    strategy: Strategy = field(default_factory=Strategy)
    cost: StageCost | None = None  # estimates: peak device bytes, TFLOPs, scratch, seconds
    kind: str = "upscale"  # "base": from noise; "input": from the user's image; "upscale"
    global_steps: int = 0  # the first steps that also run the dilated global pass
    latent_upsample: bool = False  # starts from the previous latents resized: no VAE before it
    # ... but the previous stage is decoded anyway, for its image (--save-stages)
    decodes_previous: bool = False

    @property
    def steps(self) -> int:
        return len(self.timesteps)


@dataclass(frozen=True)
class Plan:
    """All stages; the last one is the size the user asked for."""

    stages: tuple[Stage, ...]
    width: int
    height: int
    budget: int | None = None  # device bytes the plan was fitted to; None: not fitted
    spill: float = 0.0  # CPU memory the VAE may keep a GPU's step outputs in
    fp32: tuple[str, ...] = ()  # what runs in fp32 on a GPU ("UNet", "VAE"), at its fp32 rate
    fp32_share: float = FP32_SHARE  # that rate as a share of the plan's (hires.gpus)
    # The first stage as a preview runs it (`preview_of`): with its decode and save, which
    # the whole job's first stage leaves to the stages after it.
    preview: Stage | None = None
    guided: bool = True  # CFG: each step's UNet call has two batch items (hires.costs)
    rate: float | None = None  # the FLOP/s its times are at (None: no times)

    @property
    def peak_bytes(self) -> int | None:
        peaks = [s.cost.peak_bytes for s in self.stages if s.cost]
        return max(peaks) if peaks else None

    @property
    def used_bytes(self) -> int | None:
        """The most device memory a stage takes with the VAE's kept outputs (`peak_bytes` is
        what must be free; the kept outputs fill a share of what is free beyond it)."""
        used = [max(s.cost.used_bytes, s.cost.peak_bytes) for s in self.stages if s.cost]
        return max(used) if used else None

    @property
    def seconds(self) -> float | None:
        times = [s.cost.seconds for s in self.stages if s.cost]
        return sum(times) if times and None not in times else None  # None: no rate

    @property
    def vae_spill_bytes(self) -> float:
        """The most RAM one stage's VAE keeps outputs in (a share of `spill`)."""
        return max((s.cost.vae_spill_bytes for s in self.stages if s.cost), default=0.0)

    @property
    def vae_seconds(self) -> float | None:
        """The VAE's share of `seconds`."""
        times = [s.cost.vae_seconds for s in self.stages if s.cost]
        return sum(times) if times and None not in times else None

    @property
    def host_seconds(self) -> float | None:
        """The host's own share of `seconds`: the resizes between stages and the save."""
        times = [s.cost.host_seconds for s in self.stages if s.cost]
        return sum(times) if times and None not in times else None


def preview_of(plan: Plan) -> Plan:
    """The plan's first stage alone: the job's composition at the base size, conditioned on
    the final size as the whole job is, so that the whole job's first stage is this image.
    Its strategy is the whole job's unless the decode it ends on does not fit beside it; its
    cost adds that decode and the save."""
    return replace(plan, stages=(plan.preview or plan.stages[0],), preview=None)


def timesteps_for(steps: int, train_steps: int = 1000, spacing: str = "leading",
                  offset: int = 1):
    """The timesteps of a `steps`-step schedule (every sampler's), as diffusers spaces them
    for SDXL."""
    if spacing == "leading":
        ratio = train_steps // steps
        return tuple(i * ratio + offset for i in reversed(range(steps)))
    if spacing == "trailing":
        ratio = train_steps / steps
        return tuple(round(train_steps - i * ratio) - 1 for i in range(steps))
    if spacing == "linspace":
        return tuple(
            round((train_steps - 1) * (steps - 1 - i) / max(steps - 1, 1)) for i in range(steps)
        )
    raise ValueError(f"unknown timestep spacing '{spacing}'")


def base_size(width: int, height: int, native: int) -> tuple[int, int]:
    """The base stage: the model's native area (SDXL: ~1 MP) at the request's aspect.

    Sides are multiples of native/16 px (64 for SDXL, its training buckets' grid): 16:9 gives
    1344x768, 3:1 1792x576. A request inside that size is its own base.
    """
    grid = max(8, native // 16)
    aspect = width / height
    bw = max(grid, round(native * math.sqrt(aspect) / grid) * grid)
    bh = max(grid, round(native / math.sqrt(aspect) / grid) * grid)
    # A side held at the grid (past about 256:1) leaves the other at the native area, not
    # past it: 32768x64 started at 23168x64, 1.5 MP
    if bh == grid and width > height:
        bw = max(grid, min(bw, round(native * native / grid / grid) * grid))
    elif bw == grid and height > width:
        bh = max(grid, min(bh, round(native * native / grid / grid) * grid))
    if width <= bw and height <= bh:
        return width, height
    return bw, bh


def stage_strengths(strength: float, n: int) -> list[float]:
    """linspace(strength, 0, n+1)[:n]: stage k (1-based) gets entry k-1."""
    return [strength * (n - k) / n for k in range(n)] if n else []


def stage_sizes(width: int, height: int, native: int) -> list[tuple[int, int, float]]:
    """(width, height, scale over the base) of every stage: x2 steps, then the request itself.

    The base doubles while the next size stays below the request; the last stage is the
    request (1-2x the one before), so nothing beyond the request is ever generated.
    """
    bw, bh = base_size(width, height, native)
    cover = max(width / bw, height / bh)
    sizes = [(bw, bh, 1.0)]
    k = 1
    while 2**k < cover - 1e-9:
        sizes.append((bw << k, bh << k, float(2**k)))
        k += 1
    if (width, height) != sizes[-1][:2]:
        sizes.append((width, height, cover))
    return sizes


def upscale_sizes(width: int, height: int, source: tuple[int, int],
                  native: int = 1024) -> list[tuple[int, int]]:
    """Stages of an upscale: the input doubled while below the request, then the request;
    none below a quarter of the `native` area but the request (a small input is resized to the
    first stage above it)."""
    sw, sh = source
    cover = max(width / sw, height / sh)
    sizes = []
    k = 1
    while 2**k < cover - 1e-9:
        # Rounded up to the latent grid: rounding down could leave a last stage only a few
        # pixels larger than this one (64x43 at 2x: 128x80, then 128x88).
        w, h = min(width, -(-(sw << k) // 8) * 8), min(height, -(-(sh << k) // 8) * 8)
        if (w, h) == (width, height):
            break
        if not sizes or sizes[-1] != (w, h):  # a side at its request or its 8 px floor
            sizes.append((w, h))                # stays: no stage at the same size again
        k += 1
    # SDXL denoises poorly far below its native size (a 64 px icon's first stage was 128 px,
    # a 1 px one's 8 px): a stage holds a quarter of the native area, or is the request
    floor = (native // 2) ** 2
    return [*[(w, h) for w, h in sizes if w * h >= floor], (width, height)]


def check_size(width: int, height: int) -> None:
    """The supported range, with what to do instead."""
    for name, side in (("width", width), ("height", height)):
        if not MIN_SIDE <= side <= MAX_SIDE:
            raise PlanError(f"{name} {side} px is outside the supported {MIN_SIDE}-{MAX_SIDE} px; "
                            f"choose a size in that range")


def make_plan(
    width: int,
    height: int,
    *,
    steps: int = 50,
    strength: float = 0.32,
    native: int = 1024,
    spacing: str = "leading",
    train_steps: int = 1000,
    offset: int = 1,
    model: ModelShape | None = None,
    budget: int | None = None,
    offload: str = "auto",
    vae_tile: int | None = None,
    vae_stats: str = "fast",
    rate: float | None = None,
    source: tuple[int, int] | None = None,
    cosine_scale_2: float = 1.0,
    global_floor: float = GLOBAL_FLOOR,
    karras: bool = False,
    alphas_cumprod: Tensor | None = None,
    upsample: str = "pixel",
    stage_images: bool = False,
    preview: bool = False,
) -> Plan:
    """Stages for a `width` x `height` request; with a model shape, each one's strategy.

    `stage_images`: every stage's image is wanted, so latent upsampling decodes each too.
    `preview`: only the first stage runs (`preview_of`), so only it is fitted: a later stage
    that does not fit here does not stop it (each stage is fitted on its own either way).

    `budget` is the device memory in bytes (None: fit nothing, pick the fastest); `rate` the
    achieved FLOP/s used for the time estimate (None: no time estimate). With `source` (an
    input image's size) every stage is an upscale stage and the first starts from that image.
    `cosine_scale_2` and `global_floor` say which steps run the global pass (global_steps), at
    the timesteps the sampler runs: with `karras`, those of a Karras ramp over the scheduler's
    `alphas_cumprod` (default: SDXL base's).
    """
    check_size(width, height)
    full = timesteps_for(steps, train_steps, spacing, offset)
    denoise = partial(_denoise_stage, full, karras=karras, alphas_cumprod=alphas_cumprod,
                      cosine_scale_2=cosine_scale_2, global_floor=global_floor,
                      latent=upsample == "latent", stage_images=stage_images)
    stages = _stages(width, height, strength, native, source, full, denoise)
    first = None  # the first stage as a job's end: `preview_of`
    if model is not None:
        fitted = stages[:1] if preview else stages
        try:
            stages = [*_fit_stages(fitted, model, budget, offload, vae_tile, vae_stats, rate),
                      *stages[len(fitted):]]
        except PlanError as e:
            if vae_tile is not None:  # a forced tile that does not fit where the planner's would
                _tile_error(e, vae_tile, lambda t: _fit_stages(fitted, model, budget, offload,
                                                                 t, vae_stats, None))
            # what to plan again with, to say which size would fit (`fitting_size`)
            e.size = (width, height)
            e.plan_kwargs = dict(steps=steps, strength=strength, native=native, spacing=spacing,
                                 train_steps=train_steps, offset=offset, model=model,
                                 budget=budget, offload=offload, vae_tile=vae_tile,
                                 vae_stats=vae_stats, rate=rate, source=source,
                                 cosine_scale_2=cosine_scale_2, global_floor=global_floor,
                                 karras=karras, alphas_cumprod=alphas_cumprod,
                                 upsample=upsample, stage_images=stage_images,
                                 preview=preview)
            raise
        if len(stages) > 1:
            first = _preview(stages[0], model, budget, offload, vae_tile, vae_stats, rate)
    spill = model.spill if model is not None and model.on_gpu else 0.0
    fp32 = tuple(part for part, size in (("UNet", model.dtype_bytes),
                                         ("VAE", model.vae_dtype_bytes))
                 if size == 4 and model.on_gpu) if model is not None else ()
    return Plan(tuple(stages), width, height, budget, spill, fp32,
                model.fp32_share if model is not None else FP32_SHARE, first,
                model.guided if model is not None else True, rate)


def _denoise_stage(full: tuple[int, ...], index: int, w: int, h: int, ratio: int, s: float,
                   kind: str, *, karras: bool, alphas_cumprod: Tensor | None,
                   cosine_scale_2: float, global_floor: float, latent: bool,
                   stage_images: bool) -> Stage:
    """A stage that denoises from strength `s` (the last `s` of the `full` timesteps); which
    of its steps run the global pass, at the timesteps the sampler runs."""
    steps = len(full)
    # The small epsilon keeps 50 x 0.24 = 12.000000000000002 at 12 steps.
    ts = full[steps - min(steps, math.ceil(steps * s - 1e-9)):]
    run = ts
    if karras and ts:  # the Karras ramp moves the timesteps toward the clean end
        alphas = sdxl_alphas_cumprod() if alphas_cumprod is None else alphas_cumprod
        run = sigma_schedule(alphas, ts, karras=True)[1]
    upscaled = kind == "upscale" and latent
    # At ratio 1 a global pass would repeat the local one (hires.sampling.upscale_sample)
    return Stage(index, w, h, ratio, s, ts, kind=kind,
                 global_steps=global_steps(run, cosine_scale_2, global_floor) if ratio > 1 else 0,
                 latent_upsample=upscaled, decodes_previous=upscaled and stage_images)


def _stages(width: int, height: int, strength: float, native: int,
            source: tuple[int, int] | None, full: tuple[int, ...],
            denoise: Callable[..., Stage]) -> list[Stage]:
    """A job's stages, without strategies: the base and its x2 stages, or with `source` (an
    input image's size) upscale stages from that image."""
    if source is None:
        sizes = stage_sizes(width, height, native)
        bw, bh, _ = sizes[0]
        stages = [Stage(0, bw, bh, 1, 1.0, full, kind="base")]
        for (w, h, scale), s in zip(sizes[1:], stage_strengths(strength, len(sizes) - 1),
                                    strict=True):
            stages.append(denoise(len(stages), w, h, max(1, round(scale)), s, "upscale"))
        return stages
    bw, bh = base_size(width, height, native)  # the global pass dilates to native scale
    sizes = upscale_sizes(width, height, source, native)
    stages = []
    for (w, h), s in zip(sizes, stage_strengths(strength, len(sizes)), strict=True):
        ratio = max(1, round(max(w / bw, h / bh)))
        stages.append(denoise(len(stages), w, h, ratio, s, "upscale" if stages else "input"))
    return stages


def _fit_stages(stages: list[Stage], model: ModelShape, budget: int | None, offload: str,
                vae_tile: int | None, vae_stats: str, rate: float | None) -> list[Stage]:
    """Each stage with the fastest strategy that fits `budget` (PlanError if one cannot)."""
    return [fit_stage(stage, stages, model, budget, offload, vae_tile, vae_stats, rate)
            for stage in stages]


def _preview(first: Stage, model: ModelShape, budget: int | None, offload: str,
             vae_tile: int | None, vae_stats: str, rate: float | None) -> Stage:
    """The first stage as a job's end, priced with its decode and save. It keeps the whole
    job's strategy (the same numbers, README) unless its decode does not fit beside that one;
    if no other fits either, the run retries leaner as any stage does."""
    preview = _with_cost(first, [first], model, first.strategy, vae_tile, vae_stats, rate,
                         budget)
    room = usable(budget)
    if room is not None and preview.cost.peak_bytes > room:
        try:
            preview = fit_stage(first, [first], model, budget, offload, vae_tile, vae_stats,
                                rate)
        except PlanError:
            pass
    return preview


def _tile_error(error: PlanError, vae_tile: int, plan: Callable[[int | None], Any]) -> None:
    """Where the planner's own tile (`plan(None)`) fits and the forced `vae_tile` does not, a
    PlanError that says so and names the largest tile that fits (a multiple of 8 from the
    smallest allowed): it blamed the size ("2624x2624 fits") where the job plans as asked."""
    def fits(tile: int | None) -> bool:
        try:
            plan(tile)
        except PlanError:
            return False
        return True

    if not fits(None):
        return
    lo, hi = MIN_VAE_TILE // 8, vae_tile // 8  # in 8 px: the largest that fits, lo..hi-1
    best = None
    while lo < hi:
        mid = (lo + hi) // 2
        if fits(mid * 8):
            best, lo = mid * 8, mid + 1
        else:
            hi = mid
    largest = (f"--vae-tile {best} is the largest that fits, or --vae-tile auto (the "
               "planner's pick)" if best else "--vae-tile auto (the planner's pick) fits")
    said = PlanError(f"--vae-tile {vae_tile} does not fit: {error}; {largest}")
    # the stage's needs with that tile: `job_needs` goes on from them
    said.needed, said.host, said.host_needed = error.needed, error.host, error.host_needed
    raise said from None


def _with_cost(stage: Stage, stages: list[Stage], model: ModelShape, strategy: Strategy,
               vae_tile: int | None, vae_stats: str, rate: float | None,
               budget: int | None = None) -> Stage:
    prev = stages[stage.index - 1] if stage.index else None
    last = stage.index == len(stages) - 1
    cost = stage_cost(model, stage.width, stage.height, stage.steps, strategy,
                      base=stage.kind == "base", global_steps=stage.global_steps,
                      encode_input=stage.kind == "input",
                      previous=(prev.width, prev.height)
                      if prev and (stage.decodes_previous or not stage.latent_upsample)
                      else None, encode_previous=not stage.latent_upsample,
                      final_decode=last, vae_tile=vae_tile, vae_stats=vae_stats, rate=rate,
                      budget=usable(budget), free=budget)
    return replace(stage, strategy=strategy, cost=cost)


def strategies_for(model: ModelShape, offload: str) -> list[Strategy]:
    """The strategies a device allows: on a CPU there is nowhere to park or offload to;
    without CFG there is no pair of batch items to split."""
    if not model.on_gpu:
        found = [s for s in all_strategies(("resident",)) if not s.park_skips]
    else:
        found = all_strategies(OFFLOAD_WEIGHTS[offload])
    return found if model.guided else [s for s in found if not s.split_cfg]


def fit_stage(stage: Stage, stages: list[Stage], model: ModelShape, budget: int | None,
              offload: str, vae_tile: int | None, vae_stats: str, rate: float | None) -> Stage:
    """The stage with the fastest strategy whose estimated peak fits `budget`."""
    options = [_with_cost(stage, stages, model, s, vae_tile, vae_stats, rate, budget)
               for s in strategies_for(model, offload)]
    room = usable(budget)
    on_gpu = [o for o in options if room is None or o.cost.peak_bytes <= room]
    fits = [o for o in on_gpu if model.host is None
            or o.cost.host_bytes - o.cost.disk_bytes <= model.host]
    if not fits and on_gpu:
        least = min(on_gpu, key=lambda o: o.cost.host_bytes)
        short = least.cost.host_bytes - model.host
        disk = ""
        if short <= least.cost.parked_bytes:  # the maps could wait on a disk
            where = (f"{scratch_folder()} has room for {model.disk / 1e9:.1f} GB of them"
                     if model.disk else f"none may go there now: --disk 0, or "
                     f"{scratch_folder()} is full or in memory")  # not "room for 0.0 GB"
            disk = (f", let the {_gb(short)} GB of parked maps that RAM cannot hold wait "
                    f"on a disk ({where}; TMPDIR picks the folder, --disk the room)")
        else:  # too short even with every parked map on a disk: say what RAM must hold
            lean = min(on_gpu, key=lambda o: o.cost.host_bytes - o.cost.parked_bytes)
            floor = lean.cost.host_bytes - lean.cost.parked_bytes
            if model.disk and floor < least.cost.host_bytes:
                # the RAM left is the weights it streams; none where it streams none ("0.0
                # GiB of it would do: the weights it streams"), and a disk too small is said.
                # As free RAM, the --ram that plans it (it said the part left after the
                # margin, and --ram that large was refused).
                ram = (f"{_free_ram_words(floor)} GiB of free RAM would do, for the weights it "
                       "streams" if floor >= 0.05 * GIB else "it needs no RAM for them")
                room = (f"; {scratch_folder()} has room for {model.disk / 1e9:.1f} GB, TMPDIR "
                        "picks the folder and --disk the room"
                        if model.disk < lean.cost.parked_bytes else "")
                disk = (f" (with its {_gb(lean.cost.parked_bytes)} GB of parked maps on a disk, "
                        f"{ram}{room})")
        need, have = _apart(least.cost.host_bytes / GIB, model.host / GIB)
        error = PlanError(
            f"stage {stage.index} ({stage.width}x{stage.height}) fits the GPU only with "
            f"{need} GiB of the CPU's memory for parked maps and "
            f"offloaded weights ({least.strategy.label_for(model.guided)}), and {have} GiB of it "
            f"is free for them ({_free_ram_words(least.cost.host_bytes)} GiB of free RAM would "
            f"do: hires keeps 10 % + 2 GiB of it back): close other programs{disk} or plan a "
            "smaller size")
        error.host, error.host_needed = True, least.cost.host_bytes
        raise error
    if not fits:
        least = min(options, key=lambda o: o.cost.peak_bytes)
        memory = "GPU memory" if model.on_gpu else "memory"
        # The budget whose usable part holds that peak: the number to give --vram.
        needed = (least.cost.peak_bytes + MARGIN_BYTES) / (1 - MARGIN_SHARE)
        error = PlanError(
            f"stage {stage.index} ({stage.width}x{stage.height}) needs at least "
            f"{least.cost.peak_bytes / GIB:.1f} GiB of {memory} "
            f"({least.strategy.label_for(model.guided)}) "
            f"plus a margin: a {_budget_words(needed)} GiB budget, more than "
            f"the {_gib(budget)} GiB one")
        error.needed = needed
        raise error
    # Parked maps on the scratch disk are priced in the time (costs.DISK_RATE), so a plan that
    # writes some is taken when it is the faster, not only when nothing else fits the RAM: more
    # free RAM then never makes a plan slower. At the same time, the one without the disk.
    rank = _preference(model)
    return min(fits, key=lambda o: (rank(o)[0], bool(o.cost.disk_bytes), rank(o)))


def _apart(need: float, have: float) -> tuple[str, str]:
    """Two amounts with the decimals that tell them apart ("6.5 ... and 6.5 free" said
    nothing of why it does not fit)."""
    same = f"{need:.1f}" == f"{have:.1f}"
    digits = 2 if same and f"{need:.2f}" != f"{have:.2f}" else 1  # else too close to matter
    return f"{need:.{digits}f}", f"{have:.{digits}f}"


def cpu_budget_flag(vram: float | None, ram: float | None) -> str | None:
    """The flag that sets a CPU run's budget (`budget_bytes`): 'vram', 'ram' (the smaller
    where both are given) or None."""
    if vram is None or ram is None:
        return "vram" if vram is not None else "ram" if ram is not None else None
    return "vram" if vram <= ram else "ram"


def budget_bytes(vram: float | None, ram: float | None, on_cpu: bool,
                 free: Callable[[], int | None]) -> int | None:
    """The device bytes a plan may use: `vram` GiB (--vram), else on a CPU, whose memory is the
    RAM, `ram` GiB (--ram), else what `free()` finds free (None: no budget). On a CPU both
    cap the same memory: given both, the smaller holds."""
    if on_cpu and ram is not None:
        return int(min(ram, vram if vram is not None else ram) * GIB)
    if vram is not None:
        return int(vram * GIB)
    return free()


def _gb(size: float) -> str:
    """Decimal GB with a second decimal where one would say 0.0."""
    return f"{size / 1e9:.1f}" if size >= 0.05e9 else f"{max(size, 0.01e9) / 1e9:.2f}"


def _gib(size: float) -> str:
    """GiB with one decimal; a tiny amount (a typo's --vram 0.001) with its own digits."""
    return f"{size / GIB:.1f}" if size >= GIB / 10 else f"{size / GIB:.2g}"


def cheaper(stage: Stage, stages: list[Stage], model: ModelShape, offload: str = "auto",
            vae_tile: int | None = None, vae_stats: str = "fast",
            rate: float | None = None, budget: int | None = None) -> Stage | None:
    """The fastest other strategy estimated to need less memory than the stage's own (for
    OOM): a lower peak, or the same peak (another phase's) and less while the UNet runs.
    `budget` and `rate`: the plan's (`Plan.budget`, `Plan.rate`), which set its VAE tile, as
    `model` does (the plan's, with its fp32 share)."""
    assert stage.cost is not None

    def priced(strategy: Strategy) -> Stage:
        return _with_cost(stage, stages, model, strategy, vae_tile, vae_stats, rate, budget)

    def need(s: Stage) -> tuple[int, int]:
        return s.cost.peak_bytes, s.cost.denoise_peak_bytes

    # Its own strategy priced as the others are, and left out: priced without the budget
    # (each VAE tile the fastest, fitting or not) against the stage's cost with it, its own
    # came out leaner, and a stage that ran out of memory was run again as it was.
    own = min(need(priced(stage.strategy)), need(stage))  # and never more than was planned
    lower = [o for o in map(priced, strategies_for(model, offload))
             if o.strategy != stage.strategy and need(o) < own]
    return min(lower, key=_preference(model)) if lower else None


def _preference(model: ModelShape):
    """How strategies that fit are ranked: on a GPU the fastest first; on a CPU the leanest,
    since fresh memory is what costs there (the 8K tiny pipeline on the 2-core machine: its 8K
    denoise 59.5 s with split CFG, chunks and row bands, 98.7 s batched; BENCHMARKS.md)."""
    if model.on_gpu:
        return lambda o: (o.cost.rank, o.cost.peak_bytes)
    return lambda o: (o.cost.peak_bytes, o.cost.rank)


def sdxl_alphas_cumprod() -> Tensor:
    """SDXL base's noise schedule (scaled_linear betas 0.00085-0.012 over 1000 steps), as
    diffusers builds it: what a plan without a loaded scheduler assumes."""
    import torch

    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float32) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


def describe(plan: Plan) -> list[str]:
    """One line per stage, for logs and `hires plan`."""
    lines = []
    first = plan.stages[0] if plan.stages else None
    for s in plan.stages:
        # The scale over the first stage (a gen's base, an upscale's first from its input), by
        # the side that grows most (an upscale may change the aspect); `ratio` is the global
        # pass's dilation, which an upscale's does not show.
        scale = f"{max(s.width / first.width, s.height / first.height):.3g}"
        kind = {"base": "base", "input": "from the input"}.get(
            s.kind, f"x{scale}" + (", latents resized" if s.latent_upsample else "")
            + (f", stage {s.index - 1} decoded for its image" if s.decodes_previous else ""))
        line = (f"stage {s.index} ({kind}): {s.width}x{s.height}, strength {s.strength:.2f}, "
                f"{s.steps} step{'' if s.steps == 1 else 's'}")
        if s.kind != "base":
            line += f" ({s.global_steps} with the global pass)"
        if s.cost:
            work = f"{s.cost.tflop:.0f}" if s.cost.tflop >= 10 else f"{s.cost.tflop:.2g}"
            line += f", {s.strategy.label_for(plan.guided)}, peak {s.cost.peak_bytes / GIB:.1f} GiB"
            if s.cost.used_bytes > s.cost.peak_bytes:
                line += f" ({s.cost.used_bytes / GIB:.1f} with the VAE's kept outputs)"
            line += f", {work} TFLOP"
            if s.cost.tflop > s.cost.unet_tflop:  # the VAE runs in this stage: its tile
                line += f", VAE tiles {s.cost.vae_tile} px"
            if s.cost.host_bytes:
                ram = s.cost.host_bytes - s.cost.disk_bytes
                line += f", {ram / GIB:.1f} GiB of RAM"  # as --ram counts
                if s.cost.disk_bytes:
                    line += (f" + {_gb(s.cost.disk_bytes)} GB of parked maps on disk "
                             f"({scratch_folder()})")
            if s.cost.vae_spill:
                line += ", VAE outputs in RAM"
            if s.cost.scratch_bytes:
                line += f", scratch {_gb(s.cost.scratch_bytes)} GB"  # not "0.0 GB"
            if s.cost.seconds is not None:
                line += f", ~{s.cost.seconds:.0f} s"
                shares = [f"{what} ~{t:.0f} s" for what, t in
                          (("VAE", s.cost.vae_seconds), ("host", s.cost.host_seconds))
                          if (t or 0) >= 0.5]
                if shares:
                    line += f" ({', '.join(shares)})"
        lines.append(line)
    return lines


MAX_STAGES = 32  # more than any job has: x2 stages from 8 px to MAX_SIDE


def job_needs(error: PlanError) -> tuple[float | None, float | None] | None:
    """(device budget, CPU memory as ModelShape.host), in bytes, that the whole job of
    `error` fits with, where its first stage short of memory said only its own: planned again
    at each need said, of either, until it fits (a later stage may need more, and a larger
    budget may take a strategy that parks more in RAM). Each is None where the one planned
    with holds; None where no need is said, or more does not help."""
    kwargs = error.plan_kwargs or {}
    model, budget = kwargs.get("model"), kwargs.get("budget")
    gpu, host = (None, error.host_needed) if error.host else (error.needed, None)
    if not kwargs or not error.size or (gpu is None and host is None):
        return None
    # One more stage fitted each time: an upscale from a 16 px input to 16K has 11.
    for _ in range(2 * MAX_STAGES):
        how = dict(kwargs, budget=math.ceil(gpu) if gpu is not None else budget)
        if host is not None:
            if model is None:
                return None
            how["model"] = replace(model, host=int(host))
        try:
            make_plan(*error.size, **how)
            return gpu, host
        except PlanError as e:
            held_host = host if host is not None else getattr(model, "host", None)
            held_gpu = gpu if gpu is not None else budget
            if e.host and e.host_needed is not None and (held_host is None
                                                         or e.host_needed > held_host):
                host = e.host_needed
            elif not e.host and e.needed is not None and (held_gpu is None
                                                          or e.needed > held_gpu):
                gpu = e.needed
            else:
                return None
    return None


def whole_job_need(error: PlanError) -> str:
    """What the whole job needs where `error`'s stage said only its own (`job_needs`): ', and
    the whole job a N GiB one (a later stage needs more)' for the GPU, the free RAM for a
    stage short of RAM, and the other of the two where the job then needs more of it; else
    ''."""
    found = job_needs(error)
    if found is None:
        return ""
    gpu, host = found
    given = _gib((error.plan_kwargs or {}).get("budget") or 0)
    said = ""
    if error.host:
        words = _free_ram_words(host or 0)
        if words != _free_ram_words(error.host_needed or 0):  # said as the first: no news
            said = f", and the whole job {words} GiB of free RAM (a later stage needs more)"
        if gpu is not None:
            said += (f"; with that RAM, it needs a {_budget_words(gpu)} GiB GPU budget too, "
                     f"more than the {given} GiB one")
        return said
    if gpu is not None and _budget_words(gpu) != _budget_words(error.needed or 0):
        said = f", and the whole job a {_budget_words(gpu)} GiB one (a later stage needs more)"
    if host is not None:
        said += (f"; with that budget, it needs {_free_ram_words(host)} GiB of free RAM too "
                 "(for parked maps and offloaded weights)")
    return said


def _free_ram_words(host: float) -> str:
    """The free RAM (GiB, rounded up to 0.1) that leaves `host` bytes for a plan: hires keeps
    a margin of it back (memory.host_room)."""
    free = (host + HOST_MARGIN_BYTES) / (1 - HOST_MARGIN_SHARE)
    return f"{math.ceil(free / GIB * 10) / 10:.1f}"


def _budget_words(needed: float) -> str:
    """A needed budget in GiB as an error says it: rounded up to 0.1, so that it fits."""
    return f"{math.ceil(needed / GIB * 10) / 10:.1f}"


def fitting_size(error: PlanError) -> tuple[int, int] | None:
    """The largest size at the aspect asked for whose plan fits where `error`'s did not; None
    if none does, or the error has no settings to plan again with."""
    if not error.plan_kwargs or not error.size:
        return None
    return largest_fitting(*error.size, **error.plan_kwargs)


def fitting_print(job: Any, error: PlanError) -> tuple[int, tuple[int, int]] | None:
    """For a job sized by a print size (`job.extra["print_size"]`), the most whole dpi below
    its own at which that print's plan fits, and the size it makes; else None."""
    from hires.sizes import print_sizes

    text, kwargs = job.extra.get("print_size"), error.plan_kwargs
    if not text or job.dpi is None or not kwargs:
        return None
    sizes = print_sizes(text, job.dpi, kwargs.get("source"))
    count = fitting_count([size for _, size in sizes], **kwargs)
    return sizes[count - 1] if count else None


def at_shape(shape: tuple[int, int], side: int) -> tuple[int, int]:
    """`shape` with its long side `side`, each side rounded to 8 px as `hires up --size`
    rounds it (`hires.sizes.target_size`: the same float steps, or a tie rounds apart)."""
    factor = side / max(shape)
    w, h = (max(8, round(s * factor / 8) * 8) for s in shape)
    return w, h


def on_input_shape(source: tuple[int, int] | None, width: int, height: int) -> bool:
    """Whether an upscale to `width` x `height` keeps its input's shape (as `--size` makes)."""
    return bool(source) and at_shape(source, max(width, height)) == (width, height)


def largest_fitting(width: int, height: int, **kwargs) -> tuple[int, int] | None:
    """The largest size at the request's aspect whose plan fits: its long side a multiple of 8,
    the short one rounded to 8; one whose long side, given as `--size` with the `--aspect` the
    request came from, fits too. An upscale's is no smaller than its input and, where the
    request has the input's shape, is what `--size` makes from the input."""
    source, long = kwargs.get("source"), max(width, height)
    # A request on the input's shape is followed with --size (the input's aspect): a size taken
    # from the request's own sides could differ by 8 px from what that makes.
    shape = source if on_input_shape(source, width, height) else (width, height)
    # Each side in range and, for an upscale, at least its input's: `hires up` refuses less.
    least = (MIN_SIDE, MIN_SIDE) if not source else tuple(max(MIN_SIDE, s) for s in source)
    candidates = [size for size in (at_shape(shape, side) for side in range(8, long, 8))
                  if all(got >= need for got, need in zip(size, least))]

    # Sides in a small ratio (1:1, 16:9 at 8192x4608) are the aspect they came from. Others hold
    # it only to 8 px (3:2 at 16384 is 16384x10920): an --aspect's own rounding may make the
    # short side 8 px longer, so that one is planned.
    ratio = Fraction(width, height)
    exact = shape == source or max(ratio.numerator, ratio.denominator) <= 64

    def planned(size: tuple[int, int]) -> tuple[int, int]:
        w, h = size
        if exact:
            return w, h
        return (w, min(h + 8, MAX_SIDE)) if w >= h else (min(w + 8, MAX_SIDE), h)

    count = fitting_count([planned(c) for c in candidates], **kwargs)
    return candidates[count - 1] if count else None


def fitting_count(sizes: list[tuple[int, int]], **kwargs) -> int:
    """How many of `sizes` (ascending) fit, counted from the smallest, with make_plan's
    `kwargs`: the last one counted is planned with them all."""
    def fits(size: tuple[int, int], how: dict[str, Any]) -> bool:
        try:
            make_plan(*size, **how)
        except PlanError:
            return False
        return True

    def count(n: int, how: dict[str, Any]) -> int:  # bisection: a larger size needs more
        lo, hi = 0, n  # sizes[:lo] fit, sizes[n:] do not
        while lo < hi:
            mid = (lo + hi) // 2
            lo, hi = (mid + 1, hi) if fits(sizes[mid], how) else (lo, mid)
        return lo

    # Without a rate the planner skips pricing the VAE's RAM amounts (a 16K job on 6 GiB: 57 ->
    # 21 s), but its tile, and so its peak, may differ from the rated plan's (a 1336x1888 job
    # on 9 GiB fits without the rate, not with it): the size found is planned with the rate,
    # and if it does not fit there the smaller ones are searched with it.
    found = count(len(sizes), {**kwargs, "rate": None})
    if found and kwargs.get("rate") is not None and not fits(sizes[found - 1], kwargs):
        found = count(found - 1, kwargs)
    return found
