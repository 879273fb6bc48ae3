"""Signals a shell script's run meets besides Ctrl-C and SIGTERM: a hang-up (the terminal
closed, an SSH session dropped) cleans up as SIGTERM does."""

from __future__ import annotations

import signal
import subprocess
import time

import pytest
from helpers_cli import spawn_hires, wait_for
from PIL import Image

TINY = ("--model", "tiny", "--steps", "999")


def _spawn(args, tmp_path, stdin=subprocess.DEVNULL):
    """`hires ARGS` with its own TMPDIR, stderr in a file the test polls."""
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    return spawn_hires(*args, stderr_path=tmp_path / "err.txt", stdin=stdin,
                       TMPDIR=str(scratch))


@pytest.mark.parametrize("command", ["gen", "up"])
def test_a_hang_up_cleans_up_says_so_and_exits_129(tmp_path, command):
    """SIGHUP killed the run outright: exit 129 with no word, and its scratch folder
    (`-o -`), piped input and lock were left behind."""
    if command == "gen":
        args = ("gen", "a", *TINY, "--size", "256", "-o", "-")
        stdin = subprocess.DEVNULL
    else:
        source = tmp_path / "x.png"
        Image.new("RGB", (64, 64), (90, 120, 200)).save(source)
        args = ("up", "-", *TINY, "--scale", "4", "-o", tmp_path / "out" / "u.png")
        (tmp_path / "out").mkdir()
        stdin = open(source, "rb")  # noqa: SIM115 (closed below)
    proc = _spawn(args, tmp_path, stdin)
    try:
        wait_for(lambda: "denoise" in (tmp_path / "err.txt").read_text(), proc, every=0.1)
        time.sleep(0.3)
        proc.send_signal(signal.SIGHUP)
        assert proc.wait(60) == 129
    finally:
        proc.kill()
        if stdin is not subprocess.DEVNULL:
            stdin.close()
    said = (tmp_path / "err.txt").read_text()
    assert said.strip().splitlines()[-1] == "hung up", said
    assert "Traceback" not in said
    assert [p.name for p in (tmp_path / "tmp").iterdir() if p.name.startswith("hires")] == []
    if command == "up":
        assert list((tmp_path / "out").iterdir()) == []


def test_a_hang_up_while_options_are_read_says_which_it_was(capfd):
    """A SIGHUP before the command ran (click's Abort) said 'interrupted' and exited 130."""
    import typer

    from hires import cli_output

    app = typer.Typer(cls=cli_output.OneLineErrors)

    def hang_up(value: bool) -> None:
        raise cli_output.HungUp()

    @app.command()
    def one(flag: bool = typer.Option(False, callback=hang_up)) -> None:
        pass

    @app.command()
    def other() -> None:  # two commands: a group, as hires is
        pass

    with pytest.raises(SystemExit) as stop:
        app(["one"])
    assert stop.value.code == 129
    assert capfd.readouterr().err.strip().splitlines()[-1] == "hung up"


@pytest.mark.skipif(not hasattr(signal, "pthread_sigmask"), reason="POSIX signal masks")
def test_torchs_first_import_holds_the_stops_back(monkeypatch):
    """A Ctrl-C about 1 s in landed in torch's C++ import: exit 134 ('terminate called after
    throwing pybind11::error_already_set'), no cleanup. Held, it is raised after it."""
    import sys

    from helpers_cli import cli

    import hires

    masks = []

    class Watch:  # hires.memory imports torch: the command's first import of it
        def find_spec(self, name, path=None, target=None):
            if name == "hires.memory":
                masks.append(signal.pthread_sigmask(signal.SIG_BLOCK, set()))
            return None

    monkeypatch.delitem(sys.modules, "hires.memory")
    monkeypatch.delattr(hires, "memory")
    monkeypatch.setattr(sys, "meta_path", [Watch(), *sys.meta_path])
    assert cli("presets").exit_code == 0
    assert masks and {signal.SIGINT, signal.SIGTERM, signal.SIGHUP} <= masks[0]
    assert signal.SIGINT not in signal.pthread_sigmask(signal.SIG_BLOCK, set())
