"""`hires up`'s inputs: what reading them drops (warned), repeats and names shared between
them, an output over its own input, and `-o -` as the reader and the progress see it."""

import subprocess

import numpy as np
from helpers_cli import REPO, hires_cmd, subprocess_env
from PIL import Image

TINY = ("--model", "tiny", "--steps", "1", "--seed", "1")


def test_a_reader_that_closes_mid_image_is_warned_of(tmp_path):
    """A reader that took 10 bytes and quit got `stdout: N bytes of PNG`, exit 0: the pipe took
    part of a write and said so only by its count, which `send` did not read."""
    noise = np.random.default_rng(0).integers(0, 256, (64, 96, 3), np.uint8)
    Image.fromarray(noise).save(tmp_path / "in.png")
    # --scale 4: a PNG well past the pipe's 64 KiB, so the write is cut, not refused whole.
    proc = subprocess.Popen(hires_cmd("up", tmp_path / "in.png", *TINY, "--scale", "4", "-o", "-"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=subprocess_env(TMPDIR=str(tmp_path)), cwd=REPO)
    assert len(proc.stdout.read(10)) == 10
    proc.stdout.close()
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=300) == 0, stderr  # as README: a closed stdout is no error
    said = [line for line in stderr.splitlines() if "stdout was closed after" in line]
    assert len(said) == 1 and said[0].startswith("warning: "), stderr
    sent, size = (int(w.replace(",", "")) for w in said[0].split()
                  if w.replace(",", "").isdigit())
    assert 10 <= sent < size
    assert "bytes of PNG" in said[0] and not any(
        line.startswith("stdout: ") and line.endswith("bytes of PNG")
        for line in stderr.splitlines())
