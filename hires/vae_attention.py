"""The mid-block attention of a tile, over the whole image.

Up to GLOBAL_TOKENS latent pixels (a 4096 x 4096 px image), the attention runs once, exactly, on
the whole image's attention input, gathered from the tiles' owned parts in one pass; each tile
then takes its window of the result. That costs what the untiled attention costs, less than
every tile attending to the whole image, and is exact even at a tile's cut edges.

Bigger images: a tile's queries attend exactly to the tile's trusted inner tokens, and to the
rest of the image through CONTEXT_CELLS cells and `landmarks` exact tokens, both gathered in one
more pass. A cell stands for its tokens by their mean key and value with a log(count) bias: right
where its keys are alike. A trained VAE's are not everywhere: a few tokens carry keys ten times
the median's, and some queries put most of their weight on them (the trained tiny VAE at
2048 px: the top 4 of 43,520 tokens draw 13 % of all attention). Averaged into a cell such a
token loses that weight, and the whole image shifts (chelsea at 4096 px, cells of 2 x 2:
max 66, mean 1.65 8-bit steps against the untiled decode). So the tokens whose keys stand
farthest from their cell's mean key are kept apart as exact keys for every tile, and their
cells stand for the rest (chelsea at 8192 px: max 2, mean 0.05; BENCHMARKS.md).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention
from torch import Tensor

from hires.vae_tiles import crop

if TYPE_CHECKING:
    from hires.vae_stats import State

CONTEXT_CELLS = 256 * 256  # attention context grid: at most this many cells
GLOBAL_TOKENS = 512 * 512  # up to this many latent pixels the attention runs whole, exactly
MIN_LANDMARKS = 4096  # tokens kept as exact keys for every tile: those their cells misstate,
LANDMARK_EVERY = 64  # or one per this many latent pixels where that is more


def cell_side(size: tuple[int, int]) -> int:
    """Side of one context cell for a latent of `size`."""
    return max(1, math.ceil(math.sqrt(size[0] * size[1] / CONTEXT_CELLS)))


def landmarks(size: tuple[int, int]) -> int:
    """How many landmarks a latent of `size` keeps: more as the image grows, since a fixed
    count lets errors grow (chelsea, 4096 of them: mean 0.009 at 4096 px, 0.071 at 8192)."""
    return max(MIN_LANDMARKS, size[0] * size[1] // LANDMARK_EVERY)


class ContextAttention:
    """Attention processor: one tile's self-attention with the rest of the image as cells.

    Each cell's logit is raised by log(number of its tokens neither among the tile's trusted
    ones nor landmarks): for a cell of similar keys that is what softmax over them would give.
    """

    def __init__(self, state: State):
        self.state = state

    def __call__(self, attn: Attention, hidden_states: Tensor, encoder_hidden_states=None,
                 attention_mask=None, temb=None, **kwargs) -> Tensor:
        state = self.state
        if attn.group_norm is not None and attn.group_norm not in state.stats:
            attn.group_norm(hidden_states)  # gathers its statistics and stops the pass
        if attn not in state.context:
            add_cells(state, attn, crop(hidden_states, state.window, state.owned))
            state.stop(attn)
        context = state.context[attn]
        if isinstance(context, Tensor):  # the whole image's output, computed once
            y0, y1, x0, x1 = state.window
            # In the input's memory format (channels-last on the CPU), as the convolutions want.
            return torch.empty_like(hidden_states).copy_(context[:, :, y0:y1, x0:x1])
        q, k, v = _qkv(attn, hidden_states)
        return _output(attn, _attend_with_context(state, attn, q, k, v), hidden_states)


def _output(attn: Attention, out: Tensor, hidden: Tensor) -> Tensor:
    """The attention module's output from the attention result (batch, heads, tokens, d)."""
    b, c, h, w = hidden.shape
    out = out.transpose(1, 2).reshape(b, h * w, -1)
    out = attn.to_out[1](attn.to_out[0](out))
    out = out.transpose(1, 2).reshape(b, c, h, w)
    if attn.residual_connection:
        out = out + hidden
    return out / attn.rescale_output_factor


