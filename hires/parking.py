"""Where a stage's parked maps wait on the CPU: page-locked buffers of exact sizes, reused.

Ours rather than torch's pinned allocator (`pin_memory=True`): that one rounds every block up
to a power of two, so a parked 5 GiB map takes 8 GiB of RAM that nothing else may use, and the
maps one 16K SDXL call parks (18.6 GB) took 27.5 GB. Here each buffer is its map's exact size,
is page-locked once (cudaHostRegister) and takes the same map again in every later call of the
stage (a stage's calls park the same shapes in the same order); `close` unlocks them all.

A map is copied over without waiting, so the CPU must not read a buffer before its copy has
landed: `settle` waits for that where the CPU reads one itself (torch copies a band of rows,
which is strided, to the GPU through a CPU temporary).

Where the RAM cannot hold them all (a 16K stage parks 21 GB on a 12 or 16 GB card), the plan
gives a RAM cap and a folder on a disk: buffers past the cap are files there, mapped into
memory, so the kernel writes them out and reads them back as it needs the RAM. Those are not
page-locked (that would pin them in RAM), so their copies wait for the GPU.
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
from collections.abc import Callable
from contextvars import ContextVar

import torch
from torch import Tensor

Lock = Callable[[Tensor], bool]  # page-locks a CPU tensor's memory; False if it could not
Unlock = Callable[[Tensor], None]
Pinned = Callable[[int], Tensor]  # n bytes from torch's pinned allocator
Mark = Callable[[], object]  # marks the GPU stream's work so far; `.synchronize()` waits for it


def torch_pinned(nbytes: int) -> Tensor:
    return torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)


def cuda_lock(t: Tensor) -> bool:
    """Page-lock `t` for the CUDA driver (asynchronous copies to and from the GPU)."""
    try:
        ok = int(torch.cuda.cudart().cudaHostRegister(t.data_ptr(), t.nbytes, 0)) == 0
    except (AttributeError, RuntimeError, TypeError):  # a build without these bindings
        return False
    if not ok:
        _clear_cuda_error()
    return ok


def cuda_mark() -> torch.cuda.Event:
    event = torch.cuda.Event()
    event.record()
    return event


def cuda_unlock(t: Tensor) -> None:
    torch.cuda.cudart().cudaHostUnregister(t.data_ptr())


def _clear_cuda_error() -> None:
    """Take a failed registration's error off CUDA's last-error slot, where torch's next
    kernel-launch check would report it as that kernel's failure.

    torch binds no cudaGetLastError, but every launch check calls it (which clears the error):
    so launch one tiny kernel and let its check raise the stale error here, where it is expected.
    """
    try:
        torch.empty(1, device="cuda").zero_()
    except (RuntimeError, AssertionError):  # the stale error, or no CUDA at all
        pass


def file_buffer(folder: str, nbytes: int, left: list[str] | None = None) -> Tensor:
    """`nbytes` of memory backed by a new file in `folder`, its name gone at once (where the
    system keeps a mapped file's name, as Windows does, the path goes to `left`).

    The file's blocks are reserved first: a full disk then fails here, with a message, rather
    than as a crash (SIGBUS) when a copy lands on a page the disk has no room for.
    """
    from hires.output import OutputError

    fd, path = tempfile.mkstemp(prefix=".hires-parked-", dir=folder)
    try:
        try:
            if hasattr(os, "posix_fallocate"):
                os.posix_fallocate(fd, 0, nbytes)
            else:  # no way to reserve blocks (macOS): a sparse file
                os.ftruncate(fd, nbytes)
        except OSError as e:
            raise OutputError(
                f"no room in {folder} for {nbytes / 1e9:.1f} GB of parked maps ({e.strerror}): "
                "free some, or set TMPDIR to a folder on a disk with more") from None
        return torch.from_file(path, shared=True, size=nbytes, dtype=torch.uint8)
    finally:
        os.close(fd)
        try:
            os.unlink(path)
        except OSError:
            if left is not None:
                left.append(path)


class Parking:
    """CPU buffers for the maps one UNet call parks, handed out again after `recycle`.

    `ram`: bytes of buffers that may be held in RAM; past it, buffers are files in `disk`.
    """

    def __init__(self, lock: Lock = cuda_lock, unlock: Unlock = cuda_unlock,
                 pinned: Pinned = torch_pinned, mark: Mark = cuda_mark, *,
                 ram: int | None = None, disk: str | None = None):
        self.lock, self.unlock, self.pinned, self.mark = lock, unlock, pinned, mark
        self.ram, self.disk = ram, disk
        self.on_disk = 0  # bytes of buffers that are files in `disk`
        self.left: list[str] = []  # such files whose names could not go while mapped
        self.pending: object | None = None  # the mark after the last copy not yet waited for
        self.idle: dict[int, list[Tensor]] = {}  # buffers free for the next map, by bytes
        self.taken: list[Tensor] = []  # buffers handed out since the last recycle
        self.locked: list[Tensor] = []  # buffers this object page-locked (unlocked by close)
        self.bytes = 0  # CPU memory held in buffers now
        self.peak = 0  # the most it held at once
        self.fallback = False  # buffers came from torch's pinned allocator (locking failed)

    def park(self, x: Tensor) -> Tensor:
        """A CPU copy of `x`, copied without waiting (the GPU's stream orders later reads)."""
        if x.device.type == "meta":  # the simulated GPU (hires.memsim): counted, no memory
            self._hold(x.nbytes)
            return torch.zeros((), dtype=x.dtype).expand(x.shape)
        if x.device.type != "cuda":  # e.g. MPS: memory the GPU shares, nothing to lock
            return x.to("cpu")
        out = self.empty(x.shape, x.dtype, x.device).copy_(x, non_blocking=True)
        self.pending = self.mark()
        return out

    def empty(self, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
        """A buffer for a map that `device` writes band by band (each band a strided copy,
        which torch makes through a CPU temporary: landed when the copy returns)."""
        nbytes = math.prod(shape) * dtype.itemsize
        if device.type == "meta":  # counted; a meta tensor the simulated GPU does not count
            from hires.memsim import host_tensor

            self._hold(nbytes)
            return host_tensor(shape, dtype)
        if device.type != "cuda":
            return torch.empty(shape, dtype=dtype)
        spare = self.idle.get(nbytes)
        buffer = spare.pop() if spare else self._new(nbytes)
        self.taken.append(buffer)
        return buffer.view(dtype).view(shape)

    def settle(self) -> None:
        """Wait until every map parked so far is in its buffer (before the CPU reads one)."""
        if self.pending is not None:
            self.pending.synchronize()
            self.pending = None

    def _new(self, nbytes: int) -> Tensor:
        if self.disk is not None and self.ram is not None and \
                self.bytes - self.on_disk + nbytes > self.ram:
            buffer = file_buffer(self.disk, nbytes, self.left)
            self._hold(nbytes)
            self.on_disk += nbytes
            return buffer
        self._hold(nbytes)
        if not self.fallback:
            buffer = torch.empty(nbytes, dtype=torch.uint8)
            if self.lock(buffer):
                self.locked.append(buffer)
                return buffer
            self.fallback = True  # e.g. the driver refused: torch's allocator, rounding and all
        return self.pinned(nbytes)

    def _hold(self, nbytes: int) -> None:
        self.bytes += nbytes
        self.peak = max(self.peak, self.bytes)

    def recycle(self) -> None:
        """The call is over: every buffer may take a map of the next one."""
        for buffer in self.taken:
            self.idle.setdefault(buffer.nbytes, []).append(buffer)
        self.taken.clear()
        if not self.locked and not self.idle:  # meta: nothing real to hand out again
            self.bytes = 0

    def close(self) -> None:
        """Unlock and free every buffer, once the GPU has finished copying."""
        gpu = torch.cuda.is_available()
        if (self.locked or self.fallback or self.on_disk) and gpu:
            torch.cuda.synchronize()
        for buffer in self.locked:
            self.unlock(buffer)
        self.idle.clear()
        self.taken.clear()
        self.locked.clear()
        self.bytes, self.on_disk, self.pending = 0, 0, None
        for path in self.left:  # unmapped now that the buffers are gone
            with contextlib.suppress(OSError):
                os.unlink(path)
        self.left.clear()
        if self.fallback and gpu:
            empty = getattr(getattr(torch, "accelerator", None), "empty_host_cache", None)
            if empty is not None:
                empty()  # torch's pinned blocks, back to the machine (torch 2.8+)


current: ContextVar[Parking | None] = ContextVar("parking", default=None)  # the stage's


def settle() -> None:
    """`Parking.settle` for the stage's parking, if maps are parked."""
    parking = current.get()
    if parking is not None:
        parking.settle()
