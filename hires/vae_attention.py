"""The mid-block attention of a tile, over the whole image.

Up to GLOBAL_TOKENS latent pixels (a 4096 x 4096 px image), the attention runs once, exactly, on
the whole image's attention input, gathered from the tiles' owned parts in one pass; each tile
then takes its window of the result. That costs what the untiled attention costs, less than
every tile attending to the whole image, and is exact even at a tile's cut edges.

Bigger images: a tile's queries attend to the tile's trusted inner tokens exactly and to the
rest of the image through a grid of at most CONTEXT_CELLS cells: each cell the mean key/value of
its tokens (gathered exactly, in one more pass) with a log(token count) bias. A fixed count, not
a multiple of the tile's area (4 tile areas until 2026-12-01): with 2048 px tiles that gave
every query 4x more cells than with 1024 px tiles, half the SDXL VAE's work at 16384 px.
That assumes a cell's keys alike, and a trained VAE's are not: its attention spreads over the
whole image (the trained tiny VAE at 2048 px: 31 % of a query's weight within 64 latent px),
and pooling even 2 x 2 tokens drops the spread of their logits inside the exponential. Against
the untiled decode, in 8-bit steps (trained tiny VAE, held-out photos; BENCHMARKS.md):
4096 px in 1024 px tiles with cells of 2 x 2, max 11 / 66, mean 0.08 / 1.65 (coffee / chelsea),
against max 1 with the global attention, which took 48 s instead of 33 s on the CPU. On a GPU
the global attention of a 4096^2 image is about 0.14 PFLOP for the SDXL VAE (a fraction of a
second); at 16384 px it would be about 36 PFLOP, so the cells stay above 4096 px.
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


def cell_side(size: tuple[int, int]) -> int:
    """Side of one context cell for a latent of `size`."""
    return max(1, math.ceil(math.sqrt(size[0] * size[1] / CONTEXT_CELLS)))


class ContextAttention:
    """Attention processor: one tile's self-attention with the rest of the image as cells.

    Each cell's logit is raised by log(number of its tokens not among the tile's trusted ones):
    for a cell of similar keys that is what softmax over its tokens would give.
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
    """Add one tile's attention inputs (its owned part) into per-cell sums, or the whole map."""
    oy0, oy1, ox0, ox1 = state.owned
    if x.shape[-2:] != (oy1 - oy0, ox1 - ox0):
        raise NotImplementedError("attention away from the latent resolution")
    if is_global(state.size):
        if attn not in state.sums:
            state.sums[attn] = torch.zeros(x.shape[1], *state.size, device=x.device)
        state.sums[attn][:, oy0:oy1, ox0:ox1] = x[0]
        return
    f = state.cell
    gh, gw = -(-state.size[0] // f), -(-state.size[1] // f)
    x = x[0].float()
    rows = torch.zeros(x.shape[0], gh, x.shape[2], device=x.device)
    rows.index_add_(1, (torch.arange(oy0, oy1) // f).to(x.device), x)
    cells = torch.zeros(x.shape[0], gh, gw, device=x.device)
    cells.index_add_(2, (torch.arange(ox0, ox1) // f).to(x.device), rows)
    if attn in state.sums:
        state.sums[attn] += cells
    else:
        state.sums[attn] = cells


def is_global(size: tuple[int, int]) -> bool:
    """Whether the attention of a latent of `size` runs whole, once (else: context cells)."""
    return size[0] * size[1] <= GLOBAL_TOKENS


def finish_context(state: State, attn: Attention, sums: Tensor, dtype: torch.dtype) -> None:
    """The whole image's attention output, or the cells' keys/values from their mean inputs.

    The attention's GroupNorm (with fixed statistics) and its key/value projections are affine,
    so the key of a cell's mean input is exactly the mean of the cell's keys.
    """
    if is_global(state.size):
        hidden = sums[None].to(dtype)
        q, k, v = _qkv(attn, hidden)
        state.context[attn] = _output(attn, F.scaled_dot_product_attention(q, k, v), hidden)
        return
    h, w = state.size
    f = state.cell
    gh, gw = sums.shape[1:]
    ey = torch.tensor([min(i * f, h) for i in range(gh + 1)], dtype=torch.float64)
    ex = torch.tensor([min(j * f, w) for j in range(gw + 1)], dtype=torch.float64)
    area = ((ey[1:] - ey[:-1])[:, None] * (ex[1:] - ex[:-1])[None, :]).float()
    mean = (sums / area.to(sums.device))[None].to(dtype)
    _, k, v = _qkv(attn, mean)
    state.context[attn] = (k, v, ey, ex)


def _attend_with_context(state: State, attn: Attention, q: Tensor, k: Tensor,
                         v: Tensor) -> Tensor:
    ck, cv, ey, ex = state.context[attn]
    # Local keys only from the tile's trusted inner part: near a cut edge they saw zero padding.
    wy0, wy1, wx0, wx1 = state.window
    y0, y1, x0, x1 = state.trusted
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
    bias = torch.log(outside[keep]).to(ck.device)
    keep = keep.to(ck.device)
    ck, cv = ck[:, :, keep], cv[:, :, keep]
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
