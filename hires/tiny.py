"""The builtin tiny SDXL: real SDXL layout, ~1M parameters, fully offline.

The UNet and text encoders are random; the VAE is trained (see `tiny_vae`).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    EulerDiscreteScheduler,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from safetensors.torch import load_file
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
)

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
# Native size 256 px (latent 32): small enough for CPU tests, big enough that three x2 stages
# reach 2048 px and the attention levels see thousands of tokens.
TINY_SAMPLE_SIZE = 32
# The tiny VAE's trained weights (about 4 MB, recipe and PSNR in their metadata).
TINY_VAE_WEIGHTS = Path(__file__).parent / "weights" / "tiny_vae.safetensors"


def _bytes_to_unicode() -> dict[int, str]:
    """The GPT-2/CLIP table that maps every byte to a printable character."""
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    extra = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + extra)
            extra += 1
    return dict(zip(bs, [chr(c) for c in cs], strict=True))


def tiny_clip_vocab() -> dict[str, int]:
    """A byte-level CLIP vocabulary with no merges: any string tokenizes, nothing is unknown.

    Special tokens take the two highest ids, as in real CLIP, so the text model's pooled
    output (taken at the EOS position) works.
    """
    chars = list(_bytes_to_unicode().values())
    vocab: dict[str, int] = {}
    for c in chars:
        vocab[c] = len(vocab)
    for c in chars:
        vocab[c + "</w>"] = len(vocab)
    vocab[BOS] = len(vocab)
    vocab[EOS] = len(vocab)
    return vocab


def tiny_tokenizer(pad_token: str = EOS) -> CLIPTokenizer:
    return CLIPTokenizer(
        vocab=tiny_clip_vocab(), merges=[], model_max_length=77, pad_token=pad_token
    )


def tiny_text_config() -> CLIPTextConfig:
    """Both tiny text encoders' configuration (32 wide, two layers)."""
    vocab = tiny_clip_vocab()
    return CLIPTextConfig(
        vocab_size=len(vocab), bos_token_id=vocab[BOS], eos_token_id=vocab[EOS],
        pad_token_id=vocab[EOS], hidden_size=32, intermediate_size=37, layer_norm_eps=1e-5,
        num_attention_heads=4, num_hidden_layers=2, max_position_embeddings=77,
        hidden_act="gelu", projection_dim=32,
    )


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """The CPU's random numbers from `seed` for the block, the caller's stream restored after:
    `hires.load("tiny")` reseeded a script's torch RNG (QA 208)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def tiny_unet(seed: int = 0) -> UNet2DConditionModel:
    """SDXL's UNet layout in miniature: a plain level, then two attention levels, mid attention."""
    with seeded(seed):
        return _tiny_unet()


def _tiny_unet() -> UNet2DConditionModel:
    return UNet2DConditionModel(
        sample_size=TINY_SAMPLE_SIZE, in_channels=4, out_channels=4,
        block_out_channels=(32, 64, 64), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(1, 2, 2),  # SDXL's naming quirk: this is the number of heads
        transformer_layers_per_block=(1, 1, 2), use_linear_projection=True,
        cross_attention_dim=64,  # the two text encoders' hidden sizes, concatenated
        addition_embed_type="text_time", addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=6 * 8 + 32, norm_num_groups=32,
    )


# Made for fp16 and bf16 alike (force_upcast off): a plan reads that without building it.
TINY_VAE_CONFIG = dict(
    in_channels=3, out_channels=3,
    down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
    block_out_channels=[16, 32, 64, 64], layers_per_block=1, latent_channels=4,
    norm_num_groups=8, sample_size=TINY_SAMPLE_SIZE * 8, scaling_factor=0.13025,
    force_upcast=False,
)


def tiny_vae(seed: int = 0, trained: bool = True) -> AutoencoderKL:
    """Four levels (8x downsampling) like the SDXL VAE, with a mid-block attention.

    `trained` loads the weights trained on scikit-image photos (`tools/train_tiny_vae.py`), so
    round trips and GroupNorm statistics behave like a real VAE's; otherwise random from `seed`.
    """
    with seeded(seed):
        vae = AutoencoderKL(**TINY_VAE_CONFIG)
    if trained:
        vae.load_state_dict(load_file(str(TINY_VAE_WEIGHTS)))
    return vae


def tiny_scheduler() -> EulerDiscreteScheduler:
    """SDXL base's scheduler configuration."""
    return EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1,
        timestep_spacing="leading", prediction_type="epsilon", num_train_timesteps=1000,
    )


def tiny_pipeline(seed: int = 0, trained_vae: bool = True) -> StableDiffusionXLPipeline:
    """The whole tiny SDXL, deterministic from `seed`: random UNet and text encoders, trained VAE
    (or the random one, with `trained_vae=False`)."""
    with seeded(seed):
        text_encoder = CLIPTextModel(tiny_text_config())
    with seeded(seed + 1):
        text_encoder_2 = CLIPTextModelWithProjection(tiny_text_config())
    return StableDiffusionXLPipeline(
        unet=tiny_unet(seed), vae=tiny_vae(seed, trained=trained_vae), scheduler=tiny_scheduler(),
        text_encoder=text_encoder, text_encoder_2=text_encoder_2,
        tokenizer=tiny_tokenizer(), tokenizer_2=tiny_tokenizer(pad_token="!"),
        image_encoder=None, feature_extractor=None,
    )


def tiny_linfusion(unet: UNet2DConditionModel, seed: int = 0):
    """The tiny model's LinFusion, random like the rest of it, made from its UNet: the same
    each time (`--model tiny` and a saved folder's alike), the caller's random numbers kept."""
    from hires.linfusion import LinFusion

    with seeded(seed + 2):
        return LinFusion.from_unet(unet)


def save_tiny(folder: str | Path, seed: int = 0, trained_vae: bool = True) -> Path:
    """Write the tiny SDXL as a diffusers folder (safetensors), loadable like any real model.

    Its LinFusion weights go in `linfusion/` inside, where the resolver looks for a folder's own.
    """
    folder = Path(folder)
    pipe = tiny_pipeline(seed, trained_vae)
    pipe.save_pretrained(folder, safe_serialization=True)
    tiny_linfusion(pipe.unet, seed).save(folder / "linfusion")
    (folder / "hires_tiny.json").write_text(json.dumps({"seed": seed, "trained_vae": trained_vae}))
    return folder
