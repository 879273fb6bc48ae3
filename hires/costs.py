"""What a stage costs, from the model's config alone: peak device memory, FLOPs, transfers, time.

The UNet's memory walk and FLOPs are in `hires.unet_costs`, the tiled VAE's work in
`hires.vae_cost`; here the VAE's memory and a plain pass's FLOPs (a yardstick), and a stage:
its phases' peaks, its work, what crosses the host link, its time at a FLOP rate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, NamedTuple

from hires.gpus import (
    CALL_SECONDS,
    FP32_SHARE,
    RESIZE_PX_PER_CORE,
    SAVE_PX_PER_CORE,
    TILE_RUN_SECONDS,
    VAE_SHARE,
)
from hires.strategy import Strategy
from hires.strips import cores
from hires.unet_costs import (
    ControlShape,
    UNetShape,
    controlnet_flops,
    denoise_peak_bytes,
    skip_bytes,
    unet_flops,
    unet_parked_bytes,
)
from hires.vae_attention import (
    CONTEXT_CELLS,
    GLOBAL_TOKENS,
    SCORE_BYTES,
    SWEEP_BLOCK,
    SWEEP_REACH,
    landmarks,
)
from hires.vae_cost import exact_cost, tiled_cost, tiled_memo_bytes, tiled_runs
from hires.vae_stats import MEMO_BYTES, budget_from_free, spill_budget
from hires.vae_tiles import LEAST_TILE, rows_bytes, rows_on_device

HOST_LINK = 25e9  # bytes/s between host and GPU (PCIe 4 x16 in practice) for offload traffic
# bytes/s to and from the scratch disk for parked maps RAM cannot hold: a consumer NVMe's
# sustained rate through the page cache, assumed (a SATA SSD does about a third of it)
DISK_RATE = 1.5e9


@dataclass(frozen=True)
class VaeShape:
    """The parts of an AutoencoderKL config that set its memory and FLOPs."""

    channels: tuple[int, ...]  # block_out_channels, full resolution first
    layers: int
    latent_channels: int = 4
    image_channels: int = 3
    param_bytes: int = 0

    @classmethod
    def from_config(cls, config: dict[str, Any], *, param_bytes: int = 0) -> VaeShape:
        return cls(tuple(config["block_out_channels"]), config["layers_per_block"],
                   config.get("latent_channels", 4), config.get("out_channels", 3),
                   param_bytes)


def vae_flops(vae: VaeShape, width: int, height: int, *, decode: bool) -> float:
    """FLOPs of one plain decode (latents to a width x height image) or encode: the yardstick
    that the tiled passes' work (`hires.vae_cost`, what the planner prices) is measured against.

    Convolutions as a plain pass runs them; the mid-block attention as `hires.vae_attention`
    runs it: whole (quadratic in latent pixels) up to GLOBAL_TOKENS, else once per token (the
    sweep), against the tokens around its block, the context cells and the landmarks.
    """
    ch, levels = vae.channels, len(vae.channels)
    top = width * height
    tokens = top / 64
    if tokens <= GLOBAL_TOKENS:
        keys = tokens
    else:
        keys = min(tokens, (SWEEP_BLOCK + 2 * SWEEP_REACH) ** 2 + CONTEXT_CELLS
                   + landmarks((height // 8, width // 8)))
    attention = 2 * 2 * tokens * keys * ch[-1]  # q.k and weights.v

    def px(level: int) -> float:  # level 0: full resolution
        return top / 4**level

    def resnet(c_in: int, c: int, level: int) -> float:
        return px(level) * (9 * c_in * c + 9 * c * c + (c_in * c if c_in != c else 0))

    low = levels - 1
    c_low = ch[-1]
    macs = 2 * resnet(c_low, c_low, low) + 4 * c_low * c_low * px(low)  # mid block
    if decode:
        macs += 9 * vae.latent_channels * c_low * px(low) + 9 * ch[0] * vae.image_channels * top
        c_prev = c_low
        for level in reversed(range(levels)):
            c = ch[level]
            for _ in range(vae.layers + 1):
                macs += resnet(c_prev, c, level)
                c_prev = c
            if level > 0:
                macs += 9 * c * c * px(level - 1)
    else:
        macs += 9 * vae.image_channels * ch[0] * top + 9 * c_low * 2 * vae.latent_channels * px(
            low)
        c_prev = ch[0]
        for level, c in enumerate(ch):
            for _ in range(vae.layers):
                macs += resnet(c_prev, c, level)
                c_prev = c
            if level < levels - 1:
                macs += 9 * c * c * px(level + 1)
    return 2.0 * macs + attention


def vae_attention_bytes(vae: VaeShape, width: int, height: int, dtype_bytes: int = 2) -> int:
    """Device bytes of the whole-image mid-block attention (0 above GLOBAL_TOKENS: the sweep
    keeps its maps in the CPU's memory and works a block at a time, less than a tile's run).

    Its gathered float32 input, that input in the run dtype, q, k, v, the attention output
    and its projection, and one chunk of queries' float32 scores and weights (`attend`).
    """
    tokens = width * height // 64
    if tokens > GLOBAL_TOKENS:
        return 0
    scores = 2 * min(SCORE_BYTES, 4 * tokens * tokens)
    return int(vae.channels[-1] * tokens * (4 + 6 * dtype_bytes)) + scores


def vae_tile_peak(vae: VaeShape, tile: int, dtype_bytes: int = 2) -> int:
    """Estimated activation bytes of decoding (or encoding) one tile of `tile` px.

    The VAE has no skip connections: the peak is one op's input plus its transient, worst at
    the full-resolution levels (a resnet's GroupNorm and SiLU outputs next to its input).
    """
    ch, levels = vae.channels, len(vae.channels)
    worst = 0.0
    c_prev = ch[-1]
    for level in reversed(range(levels)):
        c, px = ch[level], tile * tile / 4**level
        worst = max(worst, px * (c_prev + max(2 * c_prev, c_prev + c, 4 * c)))
        if level > 0:
            worst = max(worst, px * 4 * c / 4 + 2 * c * px * 4)  # nearest 2x, then conv
        c_prev = c
    # Tiling keeps the tile's own input and output, and fp32 copies for the cross-fade.
    return int(worst * dtype_bytes + tile * tile * vae.image_channels * 4 * 2)


# ---------------------------------------------------------------------------------------------
# A stage: its phases' peaks, its work and its time


@dataclass(frozen=True)
class ModelShape:
    """What the planner needs of a model: UNet and VAE shapes, weights, dtypes."""

    unet: UNetShape
    vae: VaeShape
    text_bytes: int  # both text encoders' weights
    dtype_bytes: int = 2  # the UNet's run dtype
    vae_dtype_bytes: int = 2
    native: int = 1024  # px
    on_gpu: bool = True
    control: ControlShape | None = None  # a ControlNet that runs with the UNet
    spill: float = 0.0  # CPU memory a GPU's VAE may keep step outputs in (spill_budget)
    host: float | None = None  # CPU memory a stage's parked maps and offloaded weights may
    # take (hires.memory.host_room); None: not checked
    disk: float = 0.0  # scratch disk where parked maps that `host` cannot hold, and the
    # exact VAE mode's files, may wait (--disk, else hires.memory.disk_room); 0: none
    fp32_share: float = FP32_SHARE  # a GPU's fp32 FLOP/s as a share of its bf16 rate (hires.gpus)
    guided: bool = True  # classifier-free guidance: each step evaluates 2 batch items
    # (unconditional and conditional); False (guidance <= 1): 1

    @property
    def items(self) -> int:
        """Batch items a denoising step evaluates."""
        return 2 if self.guided else 1

    @property
    def weights(self) -> int:
        control = self.control.param_bytes if self.control else 0
        return self.unet.param_bytes + self.vae.param_bytes + self.text_bytes + control


@dataclass(frozen=True)
class StageCost:
    """Estimates for one stage under one strategy."""

    peak_bytes: int  # device memory at the stage's peak phase
    denoise_peak_bytes: int  # device memory while the UNet runs
    tflop: float  # UNet and VAE work
    unet_tflop: float
    scratch_bytes: int  # temporary files of the tiled VAE
    seconds: float | None  # at the given FLOP rate; None without one
    vae_tile: int  # px
    rank: float = 0.0  # seconds at the given rate, else at RANK_RATE: what plans compare
    # The most of the CPU's memory the VAE keeps what does not fit the GPU in (of ModelShape.spill)
    vae_spill_bytes: float = 0.0
    host_bytes: int = 0  # CPU memory while the UNet runs: parked maps, offloaded weights
    vae_seconds: float | None = None  # the VAE's share of `seconds` (its work and its copies)
    parked_bytes: int = 0  # the maps one UNet call parks (part of `host_bytes`)
    disk_bytes: int = 0  # of those, what waits on the scratch disk (RAM cannot hold it)
    # The most device memory the stage takes: `peak_bytes` and, in the VAE's fast mode, the
    # outputs it keeps, which fill a share of what is free (hires.vae_stats.budget_from_free)
    used_bytes: int = 0
    host_seconds: float | None = None  # the host's own share of `seconds`: resize and save
    # Whether exact mode's passes write their scratch files; False where recomputing was
    # priced faster than reading them back (or there is no room), and the run writes none.
    vae_files: bool = True

    @property
    def vae_spill(self) -> bool:
        return self.vae_spill_bytes > 0


VAE_TILES = (2048, 1536, 1024, 768, 512)  # px, largest first: fewer tiles, less overlap
SPILL_STEP = 2 ** 0.5  # VAE RAM tried for the fastest: 0.5 GB, then 41 % more each, and all
LEVER_SLOWDOWN = {"split_cfg": 0.03, "ff_chunks": 0.01, "row_bands": 0.10}  # assumed
# FLOP/s at which strategies are compared when no rate is known (a GPU not in hires.gpus, a
# CPU): without one, every strategy would tie and the least-memory one, the slowest, would win.
RANK_RATE = 100e12


def spill_amounts(budget: float) -> list[float]:
    """The VAE RAM a plan tries, up to `budget`: the same ladder for every budget, and the
    budget itself. More RAM may plan slower only where a budget between two steps was the
    fastest amount and a larger one no longer tries it (at most 0.6 % in BENCHMARKS.md's
    sweep of 2026-12-07: a stage's time barely moves around its best amount)."""
    amounts, amount = [], 0.5e9
    while amount < budget:
        amounts.append(amount)
        amount *= SPILL_STEP
    return [*amounts, budget]


def stage_cost(model: ModelShape, width: int, height: int, steps: int, strategy: Strategy, *,
               base: bool, previous: tuple[int, int] | None, final_decode: bool,
               global_steps: int | None = None, encode_input: bool = False,
               encode_previous: bool = True,
               vae_tile: int | None = None, vae_stats: str = "fast",
               rate: float | None = None, budget: int | None = None,
               free: int | None = None) -> StageCost:
    """Peak device memory, FLOPs, scratch disk and time of one stage under `strategy`.

    `budget`: what the stage's peak may fill (the planner's, less its safety margin); `free`:
    the device memory a run has, which the VAE's fast mode takes its share of as a decode
    starts (default: `budget`).

    A ControlNet (`model.control`) runs before each UNet call: its peak is counted next to
    the UNet's weights, the UNet's next to its weights and its residuals; its FLOPs are in
    `unet_tflop` (the denoising work).
    """
    lat_h, lat_w = height // 8, width // 8
    state = _state_bytes(model, width, height)
    weights_now = model.weights if strategy.weights == "resident" else 0
    peaks = _before_vae_peaks(model, lat_h, lat_w, strategy, state, weights_now, base=base)
    unet_rate, vae_rate = _rates(model, rate or RANK_RATE)
    passes = _vae_passes(width, height, previous, encode_previous=encode_previous,
                         encode_input=encode_input, final_decode=final_decode)
    vae = (_vae_part(model, width, height, passes, weights_now=weights_now, state=state,
                     vae_tile=vae_tile, vae_stats=vae_stats, rate=rate, vae_rate=vae_rate,
                     budget=budget, free=free, previous=previous)
           if passes else VaePart(tile=vae_tile or VAE_TILES[-1]))
    if vae.peak:
        peaks.append(vae.peak)
    evals, calls, unet_flop, control_flop = _unet_work(model, lat_h, lat_w, steps, strategy,
                                                       base=base, global_steps=global_steps)
    # The time, at `rate` or, only to compare strategies, at RANK_RATE.
    moved = _moved_bytes(model, lat_h, lat_w, strategy, evals, calls, vae.copied, base=base)
    unet_seconds = _unet_seconds(model, strategy, unet_flop, control_flop, calls, unet_rate)
    unet_flop += control_flop
    # The previous image, or the user's image for an upscale, is resized to this stage's size.
    own = host_seconds(width, height, resize=bool(previous and encode_previous) or encode_input,
                       save=final_decode) if model.on_gpu else 0.0
    rank = (unet_seconds + vae.flop / vae_rate + moved / HOST_LINK + vae.on_files / DISK_RATE
            + vae.runs_seconds + own)
    maps, host, on_disk = _parked_room(model, lat_h, lat_w, strategy)
    # Each call writes them out and reads them back as it reads its parked maps: once whole,
    # or in bands four times over (a map read again may have left the page cache meanwhile).
    rank += calls * on_disk * (5 if strategy.row_bands else 2) / DISK_RATE
    return StageCost(
        peak_bytes=max(peaks), denoise_peak_bytes=peaks[0],
        tflop=(unet_flop + vae.flop) / 1e12, unet_tflop=unet_flop / 1e12,
        scratch_bytes=vae.scratch, seconds=rank if rate else None, vae_tile=vae.tile,
        rank=rank, vae_spill_bytes=vae.spill_bytes, host_bytes=host,
        vae_seconds=vae.seconds if rate else None, parked_bytes=maps, disk_bytes=on_disk,
        used_bytes=max(*peaks, vae.used), host_seconds=own if rate else None,
        vae_files=vae.files)


def _state_bytes(model: ModelShape, width: int, height: int) -> int:
    """The sampler's own tensors on the device through a stage, and a ControlNet's image."""
    lat_h, lat_w = height // 8, width // 8
    state = 10 * model.unet.in_channels * lat_h * lat_w * 4  # latents, noise, x0, blur, eps: fp32
    if model.control is not None:
        state += model.control.cond_channels * width * height * model.dtype_bytes  # its image
    return state


def _rates(model: ModelShape, rate: float) -> tuple[float, float]:
    """The UNet's and the VAE's FLOP/s, where `rate` is the UNet's at the GPU's bf16 rate."""
    # fp32 runs slower there, and the tiled VAE reaches a share of the UNet's rate (hires.gpus).
    return (_rate_in(model, model.dtype_bytes, rate),
            _rate_in(model, model.vae_dtype_bytes, rate) * VAE_SHARE)


def _before_vae_peaks(model: ModelShape, lat_h: int, lat_w: int, strategy: Strategy, state: int,
                      weights_now: int, *, base: bool) -> list[int]:
    """Device memory while the UNet runs (first) and, in a base stage, the text encoders."""
    resident = strategy.weights == "resident"
    others = model.text_bytes + model.vae.param_bytes if resident else 0
    denoise = denoise_peak_bytes(model.unet, model.control, lat_h, lat_w, strategy,
                                 model.dtype_bytes, gpu=model.on_gpu, items=model.items)
    peaks = [denoise + others + state]
    if base:
        peaks.append((weights_now or model.text_bytes) + (64 << 20))
    return peaks


def _vae_passes(width: int, height: int, previous: tuple[int, int] | None, *,
                encode_previous: bool, encode_input: bool,
                final_decode: bool) -> list[tuple[int, int, bool]]:
    """A stage's VAE passes, (width, height, decode) each: the previous stage's decode, the
    encode of its image (or the user's), and this stage's decode."""
    passes = [(*previous, True)] if previous else []
    if (previous and encode_previous) or encode_input:
        passes.append((width, height, False))
    if final_decode:
        passes.append((width, height, True))
    return passes


def _unet_work(model: ModelShape, lat_h: int, lat_w: int, steps: int, strategy: Strategy, *,
               base: bool, global_steps: int | None) -> tuple[int, int, float, float]:
    """A stage's UNet evaluations, its UNet calls, and the UNet's and ControlNet's FLOPs."""
    # An upscale step's local pass, plus the global pass in its first `global_steps` steps.
    evals = steps if base else steps + (steps if global_steps is None else global_steps)
    items, control = model.items, model.control
    unet_flop = evals * items * unet_flops(model.unet, lat_h, lat_w)
    control_flop = 0 if control is None else evals * items * controlnet_flops(control, lat_h,
                                                                              lat_w)
    calls = evals * (2 if strategy.split_cfg else 1)
    return evals, calls, unet_flop, control_flop


def _moved_bytes(model: ModelShape, lat_h: int, lat_w: int, strategy: Strategy, evals: int,
                 calls: int, vae_copied: float, *, base: bool) -> float:
    """Bytes a stage moves over the host link: the VAE's, parked maps, offloaded weights."""
    unet, control = model.unet, model.control
    moved = vae_copied
    nets = unet.param_bytes + (control.param_bytes if control else 0)
    if strategy.park_skips:
        parked = unet_parked_bytes(unet, lat_h, lat_w, strategy.row_bands, model.dtype_bytes)
        # Out once; back once whole, or in bands four times (two norm passes, conv, shortcut).
        moved += evals * model.items * parked * (5 if strategy.row_bands else 2)
        if control is not None:  # its skips, then its residuals: out and back each
            moved += evals * model.items * skip_bytes(unet, lat_h, lat_w, model.dtype_bytes) * 4
    if strategy.weights == "sequential":
        moved += calls * nets + 2 * model.vae.param_bytes
    elif strategy.weights == "model":
        moved += 2 * (nets + model.vae.param_bytes + (model.text_bytes if base else 0))
    return moved


def _unet_seconds(model: ModelShape, strategy: Strategy, unet_flop: float, control_flop: float,
                  calls: int, unet_rate: float) -> float:
    """The UNet's and ControlNet's seconds at `unet_rate`, slowed by the strategy's levers."""
    slowdown = 1 + sum(v for k, v in LEVER_SLOWDOWN.items() if getattr(strategy, k))
    seconds = unet_flop * slowdown / unet_rate
    if model.on_gpu:  # a small image's calls are bound by the host's launches
        seconds = max(seconds, calls * CALL_SECONDS)
    return seconds + control_flop * slowdown / unet_rate


def _parked_room(model: ModelShape, lat_h: int, lat_w: int,
                 strategy: Strategy) -> tuple[int, int, int]:
    """A UNet call's parked maps, the CPU memory it needs with offloaded weights, and what of
    those maps waits on the scratch disk."""
    maps = parked_bytes(model, lat_h, lat_w, strategy)
    host = maps + (0 if strategy.weights == "resident" else model.weights)
    return maps, host, maps_on_disk(model, maps, host)


class VaePart(NamedTuple):
    """What a stage's VAE passes cost (`_vae_part`); no passes, nothing."""

    tile: int
    flop: float = 0.0
    copied: float = 0.0  # bytes over the host link: kept outputs, or exact mode's files
    on_files: float = 0.0  # bytes to and from exact mode's scratch files
    runs_seconds: float = 0.0  # the tile runs' host work
    spill_bytes: float = 0.0  # the CPU memory the fast mode keeps outputs in
    scratch: int = 0  # exact mode's files on the disk at once
    peak: int = 0  # device memory while the VAE runs
    used: int = 0  # and with the fast mode's kept outputs
    files: bool = True  # exact mode's files take the scratch room (False: none, faster)
    seconds: float = 0.0  # at the VAE's rate: work, copies, files and tile runs


def _vae_part(model: ModelShape, width: int, height: int, passes: list[tuple[int, int, bool]],
              **how: Any) -> VaePart:
    """The VAE's `passes` ((width, height, decode) each) in a stage, the faster way
    (`_vae_part_in`'s keywords, `how`): exact mode's files take the scratch room or none."""
    # Exact mode's files trade recomputation for disk traffic: on a fast GPU, reading a level
    # back can take longer than running its tiles again (8K on an H100: 476 s with the files,
    # 184 s without). The run then gives its files no room (StageCost.vae_files). Only with a
    # known rate: a CPU's, or an unknown GPU's, would be priced at RANK_RATE, far too fast.
    parts = [_vae_part_in(model, width, height, passes, disk=model.disk, **how)]
    if how["vae_stats"] == "exact" and model.disk and how["rate"]:
        none = _vae_part_in(model, width, height, passes, disk=0.0, **how)
        parts.append(none._replace(files=False))
    return min(parts, key=lambda p: p.seconds)


class _VaeJob(NamedTuple):
    """What a stage's VAE passes are priced from, whichever tile they run in."""

    model: ModelShape
    width: int
    height: int
    passes: list[tuple[int, int, bool]]  # (width, height, decode) each
    vae_stats: str
    disk: float  # scratch room for exact mode's files
    rate: float | None  # the UNet's FLOP/s, if known
    vae_rate: float
    room: float | None  # what the fast mode's kept outputs and a tile run share (None: all)

    def memo(self, tile: int) -> float:
        """What the fast mode keeps step outputs in on the device, beside runs of `tile` px."""
        if self.room is None or self.vae_stats != "fast":
            return float("inf")
        return budget_from_free(self.room, self.model.on_gpu, self.model.vae_dtype_bytes,
                                vae_tile_peak(self.model.vae, tile, self.model.vae_dtype_bytes))


def _vae_part_in(model: ModelShape, width: int, height: int,
                 passes: list[tuple[int, int, bool]], *, disk: float, weights_now: int,
                 state: int, vae_tile: int | None, vae_stats: str, rate: float | None,
                 vae_rate: float, budget: int | None, free: int | None,
                 previous: tuple[int, int] | None) -> VaePart:
    """The VAE's `passes` with `disk` bytes of scratch room: the tile (`vae_tile`, or the
    fastest that fits), its work, copies, files, peak and kept outputs."""
    vae_weights = weights_now or model.vae.param_bytes
    # What the fast mode will keep step outputs in: a share of what is free (no budget:
    # room for all of them). A run sees the device's free memory, not the planner's
    # margin-reduced budget: priced from that, an H200's 16K decode kept 6 GB more than
    # planned (BENCHMARKS.md, "The planner's margin and the VAE's kept outputs").
    room = budget if budget is None or free is None else free
    job = _VaeJob(model, width, height, passes, vae_stats, disk, rate, vae_rate,
                  None if room is None else room - vae_weights - state)
    tile = vae_tile or VAE_TILES[-1]
    if vae_tile is None:
        tile = _fastest_tile(job, budget, vae_weights, state, room, previous)
    # No larger than the image (one tile), nor under the least the tiled VAE takes: an
    # upscale's first stage from a 20 px input is 40 px, and a 40 px tile was refused.
    tile = max(min(tile, max(width, height)), LEAST_TILE)
    _, flop, copied, spill_bytes = _vae_priced(job, tile)
    runs_seconds = (_vae_cost(job, tile, spill_bytes)[2] * TILE_RUN_SECONDS if model.on_gpu
                    else 0.0)
    on_files, scratch = 0.0, 0
    if vae_stats == "exact":
        runs = _exact_runs(job, tile)
        on_files = sum(r.written + r.read for r in runs)
        scratch = int(max(r.most for r in runs))  # one pass's files at a time
    peak = _vae_peak(job, tile, vae_weights, state, room, previous)
    used = 0
    if budget is not None and vae_stats == "fast":  # no budget: a CPU's RAM, not planned
        used = peak + _vae_kept(job, tile, spill_bytes)
    seconds = flop / vae_rate + copied / HOST_LINK + on_files / DISK_RATE + runs_seconds
    return VaePart(tile, flop, copied, on_files, runs_seconds, spill_bytes, scratch, peak, used,
                   seconds=seconds)


def _vae_cost(job: _VaeJob, t: int, spill: float = 0.0) -> tuple[float, float, int]:
    """The passes' FLOPs in tile `t`, bytes copied over the host link, tile runs."""
    model = job.model
    if job.vae_stats == "exact":  # outputs in scratch files, through the host
        runs = _exact_runs(job, t)
        files = sum(r.written + r.read for r in runs)
        # Its passes run the tiles as often as the fast mode's that keeps everything.
        count = sum(tiled_runs(model.vae, w, h, decode=d, tile=t, budget=float("inf"))
                    for w, h, d in job.passes)
        return sum(r.flops for r in runs), (files if model.on_gpu else 0.0), count
    args = [dict(vae=model.vae, width=w, height=h, decode=d, tile=t, budget=job.memo(t),
                 spill=spill, dtype_bytes=model.vae_dtype_bytes) for w, h, d in job.passes]
    runs = [tiled_cost(**a) for a in args]
    return (sum(f for f, _ in runs), sum(b for _, b in runs),
            sum(tiled_runs(**a) for a in args))


def _exact_runs(job: _VaeJob, t: int) -> list:
    """Exact mode's cost of each pass in tile `t`."""
    # Half of the scratch room left, as DiskMemo looks at it: `disk` is a run's (--disk,
    # else what is free), and 0 (--disk 0, a TMPDIR in RAM, or slower) writes no file.
    return [exact_cost(job.model.vae, w, h, decode=d, tile=t, budget=MEMO_BYTES, disk=job.disk,
                       dtype_bytes=job.model.vae_dtype_bytes) for w, h, d in job.passes]


def _vae_priced(job: _VaeJob, t: int, beat: float = math.inf
                ) -> tuple[float, float, float, float]:
    """The VAE's seconds with tile `t` (`min(t, side)`), its FLOPs, the bytes it copies
    over the host link, and the CPU memory its fastest plan keeps outputs in; the
    search for that amount is skipped when even all of it cannot beat `beat` s."""
    model = job.model
    t = min(t, max(job.width, job.height))
    files = (sum(r.written + r.read for r in _exact_runs(job, t)) / DISK_RATE
             if job.vae_stats == "exact" else 0.0)
    overhead = TILE_RUN_SECONDS if model.on_gpu else 0.0

    def seconds(flop: float, copied: float, count: int) -> float:
        return flop / job.vae_rate + copied / HOST_LINK + files + count * overhead
    flop, copied, count = _vae_cost(job, t)
    best = (seconds(flop, copied, count), flop, copied, 0.0)
    if job.rate and model.on_gpu and model.spill and job.vae_stats == "fast":
        # Outputs kept in the CPU's memory: less recomputation for copies over the
        # host link, where recomputing takes longer than copying: much on a 4090,
        # little or none on an H100 (BENCHMARKS.md). Only with a known rate. The
        # fastest amount up to the budget: each output kept saves its recomputation
        # but costs its copies, and past some point (l40s, 16K: 64 GB of RAM free)
        # copying costs more. The most kept bounds what any amount saves.
        if seconds(_vae_cost(job, t, model.spill)[0], 0.0, count) >= min(best[0], beat):
            return best
        for amount in spill_amounts(model.spill):
            flop, copied, count = _vae_cost(job, t, amount)
            if seconds(flop, copied, count) < best[0]:
                best = (seconds(flop, copied, count), flop, copied, amount)
    return best


def _fastest_tile(job: _VaeJob, budget: int | None, vae_weights: int, state: int,
                  room: int | None, previous: tuple[int, int] | None) -> int:
    """The fastest tile whose peak (`_vae_peak`: with the VAE's weights, the stage's state,
    the cross-fade rows) fits `budget`."""
    # By the same price as the estimate's (the largest of a tie): a larger tile has fewer
    # runs and less overlap, a smaller one may keep more of its outputs. The fit is the whole
    # peak's: the tile's alone let a 1400x936 upscale on 9 GiB take 1024 px tiles whose rows
    # buffer passed the budget, where 768 px ones fit.
    side = max(job.width, job.height)
    fit = [t for t in VAE_TILES if budget is None or _vae_peak(
        job, max(min(t, side), LEAST_TILE), vae_weights, state, room, previous) <= budget
           ] or [VAE_TILES[-1]]
    tile, least = fit[0], math.inf
    for t in fit:
        seconds = _vae_priced(job, t, least)[0]
        if seconds < least:
            tile, least = t, seconds
    return tile


def _vae_peak(job: _VaeJob, tile: int, vae_weights: int, state: int, room: int | None,
              previous: tuple[int, int] | None) -> int:
    """Device memory while the VAE runs in `tile`, next to its weights and the stage's state;
    `room`: what the run has (None: not planned)."""
    model = job.model
    attention = max(vae_attention_bytes(model.vae, w, h, model.vae_dtype_bytes)
                    for w, h in [(job.width, job.height), *([previous] if previous else [])])
    peak = vae_weights + max(vae_tile_peak(model.vae, tile, model.vae_dtype_bytes),
                             attention) + state
    # The decode's cross-fade buffer, where a GPU keeps it (the rule hires.vae follows).
    rows = max((rows_bytes(w, h, tile) for w, h, d in job.passes if d), default=0)
    if model.on_gpu and room is not None and rows_on_device(
            rows, room - vae_weights - state):
        peak += rows
    return peak


def _vae_kept(job: _VaeJob, tile: int, spill: float) -> int:
    """The most device memory the fast mode's kept outputs take in any pass."""
    model = job.model
    return int(max(tiled_memo_bytes(model.vae, w, h, decode=d, tile=tile, budget=job.memo(tile),
                                    spill=spill, dtype_bytes=model.vae_dtype_bytes)
                   for w, h, d in job.passes))


def host_seconds(width: int, height: int, *, resize: bool, save: bool) -> float:
    """The host's own work in a stage: resizing the previous image to width x height, and
    saving the final one, on this machine's cores."""
    px = width * height
    return (resize * px / RESIZE_PX_PER_CORE + save * px / SAVE_PX_PER_CORE) / cores()


def maps_on_disk(model: ModelShape, maps: int, host: int) -> int:
    """The parked maps (of `host` bytes a call needs in the CPU's memory) that wait on the
    scratch disk because `model.host` cannot hold them; 0 when it can, or when the disk
    cannot take them (the weights must fit in RAM either way)."""
    if model.host is None or host <= model.host:
        return 0
    over = math.ceil(host - model.host)
    return over if over <= min(maps, model.disk) else 0


def _rate_in(model: ModelShape, dtype_bytes: int, rate: float) -> float:
    """FLOP/s of work in `dtype_bytes` values when `rate` is the device's half-precision rate."""
    return rate * model.fp32_share if model.on_gpu and dtype_bytes == 4 else rate


def parked_bytes(model: ModelShape, lat_h: int, lat_w: int, strategy: Strategy) -> int:
    """The CPU memory one guided UNet call parks under `strategy` (hires.parking holds it
    for the stage): per batch item the UNet's maps and a ControlNet's skips and residuals."""
    if not strategy.park_skips or not model.on_gpu:
        return 0
    per_item = unet_parked_bytes(model.unet, lat_h, lat_w, strategy.row_bands,
                                  model.dtype_bytes)
    if model.control is not None:
        per_item += 2 * skip_bytes(model.unet, lat_h, lat_w, model.dtype_bytes)
    return per_item * (1 if strategy.split_cfg else model.items)


# ---------------------------------------------------------------------------------------------
# Shapes of real models: loaded ones, and the default SDXL without loading a weight


def model_shape(components: Any, controlnet: Any = None) -> ModelShape:
    """The shape of loaded components (weights counted as they are, in their dtypes), with
    the ControlNet that runs with their UNet, if any."""
    from hires.memory import disk_room, scratch_folder
    from hires.memsim import module_bytes

    pipe = components.pipe
    vae = VaeShape.from_config(dict(pipe.vae.config), param_bytes=module_bytes(pipe.vae))
    text = module_bytes(pipe.text_encoder) + module_bytes(pipe.text_encoder_2)
    return ModelShape(UNetShape.of(pipe.unet), vae, text,
                      dtype_bytes=components.dtype.itemsize,
                      vae_dtype_bytes=components.vae_dtype.itemsize,
                      native=components.native, on_gpu=components.device.type != "cpu",
                      control=ControlShape.of(controlnet) if controlnet is not None else None,
                      spill=spill_budget(components.device), host=host_budget(components),
                      disk=disk_room(scratch_folder()))


def host_budget(components: Any) -> float | None:
    """What a GPU run's parked maps and offloaded weights may take of the CPU's memory: what
    is free, and what the components' weights already hold there; None on a CPU."""
    import torch

    from hires.memory import free_memory, host_room

    if components.device.type == "cpu":
        return None
    free = free_memory(torch.device("cpu"), components.parts)
    return host_room(free) if free else None


@lru_cache(maxsize=8)
def sdxl_shape(*, linfusion: bool = True, dtype_bytes: int = 2, on_gpu: bool = True,
               controlnet: bool = False, vae_dtype_bytes: int | None = None) -> ModelShape:
    """SDXL base (with LinFusion-XL unless told not; with an SDXL ControlNet if told) as the
    planner sees it, from its configs and parameter counts. The VAE is bf16 on GPUs, fp32 on
    CPU unless told."""
    from hires import sdxl

    blocks = sdxl.SDXL_UNET_BLOCK_PARAMS
    if linfusion:
        blocks = tuple(a + b for a, b in zip(blocks, sdxl.LINFUSION_XL_BLOCK_PARAMS, strict=True))
    block_bytes = tuple(n * dtype_bytes for n in blocks)
    outer = sdxl.SDXL_UNET_OUTER_PARAMS * dtype_bytes
    unet = UNetShape.from_config(sdxl.SDXL_UNET_CONFIG, param_bytes=sum(block_bytes) + outer,
                                 block_param_bytes=block_bytes, outer_param_bytes=outer,
                                 linfusion=linfusion)
    if vae_dtype_bytes is None:
        vae_dtype_bytes = 2 if on_gpu else 4
    vae = VaeShape.from_config(sdxl.SDXL_VAE_CONFIG,
                               param_bytes=sdxl.SDXL_VAE_PARAMS * vae_dtype_bytes)
    control = None
    if controlnet:  # the UNet's down and mid blocks (LinFusion's too: controlnet.linearize)
        down_mid = block_bytes[:len(unet.channels) + 1]
        outer = sdxl.SDXL_CONTROLNET_OUTER_PARAMS * dtype_bytes
        control = ControlShape.from_config(sdxl.SDXL_UNET_CONFIG,
                                           param_bytes=sum(down_mid) + outer,
                                           block_param_bytes=down_mid, outer_param_bytes=outer,
                                           linfusion=linfusion)
    return ModelShape(unet, vae, sdxl.SDXL_TEXT_PARAMS * dtype_bytes, dtype_bytes=dtype_bytes,
                      vae_dtype_bytes=vae_dtype_bytes, native=1024, on_gpu=on_gpu,
                      control=control)
