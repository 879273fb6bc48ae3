"""Device memory: queries, where weights live between phases, peak-memory measurement."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

GIB = 1024**3


def free_memory(device: torch.device, parts: tuple[nn.Module, ...] = ()) -> int | None:
    """What a plan may use: the device's free memory plus what `parts` already hold there.

    On CPU, the available RAM (page cache counts: the kernel gives it back) plus `parts`'
    weights there; None where it cannot be told (MPS).
    """
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        # The driver counts what torch's caching allocator holds unused as taken; torch reuses it.
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return free + cached + bytes_on("cuda", parts)
    if device.type == "cpu":
        available = ram_bytes()[1]
        # The plan counts the weights as its own, so what they hold is given back; only their
        # anonymous pages, though: a memory-mapped file's are already in the available figure.
        return available + min(bytes_on("cpu", parts), anonymous_rss()) if available else None
    return None


def anonymous_rss() -> int:
    """Bytes of this process's resident memory not backed by a file; 0 where not told."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def bytes_on(device_type: str, parts: tuple[nn.Module, ...]) -> int:
    """Bytes of the weights and buffers of `parts` that live on devices of `device_type`."""
    return sum(t.numel() * t.element_size() for p in parts
               for t in (*p.parameters(), *p.buffers()) if t.device.type == device_type)


# RAM a plan leaves alone: the process itself, the image being made, the system's own use.
HOST_MARGIN_BYTES, HOST_MARGIN_SHARE = 2 * GIB, 0.1


def host_room(free: float) -> float:
    """The part of `free` bytes of RAM that a plan's parked maps and offloaded weights may fill."""
    return max(0.0, free * (1 - HOST_MARGIN_SHARE) - HOST_MARGIN_BYTES)


# Scratch disk a plan leaves alone: other users of TMPDIR, the image being saved.
DISK_MARGIN_BYTES, DISK_MARGIN_SHARE = 4 * GIB, 0.1
MEMORY_FILESYSTEMS = {"tmpfs", "ramfs"}  # a "disk" in RAM: no room for what RAM cannot hold


BIG_TEMP = "/var/tmp"  # meant for big temporary files, on a disk where /tmp is in RAM


def tmpdir_problem() -> str | None:
    """Why TMPDIR (or TEMP, TMP), if set, is not where temporary files go: Python passes over
    a folder that is missing or not writable without a word, to the system's."""
    for name in ("TMPDIR", "TEMP", "TMP"):
        value = os.environ.get(name)
        if value:
            if os.path.isdir(value) and os.access(value, os.W_OK | os.X_OK):
                return None
            what = "not a folder" if not os.path.isdir(value) else "not writable"
            return (f"{name}={value} is {what}: temporary files go to "
                    f"{tempfile.gettempdir()} instead")
    return None


def scratch_folder() -> str:
    """Where big temporary files go (parked maps the RAM cannot hold, the exact VAE mode's
    files): TMPDIR if set, else the system's temp folder, unless that is in RAM (a tmpfs /tmp,
    as on Fedora and Arch) and /var/tmp is on a disk."""
    here = tempfile.gettempdir()
    if any(os.environ.get(v) for v in ("TMPDIR", "TEMP", "TMP")) \
            or _filesystem(here) not in MEMORY_FILESYSTEMS:
        return here
    if os.path.isdir(BIG_TEMP) and os.access(BIG_TEMP, os.W_OK | os.X_OK) \
            and _filesystem(BIG_TEMP) not in MEMORY_FILESYSTEMS:
        return BIG_TEMP
    return here


def disk_room(folder: str) -> float:
    """The part of `folder`'s free disk that parked maps may fill; 0 on a filesystem in RAM."""
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return 0.0
    if _filesystem(folder) in MEMORY_FILESYSTEMS:
        return 0.0
    return max(0.0, free * (1 - DISK_MARGIN_SHARE) - DISK_MARGIN_BYTES)


def _filesystem(folder: str) -> str | None:
    """The type of the filesystem that holds `folder` (Linux's mount table), else None."""
    try:
        with open("/proc/self/mounts", encoding="utf-8") as f:
            mounts = [line.split()[1:3] for line in f if len(line.split()) >= 3]
    except OSError:
        return None
    path = os.path.realpath(folder)
    best = None
    for point, kind in mounts:
        point = point.replace("\\040", " ")
        inside = path == point or path.startswith(point.rstrip("/") + "/")
        if inside and (best is None or len(point) >= len(best[0])):
            best = (point, kind)
    return best[1] if best else None


