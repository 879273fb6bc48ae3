"""Tiles of the tiled VAE: where they lie, how they are cross-faded, how rows stream out."""

# Each tile drops the outer 3/8 of the overlap next to a neighbour (zero padding leaks in there)
# and cross-fades over the next 1/4: with shared statistics neighbours agree, so the fade only
# has to hide receptive-field leftovers. Measured on the tiny random VAE, 512 px in 256 px tiles:
# max |diff| 0.0003 on the [-1, 1] scale against 0.12 when the fade spans the whole overlap
# (the usual linear blend).

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

Box = tuple[int, int, int, int]  # y0, y1, x0, x1 in latent units

SCALE = 8  # image pixels per latent pixel
LEAST_TILE = 64  # px: under it the seams are tens of 8-bit steps (the decoder sees ~138)
DROP, FADE = 0.375, 0.25  # of the overlap: dropped at each tile edge, then cross-faded


def spans(n: int, tile: int, overlap: int) -> list[tuple[int, int]]:
    """Fewest windows of at most `tile` covering [0, n), neighbours overlapping by >= `overlap`.

    Windows are only as long as that needs (all the same length, evenly spread): a fixed-size
    window would overlap its neighbours by more than asked and decode the extra twice.
    """
    if n <= tile:
        return [(0, n)]
    count = math.ceil((n - overlap) / (tile - overlap))
    size = min(tile, math.ceil((n + (count - 1) * overlap) / count))
    starts = [round(i * (n - size) / (count - 1)) for i in range(count)]
    return [(s, s + size) for s in starts]


