"""Device memory: queries, where weights live between phases, peak-memory measurement."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

GIB = 1024**3
# Weights of SDXL in fp16 (UNet 4.8 GiB, text encoders 1.5 GiB, VAE 0.3 GiB in fp32) plus the
# 16K stage's activations fit below this; smaller GPUs keep only the active part resident.
FULL_RESIDENCY_GIB = 16


def device_memory(device: torch.device) -> int | None:
    """Total memory of a CUDA device in bytes; None for CPU/MPS."""
    if device.type != "cuda":
        return None
    return torch.cuda.get_device_properties(device).total_memory


def choose_offload(offload: str, device: torch.device, vram_gib: float | None = None) -> str:
    """'auto' keeps everything on big GPUs and offloads idle parts on smaller ones."""
    if device.type != "cuda":
        return "none"  # nothing to offload to: the weights already live in RAM
    if offload != "auto":
        return offload
    total = vram_gib * GIB if vram_gib else device_memory(device)
    return "none" if total and total >= FULL_RESIDENCY_GIB * GIB else "model"


def place(components) -> None:
    """Put the weights where the offload mode wants them to wait."""
    pipe, dev = components.pipe, components.device
    parts = (pipe.unet, pipe.vae, pipe.text_encoder, pipe.text_encoder_2)
    if components.offload == "none":
        for part in parts:
            part.to(dev)
        return
    for part in parts:
        part.to("cpu")
    if components.offload == "sequential":
        # diffusers' group offloading streams the UNet block by block: slowest, smallest.
        pipe.unet.enable_group_offload(
            onload_device=dev, offload_device=torch.device("cpu"), offload_type="block_level",
            num_blocks_per_group=1, use_stream=dev.type == "cuda")


@contextmanager
def on_device(components, *parts: nn.Module) -> Iterator[None]:
    """With model offload, keep `parts` on the GPU only for the duration of a phase."""
    if components.offload != "model":
        yield
        return
    for part in parts:
        part.to(components.device)
    try:
        yield
    finally:
        for part in parts:
            part.to("cpu")
        if components.device.type == "cuda":
            torch.cuda.empty_cache()


class ChunkedFeedForward(nn.Module):
    """A transformer feed-forward run over at most `max_tokens` tokens at a time.

    Ours rather than diffusers' `set_chunk_feed_forward`, which needs the token count to be a
    multiple of the chunk size: arbitrary aspect ratios break that.
    """

    def __init__(self, ff: nn.Module, max_tokens: int):
        super().__init__()
        self.ff, self.max_tokens = ff, max_tokens

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        chunks = -(-x.shape[1] // self.max_tokens)
        if chunks <= 1:
            return self.ff(x, *args, **kwargs)
        return torch.cat([self.ff(c, *args, **kwargs) for c in x.chunk(chunks, dim=1)], dim=1)


@contextmanager
def chunked_feed_forward(unet: nn.Module, enabled: bool = True,
                         max_tokens: int = 65536) -> Iterator[None]:
    """Chunk every transformer feed-forward (4x wider than its input) while a big stage runs."""
    from diffusers.models.attention import BasicTransformerBlock

    blocks = [m for m in unet.modules() if isinstance(m, BasicTransformerBlock)] if enabled else []
    try:
        for block in blocks:
            block.ff = ChunkedFeedForward(block.ff, max_tokens)
        yield
    finally:
        for block in blocks:
            if isinstance(block.ff, ChunkedFeedForward):
                block.ff = block.ff.ff


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device) -> int | None:
    """Peak bytes allocated on a CUDA device since the last reset; peak RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return peak_rss()


def peak_rss() -> int | None:
    """This process's peak resident memory in bytes (Linux/macOS)."""
    try:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    except (ImportError, OSError):
        return None
    return peak if os.uname().sysname == "Darwin" else peak * 1024
