"""A standard stream the shell closed (`<&-`, `>&-`: Python's sys.stdin or sys.stdout is
None) where `-` or `-o -` needs it: a usage error that says what to give instead, not
`AttributeError: 'NoneType' object has no attribute 'isatty'`."""

from __future__ import annotations

import os
import subprocess

import pytest
from helpers_cli import REPO, hires_cmd, subprocess_env

TINY = ("--model", "tiny", "--size", "256", "--steps", "1")


def _closing(fd: int):
    return lambda: os.close(fd)


@pytest.mark.parametrize("args, fd, said", [
    (("gen", "-", *TINY, "-o", "{tmp}/x.png"), 0, "stdin is closed: give the prompt"),
    (("up", "-", "--model", "tiny", "--scale", "2", "--steps", "1", "-o", "{tmp}/u.png"), 0,
     "stdin is closed: give the image paths"),
    (("batch", "-", "-o", "{tmp}/d"), 0, "stdin is closed: give the job file's path"),
    (("gen", "a-cat", *TINY, "-o", "-"), 1, "stdout is closed: -o - writes the image"),
])
def test_a_closed_stream_that_dash_needs_is_a_usage_error(tmp_path, args, fd, said):
    done = subprocess.run(hires_cmd(*[a.format(tmp=tmp_path) for a in args]),
                          stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True, env=subprocess_env(), cwd=REPO,
                          preexec_fn=_closing(fd), timeout=300)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {said}"), done.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("fds", [(1,), (2,), (1, 2)])
def test_a_closed_stream_is_held_so_no_file_takes_its_number(tmp_path, fds):
    """Python leaves a closed descriptor free: the first file hires opened took number 1 (or
    2), and anything written to stdout (or stderr) below Python went into that file."""
    # hires' entry point around a command that opens a file and writes below Python
    probe = ("import os, sys\n"
             "import hires.cli\n"
             "def command():\n"
             f"    fd = os.open({str(tmp_path / 'f')!r}, os.O_CREAT | os.O_WRONLY)\n"
             "    os.write(fd, b'image')\n"
             "    os.write(1, b'out'); os.write(2, b'err')\n"
             "    os.close(fd)\n"
             "    sys.exit(0 if sys.stdout is None or 1 not in %r else 3)\n"
             "hires.cli.app = command\n"
             "hires.cli.main()\n" % (fds,))
    done = subprocess.run([os.sys.executable, "-c", probe], stdin=subprocess.DEVNULL,
                          capture_output=True, env=subprocess_env(), cwd=REPO,
                          preexec_fn=lambda: [os.close(fd) for fd in fds], timeout=120)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "f").read_bytes() == b"image"



def test_the_image_goes_to_stdout_with_stderr_closed(tmp_path):
    """`-o - 2>&-` exited 1 with nothing written: stdout was pointed at sys.stderr, None."""
    out = tmp_path / "c.png"
    with out.open("wb") as f:
        done = subprocess.run(hires_cmd("gen", "a cat", *TINY, "-o", "-", "-q"),
                              stdin=subprocess.DEVNULL, stdout=f, env=subprocess_env(),
                              cwd=REPO, preexec_fn=_closing(2), timeout=300)
    assert done.returncode == 0
    assert out.read_bytes().startswith(b"\x89PNG")


def test_a_dry_run_refuses_dash_o_with_stdout_closed(tmp_path):
    """The run refuses `-o -` with stdout closed (exit 2); its dry run said nothing, exit 0."""
    done = subprocess.run(hires_cmd("gen", "a cat", *TINY, "-o", "-", "--dry-run"),
                          stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                          env=subprocess_env(), cwd=REPO, preexec_fn=_closing(1), timeout=300)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().startswith("error: stdout is closed"), done.stderr
