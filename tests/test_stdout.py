"""`-o -`: the image's bytes on stdout, whole or not at all, and what it refuses."""

import json
import signal
import subprocess

import numpy as np
import pytest
from helpers_cli import (
    REPO,
    assert_usage_error,
    cli,
    hires_cmd,
    pixels,
    spawn_hires,
    subprocess_env,
    wait_for,
)
from PIL import Image

import hires.pipeline
import hires.record

SMALL = ("--model", "tiny", "--size", "256", "--steps", "2", "--seed", "4")




def test_gen_to_stdout_writes_the_image_that_a_file_gets(tmp_path, scratch, asked):
    piped = cli("gen", "a cat", *SMALL, "-o", "-")
    assert piped.exit_code == 0, piped.stderr
    assert piped.stdout_bytes[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"stdout: {len(piped.stdout_bytes):,} bytes of PNG" in piped.stderr
    made = cli("gen", "a cat", *SMALL, "-o", tmp_path / "a.png")
    assert made.exit_code == 0, made.stderr
    assert np.array_equal(pixels(piped.stdout_bytes), pixels((tmp_path / "a.png").read_bytes()))
    assert list(scratch.iterdir()) == []  # nor a checkpoint left behind
    # --format and --depth as for a file; the metadata goes along.
    jpeg = cli("gen", "a cat", *SMALL, "--format", "jpg", "-o", "-")
    assert jpeg.exit_code == 0 and jpeg.stdout_bytes[:2] == b"\xff\xd8", jpeg.stderr
    (tmp_path / "b.png").write_bytes(cli("gen", "a", *SMALL, "--depth", "16", "-o", "-")
                                     .stdout_bytes)
    assert (tmp_path / "b.png").read_bytes()[24] == 16  # IHDR's bit depth
    assert "seed 4" in cli("info", tmp_path / "b.png").stdout
    shown = json.loads(cli("info", "--json", tmp_path / "b.png").stdout)
    assert shown["result"]["path"] == "-"  # not the temporary file it was made as


def test_a_stray_print_does_not_reach_the_image(scratch, asked, monkeypatch):
    real = hires.pipeline._run

    def chatty(*args, **kwargs):
        print("a library's stray line")
        return real(*args, **kwargs)

    monkeypatch.setattr(hires.pipeline, "_run", chatty)
    piped = cli("gen", "a cat", *SMALL, "-o", "-")
    assert piped.exit_code == 0, piped.stderr
    assert b"stray" not in piped.stdout_bytes and "stray line" in piped.stderr
    assert pixels(piped.stdout_bytes).shape == (256, 256, 3)


def test_a_failed_save_writes_nothing_to_stdout(scratch, asked, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(hires.record, "save", full)  # what the CLI saves through
    piped = cli("gen", "a cat", *SMALL, "-o", "-")
    assert piped.exit_code == 1 and piped.stdout_bytes == b""
    assert list(scratch.iterdir()) == []


def test_what_stdout_cannot_hold_is_a_usage_error(tmp_path, asked):
    assert_usage_error(cli("gen", "a", *SMALL, "--n", "2", "-o", "-"),
                       "-o - writes one image to stdout, and this run makes 2")
    assert_usage_error(cli("gen", "-", *SMALL, "-o", "-", input="a\nb\n"), "makes 2")
    assert_usage_error(cli("gen", "a", *SMALL, "--json", "-o", "-"), "--json prints to stdout")
    assert_usage_error(cli("gen", "a", *SMALL, "--save-stages", "-o", "-"), "--save-stages")
    assert_usage_error(cli("gen", "a", *SMALL, "--preview", "-o", "-"), "--preview")
    Image.new("RGB", (64, 64)).save(tmp_path / "x.png")
    Image.new("RGB", (64, 64)).save(tmp_path / "y.png")
    up = cli("up", tmp_path / "x.png", tmp_path / "y.png", "--scale", "2", "--model", "tiny",
             "-o", "-")
    assert_usage_error(up, "makes 2; give one input image, or -o a folder")
    assert "--n" not in up.stderr  # up has no --n
    # A dry run checks the same, and plans.
    assert_usage_error(cli("gen", "a", *SMALL, "--n", "3", "--dry-run", "-o", "-"), "makes 3")
    planned = cli("gen", "a", *SMALL, "--dry-run", "-o", "-")
    assert planned.exit_code == 0 and "stage 0" in planned.stdout, planned.stderr


@pytest.mark.parametrize("args, words", [
    (("--size", "16384", "--format", "webp", "--gpu", "h200"),
     "-o -: WebP images are at most 16383 px a side"),
    (("--size", "256", "--format", "png", "--quality", "50"),
     "-o -: --quality applies to jpg and webp"),
    (("--size", "256", "--format", "jpg", "--depth", "16"), "-o -: JPEG holds 8 bits a channel"),
])
def test_a_dry_run_to_stdout_checks_the_format_as_the_run_does(args, words, asked):
    """The dry run passed these (exit 0) and the run refused them; and the run's message named
    its scratch file ('hires.webp: ...'), not the -o - the user gave."""
    for dry in (("--dry-run",), ()) if "16384" not in args else (("--dry-run",),):
        result = cli("gen", "a", "--model", "tiny", "--steps", "1", *args, *dry, "-o", "-")
        assert_usage_error(result, words)
    assert asked == []  # nothing loaded


def test_a_real_process_pipes_the_image_and_refuses_a_terminal(tmp_path):
    env = subprocess_env(TMPDIR=str(tmp_path))
    done = subprocess.run(hires_cmd("gen", "a cat", *SMALL, "-o", "-"), capture_output=True,
                          env=env, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr.decode()
    assert pixels(done.stdout).shape == (256, 256, 3)
    assert list(tmp_path.iterdir()) == []
    # A pseudo-terminal as stdout: refused before any work.
    import pty

    leader, follower = pty.openpty()
    try:
        refused = subprocess.run(hires_cmd("gen", "a", *SMALL, "-o", "-"), stdout=follower,
                                 stderr=subprocess.PIPE, env=env, cwd=REPO, timeout=300)
    finally:
        import os

        os.close(follower)
        os.close(leader)
    assert refused.returncode == 2
    assert "which is a terminal; pipe it" in refused.stderr.decode()


def test_a_reader_that_goes_away_early_is_said_not_an_error(tmp_path):
    """`-o - | (exit 3)` said 'stdout: N bytes of PNG' of an image the reader never got (and
    -o - keeps no file)."""
    proc = subprocess.Popen(hires_cmd("gen", "a cat", *SMALL, "-o", "-"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=subprocess_env(TMPDIR=str(tmp_path)),
                            cwd=REPO)
    proc.stdout.close()  # the reader is gone before the image is made
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=300) == 0, stderr
    assert "warning: stdout was closed after 0 of the " in stderr and "bytes of PNG" in stderr
    assert not any(line.startswith("stdout: ") and line.endswith("bytes of PNG")
                   for line in stderr.splitlines()) and "Traceback" not in stderr


def test_ctrl_c_leaves_stdout_empty(tmp_path):
    proc = spawn_hires("gen", "a cat", "--model", "tiny", "--size", "1024", "--steps", "8",
                       "-o", "-", stderr_path=tmp_path / "err")
    wait_for(lambda: "denoise" in (tmp_path / "err").read_text(), proc)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130 and out == b""


def test_a_killed_runs_scratch_folder_is_removed_by_the_next(scratch, asked):
    import os
    import subprocess

    gone = subprocess.Popen(["true"])
    gone.wait()  # its pid is no process now
    theirs = scratch / f"hires-stdout-{gone.pid}-abcd"
    (theirs / "hires").mkdir(parents=True)
    (theirs / "hires" / "half.png").write_bytes(b"\x89PNG half")
    alive = scratch / f"hires-stdout-{os.getpid()}-efgh"  # a run still going: kept
    alive.mkdir()
    result = cli("gen", "x", *SMALL, "-o", "-")
    assert result.exit_code == 0, result.stderr
    assert sorted(p.name for p in scratch.iterdir()) == [alive.name]
