"""Temp files in a folder that hosts share (NFS): a run removes its own host's dead runs' parts,
never another host's part while that host may still be writing it (its pid means nothing
here)."""

import os
import time

from hires import output
from hires.output import part_file, remove_stale_parts

DEAD_PID = 999999999  # no such pid here


def aged(path, seconds: float):
    """`path`, its modification time `seconds` ago."""
    path.touch()
    then = time.time() - seconds
    os.utime(path, (then, then))
    return path


def test_a_part_file_names_its_host_and_pid(tmp_path):
    fd, tmp = part_file(tmp_path, "o.png")
    os.close(fd)
    name = os.path.basename(tmp)
    assert name.startswith(f".o.png.@{output.this_host()}.{os.getpid()}.")
    assert name.endswith(".part")


def test_a_part_file_of_a_long_name_fits_name_max(tmp_path, monkeypatch):
    monkeypatch.setattr(output, "this_host", lambda: "h" * output.HOST_MAX)
    name = "猫" * 77 + ".png"  # 235 bytes: as long as an output name may be
    fd, tmp = part_file(tmp_path, name)
    os.close(fd)
    assert len(os.fsencode(os.path.basename(tmp))) <= output.NAME_MAX
    assert remove_stale_parts(tmp_path) == []  # this process's: read back as live


def test_another_hosts_part_is_kept_while_it_may_be_written(tmp_path):
    """Its pid is no process here, yet that host's run may be saving into it right now."""
    fresh = aged(tmp_path / f".o.png.@other-gpu-host.{DEAD_PID}.abcd1234.part", 3600)
    assert remove_stale_parts(tmp_path) == []
    assert fresh.exists()


def test_another_hosts_part_untouched_for_a_day_is_removed(tmp_path):
    old = aged(tmp_path / f".o.png.@other-gpu-host.{os.getpid()}.abcd1234.part",
               output.OTHER_HOST_STALE_S + 60)
    assert remove_stale_parts(tmp_path) == [old]  # a live pid here is no other host's process


def test_this_hosts_parts_go_by_their_pid(tmp_path):
    dead = tmp_path / f".a.png.@{output.this_host()}.{DEAD_PID}.abcd1234.part"
    live = tmp_path / f".b.png.@{output.this_host()}.{os.getpid()}.abcd1234.part"
    dead.touch()
    aged(live, output.OTHER_HOST_STALE_S + 60)  # old, but its process is alive
    assert remove_stale_parts(tmp_path) == [dead]
    assert live.exists()


def test_parts_named_before_hosts_were_go_by_their_pid(tmp_path):
    dead = tmp_path / f".a.png.{DEAD_PID}.x1.part"
    live = tmp_path / f".b.png.{os.getpid()}.x2.part"
    dead.touch()
    live.touch()
    assert remove_stale_parts(tmp_path) == [dead]
