"""Whole-image statistics for a tiled VAE: every GroupNorm normalizes with the whole image's.

A tile normalized with its own statistics shifts tones from tile to tile (diffusers' tiling).
Here each GroupNorm gets one mean and variance per group for the whole image, gathered in
passes: a pass runs tiles up to the first GroupNorm still without statistics, pools per-group
count/mean/M2 over the tiles' disjoint (owned) parts and stops there; the GroupNorms before it
already use whole-image numbers. Tiles resume each pass from their deepest saved step output
(`hires.vae_memo`), so most of the network runs about once per tile. The mid-block attention's
context cells (`hires.vae_attention`) are gathered the same way, in one pass of their own.

Modes (`stats=`):
- "exact": every tile in every pass; step outputs in scratch files (`DiskMemo`), since at 16K
  they are far bigger than memory. Costly at scale (hundreds of GB of scratch I/O at 16K).
- "fast": the same exact statistics, with step outputs kept in memory (`MemoryMemo`: a share
  of the memory free when the decode starts, see `fast_budget`) instead of scratch files.
  Each tile keeps the deepest output that fits; past the budget tiles resume from a shallower
  (cheaper, lower-resolution) output, so big images cost recomputation, never disk. The
  final pass runs each tile on from its deepest kept output (the last step, never kept, at
  least) and blends it.

Cheap estimates were measured and rejected (a trained tiny VAE, held-out photos, 1024 x 1536 px
in 512 px tiles; 8-bit steps against the untiled decode, exact being max 1, mean 0.04):
statistics from a 2x / 4x downsampled pass max 14 / 40-43, mean 2.0-2.2 / 5.1-6.1; pooled from
1, 2 or 4 of the 6 tiles max 4-23, mean 0.7-5.4. Pooled from the 16 best-spread of 20 tiles
(farthest-point order) at 4096 x 2736, once the memory budget ran short: max 8, mean 1.4. A
decoder this sensitive wants exact numbers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from hires.memory import free_memory
from hires.vae_attention import (
    ContextAttention,
    attentions,
    block_count,
    cell_side,
    finish_context,
    is_global,
)
from hires.vae_memo import DiskMemo, Memo, MemoryMemo, Runner, Stop
from hires.vae_tiles import Box, Grid, crop

Progress = Callable[[int, int], None]
MODES = ("fast", "exact")
MEMO_BYTES = 16e9  # exact: the most one level of saved step outputs may take on disk
FAST_BYTES: float | None = None  # fast: the most kept step outputs may take (None: see below)
# fast, by default: this share of the memory free when a decode starts (RAM is shared with
# the rest of the machine; a GPU is ours), beyond a reserve for the tiles' own runs (a 2048 px
# SDXL tile in bf16 needs about 6.5 GB; on a GPU the reserve grows with the VAE's element size,
# so an fp32 VAE's twice as large runs keep room), and on the CPU at least FAST_FLOOR (a GPU's
# outputs beyond its budget spill to the CPU's memory: a floor there could outgrow the card).
FAST_SHARE = {"cuda": 0.8, "cpu": 0.5}
FAST_RESERVE = {"cuda": 8e9, "cpu": 2e9}
FAST_FLOOR = 1e9
# fast, on a GPU: outputs that do not fit its budget go to the CPU's memory, up to this share of
# what is free there beyond a reserve (the canvas, the attention's input, the rest of the
# machine). SPILL_BYTES, when set, replaces the rule (tests, replays).
SPILL_SHARE, SPILL_RESERVE = 0.5, 8e9
SPILL_BYTES: float | None = None
# Elements of one band of rows upcast at a time to gather moments: about a core's L2 cache in
# float32 on the CPU; on a GPU large enough that a tile takes a few launches.
MOMENT_BAND = {"cpu": 1 << 19, "cuda": 1 << 25}


@dataclass
class State:
    """What the patched GroupNorms and attentions read and write while tiles run."""

    size: tuple[int, int]  # whole latent
    cell: int  # side of one attention context cell
    device: torch.device
    stats: dict = field(default_factory=dict)  # GroupNorm -> (mean[G], var[G]) float32
    context: dict = field(default_factory=dict)  # Attention -> its whole-image output
    sums: dict = field(default_factory=dict)  # module -> what the current pass accumulates
    target: nn.Module | None = None  # the module the current pass stopped at
    window: Box = (0, 0, 0, 0)
    owned: Box = (0, 0, 0, 0)

    def stop(self, module: nn.Module) -> None:
        """End this tile's pass: `module` has had its input."""
        self.target = module
        raise Stop


