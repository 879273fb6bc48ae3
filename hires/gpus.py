"""The GPUs that `--gpu` names: each one's throughput (for time estimates) and memory (for the
budget of a dry run planned for that card)."""

from __future__ import annotations

import re
from typing import NamedTuple

# fp32 convolutions and matmuls as a share of the bf16 rate: TF32 tensor cores (which hires
# allows on CUDA) run at half of it on every card here from Ampere on; the T4 has none.
FP32_SHARE = 0.5


class Card(NamedTuple):
    """A GPU model as the planner sees it."""

    peak: float  # dense bf16 tensor-core FLOP/s with fp32 accumulation, as torch runs it
    memory_gib: float  # total memory as the driver reports it (nvidia-smi's MiB / 1024)
    bf16: bool = True  # native bf16 (Ampere on); without it the VAE runs in fp32 (models.py)
    fp32_share: float = FP32_SHARE  # fp32 FLOP/s as a share of `peak`


# From the vendors' data sheets; GeForce cards accumulate in fp32 at half their fp16 rate.
# A card sold with two memory sizes is listed with the common one: --vram plans the other.
GPUS = {
    "h200": Card(989e12, 140.4), "h100": Card(989e12, 79.6), "a100": Card(312e12, 80.0),
    "l40s": Card(362e12, 45.0), "a6000": Card(155e12, 48.0), "a10": Card(125e12, 22.5),
    "l4": Card(121e12, 22.5),
    "t4": Card(65e12, 15.0, bf16=False, fp32_share=8.1 / 65),  # fp16; fp32 on CUDA cores
    "v100": Card(125e12, 15.8, bf16=False, fp32_share=15.7 / 125),  # SXM2 16 GB; likewise
    "5090": Card(209e12, 31.8), "4090": Card(165e12, 24.0), "4080": Card(97e12, 16.0),
    "4070": Card(58e12, 12.0), "3090": Card(71e12, 24.0), "3080": Card(59e12, 10.0),
    "3060": Card(25e12, 12.0),
}
# Fraction of the data-sheet peak the UNet reaches, measured on an H200 (benchmarks/gpu.py,
# 2026-12-04: 262 TFLOP/s of 989 over the 4K-16K stages); other cards are assumed alike.
EFFICIENCY = 0.265
# The tiled VAE's rate (of the work it runs: hires.vae_cost) as a share of the UNet's: 152
# against 262 TFLOP/s on the same run. GroupNorm statistics, copies and the attention sweep
# weigh more there than in the UNet.
VAE_SHARE = 0.58
# Host work per UNet call that no GPU hides: a small image's denoising is bound by kernel
# launches (the 1K base stage's guided evaluation took 0.081 s on the H200 host, where its
# FLOPs need 0.023 s).
CALL_SECONDS = 0.08
# Host work per tiled-VAE tile run (a tile resumed up to the next GroupNorm: a few kernels and
# the statistics' hooks), assumed from CALL_SECONDS's ~40 us per launched kernel; the planner
# weighs it against a smaller tile's saved work.
TILE_RUN_SECONDS = 0.5e-3
# The host's stage resize (banded Lanczos) and PNG save, output pixels per second per core:
# the H200 host's 16 cores did 8192 -> 16384 in 1.37 s and saved the 16K PNG in 0.94 s.
RESIZE_PX_PER_CORE = 12e6
SAVE_PX_PER_CORE = 17e6
CUDA_CONTEXT_GIB = 0.5  # what the CUDA context takes before a weight loads (more with a display)
MIN_TFLOPS = 0.001  # a slow CPU's; below it a time estimate is no estimate
MAX_TFLOPS = 1000  # above what any one GPU achieves here: a larger "--gpu 3050" is a card's name


# Words of a card's full name that name no other card: its maker, line, memory type and
# form factor ('NVIDIA H100 80GB HBM3', 'A100-SXM4-80GB'); 'Ti' or 'Laptop' name another card.
_PLAIN_WORDS = {"nvidia", "geforce", "rtx", "tesla", "gb", "gib", "hbm2", "hbm2e", "hbm3",
                "hbm3e", "sxm", "sxm2", "sxm4", "sxm5"}
# Cards whose PCIe form has the table's peak (the H100's and V100's PCIe forms are slower)
_SAME_ON_PCIE = {"a100", "l40s", "a6000", "a10", "l4", "t4"}
# A memory size within this share of the table's is the table's card: sold sizes are decimal
# GB, and ECC takes some (an "L4 24GB" reports 22.5 GiB); other sizes are a tenth apart or more.
_SAME_MEMORY = 0.1


