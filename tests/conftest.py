"""Shared fixtures: the builtin tiny SDXL, loaded once, and saved once as a diffusers folder."""

import os

import pytest

# Tests never reach the Hub: a missing model must fail fast and clearly, not hang.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


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