def _group_norm(state: State, module: nn.GroupNorm, x: Tensor) -> Tensor:
    stats = state.stats.get(module)
    if stats is None:
        _add_moments(state, module, crop(x, state.window, state.owned))
        state.stop(module)
    mean, var = stats
    per = x.shape[1] // module.num_groups
    weight = None if module.weight is None else module.weight.float()
    bias = None if module.bias is None else module.bias.float()
    if x.dtype != torch.float32:
        # Low precision: batch_norm's mixed-dtype kernel normalizes each element in fp32, so
        # x - mean keeps its digits, without an fp32 copy of x (bf16 on the CPU: 4.5x faster
        # than upcasting, and on a GPU no fp32 tile in memory).
        return F.batch_norm(x, mean.repeat_interleave(per), var.repeat_interleave(per), weight,
                            bias, False, 0.0, module.eps)
    scale = torch.rsqrt(var + module.eps).repeat_interleave(per)
    shift = -mean.repeat_interleave(per) * scale
    if weight is not None:
        scale = scale * weight
        shift = shift * weight + bias
    shape = (1, -1) + (1,) * (x.ndim - 2)
    return torch.addcmul(shift.view(shape), x, scale.view(shape))


def _add_moments(state: State, module: nn.GroupNorm, x: Tensor) -> None:
    """Add one tile's per-channel count, sum and sum of squares about a pilot value.

    Per channel, because a reduction over height and width reads a channels-last map in place
    (grouping channels first would copy it). The pilot (channel means of a sparse sample of the
    first tile) keeps the squares from cancelling. Sums stay on the tile's device: no host
    sync per tile.
    """
    x = x.detach()
    n = x.numel() // x.shape[1]
    if n == 0:
        return
    acc = state.sums.get(module)
    if acc is None:
        acc_dtype = torch.float32 if x.device.type == "mps" else torch.float64
        pilot = x[:, :, ::4, ::4].float().mean((0, 2, 3))
        acc = state.sums[module] = [0, pilot, torch.zeros_like(pilot, dtype=acc_dtype),
                                    torch.zeros_like(pilot, dtype=acc_dtype)]
    s, ss = _moments(x, acc[1])
    acc[0] += n
    acc[2] += s.to(acc[2].dtype)
    acc[3] += ss.to(acc[3].dtype)


