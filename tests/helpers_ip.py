"""A tiny random IP-Adapter with the real checkpoint layout, written offline for tests."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

WEIGHT_NAME = "ip-adapter_sdxl.safetensors"
# The tiny image encoder's embedding width: what image_proj.proj takes in (1280 for SDXL's).
TINY_PROJECTION_DIM = 16
TINY_IMAGE_SIZE = 32


def tiny_image_encoder(seed: int = 0) -> CLIPVisionModelWithProjection:
    """A random CLIP vision tower with projection, a few thousand parameters."""
    torch.manual_seed(seed)
    config = CLIPVisionConfig(
        hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
        image_size=TINY_IMAGE_SIZE, patch_size=8, projection_dim=TINY_PROJECTION_DIM,
        layer_norm_eps=1e-5, hidden_act="gelu",
    )
    return CLIPVisionModelWithProjection(config).eval()


def ip_adapter_state(pipe, seed: int = 0, cross_attention_dim: int | None = None
                     ) -> dict[str, torch.Tensor]:
    """The weights of a plain IP-Adapter (4 image tokens) for `pipe`'s UNet, as the file has them.

    The original training code numbers its adapter modules over all of the UNet's attention
    processors (attn1, attn2, attn1, ...), so the cross-attentions carry the odd numbers 1, 3,
    5, ...; diffusers' `_convert_ip_adapter_attn_to_diffusers` reads them that way. The count
    is over attn2 alone here, so it holds with LinFusion's attn1 (which has no processor)
    mounted. `cross_attention_dim` overrides the UNet's, to make an adapter that does not fit.
    """
    unet = pipe.unet
    cross = cross_attention_dim or unet.config.cross_attention_dim
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen) * 0.2

    state = {
        "image_proj.proj.weight": rand(4 * cross, TINY_PROJECTION_DIM),
        "image_proj.proj.bias": rand(4 * cross),
        "image_proj.norm.weight": 1 + rand(cross),
        "image_proj.norm.bias": rand(cross),
    }
    attn2 = [n for n in unet.attn_processors if n.endswith("attn2.processor")]
    for j, name in enumerate(attn2):
        inner = unet.get_submodule(name.removesuffix(".processor")).to_k.out_features
        state[f"ip_adapter.{2 * j + 1}.to_k_ip.weight"] = rand(inner, cross)
        state[f"ip_adapter.{2 * j + 1}.to_v_ip.weight"] = rand(inner, cross)
    return state


def write_tiny_ip_adapter(folder: Path, pipe, seed: int = 0,
                          cross_attention_dim: int | None = None) -> Path:
    """Write `ip-adapter_sdxl.safetensors` and `image_encoder/` into `folder`; returns the file.

    Laid out like the Hub repo's `sdxl_models/` folder. No preprocessor config is needed:
    diffusers makes a CLIPImageProcessor sized from the encoder's config when the pipeline has
    no feature extractor (the Hub repo ships none either).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / WEIGHT_NAME
    save_file(ip_adapter_state(pipe, seed, cross_attention_dim), str(path),
              metadata={"format": "pt"})
    tiny_image_encoder(seed).save_pretrained(folder / "image_encoder")
    return path
