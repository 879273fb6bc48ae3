"""The full-size SDXL base architecture, for random-weight runs (benchmarks, meta-device tests)."""

from __future__ import annotations

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
