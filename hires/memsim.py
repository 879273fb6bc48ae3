"""A simulated GPU: run a model on the `meta` device and record the peak of live tensor bytes.

No GPU is needed to know what a run allocates: meta tensors carry shapes, dtypes and storage
sizes but no data, so the full-size SDXL UNet runs in seconds at any latent size. This is how
the planner's memory model (`hires.unet_costs`, `hires.costs`) is checked without a GPU.
"""

# Why our own tracker rather than torch's `MemTracker`: MemTracker rescans every tracked tensor
# on each op, which took 60-80 s for one 1K UNet call of SDXL here (20k ops x 2.5k tensors);
# this one does O(1) work per op and agrees with it (tests/test_costs.py). Why meta rather than
# fake `cuda` tensors: on a CPU-only torch, diffusers' `t[:, None]` indexing on a fake CUDA
# tensor fails ("not linked with support for cuda devices").

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes
from torch.utils._pytree import tree_iter


class PeakTracker(TorchDispatchMode):
    """Counts the bytes of every storage an op creates until it is freed; keeps the peak."""

    def __init__(self, baseline: int = 0) -> None:
        super().__init__()
        self.live = self.peak = baseline
        self._seen: set[int] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_iter(out):
            if isinstance(t, torch.Tensor):
                self._track(t)
        return out

    def count(self, t: torch.Tensor) -> None:
        """Count a tensor made before tracking began (from now until it is freed): an op that
        returns it unchanged, such as a same-dtype `.to()`, then adds nothing."""
        self._track(t)

    def _track(self, t: torch.Tensor) -> None:
        if t.device.type == "cpu":  # host memory (parked skips, offloaded weights)
            return
        storage = t.untyped_storage()
        if getattr(storage, HOST, False):
            return
        key = id(storage)
        if key in self._seen:
            return
        size = storage.nbytes()
        self._seen.add(key)
        self.live += size
        self.peak = max(self.peak, self.live)
        weakref.finalize(storage, self._free, key, size)

    def _free(self, key: int, size: int) -> None:
        self._seen.discard(key)
        self.live -= size


HOST = "_memsim_host"  # set on a meta storage that stands for CPU memory


def host_tensor(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """A meta tensor standing for CPU memory that is written band by band (a parked map):
    no tracker counts it or its views. Made outside any tracker (private torch API: there is
    no public way to step out of a dispatch mode)."""
    with _disable_current_modes():
        t = torch.empty(shape, dtype=dtype, device="meta")
    setattr(t.untyped_storage(), HOST, True)
    return t


def module_bytes(module: nn.Module) -> int:
    """Bytes of a module's parameters and buffers."""
    tensors = list(module.parameters()) + list(module.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)


@contextmanager
def tracking(baseline: int = 0) -> Iterator[PeakTracker]:
    """Track the peak of live bytes, starting from `baseline` (e.g. the resident weights)."""
    tracker = PeakTracker(baseline)
    with tracker:
        yield tracker


def peak_of(run: Callable[[], Any], baseline: int = 0) -> int:
    """The peak live bytes while `run()` executes, on top of `baseline`."""
    with torch.inference_mode(), tracking(baseline) as tracker:
        result = run()
        del result
    return tracker.peak


def sdxl_unet_on_meta(dtype: torch.dtype = torch.bfloat16) -> nn.Module:
    """The full-size SDXL UNet with LinFusion-XL's modules in place of every attn1, on meta."""
    from diffusers import UNet2DConditionModel

    from hires.linfusion import LinFusion
    from hires.sdxl import SDXL_UNET_CONFIG

    with torch.device("meta"):
        unet = UNet2DConditionModel(**SDXL_UNET_CONFIG).to(dtype)
        config = [dict(m, projection_mid_dim=m["dim_n"] // 16)
                  for m in LinFusion.default_config(unet)]
        linfusion = LinFusion(config).to(dtype)
    # Swapped in by hand: mount() parks the originals on the CPU, which meta tensors can't do.
    for entry, module in zip(linfusion.modules_list, linfusion.children(), strict=True):
        parent, _, child = entry["module_name"].rpartition(".")
        setattr(unet.get_submodule(parent), child, module)
    return unet.eval()


def sdxl_controlnet_on_meta(dtype: torch.dtype = torch.bfloat16) -> nn.Module:
    """An SDXL ControlNet (diffusers' layout: the SDXL UNet's down and mid blocks, softmax
    attention), on meta."""
    from diffusers import ControlNetModel, UNet2DConditionModel

    from hires.sdxl import SDXL_UNET_CONFIG

    with torch.device("meta"):
        unet = UNet2DConditionModel(**SDXL_UNET_CONFIG)
        net = ControlNetModel.from_unet(unet, load_weights_from_unet=False).to(dtype)
    return net.eval()


def unet_call_peak(unet: nn.Module, height: int, width: int, strategy, *,
                   weights_bytes: int | None = None, controlnet: nn.Module | None = None) -> int:
    """Simulated peak device bytes of one guided UNet evaluation (both CFG halves) at a
    `height` x `width` latent under `strategy`, with the UNet's weights as the stage has them.

    `unet` lives on the meta device (see `sdxl_unet_on_meta`); `weights_bytes` adds other
    resident weights (text encoders, VAE) to the baseline. With `controlnet` (on meta too),
    it runs first on a control image of the latent's pixel size, as a stage runs it.
    """
    from hires.denoiser import Conditioning, Control, Denoiser
    from hires.strategy import applied

    cfg = unet.config
    dtype = next(unet.parameters()).dtype
    dev = torch.device("meta")
    pooled = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
    cond = Conditioning(torch.empty(2, 77, cfg.cross_attention_dim, dtype=dtype, device=dev),
                        torch.empty(2, pooled, dtype=dtype, device=dev),
                        torch.empty(2, 6, dtype=dtype, device=dev))
    control = None
    nets = [unet]
    if controlnet is not None:
        image = torch.empty(1, 3, 8 * height, 8 * width, dtype=dtype, device=dev)
        control, nets = Control(controlnet, image, 1.0), [unet, controlnet]
    denoiser = Denoiser(unet, cond, guidance=7.5, split_cfg=strategy.split_cfg, control=control)
    x = torch.empty(1, cfg.in_channels, height, width, device=dev)
    streamed = strategy.weights == "sequential"
    blocks = [b for n in nets for b in (*n.down_blocks, n.mid_block, *getattr(n, "up_blocks", ()))]
    resident = sum(module_bytes(n) for n in nets) - (
        sum(module_bytes(b) for b in blocks) if streamed else 0)
    tracker = PeakTracker(resident + (weights_bytes or 0))
    if control is not None:
        tracker.count(image)
    handles = []
    if streamed:  # each block's weights count while it runs, as hires.strategy streams them
        def arrive(module, args):
            tracker.live += module_bytes(module)
            tracker.peak = max(tracker.peak, tracker.live)

        def leave(module, args, output):
            tracker.live -= module_bytes(module)

        handles = [h for b in blocks for h in (b.register_forward_pre_hook(arrive),
                                                b.register_forward_hook(leave))]
    try:
        with torch.inference_mode(), applied(unet, strategy, dev, controlnet=controlnet), \
                tracker:
            out = denoiser.eps(x, 10.0, 500)
            del out
    finally:
        for h in handles:
            h.remove()
    return tracker.peak
