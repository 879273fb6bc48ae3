"""Runs of several images send no more work to a disk that refused an image's save (full,
over its quota, read-only): each later image there would fail alike, after all its work (a
16K image's minutes on a GPU), so it fails at once, saying why, while the disk stays so."""

from __future__ import annotations

import errno
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from hires.output import DiskRefused, OutputError, disk_amount, read_only


@dataclass
class FullDisks:
    """The disks (by st_dev) that refused an image of this run, and which image it was."""

    refused: dict[int, tuple[DiskRefused, str]] = field(default_factory=dict)

    def saw(self, error: DiskRefused, what: str) -> None:
        """Note that `error` refused the image `what` names ('job 3', a path)."""
        device = _device(error.folder) if error.folder else None
        if device is not None:
            self.refused[device] = (error, what)

    def check(self, path: Path, need: int) -> None:
        """OutputError when `path`'s disk refused an image before and still would one of
        `need` bytes (`hires.output.disk_need`): read-only still, over a quota (which no
        free-space figure shows), or with less than `need` free."""
        if not self.refused:
            return
        folder = _existing(path.parent.absolute())
        seen = self.refused.get(_device(folder))
        if seen is None:
            return
        named = path.parent if str(path.parent) else Path(".")  # as the user gave it
        error, what = seen
        if error.errno == errno.ENOSPC:
            try:
                free = shutil.disk_usage(folder).free
            except OSError:
                return  # not to be told: the save says what it finds
            if free >= need:  # space was freed since (or this image is smaller)
                return
            state, fix = (f"has {disk_amount(free)} free, less than this image may need "
                          f"({disk_amount(need)})"), "free some space"
        elif error.errno == errno.EROFS:
            if not read_only(folder, unknown=True):  # untold: as it was
                return
            state, fix = "is still read-only", "make it writable"
        else:  # a quota shows in no free-space figure: refused for the rest of the run
            state, fix = "is over its quota", "free some space"
        raise OutputError(f"not started: {named} is on the disk that refused {what} "
                          f"({os.strerror(error.errno)}), which {state}; {fix} and run the "
                          "same command again (it skips the images made)")


def _existing(folder: Path) -> Path:
    """`folder`, or the nearest folder above it that is there (the run makes the rest)."""
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def _device(folder: Path) -> int | None:
    try:
        return _existing(folder).stat().st_dev
    except OSError:
        return None
