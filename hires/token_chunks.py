"""Transformer blocks over chunks of tokens: the `ff_chunks` lever of a stage's strategy.

With LinFusion mounted, a whole BasicTransformerBlock runs over chunks of tokens: every part
of it works token by token (LayerNorm, the cross-attention to the 77 text tokens, the
feed-forward) except the self-attention, and LinFusion's linear attention needs only a small
summary of all keys and values (hires.linfusion.KeyValueState), built in a first pass over the
chunks. So the block holds its input, its output and one chunk's work, where diffusers holds
its input, the norm output, q, k, v, the attention output and the residual sums, each as
large as the input (1.25 GiB each at the 16K stage's second level in bf16). With softmax
self-attention (no LinFusion, or other block layouts) only the feed-forward, the widest part,
is chunked (ChunkedFeedForward). Same arithmetic as diffusers up to float rounding.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from hires.lean import restore_forwards
from hires.linfusion import KeyValueState, LinearAttention

CHUNK_TOKENS = 16384  # tokens per chunk (hires.unet_costs prices a chunk of this size)


def block_supported(block: nn.Module) -> bool:
    """Whether `chunked_block` computes this BasicTransformerBlock exactly (SDXL's with
    LinFusion's self-attention all qualify)."""
    return (not block.training and block.norm_type == "layer_norm" and block.pos_embed is None
            and not block.only_cross_attention and isinstance(block.attn1, LinearAttention)
            and getattr(block, "_chunk_size", None) is None)


def chunked_block(block: nn.Module, x: Tensor, encoder_hidden_states: Tensor | None,
                  encoder_attention_mask: Tensor | None, cross_attention_kwargs: dict,
                  max_tokens: int) -> Tensor:
    """BasicTransformerBlock.forward (layer norms, LinFusion self-attention, cross-attention,
    feed-forward) over chunks of at most `max_tokens` of the B x N x C tokens `x`."""
    chunks = range(0, x.shape[1], max_tokens)
    state = KeyValueState(block.attn1.heads)
    for a in chunks:
        block.attn1.add_keys(state, block.norm1(x[:, a:a + max_tokens]))
    out = torch.empty_like(x)
    for a in chunks:
        h = x[:, a:a + max_tokens]
        h = block.attn1.attend(state, block.norm1(h)) + h
        if block.attn2 is not None:
            h = block.attn2(block.norm2(h), encoder_hidden_states=encoder_hidden_states,
                            attention_mask=encoder_attention_mask, **cross_attention_kwargs) + h
        out[:, a:a + max_tokens] = block.ff(block.norm3(h)) + h
    return out


def _chunked_forward(block: nn.Module, original: Callable, max_tokens: int) -> Callable:
    def forward(hidden_states: Tensor, attention_mask: Tensor | None = None,
                encoder_hidden_states: Tensor | None = None,
                encoder_attention_mask: Tensor | None = None, timestep=None,
                cross_attention_kwargs: dict | None = None, class_labels=None,
                added_cond_kwargs=None) -> Tensor:
        kwargs = dict(cross_attention_kwargs or {})
        kwargs.pop("scale", None)  # diffusers ignores it too (deprecated)
        if (hidden_states.ndim != 3 or hidden_states.shape[1] <= max_tokens
                or attention_mask is not None or "gligen" in kwargs or torch.is_grad_enabled()):
            return original(hidden_states, attention_mask, encoder_hidden_states,
                            encoder_attention_mask, timestep, cross_attention_kwargs,
                            class_labels, added_cond_kwargs)
        return chunked_block(block, hidden_states, encoder_hidden_states,
                             encoder_attention_mask, kwargs, max_tokens)

    return forward


class ChunkedFeedForward(nn.Module):
    """A transformer feed-forward run over at most `max_tokens` tokens at a time.

    Ours rather than diffusers' `set_chunk_feed_forward`, which needs the token count to be a
    multiple of the chunk size: arbitrary aspect ratios break that.
    """

    def __init__(self, ff: nn.Module, max_tokens: int):
        super().__init__()
        self.ff, self.max_tokens = ff, max_tokens

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        chunks = -(-x.shape[1] // self.max_tokens)
        if chunks <= 1:
            return self.ff(x, *args, **kwargs)
        return torch.cat([self.ff(c, *args, **kwargs) for c in x.chunk(chunks, dim=1)], dim=1)


@contextmanager
def token_chunks(model: nn.Module, enabled: bool = True,
                 max_tokens: int = CHUNK_TOKENS) -> Iterator[None]:
    """Run `model`'s transformer blocks over chunks of tokens (or only their feed-forwards,
    where the block is not one `chunked_block` computes) while a big stage runs."""
    from diffusers.models.attention import BasicTransformerBlock

    blocks = [m for m in model.modules() if isinstance(m, BasicTransformerBlock)] if enabled else []
    patched, wrapped = [], []
    try:
        for block in blocks:
            if block_supported(block) and not hasattr(block, "_diffusers_hook"):
                patched.append((block, block.__dict__.get("forward")))
                block.forward = _chunked_forward(block, block.forward, max_tokens)
            else:
                wrapped.append(block)
                block.ff = ChunkedFeedForward(block.ff, max_tokens)
        yield
    finally:
        restore_forwards(patched)
        for block in wrapped:
            if isinstance(block.ff, ChunkedFeedForward):
                block.ff = block.ff.ff
