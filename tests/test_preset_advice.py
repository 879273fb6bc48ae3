"""Presets, job files and prompts on stdin given wrongly: each error says what to do, with the
flags the command has (QA 209)."""

from __future__ import annotations

from helpers_cli import assert_usage_error, cli, error_lines, write
from PIL import Image

GEN = ("--model", "tiny", "--size", "256", "--steps", "1")


def test_an_upscale_without_a_size_names_scale_only_where_the_command_has_it(tmp_path, small):
    """A preset's image made `gen` an upscale that was told to pass --scale, which gen has
    not."""
    preset = write(tmp_path / "img.toml", f'image = "{small}"\nsteps = 1\n')
    for command in ("gen", "plan"):
        assert_usage_error(cli(command, "a", "--model", "tiny", "--preset", preset,
                               *(["--dry-run"] if command == "gen" else [])),
                           "give one of --size, --width/--height or --print-size for the "
                           "upscale's output size")
    assert error_lines(cli("up", small, "--model", "tiny", "--dry-run").stderr)[0].startswith(
        "error: give one of --size, --scale, --width/--height or --print-size")


def test_a_commands_flag_in_a_preset_names_the_commands_that_have_it(tmp_path):
    """`hires plan` with a preset's save_stages was told to pass it on the command line:
    plan has no --save-stages."""
    for key, says in (("save_stages", "--save-stages is a command's flag, not a key: pass it "
                                      "to gen or up"),
                      ("dry_run", "--dry-run is a command's flag, not a key: pass it to gen, up "
                                  "or batch"),
                      ("gpu", "--gpu is a command's flag, not a key: pass it to plan, or to "
                              "gen, up or batch with --dry-run")):
        preset = write(tmp_path / f"{key}.toml", f"{key} = true\n")
        assert_usage_error(cli("plan", "--model", "tiny", "--preset", preset), says)


def test_an_image_as_a_preset_or_job_file_is_said_to_be_one(tmp_path):
    """It was told to convert the file from Latin-1 (iconv), which garbles an image."""
    Image.new("RGB", (8, 8)).save(tmp_path / "q.png")
    assert_usage_error(cli("gen", "a", *GEN, "--preset", tmp_path / "q.png", "--dry-run"),
                       "q.png: a PNG image, not text; give a preset's .toml text file")
    (tmp_path / "p.toml").write_bytes((tmp_path / "q.png").read_bytes())
    assert_usage_error(cli("gen", "a", *GEN, "--preset", tmp_path / "p.toml", "--dry-run"),
                       "p.toml: a PNG image, not text")
    (tmp_path / "zeros.toml").write_bytes(b"steps = 1\n\x00\x00\x00\x01")
    assert_usage_error(cli("gen", "a", *GEN, "--preset", tmp_path / "zeros.toml", "--dry-run"),
                       "zeros.toml: binary data, not text")
    assert_usage_error(cli("batch", tmp_path / "q.png", "--dry-run"),
                       "q.png: a PNG image, not text; give a job file: TOML, or one JSON "
                       "object a line")
    (tmp_path / "q.jsonl").write_bytes((tmp_path / "q.png").read_bytes())
    assert_usage_error(cli("batch", tmp_path / "q.jsonl", "--dry-run"),
                       "q.jsonl: a PNG image, not text; give a job file: TOML")
    png = (tmp_path / "q.png").read_bytes()
    assert_usage_error(cli("batch", "-", "--dry-run", input=png),
                       "the jobs on stdin: a PNG image, not text; give a job file")
    assert_usage_error(cli("gen", "-", *GEN, "--dry-run", input=png),
                       "the prompts on stdin: a PNG image, not text; give them as text, one a "
                       "line")
    Image.new("RGB", (64, 64)).save(tmp_path / "q.bmp")  # its NULs read as UTF-32 (QA 214)
    assert_usage_error(cli("gen", "-", *GEN, "--dry-run",
                           input=(tmp_path / "q.bmp").read_bytes()),
                       "the prompts on stdin: a BMP image, not text")
    (tmp_path / "latin.toml").write_bytes("steps = 1\n# caf\xe9\n".encode("latin-1"))
    assert_usage_error(cli("gen", "a", *GEN, "--preset", tmp_path / "latin.toml", "--dry-run"),
                       "not UTF-8 text (line 2,", "iconv -f latin1")  # text: as it was


def test_a_preset_file_not_found_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "p").mkdir()
    write(tmp_path / "p" / "many.toml", "steps = 1\n")
    assert_usage_error(cli("gen", "a", *GEN, "--preset", "p/many", "--dry-run"),
                       "preset file not found: p/many (did you mean p/many.toml?)")
    assert_usage_error(cli("gen", "a", *GEN, "--preset", "p/none.toml", "--dry-run"),
                       "preset file not found: p/none.toml; give a .toml file's path, or a "
                       "preset's name ('hires presets' lists them)")
    # a name that is a file here, without the ./ that makes it a path (QA 211)
    write(tmp_path / "one.toml", "steps = 1\n")
    Image.new("RGB", (8, 8)).save(tmp_path / "c.png")
    assert_usage_error(cli("gen", "a", *GEN, "--preset", "one", "--dry-run"),
                       "unknown preset 'one' (one.toml is a file here: give ./one.toml to read "
                       "it)")
    assert_usage_error(cli("gen", "a", *GEN, "--preset", "c.png", "--dry-run"),  # QA 212
                       "unknown preset 'c.png' (c.png is a file here, not a preset: a preset "
                       "is a .toml text file)")
    assert_usage_error(cli("gen", "a", *GEN, "--preset", "./c.png", "--dry-run"),
                       "c.png: a PNG image, not text")


def test_a_long_prompt_on_stdin_is_said_with_its_number(tmp_path):
    """Two long prompts on stdin gave two alike warnings in a dry run: which was which?"""
    long_a = " ".join(f"a{i}" for i in range(100))
    long_b = " ".join(f"b{i}" for i in range(100))
    result = cli("gen", "-", *GEN, "-o", tmp_path / "{index}.png", "--dry-run",
                 input=f"short fox\n{long_a}\n{long_b}\n")
    assert result.exit_code == 0, result.stderr
    warned = [line for line in result.stderr.splitlines() if "tokens and SDXL reads" in line]
    assert [line.split(": the prompt is")[0] for line in warned] == [
        "warning: prompt 2 on stdin", "warning: prompt 3 on stdin"]
    one = cli("gen", long_a, *GEN, "-o", tmp_path / "one.png", "--dry-run")
    assert "warning: the prompt is " in one.stderr  # one prompt: no number


def test_a_prompt_that_starts_as_an_image_format_does_is_a_prompt(tmp_path):
    """'GIF89a cat' on stdin was refused as a GIF image (QA 214)."""
    result = cli("gen", "-", *GEN, "-o", tmp_path / "{index}.png", "--dry-run",
                 input="GIF89a cat\nBM of a cat\n%PDF of a fox\n")
    assert result.exit_code == 0, result.stderr