def _moments(x: Tensor, pilot: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel sums of x - pilot and of its squares, in float32, of an N x C x h x w map.

    In bands of rows, each upcast once and small enough to stay in cache: the whole tile in
    float32 would be a copy 2x (bf16: 4x) its size, and every elementwise pass over it goes to
    memory. On the CPU that took 6x longer than this (16 bf16 channels of 2100 x 2100 px).
    """
    c, h, w = x.shape[1:]
    band = max(1, MOMENT_BAND.get(x.device.type, MOMENT_BAND["cpu"]) // (c * w))
    if x.shape[0] == 1 and x.stride(1) == 1 and x.stride(3) == c:
        # Channels-last: each row is w * c contiguous values.
        rows = x[0].permute(1, 2, 0).reshape(h, w * c)
        p = pilot.repeat(w)
        s, ss = torch.zeros_like(p), torch.zeros_like(p)
        for i in range(0, h, band):
            _add_band(rows[i:i + band], p, (0,), s, ss)
        return s.view(w, c).sum(0), ss.view(w, c).sum(0)
    s, ss = torch.zeros_like(pilot), torch.zeros_like(pilot)
    for i in range(0, h, band):
        _add_band(x[:, :, i:i + band], pilot.view(1, c, 1, 1), (0, 2, 3), s, ss)
    return s, ss


def _add_band(band: Tensor, pilot: Tensor, dims: tuple[int, ...], s: Tensor, ss: Tensor) -> None:
    # One float32 copy (a copy even of float32: the activations must stay as they are), freed
    # on return, before the next band's.
    d = band.to(torch.float32, copy=True).sub_(pilot)
    s += d.sum(dims)
    ss += d.square_().sum(dims)


def _finish_moments(module: nn.GroupNorm, acc: list) -> tuple[Tensor, Tensor]:
    """Per-group mean and (biased) variance from the per-channel sums."""
    n, pilot, s, ss = acc
    mean_c = pilot.to(s.dtype) + s / n  # per channel
    var_c = (ss / n - (s / n) ** 2).clamp(min=0)
    mean_c, var_c = mean_c.view(module.num_groups, -1), var_c.view(module.num_groups, -1)
    mean = mean_c.mean(1)
    var = (var_c + (mean_c - mean[:, None]) ** 2).mean(1)  # channels of a group: equal counts
    return mean.float(), var.float()


@contextmanager
def _patched(net: nn.Module, state: State) -> Iterator[None]:
    """Route every GroupNorm and attention of `net` through `state`; always undone on exit."""
    norms = [m for m in net.modules() if isinstance(m, nn.GroupNorm)]
    attns = attentions(net)
    # An instance attribute `forward` shadows the class method. Keep any that was already there
    # (accelerate and diffusers hooks install one) so that exactly it is put back.
    saved_forwards = [m.__dict__.get("forward") for m in norms]
    saved_processors = [m.processor for m in attns]
    try:
        for m in norms:
            m.forward = _norm_forward(state, m)
        processor = ContextAttention(state)
        for m in attns:
            m.processor = processor
        yield
    finally:
        for m, fwd in zip(norms, saved_forwards):
            if fwd is None:
                m.__dict__.pop("forward", None)
            else:
                m.forward = fwd
        for m, proc in zip(attns, saved_processors):
            m.processor = proc


def _norm_forward(state: State, module: nn.GroupNorm) -> Callable[[Tensor], Tensor]:
    def forward(x: Tensor) -> Tensor:
        return _group_norm(state, module, x)

    return forward


def _gather(state: State, grid: Grid, run: Callable[[Box], Tensor], dtype: torch.dtype,
            tick: Callable[[], None]) -> None:
    """Streaming passes until every GroupNorm and attention has whole-image statistics.

    Each pass runs every tile up to the first module still without statistics (the same one
    for every tile) and pools that module's input over the tiles' owned parts. The modules
    before it already use whole-image statistics, so what it gets is exact, up to tile-border
    effects.
    """
    while True:
        state.target = None
        for window, owned in grid.tiles():
            state.window, state.owned = window, owned
            try:
                run(window)
            except Stop:
                tick()
                continue
            return  # a whole forward went through: every module has its statistics
        target = state.target
        acc = state.sums.pop(target)
        if not isinstance(target, nn.GroupNorm):  # the attention
            finish_context(state, target, acc, dtype, tick)
        else:
            state.stats[target] = _finish_moments(target, acc)


def fast_budget(device: torch.device, dtype: torch.dtype = torch.bfloat16,
                working: float = 0.0) -> float:
    """Bytes the fast mode may keep step outputs in: `FAST_BYTES`, or a share of free memory
    beyond a reserve and what one tile run needs (`working` bytes).

    The more tiles keep their outputs, the less is recomputed: 8192 x 5472 px on the tiny VAE
    took 179 s with a fixed 4 GB and 155 s with the 7 GB this gave (the CPU machine, 20 GB
    free); a 16384 px SDXL decode in 2048 px tiles is 19x a plain decode's FLOPs with 4 GB,
    4.1x with 60 GB and 2.1x with 120 GB (benchmarks/vae_work.py).
    """
    if FAST_BYTES is not None:
        return FAST_BYTES
    free = free_memory(device)
    if free is None:
        return 4e9
    return budget_from_free(free, device.type == "cuda", dtype.itemsize, working)


def spill_budget(device: torch.device) -> float:
    """Bytes of the CPU's memory a GPU's fast mode may keep step outputs in (0 off a GPU)."""
    if SPILL_BYTES is not None:
        return SPILL_BYTES
    if device.type != "cuda":
        return 0.0
    return spill_from_free(free_memory(torch.device("cpu")) or 0.0)


def spill_from_free(free: float) -> float:
    """`spill_budget` when `free` bytes of the CPU's memory are free (the planner's too)."""
    return max(0.0, SPILL_SHARE * (free - SPILL_RESERVE))


def budget_from_free(free: float, on_gpu: bool, dtype_bytes: int = 2,
                     working: float = 0.0) -> float:
    """The fast mode's budget when `free` bytes are free as a decode starts (the planner's too)
    with the VAE's elements `dtype_bytes` wide and a tile run needing `working` bytes."""
    kind = "cuda" if on_gpu else "cpu"
    reserve = FAST_RESERVE[kind] * (max(1.0, dtype_bytes / 2) if on_gpu else 1.0)
    # A GPU's reserve is for a tile run; the CPU's is for the rest of the machine, and a run
    # comes on top: a 2048 px SDXL tile in fp32 needs 12 GiB, and with half of the rest kept
    # a 4K stage took 23.1 GiB of 23.0 free.
    reserve = max(reserve, working) if on_gpu else reserve + working
    return max(0.0 if on_gpu else FAST_FLOOR, FAST_SHARE[kind] * (free - reserve))


