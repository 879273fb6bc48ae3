"""A tiny random ControlNet for the tiny SDXL, made offline, whose outputs are not zero."""

import torch


def tiny_controlnet(unet, seed: int = 0):
    """`ControlNetModel.from_unet(unet)` with seeded random weights everywhere, its zero convs
    (and the conditioning embedding's last conv) included, so that it changes the output."""
    from diffusers import ControlNetModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        # Weights not copied: the tiny UNet carries LinFusion modules a ControlNet has not.
        net = ControlNetModel.from_unet(unet, load_weights_from_unet=False)
        zero = [*net.controlnet_down_blocks, net.controlnet_mid_block,
                net.controlnet_cond_embedding.conv_out]
        with torch.no_grad():
            for conv in zero:
                torch.nn.init.normal_(conv.weight, std=0.2)
                torch.nn.init.normal_(conv.bias, std=0.2)
    dtype = next(unet.parameters()).dtype
    if dtype != torch.float32:
        net = net.to(dtype)
    return net.requires_grad_(False).eval()
