"""What a shell script meets at the edges: a stdout that cannot encode the path, and a Ctrl-C
that arrives while Python shuts down after the work is done."""

from __future__ import annotations

import io
import signal
import sys

import pytest

from hires import cli as hires_cli
from hires.cli_output import out_line


def test_a_path_stdout_cannot_encode_is_written_as_the_filesystems_bytes(monkeypatch):
    """PYTHONIOENCODING=ascii: the image was saved, then printing its path failed (exit 1)."""
    raw = io.BytesIO()
    monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(raw, encoding="ascii"))
    out_line("plain.png")
    out_line("ünï cødé/fuchs-café-日本_1.png")
    assert raw.getvalue() == "plain.png\nünï cødé/fuchs-café-日本_1.png\n".encode()


@pytest.mark.parametrize("argv", [["hires", "--version"], ["hires", "no-such-command"]])
def test_after_the_command_a_ctrl_c_no_longer_changes_the_outcome(argv, monkeypatch):
    """A Ctrl-C in the 0.7 s of Python's shutdown turned a saved, printed image into exit 130,
    or into an ignored KeyboardInterrupt traceback."""
    kept = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr(sys, "argv", argv)
    try:
        with pytest.raises(SystemExit):
            hires_cli.main()
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, kept[0])
        signal.signal(signal.SIGTERM, kept[1])
