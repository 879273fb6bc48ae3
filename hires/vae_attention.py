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

import functools
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
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
SCORE_BYTES = 1 << 29  # float32 scores of one chunk of queries (`attend`): at most this many
FLASH_HEAD_DIM = 256  # the widest head SDPA's flash kernels take on a GPU
MASKED = -1e4  # a key's bias for no weight (finite: no inf * 0 in the widened channel)


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
        part = state.context[attn][:, :, y0:y1, x0:x1]
        if part.device != hidden_states.device and part.device.type == "cpu":
            # Gathered on the host into pinned memory first: the upload then need not wait
            # (a strided window would go through pageable memory, the GPU idle meanwhile).
            part = torch.empty_strided(part.shape, hidden_states.stride(), dtype=part.dtype,
                                       pin_memory=True).copy_(part)
        # In the input's memory format (channels-last), as the convolutions want.
        return torch.empty_like(hidden_states).copy_(part, non_blocking=True)


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


def _whole_map(x: Tensor, size: tuple[int, int]) -> Tensor:
    """An empty 1 x C x h x w map like `x`, where the sweep keeps it (`_home`): channels-last,
    so that a band of whole rows is one contiguous run of memory, and pinned off a GPU, so
    that bands cross to it without waiting."""
    home, (h, w), c = _home(x.device), size, x.shape[1]
    return torch.empty_strided((1, c, h, w), (h * w * c, 1, w * c, c), dtype=x.dtype,
                               device=home, pin_memory=home != x.device and x.device.type == "cuda")


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
    inputs = _whole_map(x, state.size) if acc is None else acc[2]
    inputs[:, :, oy0:oy1, ox0:ox1] = x
    f, dev = state.cell, x.device
    gh, gw = -(-state.size[0] // f), -(-state.size[1] // f)
    rows = torch.arange(oy0, oy1, device=dev) // f
    cols = torch.arange(ox0, ox1, device=dev) // f
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
        state.context[attn] = _output(attn, attend(q, k, v), hidden)
        return
    cells, marks, inputs = sums
    context = summaries(state, attn, cells, marks, dtype)
    state.context[attn] = _sweep(state, attn, inputs, context, tick)


def attend(q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None = None) -> Tensor:
    """softmax(q.k / sqrt(d) + bias) v for q, k, v of shape (batch, heads, tokens, d), `bias`
    one float per key (MASKED: none of the key's weight).

    SDPA's fused kernels where they take the head: any width on a CPU, up to FLASH_HEAD_DIM
    channels on a GPU. Wider heads on a GPU (the SDXL VAE's one head of 512 channels) get our
    own chunked matmuls: SDPA's fallback kernel ran at 73 TFLOP/s on an H200 (BENCHMARKS.md).
    Meta tensors (the planner's replay) take the GPU's way.
    """
    if q.device.type in ("cuda", "meta") and q.shape[-1] > FLASH_HEAD_DIM:
        return _attend_chunked(q, k, v, bias)
    if bias is None:
        return F.scaled_dot_product_attention(q, k, v)
    # The bias rides on an extra channel (logit = scale * (q.k + 1 * bias / scale)), since a
    # queries x keys mask would take gigabytes; 8 extra keep the fused kernels' alignment.
    d = q.shape[-1]
    scale = d**-0.5

    def widen(t: Tensor, first: Tensor | float) -> Tensor:
        extra = torch.zeros(*t.shape[:-1], 8, dtype=t.dtype, device=t.device)
        extra[..., 0] = first
        return torch.cat([t, extra], -1)

    out = F.scaled_dot_product_attention(widen(q, 1.0), widen(k, (bias / scale).to(k.dtype)),
                                         widen(v, 0.0), scale=scale)
    return out[..., :d]


def _attend_chunked(q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None = None) -> Tensor:
    """`attend` as plain matmuls, a chunk of queries at a time, their scores in float32."""
    scale = q.shape[-1] ** -0.5
    chunk = max(1, SCORE_BYTES // (4 * k.shape[-2] * q.shape[0] * q.shape[1]))
    mixed = q.dtype != torch.float32 and mixed_matmul(q.device.type)
    # bf16 values are exact in float32 (and TF32): without mixed matmuls, the same products.
    kt = k.transpose(-1, -2) if mixed else k.float().transpose(-1, -2)
    out = torch.empty(*q.shape[:-1], v.shape[-1], dtype=v.dtype, device=v.device)
    for i in range(0, q.shape[-2], chunk):
        scores = _scores(q[:, :, i:i + chunk], kt, mixed).mul_(scale)
        if bias is not None:
            scores += bias
        weights = torch.softmax(scores, -1)
        del scores
        out[:, :, i:i + chunk] = torch.matmul(weights.to(v.dtype), v)
    return out


def _scores(q: Tensor, kt: Tensor, mixed: bool) -> Tensor:
    """q.kt in float32 (rounded to bf16, logits near 50 would move by 0.1, their weights by
    10 %): bf16 products with float32 results where `mixed`, else in float32."""
    if not mixed:
        return torch.matmul(q.float(), kt)
    b, h, n, d = q.shape
    s = torch.bmm(q.reshape(b * h, n, d), kt.reshape(b * h, d, -1), out_dtype=torch.float32)
    return s.view(b, h, n, -1)


@functools.cache
def mixed_matmul(device_type: str, dtype: torch.dtype = torch.bfloat16) -> bool:
    """Whether bmm takes `dtype` (half) inputs to a float32 output on this kind of device
    (CUDA, torch 2.8 and later; meta, for the replay)."""
    if device_type not in ("cuda", "meta") or dtype == torch.float32:
        return False
    try:
        a = torch.zeros(1, 1, 8, dtype=dtype, device=device_type)
        torch.bmm(a, a.transpose(1, 2), out_dtype=torch.float32)
    except (RuntimeError, TypeError, NotImplementedError):
        return False
    return True


@dataclass
class Context:
    """What a block attends to beyond its key box: the cells' and landmarks' keys and values
    (cells first), and what `_context_bias` needs to weigh them for a given box."""

    keys: Tensor  # 1 x heads x (cells + landmarks) x d
    values: Tensor
    ey: Tensor  # cell edges down and across, in latent px, float32, on the keys' device
    ex: Tensor
    area: Tensor  # tokens per cell, flattened
    pos: Tensor  # the landmarks' places (y * w + x)
    cell_of: Tensor  # the landmarks' cells


def summaries(state: State, attn: Attention, cells: Tensor, marks: tuple,
              dtype: torch.dtype) -> Context:
    """The cells' and landmarks' keys and values, from their gathered inputs, and where they
    are: what `_attend_with_context` needs besides a block's own keys."""
    (h, w), f = state.size, state.cell
    _, pos, marked = marks
    c, gh, gw = cells.shape
    dev = cells.device
    ey = torch.tensor([min(i * f, h) for i in range(gh + 1)], dtype=torch.float32, device=dev)
    ex = torch.tensor([min(j * f, w) for j in range(gw + 1)], dtype=torch.float32, device=dev)
    area = ((ey[1:] - ey[:-1])[:, None] * (ex[1:] - ex[:-1])[None, :]).flatten()
    # Landmarks leave their cells: a cell stands for the mean of its other tokens.
    cell_of = (pos // w) // f * gw + (pos % w) // f
    sums = cells.reshape(c, -1).index_add(1, cell_of, -marked)
    others = area.index_add(0, cell_of, -torch.ones_like(marked[0]))
    _, k, v = _qkv(attn, (sums / others.clamp(min=1)).view(1, c, gh, gw).to(dtype))
    _, mk, mv = _qkv(attn, marked[None, :, None, :].to(dtype))
    return Context(torch.cat([k, mk], 2), torch.cat([v, mv], 2), ey, ex, area, pos, cell_of)


def block_rows(size: tuple[int, int]) -> list[list[tuple[Box, Box]]]:
    """`blocks(size)` by rows of blocks (which share their key rows)."""
    rows: dict[int, list[tuple[Box, Box]]] = {}
    for block, keys in blocks(size):
        rows.setdefault(block[0], []).append((block, keys))
    return list(rows.values())


def _sweep(state: State, attn: Attention, inputs: Tensor, context: Context,
           tick: Callable[[], None] | None) -> Tensor:
    """The attention's output (1 x C x h x w, where `inputs` is) for every token, block by block.

    A row of blocks at a time: its key rows cross to the device in one copy and its output
    comes back in one, both contiguous (the maps are channels-last) and, off a GPU, pinned, so
    neither makes the host wait for the device; the host waits once, at the end.
    """
    dev = state.device
    out = torch.empty_strided(inputs.shape, inputs.stride(), dtype=inputs.dtype,
                              device=inputs.device, pin_memory=inputs.is_pinned())
    for row in block_rows(state.size):
        (y0, y1, _, _), (ky0, ky1, _, _) = row[0]
        band = inputs[:, :, ky0:ky1].to(dev, non_blocking=True)
        done = out[:, :, y0:y1]
        result = done if done.device == band.device else torch.empty_like(
            band[:, :, y0 - ky0:y1 - ky0])
        for (y0, y1, x0, x1), (ky0, ky1, kx0, kx1) in row:
            hidden = band[:, :, :, kx0:kx1]
            q, k, v = _qkv(attn, hidden)
            b, heads, _, d = q.shape
            q = q.reshape(b, heads, ky1 - ky0, kx1 - kx0, d)[
                :, :, y0 - ky0:y1 - ky0, x0 - kx0:x1 - kx0].reshape(b, heads, -1, d)
            attended = _attend_with_context(context, state.size, q, k, v, (ky0, ky1, kx0, kx1))
            block = hidden[:, :, y0 - ky0:y1 - ky0, x0 - kx0:x1 - kx0]
            result[:, :, :, x0:x1] = _output(attn, attended, block)
            if tick is not None:
                tick()
        if result is not done:
            done.copy_(result, non_blocking=True)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)  # the last rows' copies: the host reads `out` next
    return out


def _context_bias(context: Context, size: tuple[int, int], keys: Box) -> Tensor:
    """Per context key, for a block whose exact keys are the tokens of `keys` (a box on whole
    cells): the log of how many tokens a cell stands for outside the box (less its landmarks,
    which are keys of their own), 0 for a landmark outside, MASKED for what stands for nothing.
    Computed on the device from the box's numbers: nothing the host waits for."""
    y0, y1, x0, x1 = keys
    ey, ex = context.ey, context.ex
    in_y = (ey[1:].clamp(max=y1) - ey[:-1].clamp(min=y0)).clamp(min=0)
    in_x = (ex[1:].clamp(max=x1) - ex[:-1].clamp(min=x0)).clamp(min=0)
    outside = context.area - (in_y[:, None] * in_x[None, :]).flatten()
    py, px = context.pos // size[1], context.pos % size[1]
    inside = (py >= y0) & (py < y1) & (px >= x0) & (px < x1)
    others = outside.index_add(0, context.cell_of, (~inside).float(), alpha=-1)
    cells = torch.where(others > 0.5, others.clamp(min=1).log(), MASKED)
    return torch.cat([cells, torch.where(inside, MASKED, 0.0)])


def _attend_with_context(context: Context, size: tuple[int, int], q: Tensor, k: Tensor,
                         v: Tensor, keys: Box) -> Tensor:
    """Queries q against k, v (the tokens of `keys`, a box on whole cells) exactly, and against
    the rest of the image through the cells and landmarks of `context`."""
    bias = torch.cat([torch.zeros(k.shape[-2], device=k.device),
                      _context_bias(context, size, keys).to(k.device)])
    return attend(q, torch.cat([k, context.keys], 2), torch.cat([v, context.values], 2), bias)
