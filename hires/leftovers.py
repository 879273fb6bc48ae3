"""Temporary files and folders named for the process that made them (`hires-KIND-PID-...`),
and the leftovers of runs that are gone: a run killed outright (SIGKILL, a power cut) cannot
remove its own, so the next run of the same kind removes them."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def prefix(kind: str) -> str:
    """The name prefix of this process's temporary files of `kind` ("stdout", "stdin")."""
    return f"hires-{kind}-{os.getpid()}-"


def pid_alive(pid: int) -> bool:
    """Whether process `pid` is there (another user's too). Off POSIX every pid is taken as
    alive, so nothing of it is deleted: os.kill(pid, 0) is no probe on Windows, it sends Ctrl-C."""
    if os.name != "posix":
        return True
    try:
        os.kill(pid, 0)  # no signal: only whether the process is there
    except ProcessLookupError:
        return False
    except OSError:  # there, but another user's
        return True
    return True


def stale(folder: Path, kind: str) -> list[Path]:
    """This user's temporary files and folders of `kind` in `folder` whose process is gone."""
    if os.name != "posix":  # no pid is probed there (see pid_alive), nor is there os.getuid
        return []
    start = f"hires-{kind}-"
    gone = []
    for place in folder.glob(f"{start}*-*"):
        pid = place.name[len(start):].partition("-")[0]
        try:
            mine = pid.isdigit() and place.lstat().st_uid == os.getuid()
        except OSError:  # the file went meanwhile
            continue
        if mine and not pid_alive(int(pid)):
            gone.append(place)
    return gone


def remove_stale(folder: Path, kind: str) -> None:
    """Remove what `stale` finds (a folder with what is in it)."""
    for place in stale(folder, kind):
        if place.is_dir() and not place.is_symlink():
            shutil.rmtree(place, ignore_errors=True)
        else:
            place.unlink(missing_ok=True)
