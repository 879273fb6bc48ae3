"""A stdout that takes no more (`>/dev/full`, an I/O error) is one `error:` line and exit 1,
never a traceback; a reader that went away (`| head -1`) stays no error."""

from __future__ import annotations

import contextlib
import subprocess
from pathlib import Path

import pytest
from helpers_cli import REPO, hires_cmd, subprocess_env

FULL = Path("/dev/full")  # every write fails with ENOSPC
pytestmark = pytest.mark.skipif(not FULL.exists(), reason="needs /dev/full")
SAID = "error: cannot write to stdout: No space left on device"


def _to_full(*args: str) -> subprocess.CompletedProcess:
    """`hires ARGS >/dev/full`, stderr as text."""
    with open(FULL, "wb") as out:
        return subprocess.run(hires_cmd(*args), stdout=out, stderr=subprocess.PIPE, text=True,
                              stdin=subprocess.DEVNULL, env=subprocess_env(), cwd=REPO,
                              timeout=300)


@pytest.fixture
def full_stdout():
    """A stream on /dev/full; a test sets it as sys.stdout itself (pytest's capture sets its
    own between setup and call)."""
    stream = open(FULL, "w")  # noqa: SIM115 (closed below)
    yield stream
    with contextlib.suppress(OSError):  # what it holds back cannot be written either
        stream.close()


@pytest.mark.parametrize("args", [("--version",), ("gen", "-h"),
                                  ("plan", "a", "--model", "tiny", "--size", "256"),
                                  ("presets",)])
def test_a_full_stdout_is_one_line_and_exit_1(args):
    """--version and -h printed a traceback; plan and presets a generic OSError line."""
    done = _to_full(*args)
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip().splitlines()[-1] == SAID, done.stderr
    assert "Traceback" not in done.stderr


def test_gen_json_on_a_full_stdout_says_where_the_image_is(tmp_path):
    out = tmp_path / "x.png"
    done = _to_full("gen", "a-cat", "--model", "tiny", "--size", "256", "--steps", "1",
                    "--seed", "1", "-q", "--json", "-o", out)
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip() == f"{SAID}; the image is saved at {out}"
    assert out.is_file()


def test_the_image_to_a_full_stdout_is_a_stdout_error(full_stdout, monkeypatch, tmp_path):
    """`-o -` on a full disk: a generic `OSError: [Errno 28] ...` line."""
    from hires import cli_stdout
    from hires.cli_output import StdoutError

    image = tmp_path / "hires.png"
    image.write_bytes(b"\x89PNG" + bytes(100))
    monkeypatch.setattr("sys.stdout", full_stdout)
    with pytest.raises(StdoutError, match="cannot write to stdout: No space left"):
        cli_stdout.send(image)


def test_a_full_stdout_stops_no_image_of_a_run(tmp_path):
    """`gen --n 2 >/dev/full` made image 1, then ended on its lost line: image 2 was never
    made. The work goes on; the one error line at the end says where the images are."""
    done = _to_full("gen", "a-cat", "--model", "tiny", "--size", "128", "--steps", "1",
                    "--seed", "1", "-q", "--n", "2", "-o", f"{tmp_path}/")
    assert done.returncode == 1, done.stderr
    made = sorted(tmp_path.glob("*.png"))
    assert len(made) == 2
    assert done.stderr.strip() == (f"{SAID}; 2 images are saved, the first at {made[0]}, the "
                                   f"last at {made[1]}")


def test_a_full_stdout_stops_no_job_of_a_batch(tmp_path):
    jobs = tmp_path / "jobs.toml"
    jobs.write_text('[defaults]\nmodel = "tiny"\nsize = 128\nsteps = 1\n'
                    '[[job]]\nprompt = "a"\nseed = 1\n[[job]]\nprompt = "b"\nseed = 2\n')
    done = _to_full("batch", jobs, "-q", "-o", tmp_path / "out")
    assert done.returncode == 1, done.stderr
    assert len(list((tmp_path / "out").glob("*.png"))) == 2
    assert done.stderr.strip().splitlines()[-1].startswith(f"{SAID}; 2 images are saved")
