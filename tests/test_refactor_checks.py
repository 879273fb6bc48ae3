"""Checks that came with the readability refactors: the one pid probe of leftover cleanup."""

from __future__ import annotations

import os

import pytest

from hires import leftovers, output

# Any os.name but "posix" is what the probe refuses: "nt" itself would make pathlib build
# WindowsPaths on this machine, which it cannot.
NOT_POSIX = "java"


@pytest.fixture
def not_posix(monkeypatch) -> list[tuple[int, int]]:
    """os.name off POSIX, and os.kill recording its calls: there it is no probe (signal 0 is
    Ctrl-C on Windows), so none may be made; for an unknown pid it raises, as Windows does."""
    calls: list[tuple[int, int]] = []

    def kill(pid: int, signal: int) -> None:
        calls.append((pid, signal))
        raise OSError(22, "The parameter is incorrect")

    monkeypatch.setattr(os, "name", NOT_POSIX)
    monkeypatch.setattr(os, "kill", kill)
    return calls


def test_a_leftover_part_file_is_kept_off_posix_where_no_pid_can_be_probed(tmp_path, not_posix):
    dead = tmp_path / ".a.png.999999999.x1.part"  # no such pid
    live = tmp_path / f".b.png.{os.getpid()}.x2.part"  # this process: it must get no Ctrl-C
    for f in (dead, live):
        f.write_bytes(b"x")
    assert output.remove_stale_parts(tmp_path) == []
    assert dead.exists() and live.exists() and not_posix == []


def test_pid_alive_takes_every_pid_as_alive_off_posix(not_posix):
    assert leftovers.pid_alive(999999999) and leftovers.pid_alive(os.getpid()) and not_posix == []


def test_pid_alive_on_posix():
    if os.name != "posix":
        pytest.skip("a POSIX probe")
    assert leftovers.pid_alive(os.getpid()) and not leftovers.pid_alive(999999999)
