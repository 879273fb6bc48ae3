"""A Ctrl-C (or SIGTERM) that a library swallows, raised inside its `__del__` where Python only
prints it, still stops the run: the run went on, saved its image and exited 0 (found by QA)."""

from __future__ import annotations

import gc
import sys

import pytest
from helpers_cli import cli

import hires.pipeline
from hires import stops
from hires.cli_output import Terminated


class _Dropped:
    """An object whose `__del__` the signal lands in, as regex's did while the tokenizer
    loaded."""

    def __init__(self, stop: type[KeyboardInterrupt]):
        self.stop = stop

    def __del__(self):
        raise self.stop()


def swallowed(stop: type[KeyboardInterrupt]) -> None:
    _Dropped(stop)  # dropped at once: Python hands its exception to sys.unraisablehook
    gc.collect()


@pytest.fixture
def hooked(monkeypatch):
    """`hires` (the CLI's main) installs the hook; CliRunner calls the app without it."""
    monkeypatch.setattr(sys, "unraisablehook", sys.unraisablehook)
    stops.install()
    yield
    stops.forget()


@pytest.mark.parametrize("quiet", [False, True])
def test_a_ctrl_c_swallowed_while_the_model_loads_stops_the_run(tmp_path, asked, hooked,
                                                                 monkeypatch, quiet):
    real = hires.pipeline.load  # the cached tiny model's (`asked`)

    def load(*args, **kwargs):
        components = real(*args, **kwargs)
        swallowed(KeyboardInterrupt)
        return components

    monkeypatch.setattr(hires.pipeline, "load", load)
    out = tmp_path / "a.png"
    result = cli("gen", "a lighthouse", "--model", "tiny", "--size", "256", "--steps", "1",
                 "-o", out, *(["-q"] if quiet else []))
    assert result.exit_code == 130, result.stderr
    assert result.stderr.strip().splitlines()[-1] == "interrupted"
    assert "Exception ignored" not in result.stderr and not out.exists()


def test_a_sigterm_swallowed_mid_run_stops_it_as_sigterm(tmp_path, asked, hooked, monkeypatch):
    real = hires.pipeline._stage

    def stage(*args, **kwargs):
        swallowed(Terminated)  # in a stage's work: the next step's event stops it
        return real(*args, **kwargs)

    monkeypatch.setattr(hires.pipeline, "_stage", stage)
    out = tmp_path / "a.png"
    result = cli("gen", "a lighthouse", "--model", "tiny", "--size", "256", "--steps", "2",
                 "-o", out, "-q")
    assert result.exit_code == 143, result.stderr
    assert result.stderr.strip().splitlines()[-1] == "terminated" and not out.exists()


def test_other_unraisable_errors_are_said_as_before(hooked, capsys):
    said = []
    stops._before[0] = said.append
    _Dropped(RuntimeError)  # type: ignore[arg-type]
    gc.collect()
    assert [u.exc_type for u in said] == [RuntimeError]
    stops.check()  # no stop kept: nothing raised


def test_a_ctrl_c_swallowed_in_a_dry_run_stops_it_before_the_plan(tmp_path, asked, hooked,
                                                                   monkeypatch):
    """A dry run builds the tokenizer (a prompt's length) where the swallowing happened; no
    progress event comes after it, and the stop vanished without a word (QA 185)."""
    import hires.dry_run

    real = hires.dry_run.dry_run

    def dry_run(*args, **kwargs):
        swallowed(KeyboardInterrupt)
        return real(*args, **kwargs)

    monkeypatch.setattr(hires.dry_run, "dry_run", dry_run)
    result = cli("gen", "a lighthouse", "--model", "tiny", "--size", "256", "--dry-run")
    assert result.exit_code == 130 and result.stdout == "", result.stderr
    assert result.stderr.strip().splitlines()[-1] == "interrupted"
