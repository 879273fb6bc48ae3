"""Running `hires` in tests: in-process through Typer's CliRunner, or as a real subprocess."""

from __future__ import annotations

import getpass
import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from typer.testing import CliRunner

import hires.pipeline  # noqa: F401  (transformers/diffusers log handlers bind to a stable stderr)
from hires.cli import app

# Root reads and writes through chmod 000/555, so those sub-cases only hold for other users.
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
REPO = Path(__file__).resolve().parents[1]


def one_torch_thread() -> Iterator[None]:
    """For a fixture: torch on one thread while these tests run.

    The CPU is shared with other work; torch's spinning OpenMP threads then run tiny jobs tens
    of times slower (seconds instead of ~0.3 s per 256 px image).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def cli(*args: str, input: str | None = None, env: dict[str, str] | None = None):
    """`hires ARGS` in this process; click >= 8.2 keeps result.stdout and result.stderr apart."""
    return CliRunner().invoke(app, [str(a) for a in args], input=input, env=env)


def use_cached_tiny(monkeypatch, tiny) -> list[str]:
    """Make the CLI reuse the session's loaded tiny model; returns the models it asked for."""
    real = hires.pipeline.load
    asked: list[str] = []

    def load(model, *args, **kwargs):
        asked.append(model)
        return tiny if model == "tiny" else real(model, *args, **kwargs)

    monkeypatch.setattr(hires.pipeline, "load", load)
    return asked


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error: ")]


def assert_usage_error(result, *words: str) -> None:
    """Exit 2, nothing on stdout, and exactly one `error: ...` line naming `words` on stderr."""
    assert result.exit_code == 2, (result.stdout, result.stderr)
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for word in words:
        assert word in lines[0], lines[0]


# torch makes its compile cache folder as it imports (torch._dynamo.package) in TMPDIR, and
# sets this variable in its process: a child started before this process imported it made
# the folder in the TMPDIR a test gave it, one after inherited the variable. Fixed here, every
# child makes it in one place, whatever ran first.
TORCH_CACHE = os.environ.get("TORCHINDUCTOR_CACHE_DIR") or os.path.join(
    tempfile.gettempdir(), f"torchinductor_{getpass.getuser()}")


def subprocess_env(**extra: str) -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1",
            "OMP_NUM_THREADS": "1", "TORCHINDUCTOR_CACHE_DIR": TORCH_CACHE, **extra}


def hires_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "hires", *[str(a) for a in args]]


def run_hires(*args: str, input: str | None = None, timeout: float = 300,
              env: dict[str, str] | None = None):
    """`python -m hires ARGS` as a real process, stdout and stderr as text (`env` adds to it)."""
    return subprocess.run(hires_cmd(*args), input=input, capture_output=True, text=True,
                          env=subprocess_env(**(env or {})), cwd=REPO, timeout=timeout)


def spawn_hires(*args: str, stderr_path: Path, stdin=subprocess.DEVNULL,
                **env: str) -> subprocess.Popen:
    """A running `python -m hires ARGS` (`env` added to its environment); stderr goes to a
    file the test can poll."""
    with open(stderr_path, "wb") as err:
        return subprocess.Popen(hires_cmd(*args), stdout=subprocess.PIPE, stderr=err,
                                stdin=stdin, env=subprocess_env(**env), cwd=REPO,
                                preexec_fn=_terminal_signals)


def _terminal_signals() -> None:
    # A shell runs background jobs (`cmd &`) with SIGINT ignored, a suite under nohup gets
    # SIGHUP ignored, and children inherit that: Python then installs no Ctrl-C handler, and
    # hires keeps an ignored SIGHUP ignored. Give the child what a terminal would.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)


def wait_for(condition, proc: subprocess.Popen, timeout: float = 240, every: float = 0.02):
    """Poll `condition()` until true; fail if the process ends or the time runs out first."""
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"process ended (exit {proc.returncode}) before the condition")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("timed out waiting")
        time.sleep(every)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def part_files(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.part"))


def write(path: Path, text: str) -> Path:
    """A UTF-8 text file (a batch file, a preset) with `text`."""
    path.write_text(text, encoding="utf-8")
    return path


def pixels(data: bytes):
    """The samples of an image file's bytes (from stdout, say), as a numpy array."""
    import io

    import numpy as np
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im)


def failing_once(monkeypatch, at: int = 2, after: int = 0,
                 error: BaseException | type[BaseException] | None = None) -> list[int]:
    """Stage `at` fails once with `error`, the first time it runs after `after` runs of it, as a
    kill or an out-of-memory error would; returns the indices of the stages run, in order."""
    real = hires.pipeline._stage
    ran: list[int] = []
    failed: list[bool] = []

    def stage(job, comps, plan, s, *rest):
        ran.append(s.index)
        if s.index == at and not failed and ran.count(at) > after:
            failed.append(True)
            raise error or RuntimeError("the GPU fell off the bus")
        return real(job, comps, plan, s, *rest)

    monkeypatch.setattr(hires.pipeline, "_stage", stage)
    return ran
