"""What one tiled decode or encode costs: its statistics passes, on shapes alone.

`hires.costs.vae_flops` prices one plain pass. The tiled VAE runs a pass per GroupNorm, each
resuming every tile from its deepest step output kept in memory (`hires.vae_memo.MemoryMemo`),
so its work depends on how much of that the memory budget holds: about 1.5x a plain pass when
all of it fits, 12x for a 16K SDXL decode with 4 GB. This replays the same bookkeeping (the same
steps, passes, tile order and keep-or-not rule) on sizes and FLOP counts, without tensors: a
few milliseconds against seconds for the meta-device replay (`benchmarks/vae_work.py`), which
it matches (tests/test_vae_cost.py), so the planner can price it and pick a tile by it.
`exact` mode keeps the outputs in level files instead (`hires.vae_memo.DiskMemo`):
`exact_cost` replays that rule, and counts the files' bytes too.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, NamedTuple

import torch
from torch.utils.flop_counter import FlopCounterMode

from hires import vae_stats
from hires.vae_attention import FLASH_HEAD_DIM, blocks, cell_side, is_global, landmarks
from hires.vae_memo import spilled_size
from hires.vae_tiles import SCALE, Box, Grid, tile_sizes

if TYPE_CHECKING:
    from hires.costs import VaeShape


@dataclass(frozen=True)
class Step:
    """One step of `hires.vae_memo.stages` on one tile, as the memo sees it."""

    flops: float  # running it
    out: int  # bytes of its output (what the memo would keep); 0 for the last step
    stops: int = 0  # passes that stop at its start: one per GroupNorm there, +1 for context
    attention: bool = False  # the mid-block attention: its flops depend on the tile's place
    pair: bool = False  # its output is a split resnet's (input, first conv): never on disk


def _conv(c_in: int, c_out: int, px: float, k: int = 3) -> float:
    return 2.0 * c_in * c_out * k * k * px


def _resnet(c_in: int, c: int, px: float, b: int) -> list[Step]:
    """A resnet split before its second GroupNorm, as `hires.vae_memo._resnet` splits it."""
    shortcut = _conv(c_in, c, px, 1) if c_in != c else 0.0
    return [Step(_conv(c_in, c, px), int((c_in + c) * px * b), stops=1, pair=True),
            Step(_conv(c, c, px) + shortcut, int(c * px * b), stops=1)]


def _mid(c: int, px: float, b: int) -> list[Step]:
    return [*_resnet(c, c, px, b), Step(0.0, int(c * px * b), stops=2, attention=True),
            *_resnet(c, c, px, b)]


def steps(vae: VaeShape, h: int, w: int, *, decode: bool, dtype_bytes: int) -> list[Step]:
    """The steps of the decoder (or encoder) on an h x w latent window, first to last."""
    ch, b, lat = vae.channels, dtype_bytes, vae.latent_channels
    px = float(h * w)  # latent pixels
    low = ch[-1]
    if decode:
        out = [Step(_conv(lat, low, px), int(low * px * b)), *_mid(low, px, b)]
        c_prev = low
        for i, c in enumerate(reversed(ch)):
            p = px * 4**i
            for _ in range(vae.layers + 1):
                out += _resnet(c_prev, c, p, b)
                c_prev = c
            if i < len(ch) - 1:
                out.append(Step(_conv(c, c, 4 * p), int(c * 4 * p * b)))
        return [*out, Step(_conv(ch[0], vae.image_channels, px * 4 ** (len(ch) - 1)), 0,
                           stops=1)]
    top = px * 4 ** (len(ch) - 1)
    out = [Step(_conv(vae.image_channels, ch[0], top), int(ch[0] * top * b))]
    c_prev = ch[0]
    for i, c in enumerate(ch):
        p = top / 4**i
        for _ in range(vae.layers):
            out += _resnet(c_prev, c, p, b)
            c_prev = c
        if i < len(ch) - 1:
            out.append(Step(_conv(c, c, p / 4), int(c * p / 4 * b)))
    return [*out, *_mid(low, px, b), Step(_conv(low, 2 * lat, px), 0, stops=1)]


def _sweep_flops(c: int, size: tuple[int, int]) -> float:
    """The attention output for every token above GLOBAL_TOKENS (`vae_attention.finish_context`):
    per block, q, k, v of its key box, q.k and weights.v against the box's tokens, every cell
    and the landmarks (8 channels wider where SDPA runs it: `vae_attention.attend`), and the
    output projection of the block's tokens. The VAE's one head is `c` channels wide."""
    (h, w), f = size, cell_side(size)
    cells, marks = -(-h // f) * -(-w // f), min(landmarks(size), h * w)
    width = c if c > FLASH_HEAD_DIM else c + 8
    total = 0.0
    for (y0, y1, x0, x1), (ky0, ky1, kx0, kx1) in blocks(size):
        box = (ky1 - ky0) * (kx1 - kx0)
        queries = (y1 - y0) * (x1 - x0)
        keys = box + cells + marks
        total += 6.0 * c * c * box + 4.0 * queries * keys * width + 2.0 * c * c * queries
    return total


def _whole_attention_flops(c: int, tokens: int) -> float:
    return 8.0 * c * c * tokens + 4.0 * tokens * tokens * c


def tiled_flops(vae: VaeShape, width: int, height: int, *, decode: bool, tile: int,
                budget: float, dtype_bytes: int = 2, overlap: int | None = None,
                spill: float = 0.0) -> float:
    """FLOPs of one `fast` decode (or encode) of a width x height image: passes and final pass.

    `budget`: bytes the memo may keep (`hires.vae_stats.fast_budget`); `spill`: more in the
    CPU's memory (`spill_budget`). Counts what torch's FlopCounterMode counts (convolutions
    and matmuls), like the meta-device replay.
    """
    return tiled_cost(vae, width, height, decode=decode, tile=tile, budget=budget,
                      dtype_bytes=dtype_bytes, overlap=overlap, spill=spill)[0]


def tiled_cost(vae: VaeShape, width: int, height: int, *, decode: bool, tile: int,
               budget: float, dtype_bytes: int = 2, overlap: int | None = None,
               spill: float = 0.0) -> tuple[float, float]:
    """(FLOPs, bytes copied between the GPU and the CPU's memory for the spilled outputs)."""
    return _tiled(vae, width, height, decode, tile, budget, spill, dtype_bytes, overlap)[:2]


def tiled_memo_bytes(vae: VaeShape, width: int, height: int, *, decode: bool, tile: int,
                     budget: float, dtype_bytes: int = 2, overlap: int | None = None,
                     spill: float = 0.0) -> float:
    """The most device memory the fast mode's kept outputs take at once in that decode (or
    encode): up to `budget`, what its tiles' outputs need."""
    return _tiled(vae, width, height, decode, tile, budget, spill, dtype_bytes, overlap)[2]


def tiled_runs(vae: VaeShape, width: int, height: int, *, decode: bool, tile: int,
               budget: float, dtype_bytes: int = 2, overlap: int | None = None,
               spill: float = 0.0) -> int:
    """How many times that decode (or encode) runs a tile part of the way: each run costs
    launches and host work that its FLOPs do not show (the planner prices them)."""
    return int(_tiled(vae, width, height, decode, tile, budget, spill, dtype_bytes, overlap)[3])


def _tiled(vae: VaeShape, width: int, height: int, decode: bool, tile: int, budget: float,
           spill: float, dtype_bytes: int, overlap: int | None
           ) -> tuple[float, float, float, int]:
    h, w = height // SCALE, width // SCALE
    return _tiled_cost(vae, w, h, decode, tile, float(budget), float(spill), dtype_bytes,
                       overlap, is_global((h, w)))


@lru_cache(maxsize=8192)
def _tiled_cost(vae: VaeShape, w: int, h: int, decode: bool, tile: int, budget: float,
                spill: float, dtype_bytes: int, overlap: int | None,
                whole: bool) -> tuple[float, float, float, int]:
    """(FLOPs, bytes copied, the most bytes kept on the device at once, tile runs)."""
    t, o = tile_sizes(tile, overlap)
    c = vae.channels[-1]
    head, tail = _ends(vae, decode)
    if h * w <= t * t:  # one plain pass, diffusers' own (whole) attention
        net = steps(vae, h, w, decode=decode, dtype_bytes=dtype_bytes)
        return (sum(s.flops for s in net) + _whole_attention_flops(c, h * w)
                + (head + tail) * h * w), 0.0, 0.0, 1
    size = (h, w)
    tiles = list(Grid.cover(size, t, o).tiles())
    nets = _tile_nets(vae, tiles, decode, dtype_bytes)
    n = len(next(iter(nets.values()))[0])
    # The replay runs millions of tile steps for a small card's plan: each tile's state and
    # net are kept in lists by tile number, not in dicts by window.
    per_tile = [nets[(y1 - y0, x1 - x0)] for (y0, y1, x0, x1), _ in tiles]
    least = {id(net): (_range_min(net[2]), _range_min(net[3])) for net in nets.values()}
    fewest = [least[id(net)] for net in per_tile]
    heads = [head * (y1 - y0) * (x1 - x0) for (y0, y1, x0, x1), _ in tiles]
    # each tile's kept output, MemoryMemo's rule: (step number, bytes, spilled)
    starts, sizes, away = [0] * len(tiles), [0] * len(tiles), [False] * len(tiles)
    used, spilled, total, copied, most, runs = 0, 0, 0.0, 0.0, 0, 0

    def sweep(stop: int | None, saving: bool = True, only: int | None = None) -> None:
        """Run every tile (or tile `only`) from its kept output up to the start of step
        `stop` (None: to the end), in the grid's order."""
        nonlocal used, spilled, total, copied, most, runs
        end, last_step = n if stop is None else stop, n - 1
        order = range(len(tiles)) if only is None else (only,)
        runs += len(order)
        # locals, not the closure's cells, in the loop: it runs millions of times
        u, sp, tot, cop, mo = used, spilled, total, copied, most
        for k in order:
            start = starts[k]
            if start == 0:
                tot += heads[k]
            elif away[k]:
                cop += sizes[k]
            if start == end:  # already there: nothing runs, nothing new is kept
                continue
            _, before, outs, away_outs = per_tile[k]
            tot += before[end] - before[start]
            hi = min(end, last_step)
            if not saving or start >= hi:
                continue
            # Each step's output replaces the tile's kept one if it fits beside the other
            # tiles' (in memory, else spilled); theirs do not change meanwhile.
            size, gone = sizes[k], away[k]
            others_used = u - (0 if gone else size)
            others_spilled = sp - (spilled_size(size) if gone else 0)
            free, room = budget - others_used, spill - others_spilled
            least_out, least_away = fewest[k]
            if least_out[start][hi] > free and least_away[start][hi] > room:
                continue  # no output of these steps fits: the usual case on a small card
            last, pending = -1, 0
            for i in range(start, hi):
                if outs[i] <= free:
                    last, gone, pending = i, False, 0
                    mo = max(mo, others_used + outs[i])  # each output replaces the last
                elif away_outs[i] <= room:
                    last, gone, pending = i, True, outs[i]  # copied as the run settles
                else:  # MemoryMemo.settle: the one kept is copied now
                    cop, pending = cop + pending, 0
            cop += pending
            if last >= 0:
                starts[k], sizes[k], away[k] = last + 1, outs[last], gone
                u = others_used + (0 if gone else outs[last])
                sp = others_spilled + (away_outs[last] if gone else 0)
        used, spilled, total, copied, most = u, sp, tot, cop, mo

    extra = _passes(vae, nets, tiles, sweep, size, whole, tail)  # its runs add to total first
    total += extra
    return total, copied, float(most), runs


class ExactCost(NamedTuple):
    """What one `exact` decode (or encode) costs: its work and its scratch files."""

    flops: float
    written: float  # bytes written to the scratch files
    read: float  # bytes read back from them
    most: float  # the most bytes the files held at once


def exact_cost(vae: VaeShape, width: int, height: int, *, decode: bool, tile: int,
               budget: float, disk: float = float("inf"), dtype_bytes: int = 2,
               overlap: int | None = None) -> ExactCost:
    """The `exact` mode's decode (or encode) of a width x height image, by DiskMemo's rule.

    Every step output but a split resnet's pair goes to a level file for its step, while
    the whole level (this tile's output times the tiles) fits `budget` (`vae_stats.MEMO_BYTES`)
    and half of what is free of `disk` then; a refused level's tiles recompute from a
    shallower one. Without this, a plan priced `exact` as if it recomputed nothing and its
    files cost no time: faster than `fast`, where it is far slower.
    """
    h, w = height // SCALE, width // SCALE
    return ExactCost(*_exact_cost(vae, w, h, decode, tile, float(budget), float(disk),
                                  dtype_bytes, overlap, is_global((h, w))))


@lru_cache(maxsize=1024)
def _exact_cost(vae: VaeShape, w: int, h: int, decode: bool, tile: int, budget: float,
                disk: float, dtype_bytes: int, overlap: int | None,
                whole: bool) -> tuple[float, float, float, float]:
    t, o = tile_sizes(tile, overlap)
    head, tail = _ends(vae, decode)
    if h * w <= t * t:  # one plain pass, no files
        return _tiled_cost(vae, w, h, decode, tile, 0.0, 0.0, dtype_bytes, overlap, whole)[0], \
            0.0, 0.0, 0.0
    size = (h, w)
    tiles = list(Grid.cover(size, t, o).tiles())
    nets = _tile_nets(vae, tiles, decode, dtype_bytes)
    n = len(next(iter(nets.values()))[0])
    levels: dict[int, dict[Box, int]] = {}  # step number -> the tiles' outputs in its file
    refused: set[int] = set()
    total = written = read = 0.0
    live = most = 0

    def run(window: Box, stop: int | None, saving: bool = True) -> None:
        nonlocal total, written, read, live, most
        y0, y1, x0, x1 = window
        net, before, outs, _ = nets[(y1 - y0, x1 - x0)]
        start = next((k for k in sorted(levels, reverse=True) if window in levels[k]), 0)
        if start == 0:
            total += head * (y1 - y0) * (x1 - x0)
        else:
            read += levels[start][window]
        end = n if stop is None else stop
        total += before[end] - before[start]
        if not saving:
            return
        for i in range(start, min(end, n - 1)):
            number = i + 1
            level = levels.get(number)
            if net[i].pair or number in refused or (level is not None and window in level):
                continue
            if level is None:
                if outs[i] * len(tiles) > min(budget, (disk - live) / 2):
                    refused.add(number)
                    continue
                level = levels[number] = {}
            level[window] = outs[i]
            written += outs[i]
            live += outs[i]
            most = max(most, live)
            for shallow in [k for k in levels if k < number]:
                if levels[shallow].keys() <= level.keys():
                    live -= sum(levels.pop(shallow).values())

    def sweep(stop: int | None, saving: bool = True, only: int | None = None) -> None:
        for k in range(len(tiles)) if only is None else (only,):
            run(tiles[k][0], stop, saving)

    extra = _passes(vae, nets, tiles, sweep, size, whole, tail)  # its runs add to total first
    total += extra
    return total, written, read, float(most)


def _ends(vae: VaeShape, decode: bool) -> tuple[float, float]:
    """FLOPs per latent px before the network (post_quant_conv) and after it (quant_conv)."""
    lat = vae.latent_channels
    return (2.0 * lat**2, 0.0) if decode else (0.0, 2.0 * (2 * lat)**2)


def _tile_nets(vae: VaeShape, tiles: list, decode: bool, dtype_bytes: int) -> dict:
    """Tile shape -> (its steps, the FLOPs before each step, the bytes of each output a memo
    may keep, the same in the CPU's pinned memory): the replay runs millions of steps for a
    small card's plan, so what can be is worked out once per tile shape."""
    nets = {}
    for window, _ in tiles:
        y0, y1, x0, x1 = window
        shape = (y1 - y0, x1 - x0)
        if shape not in nets:
            net = steps(vae, *shape, decode=decode, dtype_bytes=dtype_bytes)
            before = [0.0]
            for s in net:  # the attention's own work is counted once, in _passes
                before.append(before[-1] + (0.0 if s.attention else s.flops))
            outs = [s.out for s in net[:-1]]
            nets[shape] = (net, before, outs, [spilled_size(o) for o in outs])
    return nets


def _range_min(values: list[int]) -> list[list[float]]:
    """table[a][b]: the least of values[a:b] (inf where empty)."""
    table = []
    for a in range(len(values) + 1):
        row, least = [float("inf")] * (a + 1), float("inf")
        for b in range(a, len(values)):
            least = min(least, values[b])
            row.append(least)
        table.append(row)
    return table


def _passes(vae: VaeShape, nets: dict, tiles: list, sweep: Callable, size: tuple[int, int],
            whole: bool, tail: float) -> float:
    """Every statistics pass, then the final pass, as `hires.vae_stats.whole_image` runs them,
    each through `sweep(stop, saving, only)` (every tile, or tile `only`, up to step `stop`);
    returns the work outside the tiles' steps (the attention's context and landmark scores,
    the encoder's quant_conv)."""
    c, (h, w) = vae.channels[-1], size
    extra = 0.0
    for j, s in enumerate(next(iter(nets.values()))[0]):
        for k in range(s.stops):
            sweep(j)
            if s.attention and k == 1:
                if not whole:
                    for _, (oy0, oy1, ox0, ox1) in tiles:  # landmark scores: q, k, v of owned
                        extra += 6.0 * c * c * (oy1 - oy0) * (ox1 - ox0)
                if whole:  # the context, once
                    extra += _whole_attention_flops(c, h * w)
                else:
                    f = cell_side(size)
                    extra += 6.0 * c * c * (-(-h // f) * -(-w // f) + min(landmarks(size), h * w))
                    extra += _sweep_flops(c, size)
    sweep(None, only=0)  # the gathering loop's last pass: the first tile goes through whole
    sweep(None, saving=False)
    for (y0, y1, x0, x1), _ in tiles:
        extra += tail * (y1 - y0) * (x1 - x0)
    return extra


def replayed_flops(vae, width: int, height: int, *, decode: bool, tile: int, budget: float,
                   overlap: int | None = None, spill: float = 0.0) -> tuple[float, float]:
    """(all, before the final pass) FLOPs of the same decode (or encode), counted by running
    hires' own tiling code on `vae` built on the meta device: the reference for `tiled_flops`.
    """
    return _replay(vae, width, height, decode, tile, budget, overlap, spill)[:2]


def replayed_memo_bytes(vae, width: int, height: int, *, decode: bool, tile: int,
                        budget: float, overlap: int | None = None, spill: float = 0.0) -> float:
    """The most device memory the memo took in that replay: the reference for
    `tiled_memo_bytes`."""
    return _replay(vae, width, height, decode, tile, budget, overlap, spill)[2]


def replayed_copies(vae, width: int, height: int, *, decode: bool, tile: int, budget: float,
                    overlap: int | None = None, spill: float = 0.0) -> float:
    """Bytes the memo copied between the device and the CPU's memory in that replay (spilled
    outputs out, and back): the reference for `tiled_cost`'s copies."""
    memo = _replay(vae, width, height, decode, tile, budget, overlap, spill)[3]
    return 0.0 if memo is None else float(memo.copied)


def replayed_exact(vae, width: int, height: int, *, decode: bool, tile: int, budget: float,
                   overlap: int | None = None) -> ExactCost:
    """The same in `exact` mode, its files sizes only (level budget `budget`, as
    `vae_stats.MEMO_BYTES`): the reference for `exact_cost`."""
    total, _, _, memo = _replay(vae, width, height, decode, tile, budget, overlap, 0.0, "exact")
    if memo is None:  # one tile: a plain pass
        return ExactCost(total, 0.0, 0.0, 0.0)
    return ExactCost(total, float(memo.written), float(memo.read), float(memo.most))


def _replay(vae, width: int, height: int, decode: bool, tile: int, budget: float,
            overlap: int | None, spill: float, mode: str = "fast") -> tuple:
    """(FLOPs, FLOPs before the final pass, the most the memo kept in memory, the memo)."""
    meta, dtype = torch.device("meta"), next(vae.parameters()).dtype
    h, w = height // SCALE, width // SCALE
    t, o = tile_sizes(tile, overlap)
    lat = vae.config.latent_channels

    def head(box: Box) -> torch.Tensor:
        y0, y1, x0, x1 = box
        if decode:
            z = torch.empty(1, lat, y1 - y0, x1 - x0, device=meta, dtype=dtype)
            return vae.post_quant_conv(z)
        return torch.empty(1, 3, SCALE * (y1 - y0), SCALE * (x1 - x0), device=meta, dtype=dtype)

    def finish(out: torch.Tensor) -> None:
        if not decode:
            vae.quant_conv(out)

    net = vae.decoder if decode else vae.encoder
    saved = vae_stats.FAST_BYTES, vae_stats.SPILL_BYTES, vae_stats.MEMO_BYTES
    vae_stats.FAST_BYTES, vae_stats.SPILL_BYTES, vae_stats.MEMO_BYTES = budget, spill, budget
    try:
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            if h * w <= t * t:
                finish(net(head((0, h, 0, w))))
                return float(counter.get_total_flops()), 0.0, 0.0, None
            grid = Grid.cover((h, w), t, o)
            with vae_stats.whole_image(net, head, grid, mode, meta, dtype, None,
                                       spill) as tiles:
                gathered = counter.get_total_flops()
                for window, _ in grid.tiles():
                    finish(tiles.run(window))
                memo = tiles.memo
    finally:
        vae_stats.FAST_BYTES, vae_stats.SPILL_BYTES, vae_stats.MEMO_BYTES = saved
    most = memo.most if mode == "fast" else 0
    return float(counter.get_total_flops()), float(gathered), float(most), memo
