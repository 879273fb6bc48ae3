"""The lean (row-band) UNet pass: same numbers as diffusers, no whole-size intermediates."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from hires import lean
from hires.denoiser import dilated_convs


@pytest.fixture
def small_bands(monkeypatch):
    """Bands of a few rows, so that every lean function cuts its input into many bands."""
    monkeypatch.setattr(lean, "BAND_BYTES", 4000)


def unet_inputs(unet, h: int, w: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 4, h, w, generator=g)
    emb = torch.randn(1, 77, unet.config.cross_attention_dim, generator=g)
    pooled_dim = (unet.config.projection_class_embeddings_input_dim
                  - 6 * unet.config.addition_time_embed_dim)
    added = {"text_embeds": torch.randn(1, pooled_dim, generator=g),
             "time_ids": torch.tensor([[512.0, 512, 0, 0, 512, 512]])}
    return x, dict(encoder_hidden_states=emb, added_cond_kwargs=added, return_dict=False)


class LargestOutput(TorchDispatchMode):
    """Records the element count of the largest tensor any op makes."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


@pytest.mark.parametrize("ratio", [1, 4])
def test_lean_unet_matches_diffusers(tiny, small_bands, ratio):
    unet = tiny.unet
    x, kw = unet_inputs(unet, 72, 56)  # odd band splits, and not a power of two
    calls = []
    real_resnet = lean.resnet

    def counting(*a, **k):
        calls.append(1)
        return real_resnet(*a, **k)

    with torch.inference_mode(), dilated_convs(unet, ratio):
        ref = unet(x, torch.tensor(500.0), **kw)[0]
        with pytest.MonkeyPatch.context() as mp, lean.lean_unet(unet):
            mp.setattr(lean, "resnet", counting)
            got = unet(x, torch.tensor(500.0), **kw)[0]
    # Every resnet of the UNet took the lean path: 3 down, 2 mid, 6 up.
    assert len(calls) == 11
    assert (got - ref).abs().max() <= 1e-5 * ref.abs().max()


def test_no_intermediate_is_as_large_as_a_concatenated_skip(tiny, small_bands):
    # The full-resolution up block concatenates 64 upsampled + 32 skip channels: diffusers makes
    # that 96-channel tensor (and 96-channel norm/SiLU outputs); the lean pass never does. The
    # transformer blocks run over chunks of tokens, as in the pipeline's big stages, so the 8x-wide
    # GEGLU of their feed-forwards stays small.
    from hires.token_chunks import token_chunks

    unet = tiny.unet
    h = w = 64
    x, kw = unet_inputs(unet, h, w)
    largest = {}
    for name, enabled in (("diffusers", False), ("lean", True)):
        with (torch.inference_mode(), token_chunks(unet, True, max_tokens=256),
              lean.lean_unet(unet, enabled), LargestOutput() as seen):
            unet(x, torch.tensor(500.0), **kw)
        largest[name] = seen.largest
    assert largest["diffusers"] >= 96 * h * w
    assert largest["lean"] <= 64 * h * w  # the upsampler's output, the biggest real activation


def test_group_scale_shift_over_stacked_parts_matches_group_norm(small_bands):
    # 64 + 32 channels in 32 groups of 3: a group straddles the two parts.
    torch.manual_seed(0)
    a, b = torch.randn(2, 64, 9, 7) * 3 + 1, torch.randn(2, 32, 9, 7)
    norm = nn.GroupNorm(32, 96, eps=1e-6)
    nn.init.normal_(norm.weight)
    nn.init.normal_(norm.bias)
    scale, shift = lean.group_scale_shift(lean.Stacked([a, b]), norm)
    x = torch.cat([a, b], dim=1)
    with torch.no_grad():
        assert torch.allclose(x * scale + shift, norm(x), atol=1e-5)


@pytest.mark.parametrize("kernel,dilation,padding", [(3, 1, 1), (3, 4, 4), (3, 2, 0), (1, 1, 0),
                                                     (5, 1, 2)])
def test_banded_conv_matches_a_whole_conv(small_bands, kernel, dilation, padding):
    torch.manual_seed(1)
    conv = nn.Conv2d(6, 5, kernel, padding=padding, dilation=dilation)
    x = torch.randn(2, 6, 23, 11)
    with torch.no_grad():
        got = lean.banded_conv(conv, lambda lo, hi: x[:, :, lo:hi], x.shape, x)
        assert torch.allclose(got, conv(x), atol=1e-5)


@pytest.mark.parametrize("dilation,height", [(1, 23), (4, 23), (16, 5)])
def test_a_conv_written_over_its_input_matches_a_whole_one(small_bands, dilation, height):
    # Bands of 2-3 rows (at least the halo): each band's output lands on rows the next band
    # still reads above it; those must come from the rows kept aside, not the output.
    torch.manual_seed(2)
    norm = nn.GroupNorm(2, 6)
    nn.init.normal_(norm.weight)
    conv = nn.Conv2d(6, 6, 3, padding=dilation, dilation=dilation)
    x = torch.randn(1, 6, height, 40) * 2 + 1
    assert lean.keeps_shape(conv, 6) and not lean.keeps_shape(nn.Conv2d(6, 5, 3, padding=1), 6)
    with torch.no_grad():
        ref = conv(F.silu(norm(x)))
        y = x.clone()
        got = lean.norm_act_conv_(y, norm, nn.SiLU(), conv)
    assert got.data_ptr() == y.data_ptr()
    assert torch.allclose(got, ref, atol=1e-5)


def test_upsampler_rows_of_odd_bands_match(tiny, small_bands):
    up = tiny.unet.up_blocks[0].upsamplers[0]
    x = torch.randn(1, up.channels, 13, 9)
    with torch.no_grad():
        ref = up(x)
        got = lean.lean_upsample(up, up.forward)(x)
    assert got.shape == ref.shape == (1, up.channels, 26, 18)
    assert torch.allclose(got, ref, atol=1e-5)


def test_unsupported_blocks_fall_back_to_diffusers(tiny):
    from diffusers.models.resnet import ResnetBlock2D

    block = ResnetBlock2D(in_channels=32, out_channels=32, temb_channels=16,
                          time_embedding_norm="scale_shift").eval()
    x, temb = torch.randn(1, 32, 8, 8), torch.randn(1, 16)
    assert not lean.resnet_supported(block, temb)
    with torch.no_grad():
        assert torch.equal(lean.lean_resnet(block, block.forward)(x, temb), block(x, temb))


def test_forwards_are_restored_even_after_an_error(tiny):
    unet = tiny.unet
    with pytest.raises(RuntimeError), lean.lean_unet(unet):
        assert any("forward" in vars(m) for m in unet.modules())
        raise RuntimeError("midway")
    assert not any("forward" in vars(m) for m in unet.modules())


def test_silu_is_applied_per_band(small_bands):
    # norm_act_conv == conv(silu(group_norm(x))) with the module's own conv and norm.
    torch.manual_seed(2)
    norm, conv = nn.GroupNorm(4, 8), nn.Conv2d(8, 3, 3, padding=1)
    x = torch.randn(1, 8, 17, 6)
    with torch.no_grad():
        got = lean.norm_act_conv(lean.Stacked([x]), norm, nn.SiLU(), conv)
        assert torch.allclose(got, conv(F.silu(norm(x))), atol=1e-5)
