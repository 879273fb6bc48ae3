"""Transformer blocks over chunks of tokens (the ff_chunks lever) give the plain block's output."""

import pytest
import torch
from test_lean import unet_inputs

import hires.token_chunks as token_chunks_module
from hires.linfusion import KeyValueState, linear_attention
from hires.token_chunks import token_chunks


def test_key_value_state_summed_in_parts_matches_the_whole():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 300, 40, generator=g) for _ in range(3))
    state = KeyValueState(heads=4)
    for a in (0, 7, 160):  # uneven parts
        b = {0: 7, 7: 160, 160: 300}[a]
        state.add(k[:, a:b], v[:, a:b], tile_tokens=50)
    assert state.count == 300
    torch.testing.assert_close(state.attend(q), linear_attention(q, k, v, 4), rtol=1e-5,
                               atol=1e-6)


def test_key_value_state_without_keys_is_an_error():
    with pytest.raises(ValueError, match="no keys"):
        KeyValueState(heads=2).attend(torch.randn(1, 3, 4))


@pytest.mark.parametrize("max_tokens", [96, 500])
def test_chunked_blocks_match_the_plain_unet(tiny, monkeypatch, max_tokens):
    # 32 x 48 latent: 384 tokens at the tiny UNet's second level (its transformer blocks), so
    # 96 makes 4 chunks and 500 one chunk at most (the plain path, below the chunk size).
    unet = tiny.unet
    x, kw = unet_inputs(unet, 32, 48)
    calls = []
    chunked = token_chunks_module.chunked_block

    def counting(block, x, *args, **kwargs):
        calls.append(x.shape[1])
        return chunked(block, x, *args, **kwargs)

    monkeypatch.setattr(token_chunks_module, "chunked_block", counting)
    with torch.inference_mode():
        ref = unet(x, torch.tensor(500.0), **kw)[0]
        with token_chunks(unet, True, max_tokens=max_tokens):
            got = unet(x, torch.tensor(500.0), **kw)[0]
        after = unet(x, torch.tensor(500.0), **kw)[0]
    assert (got - ref).abs().max() <= 1e-5 * ref.abs().max()
    assert torch.equal(after, ref)  # undone
    assert all(n > max_tokens for n in calls)  # smaller inputs take diffusers' own path
    assert calls or max_tokens > 96
