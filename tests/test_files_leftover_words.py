"""A dead run's unfinished save is named by the image it was to become, not its temp file."""

from pathlib import Path

from helpers_cli import cli, use_cached_tiny

from hires.output import saved_as


def test_saved_as_reads_every_part_name_form():
    assert saved_as(Path(".o.png.@gpu-2.123.ab12cd.part")) == "o.png"
    assert saved_as(Path(".a.5.png.77.xyz.part")) == "a.5.png"  # named before the host was


def test_the_cleanup_line_names_the_image(tmp_path, monkeypatch, tiny):
    """It said "removed .o.png.@host.4000001.ab12cd.part, left by ...": a temp file's name."""
    use_cached_tiny(monkeypatch, tiny)
    dead = tmp_path / ".o.png.4000001.ab12cd.part"  # a pid no process has
    dead.write_bytes(b"half an image")
    result = cli("gen", "a fox", "--model", "tiny", "--size", "128", "--steps", "1",
                 "--seed", "1", "-o", tmp_path / "new.png")
    assert result.exit_code == 0, result.stderr
    assert not dead.exists()
    (line,) = [ln for ln in result.stderr.splitlines() if ln.startswith("removed ")]
    assert line == "removed an unfinished save of o.png, left by a run that died while saving"