def ram_bytes() -> tuple[int, int]:
    """(total, available) RAM in bytes; (0, 0) where the system does not say."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            fields = {k: int(v.split()[0]) * 1024 for k, v in
                      (line.split(":", 1) for line in f if ":" in line)}
        return fields["MemTotal"], fields.get("MemAvailable", fields.get("MemFree", 0))
    except (OSError, KeyError, ValueError):
        pass
    try:
        page = os.sysconf("SC_PAGE_SIZE")
        return page * os.sysconf("SC_PHYS_PAGES"), page * os.sysconf("SC_AVPHYS_PAGES")
    except (OSError, ValueError, AttributeError):
        return 0, 0


def choose_offload(offload: str, device: torch.device) -> str:
    """The offload modes the planner may use: the user's choice, 'none' where there is no GPU."""
    return "none" if device.type not in ("cuda", "mps") else offload


def place(components) -> None:
    """Where the weights wait after loading: on the GPU with offload 'none', else on the CPU
    until a stage's plan brings what it needs (see `placed`)."""
    pipe, dev = components.pipe, components.device
    target = dev if components.offload == "none" or dev.type == "cpu" else torch.device("cpu")
    for part in (pipe.unet, pipe.vae, pipe.text_encoder, pipe.text_encoder_2):
        part.to(target)


@contextmanager
def current(device: torch.device) -> Iterator[None]:
    """`device` as CUDA's current device for the block: streams, events and `synchronize()`
    act on the current device (cuda:0 unless set), not on the device of the tensors."""
    if device.type != "cuda":
        yield
        return
    with torch.cuda.device(device):
        yield


@contextmanager
def placed(components, weights: str, *active: nn.Module) -> Iterator[None]:
    """Weights where a phase's strategy wants them: 'resident' everything on the GPU, 'model'
    only the `active` parts, 'sequential' the same but the UNet streams itself block by block
    (hires.strategy.streamed_blocks)."""
    pipe, dev = components.pipe, components.device
    if dev.type == "cpu":
        yield
        return
    parts = components.parts
    # sequential: these bring their blocks in themselves
    streamed = (pipe.unet, *components.controlnets.values())
    if weights == "resident":
        for part in parts:
            part.to(dev)
    else:
        for part in parts:
            if not any(part is a for a in active):
                part.to("cpu")
        for part in active:
            if not (weights == "sequential" and any(part is s for s in streamed)):
                part.to(dev)
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    yield


# The CLI owns its process: it starts the CPU's peak (VmHWM) anew each stage (hires.cli sets
# this). A library caller's process is its own: resetting would wipe its peak too
# (ru_maxrss reads the same counter), so there a stage's CPU figure is the process's peak.
CPU_PEAK_PER_STAGE = False
_peak_before = 0  # the process's peak before the last reset, for `peak_rss`


def reset_peak(device: torch.device) -> None:
    """Start a new peak for `peak_memory`: CUDA's allocator's, or on the CPU (Linux, with
    CPU_PEAK_PER_STAGE) this process's resident one, so that a stage's figure is its own."""
    global _peak_before
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    elif device.type == "cpu" and CPU_PEAK_PER_STAGE:
        _peak_before = max(_peak_before, _high_water() or 0)
        try:  # '5' resets only the peak (VmHWM); Linux >= 4.0
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            pass  # elsewhere the peak since the process started stands


def peak_memory(device: torch.device) -> int | None:
    """Peak bytes allocated on a CUDA device since the last reset; on the CPU the process's
    peak resident memory (weights included), since the last reset where one is made."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return _high_water() or peak_rss()


def _high_water() -> int | None:
    """VmHWM: the peak resident bytes since the process started or `reset_peak` (Linux)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def peak_rss() -> int | None:
    """This process's peak resident memory in bytes since it started (Linux/macOS), across
    `reset_peak`s."""
    now = _high_water()
    if now is not None:
        return max(now, _peak_before)
    try:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    except (ImportError, OSError):
        return None
    return peak if os.uname().sysname == "Darwin" else peak * 1024
