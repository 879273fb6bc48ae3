"""Tiles resume from saved block outputs: the VAE as a list of steps, and where outputs are kept.

A statistics pass stops at the first GroupNorm without statistics; every step before it already
ran on whole-image statistics, so its output for that tile is final. Later passes resume from
the deepest saved output instead of starting from the latents: each step then runs about once
per tile instead of once per pass (the mid-block attention ran in ~17 passes).
"""

from __future__ import annotations

import errno
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import IO

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hires import memory
from hires.memory import scratch_folder
from hires.vae_tiles import Box


def stages(net: nn.Module) -> list[Callable[[Tensor], Tensor]]:
    """diffusers' VAE Encoder or Decoder forward as a list of steps, resnet by resnet."""
    if hasattr(net, "up_blocks"):
        blocks = [net.conv_in, net.mid_block, *net.up_blocks]
    elif hasattr(net, "down_blocks"):
        blocks = [net.conv_in, *net.down_blocks, net.mid_block]
    else:
        return [net]  # an unknown network: run whole, nothing to resume from

    def tail(x: Tensor) -> Tensor:
        return net.conv_out(net.conv_act(net.conv_norm_out(x)))

    return [step for block in blocks for step in _block_steps(block)] + [tail]


def _resnet(m: nn.Module) -> list[Callable]:
    """A VAE resnet as two steps, split before its second GroupNorm.

    Whole, the pass for that GroupNorm would run the first convolution, stop, and the next
    pass run it again: a third more convolution work. The first step's output is the pair
    (input, first convolution's output), since the shortcut needs the input.
    """
    plain = (type(m).__name__ == "ResnetBlock2D" and m.upsample is None
             and m.downsample is None and m.time_emb_proj is None
             and m.time_embedding_norm != "scale_shift")
    if not plain:
        return [lambda x: m(x, None)]

    # The activation runs in place on the GroupNorm's fresh output (saves a full-size copy).
    act = (lambda t: F.silu(t, inplace=True)) if isinstance(m.nonlinearity, nn.SiLU) \
        else m.nonlinearity

    def first(x: Tensor) -> tuple[Tensor, Tensor]:
        return x, m.conv1(act(m.norm1(x)))

    def second(pair: tuple[Tensor, Tensor]) -> Tensor:
        x, h = pair
        h = m.conv2(m.dropout(act(m.norm2(h))))
        if m.conv_shortcut is not None:
            x = m.conv_shortcut(x)
        h += x
        return h if m.output_scale_factor == 1 else h / m.output_scale_factor

    return [first, second]


def _block_steps(block: nn.Module) -> list[Callable]:
    """The steps of one block, as its forward runs them (only for the VAE's block types)."""
    resnet = _resnet
    kind = type(block).__name__
    if kind == "UNetMidBlock2D":
        steps = resnet(block.resnets[0])
        for attn, res in zip(block.attentions, block.resnets[1:]):
            steps += ([attn] if attn is not None else []) + resnet(res)
        return steps
    if kind in ("UpDecoderBlock2D", "DownEncoderBlock2D"):
        resamplers = getattr(block, "upsamplers", None) or getattr(block, "downsamplers", None)
        return [step for m in block.resnets for step in resnet(m)] + list(resamplers or [])
    return [block]


class Stop(Exception):
    """Ends a forward pass early, once the module whose statistics are wanted has been fed."""


class Memo:
    """Where tiles' step outputs are kept: the deepest one of each tile."""

    def load(self, box: Box, device: torch.device) -> tuple[int, Tensor] | None:
        """(step number, saved input of that step) for the deepest output kept for `box`."""
        raise NotImplementedError

    def save(self, number: int, box: Box, x: Tensor) -> None:
        raise NotImplementedError

    def settle(self, box: Box) -> None:
        """`box`'s run ended (or a pass stopped it): what it keeps is final."""

    def close(self) -> None:
        pass

    @property
    def bytes(self) -> int:
        """Scratch-file bytes written so far."""
        return 0


