"""SDXL's shapes as the planner sees them: its parameter counts against the models built."""

from dataclasses import replace

import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from hires.controlnet import controlnet_like
from hires.costs import ModelShape, VaeShape, sdxl_shape
from hires.memsim import module_bytes, sdxl_controlnet_on_meta, sdxl_unet_on_meta
from hires.sdxl import SDXL_UNET_CONFIG, SDXL_VAE_CONFIG
from hires.unet_costs import ControlShape, UNetShape


def built_shape(linfusion: bool, dtype: torch.dtype, controlnet: bool) -> ModelShape:
    """SDXL's shape measured on models built on the meta device (GPU, VAE in the same dtype)."""
    if linfusion:
        unet = sdxl_unet_on_meta(dtype)
    else:
        with torch.device("meta"):
            unet = UNet2DConditionModel(**SDXL_UNET_CONFIG).to(dtype)
    with torch.device("meta"):
        vae = AutoencoderKL(**SDXL_VAE_CONFIG).to(dtype)
        common = dict(vocab_size=49408, max_position_embeddings=77, hidden_act="gelu")
        te1 = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072,
                                           num_attention_heads=12, num_hidden_layers=12,
                                           **common)).to(dtype)
        te2 = CLIPTextModelWithProjection(CLIPTextConfig(
            hidden_size=1280, intermediate_size=5120, num_attention_heads=20,
            num_hidden_layers=32, projection_dim=1280, **common)).to(dtype)
    # Their only buffers are the position ids (int64), which are not weights.
    text = sum(p.numel() * p.element_size() for m in (te1, te2) for p in m.parameters())
    control = None
    if controlnet:
        net = controlnet_like(unet) if linfusion else sdxl_controlnet_on_meta(dtype)
        control = ControlShape.of(net)
    size = dtype.itemsize
    return ModelShape(UNetShape.of(unet), VaeShape.from_config(SDXL_VAE_CONFIG,
                                                               param_bytes=module_bytes(vae)),
                      text, dtype_bytes=size, vae_dtype_bytes=size, native=1024, on_gpu=True,
                      control=control)


@pytest.mark.parametrize("linfusion", [True, False], ids=["linfusion", "softmax"])
def test_sdxl_shape_counts_what_the_built_models_hold(linfusion):
    for dtype, controlnet in ((torch.bfloat16, True), (torch.float32, False)):
        planned = sdxl_shape(linfusion=linfusion, dtype_bytes=dtype.itemsize,
                             controlnet=controlnet, vae_dtype_bytes=dtype.itemsize)
        assert planned == built_shape(linfusion, dtype, controlnet)
    # The VAE in its own dtype: only its weights change.
    bf16 = sdxl_shape(linfusion=linfusion)
    assert sdxl_shape(linfusion=linfusion, vae_dtype_bytes=4) == replace(
        bf16, vae_dtype_bytes=4, vae=replace(bf16.vae, param_bytes=bf16.vae.param_bytes * 2))


def test_random_components_leave_the_callers_random_stream_alone(monkeypatch):
    """`random_components` reseeded the caller's torch RNG (as `hires.load("tiny")` did): a
    benchmark's own seed meant nothing after it. Its weights are still the same each time.
    (SDXL's layout at tiny widths: the full one takes a minute of CPU to build.)"""
    import hires.sdxl

    monkeypatch.setattr(hires.sdxl, "SDXL_UNET_CONFIG", dict(
        SDXL_UNET_CONFIG, block_out_channels=[32, 64, 64], attention_head_dim=[1, 2, 2],
        transformer_layers_per_block=[1, 1, 1], cross_attention_dim=64,
        projection_class_embeddings_input_dim=6 * 256 + 32, norm_num_groups=32))
    monkeypatch.setattr(hires.sdxl, "SDXL_VAE_CONFIG", dict(
        SDXL_VAE_CONFIG, block_out_channels=[32, 32, 32, 32]))
    monkeypatch.setattr(hires.sdxl, "SDXL_TEXT_CONFIGS", (
        dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=1),
        dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=1,
             projection_dim=32)))
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    first = hires.sdxl.random_components(torch.device("cpu"), torch.float32)
    assert torch.equal(torch.rand(3), expected)
    again = hires.sdxl.random_components(torch.device("cpu"), torch.float32)
    assert torch.equal(first.pipe.unet.conv_in.weight, again.pipe.unet.conv_in.weight)