@dataclass
class Tiles:
    """What `whole_image` hands out: a runner for the final pass, and the memo it reads."""

    run: Callable[[Box], Tensor]
    memo: Memo


@contextmanager
def whole_image(net: nn.Module, head: Callable[[Box], Tensor], grid: Grid,
                mode: str, device: torch.device, dtype: torch.dtype,
                progress: Progress | None, spill: float = 0.0,
                working: float = 0.0) -> Iterator[Tiles]:
    """Patch `net`, gather whole-image statistics, then hand out the grid and a tile runner.

    `head(box)` gives the input of `net` for a tile window; the fast mode keeps step outputs
    beside a tile run's `working` bytes, and in the CPU's memory too, up to `spill` bytes and
    what `spill_budget` allows.
    """
    if mode not in MODES:
        raise ValueError(f"stats must be one of {MODES}, got {mode!r}")
    size = grid.size
    state = State(size=size, cell=cell_side(size), device=device)
    memo = DiskMemo(len(grid), MEMO_BYTES) if mode == "exact" else MemoryMemo(
        fast_budget(device, dtype, working), min(spill, spill_budget(device)) if spill else 0.0)
    norms = sum(isinstance(m, nn.GroupNorm) for m in net.modules())
    attns = len(attentions(net))
    # Tile runs, and above GLOBAL_TOKENS the attention's blocks (as long as a pass, or more).
    total = (norms + attns + 1) * len(grid) + (0 if is_global(size) else attns * block_count(size))
    done = 0

    def tick() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(min(done, total), total)

    runner = Runner(head, net, memo, device)

    def run_tile(box: Box) -> Tensor:
        state.window = box
        out = runner(box)
        tick()
        return out

    with torch.no_grad(), _patched(net, state), closing(memo):
        _gather(state, grid, runner, dtype, tick)
        runner.saving = False
        done = total - len(grid)  # exact even if some module never ran
        yield Tiles(run_tile, memo)
