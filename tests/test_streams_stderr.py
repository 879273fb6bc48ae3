"""A stderr that takes no more (`2>/dev/full`, a closed terminal's EIO) ends only the log:
log lines and progress never stop the work, as a reader gone away (`2>&1 | head`) never did."""

from __future__ import annotations

import contextlib
import subprocess
from pathlib import Path

import pytest
from helpers_cli import REPO, hires_cmd, subprocess_env

FULL = Path("/dev/full")  # every write fails with ENOSPC
pytestmark = pytest.mark.skipif(not FULL.exists(), reason="needs /dev/full")


@pytest.fixture
def full_stderr():
    """A stream on /dev/full (its own descriptor: the log's fallback points it elsewhere); a
    test sets it as sys.stderr itself, as pytest's capture sets its own between setup and
    call."""
    stream = open(FULL, "w")  # noqa: SIM115 (closed below)
    yield stream
    with contextlib.suppress(OSError):  # what it holds back cannot be written either
        stream.close()


@pytest.mark.parametrize("mode", ["auto", "json"])
def test_a_log_line_on_a_full_stderr_is_dropped_not_raised(full_stderr, monkeypatch, mode):
    """ENOSPC from a log line ended the run: exit 1, no image."""
    from hires import cli_output

    monkeypatch.setattr("sys.stderr", full_stderr)
    monkeypatch.setattr(cli_output.err, "quiet", False)
    monkeypatch.setattr(cli_output.Quiet, "progress", mode)
    monkeypatch.setattr(cli_output.Quiet, "on", False)
    cli_output.say("loading the model")
    cli_output.warn("something to know")


def test_progress_lines_on_a_full_stderr_stop_and_the_work_goes_on(full_stderr):
    from hires.progress import Event, JsonProgress, PlainProgress

    for kind in (PlainProgress, JsonProgress):
        shown = kind(full_stderr)
        shown(Event("denoise", 0, 1, 256, 256, 0, 2))
        shown(Event("denoise", 0, 1, 256, 256, 2, 2))
        assert shown.stream is None


@pytest.mark.parametrize("mode", ["plain", "bars"])
def test_gen_with_stderr_on_a_full_disk_makes_its_image(tmp_path, mode):
    """`hires gen ... 2>/dev/full` exited 1 and made no image."""
    out = tmp_path / "c.png"
    with open(FULL, "wb") as err:
        done = subprocess.run(hires_cmd("gen", "a-cat", "--model", "tiny", "--size", "256",
                                        "--steps", "1", "--seed", "1", "--progress", mode,
                                        "-o", out),
                              stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL,
                              env=subprocess_env(), cwd=REPO, timeout=300)
    assert done.returncode == 0
    assert done.stdout.decode().strip() == str(out) and out.is_file()