def _named(gpu: str) -> tuple[str, float | None]:
    """`--gpu`'s text as a table key and the memory its name gives in GB, if any: 'NVIDIA
    GeForce RTX 4090', 'rtx4090' and '4090' are one card, 'A100 80GB' the a100."""
    key = gpu.lower()
    for word in ("nvidia", "geforce", "rtx", "tesla"):
        key = key.replace(word, " ")
    key = key.strip(" -_")
    if key in GPUS:
        return key, None
    words = [w for w in re.split(r"[\s_-]+", key) if w and w not in _PLAIN_WORDS]
    cards = [w for w in words if w in GPUS]
    if len(cards) == 1 and cards[0] in _SAME_ON_PCIE:
        words = [w for w in words if w != "pcie"]
    sizes = [float(m[1]) for w in words
             if w not in GPUS and (m := re.fullmatch(r"(\d+)(?:g|gb|gib)?", w))]
    if len(cards) == 1 and len(sizes) <= 1 and len(words) == 1 + len(sizes) and \
            all(1 <= size <= 1024 for size in sizes):
        return cards[0], sizes[0] if sizes else None
    return key, None


def card_key(gpu: str) -> str:
    """`--gpu`'s text as a table key: 'NVIDIA GeForce RTX 4090' and '4090' are one card."""
    return _named(gpu)[0]


# A memory size the name gives, other than the table's: what the driver reports of it (ECC
# and the driver keep some back: an A100 40GB reports 39.4 GiB, a V100 32GB 31.7)
NAMED_MEMORY_SHARE = 0.98


def card(gpu: str) -> Card | None:
    """The named card, or None for a TFLOP/s figure or a card not in the table; a name with
    another memory size than the table's ('a100-40gb') is that card with that memory."""
    key, size = _named(gpu)
    listed = GPUS.get(key)
    if listed is None or size is None or abs(size - listed.memory_gib) <= _SAME_MEMORY * size:
        return listed
    return listed._replace(memory_gib=round(size * NAMED_MEMORY_SHARE, 1))


def key_in_name(name: str) -> str | None:
    """The table's key for a device name as CUDA reports it ('NVIDIA A100-SXM4-80GB')."""
    name = name.lower()
    # The longest match: an "A100" also contains "a10", an "L40S" also "l4".
    return max((key for key in GPUS if key in name), key=len, default=None)


def local_gpu() -> str | None:
    """The local CUDA GPU's short name when it is in the table."""
    import torch

    if not torch.cuda.is_available():
        return None
    return key_in_name(torch.cuda.get_device_name())


def rate_for(gpu: str) -> float:
    """Achieved FLOP/s for `--gpu`: a card's peak x EFFICIENCY, or a measured TFLOP/s figure."""
    named = card(gpu)
    if named:
        return named.peak * EFFICIENCY
    names = ", ".join(GPUS)
    size = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(?:g|gb|gib)", gpu.strip().lower())
    if size:  # "12gb": a card's memory, which --vram gives
        raise ValueError(f"--gpu {gpu} is a memory size: give it as --vram {size[1]}, and --gpu "
                         "a card's name (4090, h100, ...) or a TFLOP/s figure for the times")
    try:
        value = float(gpu)
    except ValueError:
        raise ValueError(f"unknown GPU '{gpu}': use one of {names} or a measured TFLOP/s "
                         "figure like 350 (and --vram for its memory)") from None
    if not value >= MIN_TFLOPS:  # 1e-300 printed times hundreds of digits long
        raise ValueError(f"--gpu rate must be a TFLOP/s figure of at least {MIN_TFLOPS:g}, got "
                         f"{gpu}")
    if value >= MAX_TFLOPS:
        raise ValueError(f"--gpu {gpu} is not a card in the table, and more TFLOP/s than one "
                         f"GPU achieves: use one of {names}, or the card's measured TFLOP/s "
                         "figure (like 350) and --vram for its memory")
    return value * 1e12


def fp32_share_for(gpu: str | None) -> float:
    """The fp32 rate as a share of `rate_for(gpu)`: the card's, else TF32's."""
    named = card(gpu) if gpu else None
    return named.fp32_share if named else FP32_SHARE


def card_budget_gib(gpu: str) -> float | None:
    """The memory a run on the named card may plan with: its total less the CUDA context."""
    named = card(gpu)
    return named.memory_gib - CUDA_CONTEXT_GIB if named else None