def _qkv(attn: Attention, hidden: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Queries, keys and values (batch, heads, tokens, head dim) of a b x c x h x w input."""
    x = attn.group_norm(hidden) if attn.group_norm is not None else hidden
    b, c = x.shape[:2]
    x = x.reshape(b, c, -1).transpose(1, 2)
    q, k, v = attn.to_q(x), attn.to_k(x), attn.to_v(x)
    d = q.shape[-1] // attn.heads
    return tuple(t.view(b, -1, attn.heads, d).transpose(1, 2) for t in (q, k, v))


def add_cells(state: State, attn: Attention, x: Tensor) -> None:
    """Add one tile's attention inputs (its owned part) into per-cell sums, or the whole map.

    Cells: also keeps the `landmarks` tokens seen so far whose keys stand out most from their
    cell's mean key (what pooling them would lose), to serve every tile as exact keys.
    """
    oy0, oy1, ox0, ox1 = state.owned
    if x.shape[-2:] != (oy1 - oy0, ox1 - ox0):
        raise NotImplementedError("attention away from the latent resolution")
    if is_global(state.size):
        if attn not in state.sums:
            state.sums[attn] = torch.zeros(x.shape[1], *state.size, device=x.device)
        state.sums[attn][:, oy0:oy1, ox0:ox1] = x[0]
        return
    f, dev = state.cell, x.device
    gh, gw = -(-state.size[0] // f), -(-state.size[1] // f)
    rows, cols = (torch.arange(oy0, oy1) // f).to(dev), (torch.arange(ox0, ox1) // f).to(dev)
    xf = x[0].float()
    cells = _pool(xf, rows, cols, (gh, gw))
    # Each token's key against its cell's mean key, over the cells' parts in this tile.
    _, k, _ = _qkv(attn, x)
    h, w = x.shape[-2:]
    k = k[0].float().permute(0, 2, 1).reshape(-1, h, w)
    rows, cols = rows - oy0 // f, cols - ox0 // f
    local = ((oy1 - 1) // f - oy0 // f + 1, (ox1 - 1) // f - ox0 // f + 1)
    tokens = _pool(torch.ones(1, h, w, device=dev), rows, cols, local)
    mean_k = _pool(k, rows, cols, local) / tokens
    score = (k - mean_k[:, rows][:, :, cols]).square().sum(0).flatten()
    count = landmarks(state.size)
    top = score.topk(min(count, score.numel())).indices
    pos = (oy0 + top // w) * state.size[1] + ox0 + top % w
    marks = (score[top], pos, xf.reshape(xf.shape[0], -1)[:, top])
    acc = state.sums.get(attn)
    if acc is not None:
        cells += acc[0]
        marks = tuple(torch.cat([a, b], -1) for a, b in zip(acc[1], marks))
        keep = marks[0].topk(min(count, marks[0].numel())).indices
        marks = tuple(t[..., keep] for t in marks)
    state.sums[attn] = (cells, marks)


def _pool(x: Tensor, rows: Tensor, cols: Tensor, grid: tuple[int, int]) -> Tensor:
    """Sums of a c x h x w map over cells: row r goes to cell row rows[r], column to cols[c]."""
    out = torch.zeros(x.shape[0], grid[0], x.shape[2], device=x.device)
    out.index_add_(1, rows, x)
    cells = torch.zeros(x.shape[0], *grid, device=x.device)
    return cells.index_add_(2, cols, out)


def is_global(size: tuple[int, int]) -> bool:
    """Whether the attention of a latent of `size` runs whole, once (else: context cells)."""
    return size[0] * size[1] <= GLOBAL_TOKENS


def finish_context(state: State, attn: Attention, sums, dtype: torch.dtype) -> None:
    """The whole image's attention output, or the cells' and landmarks' keys and values.

    The attention's GroupNorm (with fixed statistics) and its key/value projections are affine,
    so the key of a cell's mean input is exactly the mean of the cell's keys.
    """
    if is_global(state.size):
        hidden = sums[None].to(dtype)
        q, k, v = _qkv(attn, hidden)
        state.context[attn] = _output(attn, F.scaled_dot_product_attention(q, k, v), hidden)
        return
    (h, w), f = state.size, state.cell
    cells, (_, pos, marked) = sums
    c, gh, gw = cells.shape
    ey = torch.tensor([min(i * f, h) for i in range(gh + 1)], dtype=torch.float64)
    ex = torch.tensor([min(j * f, w) for j in range(gw + 1)], dtype=torch.float64)
    area = ((ey[1:] - ey[:-1])[:, None] * (ex[1:] - ex[:-1])[None, :]).float().flatten()
    # Landmarks leave their cells: a cell stands for the mean of its other tokens.
    cell_of = (pos // w) // f * gw + (pos % w) // f
    sums = cells.reshape(c, -1).index_add(1, cell_of, -marked)
    others = area.to(cells.device).index_add(0, cell_of, -torch.ones_like(marked[0]))
    _, k, v = _qkv(attn, (sums / others.clamp(min=1)).view(1, c, gh, gw).to(dtype))
    _, mk, mv = _qkv(attn, marked[None, :, None, :].to(dtype))
    state.context[attn] = (k, v, ey, ex, mk, mv, pos, cell_of)


def on_cells(box: tuple[int, int, int, int], f: int, size: tuple[int, int]):
    """`box` shrunk to whole cells, so that no cell is part local keys and part summary."""
    y0, y1, x0, x1 = box
    (h, w) = size
    return (-(-y0 // f) * f, y1 if y1 == h else y1 // f * f,
            -(-x0 // f) * f, x1 if x1 == w else x1 // f * f)


def _attend_with_context(state: State, attn: Attention, q: Tensor, k: Tensor,
                         v: Tensor) -> Tensor:
    ck, cv, ey, ex, mk, mv, pos, cell_of = state.context[attn]
    # Local keys only from the tile's trusted inner part: near a cut edge they saw zero padding.
    wy0, wy1, wx0, wx1 = state.window
    y0, y1, x0, x1 = on_cells(state.trusted, state.cell, state.size)
    b, heads, _, d = k.shape
    grid = (b, heads, wy1 - wy0, wx1 - wx0, d)
    k = k.reshape(grid)[:, :, y0 - wy0:y1 - wy0, x0 - wx0:x1 - wx0].reshape(b, heads, -1, d)
    v = v.reshape(grid)[:, :, y0 - wy0:y1 - wy0, x0 - wx0:x1 - wx0].reshape(b, heads, -1, d)
    # How many tokens of each cell lie outside the trusted part (those inside are local keys).
    in_y = (ey[1:].clamp(max=y1) - ey[:-1].clamp(min=y0)).clamp(min=0)
    in_x = (ex[1:].clamp(max=x1) - ex[:-1].clamp(min=x0)).clamp(min=0)
    area = (ey[1:] - ey[:-1])[:, None] * (ex[1:] - ex[:-1])[None, :]
    outside = (area - in_y[:, None] * in_x[None, :]).flatten()
    # Indices found on the CPU: a boolean mask on the device would make the host wait for it.
    keep = (outside > 0.5).nonzero().flatten()
    # Landmarks inside the trusted part are local keys already: masked out, no host sync.
    py, px = pos // state.size[1], pos % state.size[1]
    inside = ((py >= y0) & (py < y1) & (px >= x0) & (px < x1)).float()
    marks_out = torch.zeros(area.numel(), device=pos.device).index_add_(0, cell_of, 1 - inside)
    others = outside.float().to(pos.device) - marks_out
    keep = keep.to(ck.device)
    # A cell whose outside tokens are all landmarks is masked out like them (its mean is void).
    others = others[keep]
    bias = torch.cat([torch.where(others > 0.5, others.clamp(min=1).log(), -1e4), inside * -1e4])
    ck = torch.cat([ck[:, :, keep], mk], 2)
    cv = torch.cat([cv[:, :, keep], mv], 2)
    # The per-key bias rides on an extra channel, since a queries x keys float mask would take
    # gigabytes: logit = scale * (q.k + 1 * bias / scale). 8 extra keep fused kernels usable.
    scale = 1 / math.sqrt(d)

    def widen(t: Tensor, first: Tensor | float) -> Tensor:
        extra = torch.zeros(*t.shape[:-1], 8, dtype=t.dtype, device=t.device)
        extra[..., 0] = first
        return torch.cat([t, extra], -1)

    q2 = widen(q, 1.0)
    k2 = torch.cat([widen(k, 0.0), widen(ck, (bias / scale).to(ck.dtype))], 2)
    v2 = widen(torch.cat([v, cv], 2), 0.0)
    return F.scaled_dot_product_attention(q2, k2, v2, scale=scale)[..., :d]
