"""Images another hires run is making now: while a run makes an image it holds a lock on a
hidden file beside it (`.NAME.hires-lock`), so two runs of one command do not both spend the
work on it. The lock is the kernel's (flock): it goes with the process, even one killed outright,
so a lock file left behind is harmless and the next run takes it over."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

from hires.output import OutputUsage

try:
    import fcntl
except ImportError:  # Windows has no flock: runs there are not guarded
    fcntl = None

SUFFIX = ".hires-lock"


class Busy(OutputUsage):
    """Another hires run is making the image; `pid` is that run's (0 if it cannot be told)."""

    def __init__(self, image: Path, pid: int):
        self.who = f"another hires run (pid {pid})" if pid else "another hires run"
        super().__init__(f"{self.who} is making {image}; wait for it to end, or choose "
                         "another -o")
        self.image, self.pid = image, pid


def lock_path(image: Path) -> Path:
    return image.with_name(f".{image.name}{SUFFIX}")


@contextlib.contextmanager
def making(image: Path) -> Iterator[None]:
    """Hold `image`'s lock while the block makes it; Busy if another run holds it. Its folder
    is made now, as the save would make it (`-o new/`): two runs into a new folder find one
    lock. Where no lock file can be made (a read-only folder), nothing is held: saving the
    image there fails later with its own message."""
    if fcntl is not None:
        with contextlib.suppress(OSError):
            image.parent.mkdir(parents=True, exist_ok=True)
    fd = _take(lock_path(image), image) if fcntl is not None else None
    try:
        yield
    finally:
        if fd is not None:
            with contextlib.suppress(OSError):
                os.unlink(lock_path(image))  # before the lock goes: see _take
            os.close(fd)


def check_free(image: Path) -> None:
    """Busy if another run holds `image`'s lock now, as `making` would find it; for a dry run,
    which writes nothing (no folder, no lock file)."""
    if fcntl is None:
        return
    try:
        fd = os.open(lock_path(image), os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return  # no lock file: no run holds it
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise Busy(image, _pid(fd)) from None
    except OSError:
        pass  # a file system without locks
    finally:
        os.close(fd)  # lets go of the lock too, if it was taken


def _take(lock: Path, image: Path) -> int | None:
    for attempt in range(20):
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # held; or `remove_stale` trying it for an instant: again
            pid = _pid(fd)
            os.close(fd)
            if attempt >= 4:
                raise Busy(image, pid) from None
            time.sleep(0.05)
            continue
        except OSError:  # a file system without locks
            os.close(fd)
            return None
        try:  # still the file at that name? Its last holder may have removed it meanwhile
            same = os.stat(lock, follow_symlinks=False).st_ino == os.fstat(fd).st_ino
        except OSError:
            same = False
        if same:
            os.ftruncate(fd, 0)
            os.write(fd, str(os.getpid()).encode())
            return fd
        os.close(fd)
    return None


def _pid(fd: int) -> int:
    try:
        text = os.pread(fd, 20, 0).decode("ascii", "replace").strip()
    except OSError:
        return 0
    return int(text) if text.isdigit() else 0


def remove_stale(folder: Path) -> None:
    """Remove the lock files in `folder` that no live run holds (left by runs killed outright)."""
    if fcntl is None:
        return
    for lock in folder.glob(f".*{SUFFIX}"):
        image = lock.with_name(lock.name[1:-len(SUFFIX)])
        with contextlib.suppress(Busy, OSError), making(image):
            pass