class MemoryMemo(Memo):
    """The deepest output of each tile that fits, kept in memory, `budget` bytes in all.

    When a deeper output does not fit, the tile keeps the shallower one it has and resumes
    from there: on big images the cheap latent-resolution levels of every tile stay, and only
    the full-resolution steps run more than once. A GPU's outputs that do not fit `budget`
    go to the CPU's memory, up to `spill` bytes more: copying one back costs far less than
    running its steps again (a 16K SDXL decode on a 24 GB card: BENCHMARKS.md).
    """

    def __init__(self, budget: float, spill: float = 0.0):
        self.budget, self.spill = budget, spill
        self.used = self.spilled = 0
        self.most = 0  # the most `used` has been: what the memo took of the device at once
        self.pinned = False  # whether anything went to the CPU's pinned memory
        self.kept: dict[Box, tuple[int, Tensor | tuple[Tensor, ...], bool]] = {}  # + spilled?
        # A spilled output is copied once its tile's run settles, not as it is made: a deeper
        # one that follows takes its place uncopied (a sweep over a tile's steps copied every
        # step's output, and all but the last for nothing). Until then it is the next step's
        # input, in the device's memory anyway.
        self.pending: set[Box] = set()
        self.copied = 0  # bytes copied between the device and the CPU's memory, each way

    def load(self, box: Box, device: torch.device) -> tuple[int, Tensor] | None:
        hit = self.kept.get(box)
        if hit is None:
            return None
        number, x, spilled = hit
        if spilled:
            self.copied += _nbytes(x)
        return number, (_moved(x, device) if spilled else x)

    def save(self, number: int, box: Box, x: Tensor | tuple[Tensor, ...]) -> None:
        old = self.kept.get(box)
        need = _nbytes(x)
        here = 0 if old is None or old[2] else _nbytes(old[1])
        away = 0 if old is None or not old[2] else spilled_size(_nbytes(old[1]))
        if self.used - here + need <= self.budget:
            self.kept[box] = (number, x, False)  # the step's own output: no copy
            self.used, self.spilled = self.used - here + need, self.spilled - away
            self.most = max(self.most, self.used)
            self.pending.discard(box)
        elif self.spilled - away + spilled_size(need) <= self.spill:
            self.kept[box] = (number, x, True)
            self.used, self.spilled = self.used - here, self.spilled - away + spilled_size(need)
            self.pending.add(box)
        else:  # kept as it was: copied now, or it would hold device memory while the tile runs on
            self.settle(box)

    def settle(self, box: Box) -> None:
        if box not in self.pending:
            return
        self.pending.discard(box)
        number, x, _ = self.kept[box]
        self.kept[box] = (number, _moved(x, torch.device("cpu")), True)
        self.copied += _nbytes(x)
        self.pinned = self.pinned or _on_gpu(x)

    def close(self) -> None:
        self.kept.clear()
        self.pending.clear()
        self.used = self.spilled = 0
        empty = getattr(getattr(torch, "accelerator", None), "empty_host_cache", None)
        if self.pinned and empty is not None:
            empty()  # the pinned blocks, back to the machine (torch 2.8+)
        self.pinned = False


def spilled_size(n: int) -> int:
    """What `n` bytes take in the CPU's pinned memory: torch's pinned allocator rounds blocks
    up to a power of two (per tensor; counted here per step output)."""
    return 1 << max(0, (n - 1).bit_length())


def _on_gpu(x: Tensor | tuple[Tensor, ...]) -> bool:
    return any(t.device.type == "cuda" for t in (x if isinstance(x, tuple) else (x,)))


def _moved(x: Tensor | tuple[Tensor, ...], device: torch.device) -> Tensor | tuple[Tensor, ...]:
    """`x` on `device`, copied without waiting where a GPU is involved (pinned on the CPU side:
    torch pins a non-blocking copy's CPU output); as it is where no GPU is (CPU, meta)."""
    if isinstance(x, tuple):
        return tuple(_moved(t, device) for t in x)
    if x.device.type != "cuda" and device.type != "cuda":
        return x
    return x.to(device, non_blocking=True)


def _nbytes(x: Tensor | tuple[Tensor, ...]) -> int:
    return sum(t.nbytes for t in x) if isinstance(x, tuple) else x.nbytes


_ROOM: ContextVar[float | None] = ContextVar("hires_vae_scratch_room", default=None)


@contextmanager
def scratch_capped(nbytes: float | None) -> Iterator[None]:
    """Within this, exact mode's files (`DiskMemo`) take at most `nbytes` of the scratch disk
    in all (a run's `--disk`: 0 writes none, and the passes recompute); None: no cap but the
    free space's."""
    token = _ROOM.set(nbytes)
    try:
        yield
    finally:
        _ROOM.reset(token)


def in_memory(folder: str) -> bool:
    """Whether `folder` is on a filesystem in RAM (tmpfs): no room for scratch files."""
    return memory._filesystem(folder) in memory.MEMORY_FILESYSTEMS


