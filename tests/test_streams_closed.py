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
