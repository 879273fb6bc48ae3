"""The tiled VAE's mid-block attention above GLOBAL_TOKENS: context cells and landmarks."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hires import vae as tiled
from hires import vae_attention
from hires.tiny import tiny_vae
from hires.vae_stats import State


@pytest.fixture(scope="module")
def trained():
    return tiny_vae(trained=True).eval()


def _context_attention(attn, x: torch.Tensor, cell: int, window: tuple[int, int, int, int]):
    """One window's queries against the whole map `x` through cells (the map is one tile)."""
    h, w = x.shape[-2:]
    state = State(size=(h, w), cell=cell, device=x.device)
    state.window = state.owned = (0, h, 0, w)
    vae_attention.add_cells(state, attn, x)
    cells, marks, _ = state.sums.pop(attn)
    context = vae_attention.summaries(state, attn, cells, marks, x.dtype)
    y0, y1, x0, x1 = window
    with torch.no_grad():
        q, k, v = vae_attention._qkv(attn, x[:, :, y0:y1, x0:x1])
        ours = vae_attention._attend_with_context(context, (h, w), q, k, v, window)
        _, keys, values = vae_attention._qkv(attn, x)
        exact = F.scaled_dot_product_attention(q, keys, values)
    return ours, exact


def _affine_attention(vae):
    """The mid-block attention without its GroupNorm: in a tiled run that norm uses fixed
    whole-image statistics, which a bare GroupNorm would instead take from each input."""
    attn = copy.deepcopy(vae.decoder.mid_block.attentions[0])
    attn.group_norm = None
    return attn


def _relative(ours: torch.Tensor, exact: torch.Tensor) -> float:
    return float((ours - exact).norm(dim=-1).max() / exact.norm(dim=-1).mean())


@pytest.fixture
def forced_cells(monkeypatch):
    monkeypatch.setattr(vae_attention, "GLOBAL_TOKENS", 0)


@pytest.mark.parametrize("landmarks", [0, 64])
def test_cells_of_equal_tokens_are_exact(trained, forced_cells, monkeypatch, landmarks):
    monkeypatch.setattr(vae_attention, "landmarks", lambda size: landmarks)
    attn = _affine_attention(trained)
    low = torch.randn(1, attn.to_q.in_features, 12, 16, generator=torch.Generator().manual_seed(0))
    x = F.interpolate(low, scale_factor=4, mode="nearest")  # every 4 x 4 cell one token, repeated
    ours, exact = _context_attention(attn, x, 4, (16, 32, 24, 48))
    assert _relative(ours, exact) < 1e-4


def test_a_token_that_stands_out_is_kept_exact(trained, forced_cells, monkeypatch):
    """One token whose key the queries favour, in a cell of ordinary ones: averaged into the
    cell it would lose most of its weight; as a landmark it keeps it."""
    attn = _affine_attention(trained)
    g = torch.Generator().manual_seed(1)
    c = attn.to_q.in_features
    x = F.interpolate(torch.randn(1, c, 8, 12, generator=g), scale_factor=4, mode="bilinear")
    with torch.no_grad():
        # The input whose key points along the window's mean query, scaled to dominate.
        q, _, _ = vae_attention._qkv(attn, x[:, :, :8, :8])
        wk = attn.to_k.weight
        x[0, :, 25, 37] = torch.linalg.lstsq(wk, 40 * q[0, 0].mean(0) / q[0, 0].mean(0).norm()
                                            - attn.to_k.bias).solution.detach()
    window = (0, 8, 0, 8)  # far from the token, which sits in a cell of 4 x 4
    ours, exact = _context_attention(attn, x, 4, window)
    monkeypatch.setattr(vae_attention, "landmarks", lambda size: 0)
    pooled, _ = _context_attention(attn, x, 4, window)
    assert _relative(pooled, exact) > 0.3
    assert _relative(ours, exact) < 0.02


def test_landmarks_keep_a_photo_within_bounds(trained, forced_cells, monkeypatch):
    """Cells of 5 x 5 tokens on a held-out photo, blocks of 16 x 16 queries with exact keys 10
    tokens around: without landmarks the trained VAE's few favoured tokens are averaged away;
    with them, the issue's bounds."""
    import skimage.data as skimage_data
    from PIL import Image

    pixels = np.asarray(Image.fromarray(skimage_data.chelsea()).resize((768, 512), Image.LANCZOS))
    x = torch.from_numpy(pixels.copy()).permute(2, 0, 1)[None].float() / 127.5 - 1
    with torch.no_grad():
        z = trained.encode(x).latent_dist.mean * trained.config.scaling_factor
        reference = tiled.to_uint8(trained.decode(z / trained.config.scaling_factor).sample)
    monkeypatch.setattr(vae_attention, "CONTEXT_CELLS", 256)
    monkeypatch.setattr(vae_attention, "SWEEP_BLOCK", 16)
    monkeypatch.setattr(vae_attention, "SWEEP_REACH", 10)
    assert vae_attention.cell_side(tuple(z.shape[-2:])) == 5
    monkeypatch.setattr(vae_attention, "landmarks", lambda size: 256)
    diff = np.abs(tiled.decode(trained, z, tile=384).astype(int) - reference.numpy())
    monkeypatch.setattr(vae_attention, "landmarks", lambda size: 0)
    pooled = np.abs(tiled.decode(trained, z, tile=384).astype(int) - reference.numpy())
    assert pooled.max() > 10
    assert diff.max() <= 3 and diff.mean() <= 0.3


