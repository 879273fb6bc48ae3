"""How one stage runs the UNet: the memory levers a plan picks, and applying them to a UNet.

Every lever gives the same numbers (up to float rounding); each trades some speed for memory:
- split_cfg: uncond and cond as two UNet calls (half the activations, smaller batches);
- ff_chunks: every transformer block over chunks of tokens (with LinFusion; only its
  feed-forward, 4x wider than its input, otherwise: `hires.token_chunks`);
- row_bands: resnets, up blocks and upsamplers in bands of rows (`hires.lean`);
- park_skips: the UNet's skip connections wait on the CPU until the up blocks read them;
- weights: "resident" (all weights on the GPU), "model" (only the running model: the UNet while
  it denoises, the VAE while it decodes) or "sequential" (the UNet streamed block by block).
A stage's ControlNet gets the same levers: its resnets and conditioning embedding in row bands,
its feed-forwards chunked, its skips parked (and with them the residuals made from them, see
hires.controlnet), its blocks streamed.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from itertools import product
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from hires import parking as parking_module
from hires.lean import lean_unet
from hires.memory import scratch_folder
from hires.parking import Lock, Parking, Unlock, cuda_lock, cuda_unlock
from hires.token_chunks import token_chunks

WEIGHTS = ("resident", "model", "sequential")


@dataclass(frozen=True)
class Strategy:
    """The memory levers of one stage (see the module docstring)."""

    split_cfg: bool = False
    ff_chunks: bool = False
    row_bands: bool = False
    park_skips: bool = False
    weights: str = "resident"

    @property
    def label(self) -> str:
        """A short name for logs: 'batched' or e.g. 'split-cfg+ff-chunks+model-offload'."""
        return self.label_for(guided=True)

    def label_for(self, guided: bool) -> str:
        """`label` for a job with CFG or without: without, no batch pairs the two prompts,
        so no lever at all is 'plain', not 'batched'."""
        parts = [name for on, name in ((self.split_cfg, "split-cfg"),
                                       (self.ff_chunks, "ff-chunks"),
                                       (self.row_bands, "row-bands"),
                                       (self.park_skips, "parked-skips")) if on]
        if self.weights != "resident":
            parts.append(f"{self.weights}-offload")
        return "+".join(parts) or ("batched" if guided else "plain")

    def to_dict(self) -> dict[str, object]:
        return {"split_cfg": self.split_cfg, "ff_chunks": self.ff_chunks,
                "row_bands": self.row_bands, "park_skips": self.park_skips,
                "weights": self.weights}


def all_strategies(weights: tuple[str, ...] = WEIGHTS) -> list[Strategy]:
    """Every combination of the levers, with the weight modes allowed."""
    return [Strategy(*levers, weights=w)
            for levers in product((False, True), repeat=4) for w in weights]


@contextmanager
def applied(unet: nn.Module, strategy: Strategy, device: torch.device, *,
            controlnet: nn.Module | None = None,
            disk_after: int | None = None) -> Iterator[Parking | None]:
    """The UNet (and the stage's ControlNet) set up for `strategy` for the duration of a
    stage; always undone. Yields where parked maps wait (None when nothing parks): past
    `disk_after` bytes of them, in files on the scratch disk (the plan's `disk_bytes`)."""
    parks = strategy.park_skips and device.type != "cpu"
    # Maps parked as soon as made would need the ControlNet's residuals added on the CPU:
    # with a ControlNet they park as its down blocks return (hires.controlnet).
    at_once = strategy.row_bands and controlnet is None
    with ExitStack() as stack:
        parking = None
        if parks:
            disk = scratch_folder() if disk_after is not None else None
            parking = stack.enter_context(parked_in(Parking(ram=disk_after, disk=disk), unet))
        for model in (unet, controlnet) if controlnet is not None else (unet,):
            stack.enter_context(lean_unet(model, strategy.row_bands))
            stack.enter_context(token_chunks(model, strategy.ff_chunks))
            if parks:
                stack.enter_context(parked_skips(model, at_once=at_once))
            if strategy.weights == "sequential" and device.type not in ("cpu", "meta"):
                stack.enter_context(streamed_blocks(model, device))
        yield parking


@contextmanager
def parked_in(parking: Parking, unet: nn.Module) -> Iterator[Parking]:
    """Parked maps go to `parking`'s buffers, free again once each UNet call returns (a
    ControlNet's residuals, parked before, are read by that call); closed at the end."""
    token = parking_module.current.set(parking)
    handle = unet.register_forward_hook(lambda module, args, output: parking.recycle())
    try:
        yield parking
    finally:
        handle.remove()
        parking_module.current.reset(token)
        parking.close()


def park(x: Tensor) -> Tensor:
    """A CPU copy of `x` (page-locked, so the copy back can overlap compute)."""
    if x.device.type == "cpu":
        return x
    parking = parking_module.current.get()
    if parking is not None:
        return parking.park(x)
    if x.device.type == "meta":  # the simulated GPU (hires.memsim): a stand-in costing nothing
        return torch.zeros((), dtype=x.dtype).expand(x.shape)
    out = torch.empty(x.shape, dtype=x.dtype, pin_memory=x.device.type == "cuda")
    return out.copy_(x, non_blocking=True)


@contextmanager
def parked_skips(unet: nn.Module, *, at_once: bool = False) -> Iterator[None]:
    """Down blocks hand their skip outputs over as CPU copies; up blocks bring them back.

    With row bands, an up block reads its skips band by band straight from the CPU
    (`hires.lean.Stacked` moves each band); without, it moves the block's skips back whole.
    The UNet's conv_in output (the first skip) is parked as conv_in returns it, and down block
    0 reads the GPU original, which goes when that block returns. With row bands the last up
    block's input waits on the CPU too, read band by band like the skips, and so does every
    up block's input made by an upsampler, which writes it there band by band (SDXL at 16K:
    640 channels at full latent size, 5 GiB in fp16, and 1280 at half size, 2.5 GiB).
    A ControlNet (no up blocks) brings each skip back for the zero conv that reads it.

    `at_once` (with row bands, whose resnets read their input from the CPU band by band): no
    GPU copy of conv_in's output is kept, and in a down block every output that the next
    resnet reads (a resnet's, or its attention's) is parked as it is made, all but the last:
    a down block holds one of its full-size maps on the GPU, not all.
    """
    up_blocks = getattr(unet, "up_blocks", None) or ()
    at_once = at_once and _reads_parked(unet.down_blocks[0].resnets[0])
    handles = [b.register_forward_hook(_park_skips_hook) for b in unet.down_blocks]
    patched: list[nn.Module] = []
    if up_blocks:  # a ControlNet adds to its conv_in output at once
        handles += _conv_in_hooks(unet, at_once)
        inputs, patched = _park_up_inputs(up_blocks)
        handles += inputs
    if at_once:  # the next resnet reads each output but the block's last from the CPU
        handles += _park_inner_outputs(unet)
    handles += [b.register_forward_pre_hook(_skips_back_pre_hook, with_kwargs=True)
                for b in up_blocks]
    handles += [c.register_forward_pre_hook(_zero_conv_pre_hook)
                for c in getattr(unet, "controlnet_down_blocks", ())]
    try:
        yield
    finally:
        for h in handles:
            h.remove()
        for m in patched:
            del m.output_to


def _conv_in_hooks(unet: nn.Module, at_once: bool) -> list[RemovableHandle]:
    """conv_in's output parked as it returns; down block 0 reads the GPU original, kept until
    then (none `at_once`)."""
    first: list[Tensor] = []  # conv_in's output on the GPU, until down block 0 takes it

    def conv_in_hook(module, args, output):
        if not at_once:
            first.append(output)
        return park(output)

    def down_0_pre_hook(module, args, kwargs):
        if not first:
            return None
        x = first.pop()
        if args:
            return (x, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": x}

    handles = [unet.conv_in.register_forward_hook(conv_in_hook)]
    if not at_once:
        handles.append(unet.down_blocks[0].register_forward_pre_hook(down_0_pre_hook,
                                                                     with_kwargs=True))
    return handles


def _park_up_inputs(up_blocks: Sequence[nn.Module]
                    ) -> tuple[list[RemovableHandle], list[nn.Module]]:
    """The inputs of up blocks that read them from the CPU go there: an upsampler that can
    writes its output there band by band (the ones patched so are returned), else the last
    block's input is parked as the block before it returns it."""
    def last_input_hook(module, args, output):
        if getattr(up_blocks[-1].forward, "reads_parked", False):
            return park(output)
        return None

    handles, patched = [], []
    for block, after in zip(up_blocks, up_blocks[1:]):  # an up block's input: parked
        upsampler = (block.upsamplers or [None])[0]
        if not getattr(after.forward, "reads_parked", False):
            continue
        if getattr(getattr(upsampler, "forward", None), "writes_to", False):
            upsampler.output_to = _parked_empty  # written there band by band
            patched.append(upsampler)
        elif after is up_blocks[-1]:
            handles.append(block.register_forward_hook(last_input_hook))
    return handles, patched


def _park_inner_outputs(unet: nn.Module) -> list[RemovableHandle]:
    """A down block's outputs that its next resnet reads from the CPU, parked as made."""
    handles = []
    for block in unet.down_blocks:
        readers = getattr(block, "attentions", None) or block.resnets
        for made, after in zip(readers, block.resnets[1:]):
            if _reads_parked(after):
                handles.append(made.register_forward_hook(_park_output))
    return handles


def _park_output(module: nn.Module, args: tuple, output: Any) -> Any:
    """Forward hook: `output` parked (a Transformer2DModel's first item)."""
    if isinstance(output, tuple):  # a Transformer2DModel's (hidden_states,)
        return (park(output[0]), *output[1:])
    return park(output)


def _park_skips_hook(module: nn.Module, args: tuple, output: Any) -> Any:
    """Forward hook of a down block: its skips parked, its hidden state left."""
    hidden, skips = output
    return hidden, tuple(park(s) for s in skips)


def _skips_back_pre_hook(module: nn.Module, args: tuple, kwargs: dict) -> Any:
    """Forward pre-hook of an up block: its skips back on its input's device, unless the
    block reads them from the CPU itself."""
    if "res_hidden_states_tuple" in kwargs:
        skips, where = kwargs["res_hidden_states_tuple"], "kw"
    else:
        skips, where = args[1], "arg"
    device = (args[0] if args else kwargs["hidden_states"]).device
    if not getattr(module.forward, "reads_parked", False):
        skips = tuple(s.to(device, non_blocking=True) for s in skips)
    if where == "kw":
        return args, {**kwargs, "res_hidden_states_tuple": skips}
    return (args[0], skips, *args[2:]), kwargs


def _zero_conv_pre_hook(module: nn.Module, args: tuple) -> tuple:
    """Forward pre-hook of a ControlNet's zero conv: its skip back on the conv's device."""
    return (args[0].to(module.weight.device, non_blocking=True), *args[1:])


def _reads_parked(module: nn.Module) -> bool:
    """Whether `module` (a resnet) reads an input waiting on the CPU itself (hires.lean)."""
    return getattr(module.forward, "reads_parked", False)


def _parked_empty(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
    """A parked map's buffer for `device` to write band by band (a CPU tensor off a parking)."""
    parking = parking_module.current.get()
    if parking is not None:
        return parking.empty(shape, dtype, device)
    return torch.empty(shape, dtype=dtype, device=device)


@contextmanager
def streamed_blocks(unet: nn.Module, device: torch.device, *, lock: Lock | None = None,
                    unlock: Unlock = cuda_unlock) -> Iterator[None]:
    """Keep the UNet's (or a ControlNet's) weights on the CPU; each top-level block visits the
    GPU while it runs.

    The blocks' weights move once into one page-locked CPU buffer of their exact size; a block
    arriving copies them over without waiting, and a block leaving drops its GPU copies (the
    CPU ones are unchanged), so each call moves the weights one way, as the planner prices it
    (`costs.stage_cost`), with no copy through pageable memory.
    Ours rather than diffusers' group offloading, which replaces `forward` on the blocks (the
    lean pass then falls back to whole-size tensors) and is not meant to be switched per stage.
    `lock`/`unlock` page-lock the buffer (default: CUDA's, on a CUDA device).
    """
    blocks = [b for b in (*unet.down_blocks, unet.mid_block, *getattr(unet, "up_blocks", ()))
              if b is not None]
    small = [m for name, m in unet.named_children()
             if name not in ("down_blocks", "up_blocks", "mid_block")]
    for m in small:  # embeddings, conv_in/out, zero convs: small, stay on the GPU for the stage
        m.to(device)
    weights = {b: _weights(b) for b in blocks}
    flat = [t for ts in weights.values() for t in ts]
    buffer, homes = _one_buffer(flat)
    home = dict(zip(map(id, flat), homes))  # each tensor's CPU copy, in the buffer
    lock = lock or (cuda_lock if device.type == "cuda" else None)
    locked = lock is not None and lock(buffer)

    def arrive(module, args, kwargs):
        for t in weights[module]:
            t.data = home[id(t)].to(device, non_blocking=True)

    def leave(module, args, kwargs, output):
        for t in weights[module]:
            t.data = home[id(t)]

    handles = [h for b in blocks for h in (
        b.register_forward_pre_hook(arrive, with_kwargs=True),
        b.register_forward_hook(leave, with_kwargs=True))]
    try:
        yield
    finally:
        for h in handles:
            h.remove()
        for b in blocks:  # a call that failed may have left a block on the GPU
            leave(b, (), {}, None)
        if locked:
            if device.type == "cuda":
                torch.cuda.synchronize(device)  # copies out of the buffer have landed
            unlock(buffer)


def _weights(module: nn.Module) -> list[Tensor]:
    """The parameters and buffers of `module` (each once)."""
    seen: dict[int, Tensor] = {}
    for t in (*module.parameters(), *module.buffers()):
        seen.setdefault(id(t), t)
    return list(seen.values())


def _one_buffer(tensors: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
    """Move `tensors` (from any device) into one CPU buffer, each at a 64-byte aligned offset;
    returns the buffer and their new homes in it (each tensor's data now points there).
    Tensors already in one CPU buffer (an earlier stage streamed them) stay where they are: a
    second buffer would hold every weight twice while the first is emptied."""
    if all(t.device.type == "cpu" for t in tensors) and \
            len({t.untyped_storage().data_ptr() for t in tensors}) == 1:
        buffer = torch.empty(0, dtype=torch.uint8).set_(tensors[0].untyped_storage())
        return buffer, [t.data for t in tensors]
    offsets, end = [], 0
    for t in tensors:
        offsets.append(end)
        end += -(-t.nbytes // 64) * 64
    buffer = torch.empty(end, dtype=torch.uint8)
    homes = []
    for t, at in zip(tensors, offsets):
        view = buffer[at:at + t.nbytes].view(t.dtype).view(t.shape).copy_(t.data)
        t.data = view  # each old storage is freed as its tensor moves: RAM holds about one copy
        homes.append(view)
    return buffer, homes
