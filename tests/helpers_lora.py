"""Random LoRA files for a pipeline, in the key layouts people download (kohya, SGM, diffusers)."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

LAYOUTS = ("kohya", "sgm", "diffusers")
# What trainers usually target in a transformer block: attention projections and feed-forward.
_UNET_SUFFIXES = (".to_q", ".to_k", ".to_v", ".to_out.0", ".ff.net.0.proj", ".ff.net.2")
_TEXT_SUFFIXES = (".q_proj", ".k_proj", ".v_proj", ".out_proj", ".fc1", ".fc2")


def lora_targets(module: nn.Module, suffixes: tuple[str, ...]) -> dict[str, nn.Linear]:
    """The Linear layers of `module` that a typical LoRA patches, by name in model order (the
    original layers where a LoRA is loaded already)."""
    layers = {name: getattr(m, "base_layer", m) for name, m in module.named_modules()}
    return {name: m for name, m in layers.items()
            if isinstance(m, nn.Linear) and name.endswith(suffixes)}


def unet_targets(unet: nn.Module) -> dict[str, nn.Linear]:
    """attn1/attn2 q/k/v/out and feed-forward Linears of a UNet's transformer blocks."""
    return {n: m for n, m in lora_targets(unet, _UNET_SUFFIXES).items()
            if "transformer_blocks" in n}


def _sgm_name(name: str, layers_per_block: int) -> str:
    """A diffusers UNet module path as the SGM (original SDXL) UNet names it, which kohya's
    sd-scripts writes for SDXL: down_blocks.1.attentions.0 -> input_blocks.4.1 (SDXL)."""
    parts = name.split(".")
    per = layers_per_block + 1
    if parts[0] == "down_blocks" and parts[2] == "attentions":
        head = ["input_blocks", str(int(parts[1]) * per + int(parts[3]) + 1), "1"]
    elif parts[0] == "up_blocks" and parts[2] == "attentions":
        head = ["output_blocks", str(int(parts[1]) * per + int(parts[3])), "1"]
    elif parts[0] == "mid_block" and parts[1] == "attentions":
        return ".".join(["middle_block", "1", *parts[3:]])
    else:
        raise ValueError(f"no SGM name for {name}")
    return ".".join([*head, *parts[4:]])


def write_tiny_lora(path: str | Path, pipe, *, rank: int = 4, layout: str = "kohya",
                    seed: int = 0, text_encoder: bool = True) -> Path:
    """Write a random LoRA (non-zero up/B, so it changes outputs) for `pipe`; returns the path.

    It covers every transformer block's attn1/attn2 q/k/v/out and feed-forward Linears, and
    with `text_encoder` both CLIP encoders' attention and MLP Linears. Layouts: "kohya"
    (lora_unet_down_blocks_..., lora_te1_/lora_te2_, lora_down/lora_up/alpha), "sgm" (kohya
    with the SGM block names sd-scripts writes for SDXL: lora_unet_input_blocks_...) and
    "diffusers" (unet./text_encoder./text_encoder_2. prefixes, peft lora_A/lora_B).
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, not {layout!r}")
    gen = torch.Generator().manual_seed(seed)
    parts = [("unet", unet_targets(pipe.unet))]
    if text_encoder:
        for prefix, encoder in (("te1", pipe.text_encoder), ("te2", pipe.text_encoder_2)):
            targets = lora_targets(encoder, _TEXT_SUFFIXES)
            # Trainers saw transformers 4's CLIP, whose layers sit under text_model.
            parts.append((prefix, {n if n.startswith("text_model.") else f"text_model.{n}": m
                                   for n, m in targets.items()}))
    lpb = pipe.unet.config.layers_per_block
    state: dict[str, torch.Tensor] = {}
    for part, targets in parts:
        for name, linear in targets.items():
            # Small enough that outputs stay finite, big enough to move them visibly.
            down = torch.randn(rank, linear.in_features, generator=gen) * 0.1
            up = torch.randn(linear.out_features, rank, generator=gen) * 0.1
            if layout == "diffusers":
                prefix = {"unet": "unet", "te1": "text_encoder", "te2": "text_encoder_2"}[part]
                state[f"{prefix}.{name}.lora_A.weight"] = down
                state[f"{prefix}.{name}.lora_B.weight"] = up
                continue
            if layout == "sgm" and part == "unet":
                name = _sgm_name(name, lpb)
            key = f"lora_{part}_{name.replace('.', '_')}"
            state[f"{key}.lora_down.weight"] = down
            state[f"{key}.lora_up.weight"] = up
            state[f"{key}.alpha"] = torch.tensor(float(rank) / 2)  # alpha != rank, as often
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, path)
    return path
