"""Shared fixtures: the builtin tiny SDXL, loaded once, and saved once as a diffusers folder."""

import os

import pytest

# Tests never reach the Hub: a missing model must fail fast and clearly, not hang.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

# Under pytest-xdist (`-n 2`, pyproject's addopts) each worker takes one core: torch's own
# threads on top would fight the other worker for it.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)


def pytest_xdist_auto_num_workers(config) -> int:
    """`-n auto`: a worker per core, at most 4 (each holds its own models in memory)."""
    return max(1, min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                      else os.cpu_count() or 1))


@pytest.fixture(autouse=True)
def _not_quiet(monkeypatch):
    """Each test starts with the CLI's log on: a `-q` command before it on the same worker
    leaves `Quiet.on` set, and a test that calls `say` directly would then see nothing (or,
    after `--progress json`, JSON)."""
    from hires.cli_output import Quiet

    monkeypatch.setattr(Quiet, "on", False)
    monkeypatch.setattr(Quiet, "progress", "auto")


@pytest.fixture(scope="session")
def tiny():
    """The tiny model's components with its LinFusion mounted, as `--model tiny` loads them."""
    from hires.models import load

    return load("tiny")


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory):
    """The tiny model saved as a diffusers folder (with its linfusion/ weights)."""
    from hires.tiny import save_tiny

    return save_tiny(tmp_path_factory.mktemp("models") / "tiny-sdxl")


@pytest.fixture
def asked(monkeypatch, tiny):
    """The CLI loads the session's tiny model; the list says which models it asked for."""
    from helpers_cli import use_cached_tiny

    return use_cached_tiny(monkeypatch, tiny)


@pytest.fixture
def scratch(tmp_path, monkeypatch):
    """A TMPDIR of the test's own (Python's tempfile), to see that what a run keeps there
    while it runs (`-o -`'s folder, `up -`'s piped bytes) is gone after."""
    import tempfile

    place = tmp_path / "tmp"
    place.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(place))
    return place


@pytest.fixture
def small(tmp_path):
    """A small gray input image (96x64) for upscales."""
    from PIL import Image

    path = tmp_path / "in.png"
    Image.new("RGB", (96, 64), "gray").save(path)
    return path
