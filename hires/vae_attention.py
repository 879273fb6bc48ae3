"""The mid-block attention of a tiled VAE, over the whole image, computed once per token.

Up to GLOBAL_TOKENS latent pixels (a 4096 x 4096 px image), the attention runs once, exactly, on
the whole image's attention input, gathered from the tiles' owned parts in one pass; each tile
then takes its window of the result. That costs what the untiled attention costs, less than
every tile attending to the whole image, and is exact even at a tile's cut edges.

Bigger images (the "sweep"): the same pass gathers the input whole (in the run dtype, in the
CPU's memory), and the output is computed once per token, block by block of queries. A block's
queries attend exactly to every token within SWEEP_REACH of the block, and to the rest of the
image through CONTEXT_CELLS cells and `landmarks` exact tokens. Answering per block rather than
per tile computes no query twice (tiles overlap: 1.3x the tokens at 16K) and gives every query
its neighbourhood on all sides (a tile's queries next to its cut edge had none on that side).

A cell stands for its tokens by their mean key and value with a log(count) bias: right where its
keys are alike. A trained VAE's are not everywhere: a few tokens carry keys ten times the
median's, and some queries put most of their weight on them (the trained tiny VAE at 2048 px:
the top 4 of 43,520 tokens draw 13 % of all attention). Averaged into a cell such a token loses
that weight, and the whole image shifts (chelsea at 4096 px, cells of 2 x 2: max 66, mean 1.65
8-bit steps against the untiled decode). So the tokens whose keys stand farthest from their
cell's mean key are kept apart as exact keys for every block, and their cells stand for the
rest (chelsea at 8192 px: max 2, mean 0.05; BENCHMARKS.md).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hires.vae_tiles import Box, crop

if TYPE_CHECKING:
    from diffusers.models.attention_processor import Attention

    from hires.vae_stats import State

CONTEXT_CELLS = 256 * 256  # attention context grid: at most this many cells
GLOBAL_TOKENS = 512 * 512  # up to this many latent pixels the attention runs whole, exactly
MIN_LANDMARKS = 4096  # tokens kept as exact keys for every block: those their cells misstate,
LANDMARK_EVERY = 64  # or one per this many latent pixels where that is more
SWEEP_BLOCK = 64  # above GLOBAL_TOKENS: queries answered together, a square of this side
SWEEP_REACH = 64  # latent px around a block whose tokens are its exact keys


def attentions(net: nn.Module) -> list[Attention]:
    """The attention modules of `net` (a VAE's encoder or decoder)."""
    # Imported here, not above: the planner imports this module, and diffusers takes seconds.
    from diffusers.models.attention_processor import Attention

    return [m for m in net.modules() if isinstance(m, Attention)]


def cell_side(size: tuple[int, int]) -> int:
    """Side of one context cell for a latent of `size`."""
    return max(1, math.ceil(math.sqrt(size[0] * size[1] / CONTEXT_CELLS)))


def landmarks(size: tuple[int, int]) -> int:
    """How many landmarks a latent of `size` keeps: more as the image grows, since a fixed
    count lets errors grow (chelsea, 4096 of them: mean 0.009 at 4096 px, 0.071 at 8192)."""
    return max(MIN_LANDMARKS, size[0] * size[1] // LANDMARK_EVERY)


def is_global(size: tuple[int, int]) -> bool:
    """Whether the attention of a latent of `size` runs whole, once (else: the sweep)."""
    return size[0] * size[1] <= GLOBAL_TOKENS


def block_count(size: tuple[int, int]) -> int:
    """How many query blocks `blocks(size)` yields."""
    return -(-size[0] // SWEEP_BLOCK) * -(-size[1] // SWEEP_BLOCK)


def blocks(size: tuple[int, int]) -> Iterator[tuple[Box, Box]]:
    """The sweep's (query block, exact-key box) pairs, covering a latent of `size` once.

    The key box is the block grown by SWEEP_REACH and then out to whole cells, so that no cell
    is part exact keys and part summary.
    """
    (h, w), f, r = size, cell_side(size), SWEEP_REACH
    for y0 in range(0, h, SWEEP_BLOCK):
        for x0 in range(0, w, SWEEP_BLOCK):
            y1, x1 = min(y0 + SWEEP_BLOCK, h), min(x0 + SWEEP_BLOCK, w)
            keys = (max(0, y0 - r) // f * f, min(h, -(-(y1 + r) // f) * f),
                    max(0, x0 - r) // f * f, min(w, -(-(x1 + r) // f) * f))
            yield (y0, y1, x0, x1), keys


class ContextAttention:
    """Attention processor: a tile's window of the whole image's attention output.

    The first pass to reach the attention gathers its input (`add_cells`); the output is then
    computed once for the whole image (`finish_context`), and every later tile copies its part.
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
        y0, y1, x0, x1 = state.window
        # In the input's memory format (channels-last on the CPU), as the convolutions want.
        return torch.empty_like(hidden_states).copy_(state.context[attn][:, :, y0:y1, x0:x1])


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


def _home(device: torch.device) -> torch.device:
    """Where the sweep keeps its whole-image maps: in the CPU's memory, next to the canvas,
    not in the GPU memory the tiles' saved outputs use (meta stays meta, for the replay)."""
    return device if device.type in ("cpu", "meta") else torch.device("cpu")


def add_cells(state: State, attn: Attention, x: Tensor) -> None:
    """Add one tile's attention inputs (its owned part) to the whole map, and above
    GLOBAL_TOKENS into per-cell sums.

    Cells: also keeps the `landmarks` tokens seen so far whose keys stand out most from their
    cell's mean key (what pooling them would lose), to serve every block as exact keys.
    """
    oy0, oy1, ox0, ox1 = state.owned
    if x.shape[-2:] != (oy1 - oy0, ox1 - ox0):
        raise NotImplementedError("attention away from the latent resolution")
    if is_global(state.size):
        if attn not in state.sums:
            state.sums[attn] = torch.zeros(x.shape[1], *state.size, device=x.device)
        state.sums[attn][:, oy0:oy1, ox0:ox1] = x[0]
        return
    acc = state.sums.get(attn)
    if acc is None:
        home = _home(x.device)
        inputs = torch.empty(x.shape[1], *state.size, dtype=x.dtype, device=home,
                             pin_memory=home != x.device and torch.cuda.is_available())
    else:
        inputs = acc[2]
    inputs[:, oy0:oy1, ox0:ox1] = x[0]
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
    if acc is not None:
        cells += acc[0]
        marks = tuple(torch.cat([a, b], -1) for a, b in zip(acc[1], marks))
        keep = marks[0].topk(min(count, marks[0].numel())).indices
        marks = tuple(t[..., keep] for t in marks)
    state.sums[attn] = (cells, marks, inputs)


def _pool(x: Tensor, rows: Tensor, cols: Tensor, grid: tuple[int, int]) -> Tensor:
    """Sums of a c x h x w map over cells: row r goes to cell row rows[r], column to cols[c]."""
    out = torch.zeros(x.shape[0], grid[0], x.shape[2], device=x.device)
    out.index_add_(1, rows, x)
    cells = torch.zeros(x.shape[0], *grid, device=x.device)
    return cells.index_add_(2, cols, out)


def finish_context(state: State, attn: Attention, sums, dtype: torch.dtype,
                   tick: Callable[[], None] | None = None) -> None:
    """The whole image's attention output: exactly, or above GLOBAL_TOKENS by the sweep
    (`tick()` after each block).

    The attention's GroupNorm (with fixed statistics) and its key/value projections are affine,
    so the key of a cell's mean input is exactly the mean of the cell's keys.
    """
    if is_global(state.size):
        hidden = sums[None].to(dtype)
        q, k, v = _qkv(attn, hidden)
        state.context[attn] = _output(attn, F.scaled_dot_product_attention(q, k, v), hidden)
        return
    cells, marks, inputs = sums
    context = summaries(state, attn, cells, marks, dtype)
    state.context[attn] = _sweep(state, attn, inputs, context, tick)


def summaries(state: State, attn: Attention, cells: Tensor, marks: tuple,
              dtype: torch.dtype) -> tuple:
    """The cells' and landmarks' keys and values, from their gathered inputs, and where they
    are: what `_attend_with_context` needs besides a block's own keys."""
    (h, w), f = state.size, state.cell
    _, pos, marked = marks
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
    return k, v, ey, ex, mk, mv, pos, cell_of


def _sweep(state: State, attn: Attention, inputs: Tensor, context: tuple,
           tick: Callable[[], None] | None) -> Tensor:
    """The attention's output (1 x C x h x w, where `inputs` is) for every token, block by block."""
    # Pinned like the input where a GPU copies tiles' windows out of it.
    out = torch.empty(inputs.shape, dtype=inputs.dtype, device=inputs.device,
                      pin_memory=inputs.device.type == "cpu" and inputs.is_pinned())
    for (y0, y1, x0, x1), keys in blocks(state.size):
        ky0, ky1, kx0, kx1 = keys
        hidden = inputs[None, :, ky0:ky1, kx0:kx1].to(state.device)
        q, k, v = _qkv(attn, hidden)
        b, heads, _, d = q.shape
        q = q.reshape(b, heads, ky1 - ky0, kx1 - kx0, d)[
            :, :, y0 - ky0:y1 - ky0, x0 - kx0:x1 - kx0].reshape(b, heads, -1, d)
        result = _attend_with_context(context, state.size, q, k, v, keys)
        block = hidden[:, :, y0 - ky0:y1 - ky0, x0 - kx0:x1 - kx0]
        out[:, y0:y1, x0:x1] = _output(attn, result, block)[0]
        if tick is not None:
            tick()
    return out[None]


def _attend_with_context(context: tuple, size: tuple[int, int], q: Tensor, k: Tensor,
                         v: Tensor, keys: Box) -> Tensor:
    """Queries q against k, v (the tokens of `keys`, a box on whole cells) exactly, and against
    the rest of the image through the cells and landmarks of `context`."""
    ck, cv, ey, ex, mk, mv, pos, cell_of = context
    y0, y1, x0, x1 = keys
    d = k.shape[-1]
    # How many tokens of each cell lie outside the key box (those inside are exact keys).
    in_y = (ey[1:].clamp(max=y1) - ey[:-1].clamp(min=y0)).clamp(min=0)
    in_x = (ex[1:].clamp(max=x1) - ex[:-1].clamp(min=x0)).clamp(min=0)
    area = (ey[1:] - ey[:-1])[:, None] * (ex[1:] - ex[:-1])[None, :]
    outside = (area - in_y[:, None] * in_x[None, :]).flatten()
    # Indices found on the CPU: a boolean mask on the device would make the host wait for it.
    keep = (outside > 0.5).nonzero().flatten()
    # Landmarks inside the key box are exact keys already: masked out, no host sync.
    py, px = pos // size[1], pos % size[1]
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
