"""`up`'s refusals of an input point at a fix that works: a folder's images by their suffixes,
a glob the shell left alone, '-' in a list of paths, a pipe given as a path."""

from helpers_cli import assert_usage_error, cli, error_lines
from PIL import Image

TINY = ("--model", "tiny", "--scale", "2", "--dry-run")


def test_a_folder_is_told_the_patterns_of_its_images(tmp_path, monkeypatch):
    """It said 'give shots/*', which names its notes and sidecars too, each refused in turn
    (QA 201)."""
    monkeypatch.chdir(tmp_path)
    shots = tmp_path / "shots"
    shots.mkdir()
    for name in ("a.jpg", "b.png", "c.JPG"):
        Image.new("RGB", (64, 64)).save(shots / name, format="PNG" if name.endswith(
            "png") else "JPEG")
    (shots / "notes.txt").write_text("x")
    (shots / "a.jpg.xmp").write_text("x")
    (line,) = error_lines(cli("up", "shots", *TINY).stderr)
    assert line.endswith("for every image in it, give shots/*.JPG shots/*.jpg shots/*.png")
    patterns = line.split("give ")[1].split()
    result = cli("up", *[str(p) for pat in patterns for p in sorted(tmp_path.glob(pat))], *TINY)
    assert result.exit_code == 0, result.stderr  # the advice, followed as a shell would
    (tmp_path / "empty").mkdir()
    assert error_lines(cli("up", "empty", *TINY).stderr) == [
        "error: empty: is a folder, not an image file; it holds no PNG, JPEG, WebP or TIFF "
        "file"]


def test_an_unexpanded_glob_is_said_as_one(tmp_path, monkeypatch):
    """'shots/*.png' quoted, or matching nothing, said only "no such file" (QA 201)."""
    monkeypatch.chdir(tmp_path)
    result = cli("up", "shots/*.png", *TINY)
    assert_usage_error(result, "shots/*.png: no such file; a pattern the shell did not expand")
    # not "leave it unquoted", which splits a folder with a space (QA 205)
    assert "leave its wildcards unquoted ('my shots'/*.png)" in result.stderr
    assert "pattern" not in cli("up", "shots/a.png", *TINY).stderr


def test_a_dash_among_paths_on_stdin_is_no_image_to_pipe_again(tmp_path, monkeypatch):
    """A '-' line in a list of paths said "this job's image came on stdin ('-'), and none is
    piped in now; pipe the same image in again", `--from`'s words; `info` "no such image"
    (QA 201)."""
    monkeypatch.chdir(tmp_path)
    Image.new("RGB", (64, 64)).save(tmp_path / "a.png")
    for args in (("up", "-", *TINY), ("info", "-")):
        result = cli(*args, input="-\na.png\n")
        assert_usage_error(result, "a path read from stdin is '-', but stdin holds the paths")


def test_a_pipe_given_by_its_path_is_told_up_dash(tmp_path):
    """`cat x.png | hires up /dev/stdin` was told to save the image to a file, not that
    `hires up -` takes it (QA 201)."""
    import os

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    result = cli("up", str(fifo), *TINY)
    assert result.exit_code == 2
    assert "not a file (a pipe?)" in result.stderr and "(or pipe it to `hires up -`)" \
        in result.stderr


def test_a_folder_with_a_space_is_quoted_for_the_shell(tmp_path, monkeypatch):
    """'give my shots/*.png' split in two as typed (QA 203)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "my shots").mkdir()
    Image.new("RGB", (64, 64)).save(tmp_path / "my shots" / "a.png")
    (line,) = error_lines(cli("up", "my shots", *TINY).stderr)
    assert line.endswith("for every image in it, give 'my shots'/*.png")


def test_a_job_file_and_an_add_on_get_no_shell_advice(tmp_path, monkeypatch):
    """A job's image given as a folder was told shell patterns, a pattern to leave unquoted,
    and an --ip-image pipe to use `hires up -`: none works there (QA 203)."""
    import os

    monkeypatch.chdir(tmp_path)
    (tmp_path / "shots").mkdir()
    Image.new("RGB", (64, 64)).save(tmp_path / "shots" / "a.png")
    for image, words in (("shots", "give one of its image files (a job for each)"),
                         ("shots/*.png", "patterns are not expanded here: name the file")):
        jobs = tmp_path / "j.toml"
        jobs.write_text(f'[[job]]\nimage = "{image}"\nscale = 2\nmodel = "tiny"\n')
        (line,) = error_lines(cli("batch", str(jobs), "--dry-run").stderr)
        assert words in line and "shell" not in line, line
    os.mkfifo(tmp_path / "ff")
    result = cli("gen", "x", "--model", "tiny", "--size", "256", "--ip-image", "ff",
                 "--dry-run")
    assert result.exit_code == 2 and "hires up -" not in result.stderr


def test_info_gets_the_same_advice(tmp_path, monkeypatch):
    """`hires info` of a glob the shell left, or a pipe by its path, was not told what `up`
    is (QA 203)."""
    import os

    monkeypatch.chdir(tmp_path)
    assert_usage_error(cli("info", "shots/*.png"), "no such image: shots/*.png; a pattern the "
                       "shell did not expand")
    os.mkfifo(tmp_path / "ff")
    said = cli("info", "ff")
    assert said.exit_code != 0 and "(or pipe it to `hires info -`)" in said.stderr
