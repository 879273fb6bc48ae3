"""The full-size SDXL base architecture, for random-weight runs (benchmarks, meta-device tests)."""

from __future__ import annotations

import torch

SDXL_UNET_CONFIG = dict(
    sample_size=128, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=[320, 640, 1280],
    down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    attention_head_dim=[5, 10, 20],  # SDXL's naming quirk: these are the numbers of heads
    transformer_layers_per_block=[1, 2, 10], cross_attention_dim=2048,
    use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816, norm_num_groups=32,
)
"""UNet2DConditionModel arguments of stabilityai/stable-diffusion-xl-base-1.0 (2.6 B parameters)."""

SDXL_VAE_CONFIG = dict(
    in_channels=3, out_channels=3,
    down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
    block_out_channels=[128, 256, 512, 512], layers_per_block=2, latent_channels=4,
    norm_num_groups=32, sample_size=1024, scaling_factor=0.13025, force_upcast=True,
)
"""AutoencoderKL arguments of the SDXL VAE (84 M parameters, 8x downsampling)."""

SDXL_TEXT_CONFIGS = (
    dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12),
    dict(hidden_size=1280, intermediate_size=5120, num_attention_heads=20, num_hidden_layers=32,
         projection_dim=1280),
)
"""CLIPTextConfig arguments of SDXL's text encoders (CLIP ViT-L/14, OpenCLIP ViT-bigG/14)."""

# Parameter counts, so that the planner prices SDXL's weights without building a model (which
# takes seconds); tests/test_sdxl.py counts them again on the meta device.
SDXL_UNET_BLOCK_PARAMS = (5_432_000, 60_105_600, 757_404_160,  # down blocks
                          413_117_440,  # mid block
                          1_206_568_960, 106_343_680, 11_171_840)  # up blocks
SDXL_UNET_OUTER_PARAMS = 7_320_004  # outside the blocks: embeddings, conv in and out
LINFUSION_XL_BLOCK_PARAMS = (0, 415_680, 8_252_800, 4_126_400, 12_379_200, 623_520, 0)  # added
SDXL_CONTROLNET_OUTER_PARAMS = 14_954_960  # besides the UNet's down and mid blocks
SDXL_VAE_PARAMS = 83_653_863
SDXL_TEXT_PARAMS = 123_060_480 + 694_659_840  # CLIP ViT-L/14, OpenCLIP ViT-bigG/14


def random_components(device: torch.device, dtype: torch.dtype):
    """SDXL base + LinFusion-XL shapes with random weights, as hires.models.Components
    (nothing downloaded): for benchmarks of true sizes, time and memory."""
    from diffusers import AutoencoderKL, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from hires.linfusion import LinFusion
    from hires.models import Components, choose_vae_dtype, tune_for_cuda
    from hires.tiny import tiny_clip_vocab, tiny_scheduler, tiny_tokenizer

    vocab = len(tiny_clip_vocab())
    common = dict(vocab_size=vocab, bos_token_id=vocab - 2, eos_token_id=vocab - 1,
                  pad_token_id=vocab - 1, max_position_embeddings=77, hidden_act="gelu")
    vae_dtype = choose_vae_dtype(device, dtype)
    # The same weights each time, and the caller's random streams as they were after.
    cuda = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda), device:  # on the GPU: seconds, not a CPU minute
        torch.manual_seed(0)
        unet = UNet2DConditionModel(**SDXL_UNET_CONFIG).to(dtype)
        vae = AutoencoderKL(**SDXL_VAE_CONFIG).to(vae_dtype)
        te1 = CLIPTextModel(CLIPTextConfig(**SDXL_TEXT_CONFIGS[0], **common)).to(dtype)
        te2 = CLIPTextModelWithProjection(CLIPTextConfig(**SDXL_TEXT_CONFIGS[1],
                                                         **common)).to(dtype)
        # LinFusion-XL's published config: residual MLPs of width dim/16 (40 and 80).
        config = [dict(m, projection_mid_dim=m["dim_n"] // 16)
                  for m in LinFusion.default_config(unet)]
        LinFusion(config).to(dtype).mount(unet)
    pipe = StableDiffusionXLPipeline(unet=unet, vae=vae, text_encoder=te1, text_encoder_2=te2,
                                     tokenizer=tiny_tokenizer(),
                                     tokenizer_2=tiny_tokenizer(pad_token="!"),
                                     scheduler=tiny_scheduler())
    pipe.set_progress_bar_config(disable=True)
    for part in (unet, vae, te1, te2):
        part.requires_grad_(False).eval()
    if device.type == "cuda":
        tune_for_cuda(pipe)  # as hires.models.load does
    return Components(pipe, "sdxl-random", "linfusion-xl-random", device, dtype, vae_dtype,
                      "none")