def owned(windows: list[tuple[int, int]], n: int) -> list[tuple[int, int]]:
    """The disjoint part of [0, n) each window accounts for: cuts in the middle of overlaps."""
    cuts = [0] + [(windows[i + 1][0] + windows[i][1]) // 2 for i in range(len(windows) - 1)]
    cuts.append(n)
    return [(cuts[i], cuts[i + 1]) for i in range(len(windows))]


def weights(windows: list[tuple[int, int]], n: int, scale: int, drop: float,
            fade: float) -> list[Tensor]:
    """1-D blend weights per window, (end - start) * scale long, summing to one everywhere.

    Next to a neighbour, a window's outer `drop` (output units) gets weight zero, then the
    weight rises linearly over `fade`.
    """
    raw = []
    total = torch.zeros(n * scale, dtype=torch.float64)
    for s, e in windows:
        pos = torch.arange((e - s) * scale, dtype=torch.float64) + 0.5
        w = torch.ones_like(pos)
        if s > 0:
            w = torch.minimum(w, _rise(pos, drop, fade))
        if e < n:
            w = torch.minimum(w, _rise((e - s) * scale - pos, drop, fade))
        raw.append(w)
        total[s * scale:e * scale] += w
    return [(w / total[s * scale:e * scale]).float() for w, (s, e) in zip(raw, windows)]


def _rise(dist: Tensor, drop: float, fade: float) -> Tensor:
    if fade <= 0:
        return (dist > drop).double()
    return ((dist - drop) / fade).clamp(0, 1)


# Default overlap: a quarter tile, at most MAX_OVERLAP px. What a tile edge disturbs is set by
# the network's depth, not by the tile: on the trained tiny VAE (tools/train_tiny_vae.py) 64 px
# of overlap decoded within 1 step of untiled and 128 px encoded exactly (2048 and 4096 px,
# 1024 and 2048 px tiles); the SDXL decoder reaches about 1.3x as far (138 against 108 px of
# receptive field). A 2048 px tile's 512 px overlap made a 16K job's VAE work 1.5x that of 256.
MAX_OVERLAP = 256


def tile_sizes(tile: int, overlap: int | None) -> tuple[int, int]:
    """Tile side and overlap in latent units, from pixels; overlap defaults to a quarter tile,
    at most MAX_OVERLAP."""
    t = max(4, tile // SCALE)
    o = (min(tile // 4, MAX_OVERLAP) if overlap is None else overlap) // SCALE
    return t, max(0, min(t // 2, o))


@dataclass
class Grid:
    """The tiles covering a latent of `size`: windows along each axis."""

    ys: list[tuple[int, int]]
    xs: list[tuple[int, int]]

    @classmethod
    def cover(cls, size: tuple[int, int], tile: int, overlap: int) -> Grid:
        return cls(spans(size[0], tile, overlap), spans(size[1], tile, overlap))

    @property
    def size(self) -> tuple[int, int]:
        return self.ys[-1][1], self.xs[-1][1]

    def __len__(self) -> int:
        return len(self.ys) * len(self.xs)

    def tiles(self) -> Iterator[tuple[Box, Box]]:
        """(window, owned part) of every tile, row by row."""
        oy, ox = owned(self.ys, self.size[0]), owned(self.xs, self.size[1])
        for ys, oys in zip(self.ys, oy):
            for xs, oxs in zip(self.xs, ox):
                yield ys + xs, oys + oxs


# The cross-fade buffer (one row of tiles, full width, float32: 400 MB for a 16K decode in
# 2048 px tiles) stays on a GPU when it takes at most this share of the memory free there:
# then the GPU does the sums and the host only takes finished rows. Else it lives in the
# CPU's memory (a small card's memory is better spent on tiles).
ROWS_SHARE = 0.02


def rows_bytes(width: int, height: int, tile: int) -> int:
    """Bytes of the cross-fade buffer of a `width` x `height` px decode in `tile` px tiles:
    one row of tiles, full width, 3 float32 channels."""
    return 3 * 4 * min(tile, height) * width


def rows_on_device(rows_bytes: float, free: float | None) -> bool:
    """Whether a cross-fade buffer of `rows_bytes` stays on a GPU with `free` bytes free."""
    return free is not None and rows_bytes <= ROWS_SHARE * free


def blend(grid: Grid, scale: int, channels: int, overlap: float,
          run: Callable[[Box], Tensor], home: torch.device | None = None
          ) -> Iterator[tuple[int, Tensor]]:
    """Run every tile and cross-fade them; yield (first row, rows C x n x W) top to bottom.

    `run(window)` gives a tile's output, 1 x C x (scale * window); `overlap` is in latent units.
    Rows go out as soon as no later tile touches them, so only one row of tiles (full width,
    float32, on `home`: default the tiles' device) is ever held: the rows are a view of that
    buffer, to use before the next step. Tiles from a GPU into a CPU buffer are weighted on
    the GPU and copied into pinned memory without waiting, once per row of tiles.
    """
    (h, w), drop, fade = grid.size, DROP * overlap * scale, FADE * overlap * scale
    wy = weights(grid.ys, h, scale, drop, fade)
    wx = weights(grid.xs, w, scale, drop, fade)
    height = max(e - s for s, e in grid.ys) * scale
    buf = None
    top = 0  # image row of buf[:, 0]
    for r, ((y0, y1), wyr) in enumerate(zip(grid.ys, wy)):
        pending = []
        for (x0, x1), wxc in zip(grid.xs, wx):
            out = run((y0, y1, x0, x1))[0]
            if buf is None:
                buf = torch.zeros(channels, height, w * scale, device=home or out.device)
            # The two 1-D weights cross to the tile's device, not their (tile-sized) product.
            weight = wyr.to(out.device)[:, None] * wxc.to(out.device)[None, :]
            part = buf[:, y0 * scale - top:y1 * scale - top, x0 * scale:x1 * scale]
            if part.device == out.device or out.device.type != "cuda":
                # addcmul_ promotes a bf16 tile to float32 as it goes: no float32 copy of it.
                part.addcmul_(out, weight)
            else:
                staged = torch.empty(part.shape, pin_memory=True)
                staged.copy_(out.float() * weight, non_blocking=True)
                pending.append((part, staged, torch.cuda.Event()))
                pending[-1][2].record()
            del out
        for part, staged, done in pending:
            done.synchronize()
            part += staged
        # Rows above the next row of tiles get nothing more: hand them out.
        final = grid.ys[r + 1][0] * scale if r + 1 < len(grid.ys) else y1 * scale
        n, rest = final - top, y1 * scale - final
        yield top, buf[:, :n]
        buf[:, :rest] = buf[:, n:n + rest].clone()
        buf[:, rest:] = 0
        top = final


def crop(x: Tensor, window: Box, part: Box) -> Tensor:
    """The part of feature map x (which covers `window`, at any scale) inside `part`."""
    wy0, wy1, wx0, wx1 = window
    py0, py1, px0, px1 = part
    ry, rx = x.shape[-2] // (wy1 - wy0), x.shape[-1] // (wx1 - wx0)
    return x[..., (py0 - wy0) * ry:(py1 - wy0) * ry, (px0 - wx0) * rx:(px1 - wx0) * rx]