def test_a_sweep_whose_keys_span_the_image_is_the_whole_attention(trained, monkeypatch):
    """Blocks of queries (uneven at the edges) whose exact keys reach over the whole image give
    the whole attention: the sweep's slicing puts every token's answer in its place."""
    g = torch.Generator().manual_seed(4)
    z = F.interpolate(torch.randn(1, 4, 10, 14, generator=g), size=(40, 56), mode="bilinear")
    whole = tiled.decode_float(trained, z, tile=192)
    monkeypatch.setattr(vae_attention, "GLOBAL_TOKENS", 0)
    monkeypatch.setattr(vae_attention, "SWEEP_BLOCK", 12)
    monkeypatch.setattr(vae_attention, "SWEEP_REACH", 1000)
    calls = []
    swept = tiled.decode_float(trained, z, tile=192, progress=lambda *a: calls.append(a))
    assert (swept - whole).abs().max().item() < 1e-4
    # Progress counts the blocks too (4 x 5 here), and ends at its total.
    runs = calls[-1][1] - 20
    assert runs % 6 == 0 and calls == [(i, runs + 20) for i in range(1, runs + 21)]


def test_blocks_cover_the_latent_once_with_keys_on_whole_cells(monkeypatch):
    monkeypatch.setattr(vae_attention, "SWEEP_BLOCK", 16)
    monkeypatch.setattr(vae_attention, "SWEEP_REACH", 5)
    size = (50, 37)
    f = vae_attention.cell_side(size)
    seen = torch.zeros(size, dtype=torch.int)
    pairs = list(vae_attention.blocks(size))
    assert vae_attention.block_count(size) == len(pairs) == 4 * 3  # what progress counts
    for (y0, y1, x0, x1), (ky0, ky1, kx0, kx1) in pairs:
        seen[y0:y1, x0:x1] += 1
        assert ky0 <= max(0, y0 - 5) and ky1 >= min(50, y1 + 5)
        assert kx0 <= max(0, x0 - 5) and kx1 >= min(37, x1 + 5)
        assert ky0 % f == 0 and kx0 % f == 0 and (ky1 % f == 0 or ky1 == 50)
        assert kx1 % f == 0 or kx1 == 37
    assert (seen == 1).all()


def test_both_attention_kernels_are_sdpa_with_a_per_key_bias(monkeypatch):
    """`attend`'s two ways (SDPA with the bias on an extra channel, as a CPU runs it; chunked
    matmuls with float32 scores, as a GPU runs the SDXL VAE's wide head) against SDPA with the
    bias as a full mask, masked keys included; chunks that do not divide the queries."""
    monkeypatch.setattr(vae_attention, "SCORE_BYTES", 4 * 300 * 7)  # 7 queries a chunk
    g = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(1, 2, n, 32, generator=g) for n in (50, 300, 300))
    bias = torch.randn(300, generator=g)
    bias[::7] = vae_attention.MASKED
    exact = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.expand(50, 300))
    assert (vae_attention._attend_chunked(q, k, v, bias) - exact).abs().max() < 1e-5
    assert (vae_attention.attend(q, k, v, bias) - exact).abs().max() < 1e-5
    assert (vae_attention._attend_chunked(q, k, v) - F.scaled_dot_product_attention(
        q, k, v)).abs().max() < 1e-5


def test_wide_heads_on_a_gpu_take_the_chunked_matmuls(monkeypatch):
    """On meta tensors (a GPU's way, for the planner's replay) a 512-channel head goes to the
    chunked matmuls, whose float32 scores the planner counts; 64 channels stay with SDPA."""
    calls = []
    real = vae_attention._attend_chunked

    def spy(*args, **kwargs):
        calls.append(args[0].shape[-1])
        return real(*args, **kwargs)

    monkeypatch.setattr(vae_attention, "_attend_chunked", spy)
    for d in (512, 64):
        q = torch.empty(1, 1, 16, d, device="meta")
        assert vae_attention.attend(q, q, q).shape == q.shape
    assert calls == [512]