class DiskMemo(Memo):
    """Step outputs of tiles in temporary files (in `hires.memory.scratch_folder`: TMPDIR),
    level by level.

    On disk, not in memory, so that memory stays set by the tile: up to 17 GB at 16K for the
    tiny VAE, read back through the page cache. A level is only kept while it fits `budget`
    bytes and half the room left: what is free of the disk, and of `room` bytes for all the
    files (default: `scratch_capped`'s); none on a filesystem in RAM. A shallower level is
    deleted once a deeper one holds its tiles.
    """

    def __init__(self, windows: int, budget: float, room: float | None = None):
        self.windows, self.budget = windows, budget
        self.room = _ROOM.get() if room is None else room
        self.levels: dict[int, _Level] = {}
        self.refused: set[int] = set()
        self.written = self.read = 0
        self.live = self.most = 0  # bytes in the files now; the most at once

    @property
    def bytes(self) -> int:
        return self.written

    def load(self, box: Box, device: torch.device) -> tuple[int, Tensor] | None:
        for number in sorted(self.levels, reverse=True):
            level = self.levels[number]
            if box in level.index:
                offset, shape, dtype, cl = level.index[box]
                self.read += math.prod(shape) * dtype.itemsize
                if device.type == "meta":  # sizes only: the planner's replay (hires.vae_cost)
                    t = torch.empty(shape, dtype=dtype, device=device)
                    return number, (t.contiguous(memory_format=torch.channels_last) if cl else t)
                t = torch.empty(shape, dtype=dtype)
                _read_into(level.file.fileno(), t.reshape(-1).view(torch.uint8).numpy(), offset)
                if cl:
                    t = t.contiguous(memory_format=torch.channels_last)
                return number, t.to(device)
        return None

    def save(self, number: int, box: Box, x: Tensor) -> None:
        level = self.levels.get(number)
        if isinstance(x, tuple):  # mid-resnet pairs: not worth a level of files of their own
            return
        if number in self.refused or (level is not None and box in level.index):
            return
        meta = x.device.type == "meta"  # sizes only: nothing to write
        t = x.detach() if meta else x.detach().to("cpu").contiguous()
        nbytes = t.nbytes
        if level is None:
            need = nbytes * self.windows
            folder = scratch_folder()
            if need > min(self.budget, self._left(folder) / 2):
                self.refused.add(number)
                return
            level = self.levels[number] = _Level(tempfile.TemporaryFile(dir=folder))
        cl = x.ndim == 4 and not x.is_contiguous() and x.is_contiguous(
            memory_format=torch.channels_last)
        try:
            if not meta:
                _write_at(level.file.fileno(), t.reshape(-1).view(torch.uint8).numpy(),
                          level.end)
        except OSError as e:
            if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            # The scratch disk filled up under us (other users of TMPDIR): give up this level
            # and recompute its tiles instead, as when it did not fit from the start.
            gone = self.levels.pop(number)
            gone.file.close()
            self.live -= gone.end
            self.refused.add(number)
            return
        level.index[box] = (level.end, tuple(t.shape), t.dtype, cl)
        level.end += nbytes
        self.written += nbytes
        self.live += nbytes
        self.most = max(self.most, self.live)
        for shallow in [n for n in self.levels if n < number]:
            if self.levels[shallow].index.keys() <= level.index.keys():
                gone = self.levels.pop(shallow)
                gone.file.close()
                self.live -= gone.end

    def _left(self, folder: str) -> float:
        """The scratch bytes the files may still take: what is free of `folder`'s disk, and
        of the room (none in RAM)."""
        if (self.room is not None and self.room <= 0) or in_memory(folder):
            return 0.0
        free = shutil.disk_usage(folder).free
        return free if self.room is None else min(free, self.room - self.live)

    def close(self) -> None:
        for level in self.levels.values():
            level.file.close()
        self.levels.clear()


@dataclass
class _Level:
    """One level of saved outputs: a scratch file and where each tile's tensor lies in it."""

    file: IO[bytes]
    index: dict = field(default_factory=dict)  # box -> (offset, shape, dtype, channels-last)
    end: int = 0  # bytes written


def _write_at(fd: int, data: np.ndarray, offset: int) -> None:
    view = memoryview(data).cast("B")
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


def _read_into(fd: int, data: np.ndarray, offset: int) -> None:
    view = memoryview(data).cast("B")
    while view:
        n = os.preadv(fd, [view], offset)
        if n == 0:
            raise OSError("tiled VAE scratch file ended early")
        view, offset = view[n:], offset + n


class Runner:
    """Runs one tile through a network's steps, resuming from and saving to a `Memo`."""

    def __init__(self, head: Callable[[Box], Tensor], net: nn.Module, memo: Memo,
                 device: torch.device):
        self.head, self.stages, self.memo, self.device = head, stages(net), memo, device
        self.saving = True

    def __call__(self, box: Box) -> Tensor:
        start, x = 0, None
        hit = self.memo.load(box, self.device)
        if hit is not None:
            start, x = hit
        else:
            x = self.head(box)
        try:
            for i in range(start, len(self.stages)):
                x = self.stages[i](x)
                if self.saving and i + 1 < len(self.stages):
                    self.memo.save(i + 1, box, x)
        except Stop:  # a pass has what it came for; any other error ends the memo's use
            self.memo.settle(box)
            raise
        self.memo.settle(box)
        return x
