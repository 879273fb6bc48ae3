"""The `hires` command: stdout for results only, exit codes, presets, metadata, bad input.

Most tests run in-process through Typer's CliRunner with the session's tiny model; a few run
`python -m hires` as a real process (pipes, -q, Ctrl-C).
"""

import json
import signal
import time

import numpy as np
import pytest
import torch
import typer
from helpers_cli import (
    IS_ROOT,
    assert_usage_error,
    cli,
    error_lines,
    json_lines,
    one_torch_thread,
    part_files,
    run_hires,
    spawn_hires,
    wait_for,
)
from PIL import Image
from safetensors.torch import save_file

from hires import __version__
from hires.output import read_metadata
from hires.presets import tomllib  # tomli on Python 3.10

TINY = ("--model", "tiny", "--size", "256", "--steps", "2")
RECORD_FIELDS = {"path", "seed", "width", "height", "stages", "seconds", "peak_memory", "model",
                 "linfusion"}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    yield from one_torch_thread()


def pixels(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


# --- results on stdout, logs on stderr ----------------------------------------------------------

def test_gen_prints_only_the_path_and_logs_progress_as_plain_lines(tmp_path, asked):
    result = cli("gen", "a red fox", *TINY, "--seed", "3", "-o", tmp_path / "fox.png")
    assert result.exit_code == 0, result.stderr
    assert result.stdout == f"{tmp_path / 'fox.png'}\n"
    assert "[1/1] stage 0 256x256 denoise 2/2 done in" in result.stderr  # not a terminal: plain
    assert "\x1b[" not in result.stderr
    assert asked == ["tiny"]
    with Image.open(tmp_path / "fox.png") as im:
        assert im.size == (256, 256)


def test_gen_json_record_and_embedded_metadata(tmp_path, asked):
    result = cli("gen", "a red fox", *TINY, "--seed", "3", "--negative", "blurry",
                 "--guidance", "5", "-o", tmp_path / "fox.png", "--json")
    assert result.exit_code == 0, result.stderr
    (record,) = json_lines(result.stdout)
    assert RECORD_FIELDS <= set(record)
    assert (record["path"], record["seed"], record["width"], record["height"]) == (
        str(tmp_path / "fox.png"), 3, 256, 256)
    assert record["model"] == "tiny" and record["linfusion"] == "tiny"
    assert [(s["width"], s["height"], s["steps"]) for s in record["stages"]] == [(256, 256, 2)]
    meta = read_metadata(tmp_path / "fox.png")
    assert meta["parameters"].split("\n")[:2] == ["a red fox", "Negative prompt: blurry"]
    assert meta["parameters"].split("\n")[2].startswith(
        "Steps: 2, Sampler: Euler, CFG scale: 5.0, Seed: 3, Size: 256x256, Model: tiny")
    assert meta["hires"]["job"]["seed"] == 3 and meta["hires"]["result"]["seed"] == 3


def test_quiet_leaves_stderr_empty(tmp_path, asked):
    result = cli("gen", "a red fox", *TINY, "-q", "-o", tmp_path / "fox.png")
    assert result.exit_code == 0, result.stderr
    assert result.stderr == ""
    assert result.stdout == f"{tmp_path / 'fox.png'}\n"


def test_a_random_seed_is_recorded_in_the_default_name(tmp_path, asked):
    result = cli("gen", "a red fox", *TINY, "-q", "-o", tmp_path, "--json")
    (record,) = json_lines(result.stdout)
    assert record["path"] == str(tmp_path / f"hires_256x256_s{record['seed']}.png")
    assert read_metadata(record["path"])["hires"]["job"]["seed"] == record["seed"]


def test_prompts_from_stdin_one_per_line(tmp_path, asked):
    result = cli("gen", "-", *TINY, "-q", "--json", "-o", f"{tmp_path}/{{index}}.png",
                 input="a red fox\n\n  a blue whale  \n")
    assert result.exit_code == 0, result.stderr
    records = json_lines(result.stdout)
    assert [r["path"] for r in records] == [str(tmp_path / "0.png"), str(tmp_path / "1.png")]
    assert [r["prompt"] for r in records] == ["a red fox", "a blue whale"]
    assert read_metadata(tmp_path / "1.png")["hires"]["job"]["prompt"] == "a blue whale"


def test_prompts_from_stdin_into_a_folder_with_a_fixed_seed(tmp_path, asked):
    """Two prompts, one seed, -o a folder: the default names must not collide."""
    result = cli("gen", "-", *TINY, "-q", "--seed", "5", "-o", tmp_path,
                 input="a red fox\na blue whale\n")
    assert result.exit_code == 0, result.stderr
    paths = result.stdout.splitlines()
    assert len(paths) == 2 and len(set(paths)) == 2
    assert len(list(tmp_path.glob("*.png"))) == 2


def test_several_prompts_need_a_folder_or_template(tmp_path, asked):
    result = cli("gen", "-", *TINY, "-o", tmp_path / "one.png", input="a\nb\n")
    assert_usage_error(result, "folder or a template")
    assert asked == [] and list(tmp_path.iterdir()) == []


def test_prompts_times_n_past_the_limit_are_refused_at_once(tmp_path, asked):
    """10,000 prompts at --n 10000 named and planned images for minutes, 10 GB of memory,
    before anything was refused (found by QA); --n alone was capped."""
    prompts = "".join(f"p{i}\n" for i in range(101))
    assert_usage_error(cli("gen", "-", *TINY, "--n", "100", "-o", tmp_path / "{index}.png",
                           "--dry-run", input=prompts),
                       "101 prompts times --n 100 is 10,100 images, more than the 10,000")
    assert asked == [] and list(tmp_path.iterdir()) == []
    made = cli("gen", "-", *TINY, "--n", "2", "-o", tmp_path / "{index}.png", "--dry-run",
               input=prompts)
    assert made.exit_code == 0, made.stderr
    # `up`'s inputs too (10,001 planned for over an hour): refused before any is opened
    paths = "".join(f"{tmp_path / f'in{i}.png'}\n" for i in range(10_001))
    assert_usage_error(cli("up", "-", "--model", "tiny", "--scale", "2", "--dry-run",
                           "-o", tmp_path / "{name}.png", input=paths),
                       "10,001 inputs, more than the 10,000 images one command makes")


def test_empty_stdin_and_missing_prompt_are_usage_errors(asked):
    assert_usage_error(cli("gen", "-", *TINY, input="\n\n"), "read no prompts")
    assert_usage_error(cli("gen", *TINY), "give a prompt")
    assert_usage_error(cli("gen", "  \t ", *TINY), "give a prompt")  # made an image
    for blank in ("", "   "):  # a dry run printed a plan (exit 0) for what the run refuses
        assert_usage_error(cli("gen", blank, *TINY, "--dry-run"), "give a prompt")
    assert asked == []


# --- re-running a recorded job ------------------------------------------------------------------

def test_from_image_reruns_the_recorded_job_to_identical_pixels(tmp_path, asked):
    first = tmp_path / "first.png"
    assert cli("gen", "a red fox", *TINY, "--seed", "9", "-q", "-o", first).exit_code == 0
    again = cli("gen", "--from", first, "-q", "--json", "-o", tmp_path / "again.png")
    assert again.exit_code == 0, again.stderr
    (record,) = json_lines(again.stdout)
    assert (record["seed"], record["prompt"], record["model"]) == (9, "a red fox", "tiny")
    assert np.array_equal(pixels(first), pixels(tmp_path / "again.png"))
    other = cli("gen", "--from", first, "--seed", "10", "-q", "-o", tmp_path / "other.png")
    assert other.exit_code == 0, other.stderr
    assert not np.array_equal(pixels(first), pixels(tmp_path / "other.png"))
    assert read_metadata(tmp_path / "other.png")["hires"]["job"]["seed"] == 10


def test_from_a_missing_image_is_a_usage_error(tmp_path, asked):
    result = cli("gen", "--from", tmp_path / "missing.png", "-o", tmp_path / "out.png")
    assert_usage_error(result, "missing.png")
    assert asked == [] and list(tmp_path.iterdir()) == []


def test_from_an_unreadable_image_is_a_usage_error(tmp_path, asked):
    if IS_ROOT:  # root reads through chmod 000: use a folder, which no one can read as an image
        source = tmp_path / "folder.png"
        source.mkdir()
    else:
        source = tmp_path / "locked.png"
        Image.new("RGB", (8, 8)).save(source)
        source.chmod(0)
    result = cli("gen", "--from", source, "-o", tmp_path / "out.png")
    assert_usage_error(result, source.name)
    assert not (tmp_path / "out.png").exists()


# --- presets ------------------------------------------------------------------------------------

def test_presets_lists_the_shipped_ones():
    result = cli("presets")
    assert result.exit_code == 0
    names = [line.split()[0] for line in result.stdout.splitlines()]
    assert {"16k", "8k", "4k", "16k-24gb", "draft"} <= set(names)
    assert "presets go in" not in result.stdout  # the hint is a log, not a result


def test_quiet_does_not_stick_to_the_next_command(tmp_path):
    assert cli("gen", "x", "-q", "--size", "0").exit_code == 2
    assert "presets go in" in cli("presets").stderr


def test_presets_show_prints_the_toml():
    result = cli("presets", "show", "draft")
    assert result.exit_code == 0
    values = tomllib.loads(result.stdout)
    assert (values["size"], values["steps"]) == (2048, 12)


def test_presets_show_unknown_names_the_closest():
    assert_usage_error(cli("presets", "show", "drat"), "unknown preset 'drat'", "'draft'")


def test_a_bad_value_names_the_preset_that_holds_it(tmp_path):
    preset = tmp_path / "mine.toml"
    preset.write_text('description = "x"\nsteps = -4\n')
    result = cli("plan", "--size", "1024", "--preset", str(preset))
    assert result.exit_code == 2
    assert error_lines(result.stderr) == [
        f"error: steps must be a whole number from 1 to 1000, got -4 (in preset 'mine' ({preset}))"]


def test_a_bad_flag_value_names_the_flag_and_a_preset_value_its_key(tmp_path):
    """Range errors from flags named the job's key ('strength must be ...')."""
    bad, good = tmp_path / "bad.toml", tmp_path / "good.toml"
    bad.write_text("steps = -4\n")
    good.write_text("steps = 4\n")
    for args, said in ((("--strength", "2"), "--strength must be between 0 and 1, got 2\n"),
                       # a whole number as it was typed, not the float it became (QA 190)
                       (("--vram", "0"), "--vram must be a positive number of GiB, got 0\n"),
                       (("--vram", "1000000"), "less than 1,000,000 GiB, got 1000000\n"),
                       (("--dpi", "10001"), "pixels per inch, got 10001\n"),
                       (("--strength", "1.25"), "--strength must be between 0 and 1, got 1.25\n"),
                       # a choice in capitals is told its lower case (QA 190)
                       (("--offload", "NONE"), "got 'NONE' (in lower case: 'none')\n"),
                       (("--device", "CPU"), "got 'CPU' (in lower case: 'cpu')\n"),
                       (("--vae-stats", "exact!"), "fast, exact; got 'exact!'\n"),
                       (("--guidance", "nan"), "--guidance must be a finite number"),
                       # it ran into NaN and blamed the weights ("check its file")
                       (("--guidance", "1e30"), "--guidance must be from 0 to 100, got 1e+30"),
                       (("--preset", str(bad)), "steps must be a whole number"),
                       (("--preset", str(good), "--steps", "0"),
                        "--steps must be a whole number")):
        result = cli("gen", "x", "--size", "1024", *args, "--dry-run")
        line = error_lines(result.stderr)[0] + "\n"
        assert result.exit_code == 2 and (line.startswith(f"error: {said}") or (
            said.endswith("\n") and line.endswith(said))), result.stderr
    sides = tmp_path / "sides.toml"
    sides.write_text("width = 1000\nheight = 1001\n")
    for args, said in ((("--size", "32776"), "--size must be at most 32768"),
                       (("--width", "1000", "--height", "1001"), "--height must be a multiple"),
                       (("--preset", str(sides)), "'height' must be a multiple")):
        result = cli("gen", "x", *args, "--dry-run")
        assert result.exit_code == 2 and error_lines(result.stderr)[0].startswith(
            f"error: {said}"), result.stderr


def test_explicit_flags_override_the_preset(tmp_path, asked):
    result = cli("gen", "a red fox", "--preset", "draft", "--size", "512", "--model", "tiny",
                 "--seed", "1", "-q", "--json", "-o", tmp_path / "draft.png")
    assert result.exit_code == 0, result.stderr
    (record,) = json_lines(result.stdout)
    assert (record["width"], record["height"]) == (512, 512)
    assert record["stages"][0]["steps"] == 12  # the draft's steps, at our size
    assert [(s["width"], s["height"]) for s in record["stages"]] == [(256, 256), (512, 512)]
    assert read_metadata(tmp_path / "draft.png")["hires"]["job"]["guidance"] == 6.0


def test_user_preset_by_path_and_by_name(tmp_path, asked):
    folder = tmp_path / "presets"
    folder.mkdir()
    (folder / "mine.toml").write_text('description = "mine"\nmodel = "tiny"\nwidth = 256\n'
                                      'height = 256\nsteps = 3\n')
    listed = cli("presets", env={"HIRES_PRESETS": str(folder)})
    assert "mine" in [line.split()[0] for line in listed.stdout.splitlines()]
    by_name = cli("gen", "x", "--preset", "mine", "-q", "--json", "-o", tmp_path / "a.png",
                  env={"HIRES_PRESETS": str(folder)})
    by_path = cli("gen", "x", "--preset", folder / "mine.toml", "--steps", "2", "-q", "--json",
                  "-o", tmp_path / "b.png")
    assert by_name.exit_code == 0 and by_path.exit_code == 0, (by_name.stderr, by_path.stderr)
    assert json_lines(by_name.stdout)[0]["stages"][0]["steps"] == 3
    assert json_lines(by_path.stdout)[0]["stages"][0]["steps"] == 2


@pytest.mark.parametrize("kind", ["folder", "pipe", "dead link"])
def test_a_user_preset_that_is_not_a_file_is_named_not_hung_on(kind, tmp_path):
    """A folder or link named draft.toml hid the shipped draft ('unknown preset'), and a pipe
    hung `hires presets` and every --preset: reading it waits for a writer."""
    import os

    folder = tmp_path / "presets"
    folder.mkdir()
    entry = folder / "draft.toml"
    if kind == "folder":
        entry.mkdir()
    elif kind == "pipe":
        os.mkfifo(entry)
    else:
        entry.symlink_to(tmp_path / "nowhere.toml")
    env = {"HIRES_PRESETS": str(folder)}
    listed = cli("presets", env=env)
    assert listed.exit_code == 0 and f"your own preset {entry} is not a file" in listed.stderr
    assert_usage_error(cli("plan", "--preset", "draft", env=env),
                       f"your own preset {entry} is not a file", "remove it")
    assert cli("plan", "--preset", "4k", env=env).exit_code == 0  # the others still load


def test_unknown_preset_names_the_closest(tmp_path, asked):
    assert_usage_error(cli("gen", "x", "--preset", "4K", "-o", tmp_path / "a.png"),
                       "unknown preset '4K'", "'4k'")
    assert_usage_error(cli("gen", "x", "--preset", "DRAFT", "-o", tmp_path / "a.png"),
                       "unknown preset 'DRAFT' (did you mean 'draft'?)")
    # `--preset "$PRESET"` with the variable unset ran without any preset.
    assert_usage_error(cli("gen", "x", "--preset", "", "-o", tmp_path / "a.png"),
                       "--preset is empty")
    assert asked == [] and list(tmp_path.iterdir()) == []


def test_an_unknown_preset_says_a_hires_presets_that_names_no_folder(tmp_path):
    """A script's typo in HIRES_PRESETS read as 'unknown preset' alone (found by QA)."""
    (tmp_path / "afile").write_text("x")
    assert_usage_error(cli("plan", "--preset", "mine",
                           env={"HIRES_PRESETS": str(tmp_path / "afile")}),
                       "unknown preset 'mine'", f"your own presets: {tmp_path / 'afile'} is a "
                       "file, not a folder; HIRES_PRESETS or XDG_CONFIG_HOME names it")
    assert_usage_error(cli("plan", "--preset", "mine",
                           env={"HIRES_PRESETS": str(tmp_path / "nowhere")}),
                       "unknown preset 'mine'", f"HIRES_PRESETS names {tmp_path / 'nowhere'}, "
                       "which is not there: your own presets are read from a folder")
    # and XDG_CONFIG_HOME's (found by QA reviewing the fix); " " is unset, as "" is
    (tmp_path / "xdg" / "hires").mkdir(parents=True)
    (tmp_path / "xdg" / "hires" / "presets").write_text("x")
    xdg = cli("plan", "--preset", "mine",
              env={"HIRES_PRESETS": " ", "XDG_CONFIG_HOME": str(tmp_path / "xdg")})
    assert_usage_error(xdg, f"{tmp_path / 'xdg' / 'hires' / 'presets'} is a file, not a folder")
    unknown = cli("plan", "--preset", "mine", env={"HIRES_PRESETS": str(tmp_path)})
    assert unknown.exit_code == 2 and "your own presets" not in unknown.stderr and \
        "HIRES_PRESETS names" not in unknown.stderr


def test_unknown_preset_key_names_the_closest(tmp_path, asked):
    preset = tmp_path / "bad.toml"
    preset.write_text('model = "tiny"\nstesp = 3\n')
    assert_usage_error(cli("gen", "x", "--preset", preset, "-o", tmp_path / "a.png"),
                       "stesp", "did you mean 'steps'")
    assert asked == [] and not (tmp_path / "a.png").exists()
    # A batch file's own keys: not "did you mean 'prompt'" for 'preset'.
    preset.write_text('model = "tiny"\npreset = "draft"\n')
    assert_usage_error(cli("gen", "x", "--preset", preset, "-o", tmp_path / "a.png"),
                       "a preset does not take another preset")
    preset.write_text('model = "tiny"\noutput = "a.png"\n')
    assert_usage_error(cli("gen", "x", "--preset", preset, "-o", tmp_path / "a.png"),
                       "a preset does not name the file")


def test_malformed_preset_names_the_line(tmp_path, asked):
    preset = tmp_path / "bad.toml"
    preset.write_text('model = "tiny"\nwidth = 256\nsteps = = 3\nheight = 256\n')
    assert_usage_error(cli("gen", "x", "--preset", preset, "-o", tmp_path / "a.png"), "line 3")
    assert asked == [] and not (tmp_path / "a.png").exists()


# --- bad input: one line on stderr, exit 2, no file, no model loaded ----------------------------

@pytest.mark.parametrize("args,words", [
    (["--size", "0"], ["size", "positive"]),
    (["--size", "-256"], ["size", "positive"]),
    (["--size", "1001"], ["multiple of 8", "try 1000 or 1008"]),
    (["--size", "32776"], ["at most 32768"]),
    (["--width", "256", "--height", "250"], ["height", "multiple of 8"]),
    (["--width", "40000", "--height", "256"], ["width", "at most 32768"]),
    (["--size", "256", "--width", "256", "--height", "256"], ["not both"]),
    (["--aspect", "1:1", "--width", "256", "--height", "256"],
     ["give either --width/--height or --aspect, not both"]),  # gen has no --scale to name
    (["--size", "1024", "--aspect", "100:1"],
     ["short side 8 px", "--size 6000 or more", "at most 17:1"]),
    # the widest that works: its short side rounds up to 64 from 60 (16:1 was said, though
    # 17:1 makes 1024x64: found by QA)
    (["--size", "1024", "--aspect", "1:100"], ["at most 1:17"]),
    (["--size", "312", "--aspect", "100:1"], ["at most 5.1:1"]),  # 5.2:1 said: 56 px
    (["--size", "256", "--aspect", "wide"], ["aspect"]),
    (["--size", "256", "--steps", "0"], ["steps"]),
    (["--size", "256", "--format", "gif"], ["format"]),
])
def test_bad_sizes_and_settings_are_usage_errors(tmp_path, asked, args, words):
    result = cli("gen", "x", "--model", "tiny", *args, "-o", tmp_path / "a.png")
    assert_usage_error(result, *words)
    assert asked == [] and list(tmp_path.iterdir()) == []


def test_a_file_made_there_during_the_run_is_kept_and_the_error_names_the_flag(tmp_path,
                                                                               monkeypatch):
    """Two runs writing one path: the one that saves second loses, told in the CLI's words
    (it once said `overwrite=True`, the library's)."""
    import hires.pipeline

    target, real_make = tmp_path / "a.png", hires.pipeline.run_job

    def make_and_race(*args, **kwargs):
        result = real_make(*args, **kwargs)
        target.write_bytes(b"the other run's")
        return result

    monkeypatch.setattr(hires.pipeline, "run_job", make_and_race)
    result = cli("gen", "x", *TINY, "-q", "-o", target)
    assert result.exit_code == 2 and target.read_bytes() == b"the other run's"
    assert "already exists" in result.stderr and "--overwrite" in result.stderr
    assert "overwrite=True" not in result.stderr
    # Its checkpoint is kept; the plain command would meet the other run's file again.
    assert "keeps every stage: the same command with --overwrite only decodes it" in \
        result.stderr


def test_an_unknown_option_is_a_usage_error():
    result = cli("gen", "x", "--sise", "256")
    assert result.exit_code == 2
    assert result.stdout == "" and "--sise" in result.stderr


def test_existing_output_is_kept_without_overwrite(tmp_path, asked):
    target = tmp_path / "a.png"
    target.write_bytes(b"precious")
    assert_usage_error(cli("gen", "x", *TINY, "-o", target), "already exists", "--overwrite")
    assert target.read_bytes() == b"precious" and asked == []
    result = cli("gen", "x", *TINY, "-q", "-o", target, "--overwrite")
    assert result.exit_code == 0, result.stderr
    assert pixels(target).shape == (256, 256, 3)
    assert [p.name for p in tmp_path.iterdir()] == ["a.png"]


def test_output_under_a_regular_file_is_a_usage_error(tmp_path, asked):
    (tmp_path / "file.txt").write_text("x")
    result = cli("gen", "x", *TINY, "-o", tmp_path / "file.txt" / "a.png")
    assert_usage_error(result, "file.txt")
    assert asked == [] and (tmp_path / "file.txt").read_text() == "x"


def test_output_in_a_read_only_folder_is_a_usage_error(tmp_path, asked):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        result = cli("gen", "x", *TINY, "-q", "-o", folder / "a.png")
        if IS_ROOT:  # root writes through 0555: the CLI rightly succeeds
            assert result.exit_code == 0, result.stderr
        else:
            assert_usage_error(result, str(folder))
            assert asked == [] and list(folder.iterdir()) == []
    finally:
        folder.chmod(0o755)
    assert part_files(tmp_path) == []


@pytest.mark.parametrize("args", [["--format", "webp", "-o", "{tmp}/big"],
                                  ["-o", "{tmp}/big.webp"]])
def test_webp_over_16383_px_fails_before_any_work(tmp_path, asked, args):
    args = [a.format(tmp=tmp_path) for a in args]
    assert_usage_error(cli("gen", "x", "--model", "tiny", "--size", "16384", *args), "16383")
    assert asked == [] and list(tmp_path.iterdir()) == []


def test_a_model_that_cannot_load_is_a_runtime_failure(tmp_path, asked):
    bad = tmp_path / "bad.safetensors"  # an SDXL checkpoint by its keys: fails as it loads
    save_file({"model.diffusion_model.x": torch.zeros(1), "conditioner.x": torch.zeros(1)}, bad)
    result = cli("gen", "x", "--model", bad, "-o", tmp_path / "a.png")
    assert result.exit_code == 1
    assert result.stdout == ""
    (line,) = error_lines(result.stderr)
    assert "bad.safetensors" in line
    assert "Traceback" not in result.stderr and list(tmp_path.iterdir()) == [bad]


@pytest.mark.parametrize("args", [["--model", "/nonexistent.safetensors"],
                                  ["--model", "tiny", "--vae", "/nonexistent/vae.safetensors"],
                                  ["--model", "tiny", "--linfusion", "/nonexistent/lf"],
                                  ["--model", "tiny", "--linfusion", "not-a-hub-id"]])
@pytest.mark.parametrize("dry", [[], ["--dry-run"]])
def test_a_missing_model_path_is_a_usage_error_before_any_loading(tmp_path, asked, args, dry):
    result = cli("gen", "x", *args, *dry, "-o", tmp_path / "a.png")
    assert_usage_error(result, "/nonexistent" if "/nonexistent" in str(args) else "not-a-hub-id",
                       "Hub id")
    assert asked == [] and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args,words", [
    (["gen", "x", "--width", "32", "--height", "32"], ["width", "at least 64"]),
    (["gen", "x", "--size", "256", "--aspect", "1000:1"], ["short side 8 px", "at most 4.2:1"]),
    (["up", "{tmp}/in16.png", "--scale", "2"], ["makes 32x32 px", "use --scale 3.75 or more"]),
    (["gen", "x", "--size", "256", "--gpu", "bogus"], ["unknown GPU 'bogus'"]),
    (["gen", "x", "--size", "256", "--gpu", "nan"], ["TFLOP/s figure of at least 0.001"]),
])
def test_sizes_and_gpus_hires_cannot_use_fail_before_any_loading(tmp_path, asked, args, words):
    Image.new("RGB", (16, 16)).save(tmp_path / "in16.png")
    args = [a.format(tmp=tmp_path) for a in args]
    result = cli(*args, "--model", "tiny", "-o", tmp_path / "out" / "a.png")
    assert_usage_error(result, *words)
    assert asked == [] and not (tmp_path / "out").exists()


# --- info and version ---------------------------------------------------------------------------

def test_info_prints_versions_devices_and_the_model_cache():
    from huggingface_hub import constants

    result = cli("info")
    assert result.exit_code == 0
    out = result.stdout
    assert out.startswith(f"hires {__version__}\n")
    for name in ("python", "torch", "diffusers", "transformers"):
        assert f"\n{name} " in out
    assert "\ndevice " in out
    assert f"model cache {constants.HF_HUB_CACHE}" in out
    default = next(line for line in out.splitlines()
                   if line.startswith("stabilityai/stable-diffusion-xl-base-1.0 "))
    # tests run with HF_HUB_OFFLINE=1: a run would not download it ('downloads on first use')
    assert default.endswith(("cached", "(HF_HUB_OFFLINE is set: unset it to download)"))


def test_info_says_how_each_gpu_is_timed(monkeypatch):
    from types import SimpleNamespace

    import torch

    cards = [SimpleNamespace(name="NVIDIA GeForce RTX 4090", total_memory=24564 << 20, major=8),
             SimpleNamespace(name="NVIDIA RTX PRO 6000", total_memory=97887 << 20, major=12),
             SimpleNamespace(name="Tesla T4", total_memory=15360 << 20, major=7)]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: cards[i])
    lines = [line for line in cli("info").stdout.splitlines() if line.startswith("device ")]
    assert lines[0] == "device cuda:0 NVIDIA GeForce RTX 4090, 24.0 GiB, estimates as --gpu 4090"
    assert lines[1].startswith("device cuda:1 NVIDIA RTX PRO 6000, 95.6 GiB, not in hires' GPU")
    assert lines[2].startswith("device cuda:2 Tesla T4, 15.0 GiB, estimates as --gpu t4; no "
                               "native bf16")
    assert lines[2].endswith("(--vae madebyollin/sdxl-vae-fp16-fix)")
    assert "bf16" not in lines[0] + lines[1]
    # --json: the same facts as one object, for scripts that pick a GPU or check a cache.
    info = json.loads(cli("info", "--json").stdout)
    assert [(d["device"], d["gpu"], d["native_bf16"]) for d in info["devices"]] == [
        ("cuda:0", "4090", True), ("cuda:1", None, True), ("cuda:2", "t4", False)]
    assert info["devices"][0]["memory_bytes"] == 24564 << 20
    assert info["hires"] == __version__ and info["packages"]["torch"]
    assert set(info["scratch"]) == {"folder", "why", "free_bytes", "parked_room_bytes"}


def test_version():
    result = cli("--version")
    assert result.exit_code == 0 and result.stdout == f"hires {__version__}\n"


# --- real processes -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def piped(tmp_path_factory):
    """`python -m hires gen - --json` with two prompts on stdin, as a script would run it."""
    folder = tmp_path_factory.mktemp("piped")
    result = run_hires("gen", "-", *TINY, "--seed", "5", "--json", "-o", f"{folder}/{{index}}.png",
                       input="a red fox\na blue whale\n")
    return folder, result


def test_subprocess_stdout_is_one_json_object_per_image(piped):
    folder, result = piped
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["path"] for r in records] == [str(folder / "0.png"), str(folder / "1.png")]
    assert all(RECORD_FIELDS <= set(r) and r["seed"] == 5 for r in records)
    assert "[1/1] stage 0 256x256 denoise" in result.stderr  # progress: plain lines on stderr
    assert "\x1b[" not in result.stderr
    assert "error" not in result.stderr


def test_subprocess_from_image_is_pixel_identical_and_quiet(piped, tmp_path):
    folder, first = piped
    assert first.returncode == 0, first.stderr
    result = run_hires("gen", "--from", folder / "1.png", "-q", "-o", tmp_path / "again.png")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{tmp_path / 'again.png'}\n"
    assert np.array_equal(pixels(folder / "1.png"), pixels(tmp_path / "again.png"))
    assert result.stderr == ""  # -q: nothing at all on stderr after success


def test_subprocess_ctrl_c_exits_130_and_leaves_no_file(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    proc = spawn_hires("gen", "x", "--model", "tiny", "--size", "256", "--steps", "999",
                       "-o", out / "a.png", stderr_path=tmp_path / "err.txt")
    try:
        wait_for(lambda: "denoise" in (tmp_path / "err.txt").read_text(), proc, every=0.1)
        time.sleep(0.5)  # well inside the sampling loop
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 130
    finally:
        proc.kill()
    assert "interrupted" in (tmp_path / "err.txt").read_text()
    assert proc.stdout.read() == b""
    assert list(out.iterdir()) == []


# --- the main job, end to end -------------------------------------------------------------------

def test_gen_runs_upscale_stages_to_the_exact_requested_size(tmp_path, asked):
    out = tmp_path / "castle.png"
    result = cli("gen", "a castle", "--model", "tiny", "--width", "2000", "--height", "240",
                 "--steps", "4", "--seed", "1", "--save-stages", "--vae-tile", "256", "-o", out,
                 "--json")
    assert result.exit_code == 0, result.stderr
    (record,) = json_lines(result.stdout)
    sizes = [(736, 96), (1472, 192), (2000, 240)]  # the last stage is the request itself
    assert [(s["width"], s["height"]) for s in record["stages"]] == sizes
    assert all(s["strategy"] for s in record["stages"])
    assert (record["width"], record["height"]) == (2000, 240)
    with Image.open(out) as im:
        assert im.size == (2000, 240)
    for i, size in enumerate(sizes[:-1]):
        with Image.open(tmp_path / f"castle.stage{i}.png") as im:
            assert im.size == size
    assert not (tmp_path / "castle.stage2.png").exists()  # that one is castle.png itself


def test_a_device_this_torch_cannot_use_is_a_usage_error(monkeypatch, tmp_path):
    import torch

    jobs = tmp_path / "jobs.toml"  # in a batch: before any job runs, naming the first on it
    jobs.write_text('[defaults]\nmodel = "tiny"\nsize = 256\n[[job]]\nprompt = "a"\n'
                    '[[job]]\nprompt = "b"\ndevice = "mps"\n', encoding="utf-8")
    result = cli("batch", jobs, "-o", tmp_path / "out")
    assert result.exit_code == 2 and "'device' in jobs.toml job 1: mps: " in result.stderr
    assert "use device = auto or cpu" in result.stderr  # the key's words, not the flag's
    assert not list((tmp_path / "out").glob("*.png"))

    for device, words in (("mps", ["--device mps", "no Apple GPU"]),
                          ("cuda", ["sees no CUDA GPU"])):
        assert_usage_error(cli("gen", "x", "--model", "tiny", "--device", device), *words)
    # A GPU index past the machine's: named with the ones there are, before any loading.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert_usage_error(cli("gen", "x", "--model", "tiny", "--device", "cuda:2"),
                       "sees 2 CUDA GPU(s), cuda:0 to cuda:1")


def test_a_dry_run_refuses_a_device_the_run_cannot_use_unless_it_plans_another_card(tmp_path):
    """README: "a plan that prints is a command that starts"; `--device cuda --dry-run` on a
    machine without CUDA printed a plan (exit 0) and the run then failed (exit 2). With
    --gpu CARD the dry run plans that card, as `hires plan` does."""
    jobs = tmp_path / "jobs.toml"
    jobs.write_text('[[job]]\nprompt = "a"\nmodel = "tiny"\nsize = 128\ndevice = "cuda"\n',
                    encoding="utf-8")
    small = tmp_path / "small.png"
    Image.new("RGB", (64, 64), (90, 120, 150)).save(small)
    for run in (("gen", "x", "--model", "tiny", "--device", "cuda"),
                ("up", small, "--model", "tiny", "--device", "cuda", "--size", "128"),
                ("batch", jobs)):
        dry = ("--dry-run", "-o", tmp_path / ("out" if run[0] == "batch" else "o.png"))
        result = cli(*run, *dry)
        assert result.exit_code == 2 and "sees no CUDA GPU" in result.stderr, result.stderr
        result = cli(*run, *dry, "--gpu", "h100")
        assert result.exit_code == 0, result.stderr


def test_tab_completion_offers_presets_gpus_and_choices():
    def complete(words: str) -> list[str]:
        env = {"_HIRES_COMPLETE": "complete_bash", "COMP_WORDS": words,
               "COMP_CWORD": str(len(words.split()) - (0 if words.endswith(" ") else 1))}
        return cli(env=env).stdout.split()

    assert {"16k", "16k-24gb"} <= set(complete("hires gen --preset 1"))
    assert "4090" in complete("hires plan --gpu 40")
    assert complete("hires gen --sampler ") == ["euler", "dpmpp-2m"]
    assert complete("hires up x --format t") == ["tiff"]
    assert "--size" in complete("hires gen --si")


@pytest.mark.parametrize("command", ["gen", "up", "plan"])
def test_help_groups_every_option_under_a_heading(command):
    """`-h` lists the options by topic; a new option without a heading would land in "Other
    options" beside -h, and this fails until HELP_SECTIONS names it."""
    from hires.cli_options import HELP_SECTIONS

    result = cli(command, "-h")
    assert result.exit_code == 0
    text = result.stdout
    headings = [line[:-1] for line in text.splitlines() if line.endswith(":") and
                not line.startswith(" ")]
    wanted = ["Arguments", *HELP_SECTIONS, "Other options"]
    assert headings == [h for h in wanted if h in headings] and "Size" in headings
    other = text.split("Other options:")[1]
    assert other.split() == ["-h,", "--help", "Show", "this", "message", "and", "exit."]
    found = [text.index(f"  {o} ") for o in ("--size", "--negative", "--output", "--model",
                                              "--vram", "--gpu") if f"  {o} " in text]
    assert len(found) >= 5 and found == sorted(found)


def test_info_says_whether_the_scratch_folder_has_room_for_parked_maps(monkeypatch):
    from hires import memory

    monkeypatch.setattr(memory, "_filesystem", lambda folder: "ext4")
    assert "GB of parked maps the RAM cannot hold" in cli("info").stdout
    monkeypatch.setattr(memory, "_filesystem", lambda folder: "tmpfs")
    line = next(x for x in cli("info").stdout.splitlines() if x.startswith("scratch "))
    assert "no room for parked maps (point TMPDIR at a disk)" in line


def test_a_tmpdir_that_cannot_be_used_is_said(tmp_path, monkeypatch, asked):
    """Python passes over a missing TMPDIR for /tmp without a word; info labelled /tmp
    'TMPDIR', and runs put their scratch files elsewhere unsaid."""
    import tempfile

    missing = tmp_path / "missing"
    monkeypatch.setenv("TMPDIR", str(missing))
    monkeypatch.setattr(tempfile, "tempdir", None)  # Python keeps its first answer
    said = f"TMPDIR={missing} is not a folder: temporary files go to "
    line = next(x for x in cli("info").stdout.splitlines() if x.startswith("scratch "))
    assert said in line
    result = cli("gen", "x", *TINY, "-o", tmp_path / "x.png")
    assert result.exit_code == 0 and f"warning: {said}" in result.stderr, result.stderr
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", None)
    assert "TMPDIR=" not in cli("gen", "x", *TINY, "-o", tmp_path / "y.png").stderr


def test_progress_json_puts_objects_on_stderr_and_the_path_on_stdout(tmp_path, asked):
    out = tmp_path / "p.png"
    result = cli("gen", "a fox", *TINY, "--seed", "1", "-o", str(out), "--progress", "json")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.strip() == str(out)
    lines = [json.loads(x) for x in result.stderr.splitlines()]  # every line is an object
    records = [r for r in lines if "phase" in r]
    assert {r["image"] for r in records} == {str(out)}
    # the last: the save's end (the file is there), after the final decode; it was the decode
    ended = [r["phase"] for r in records if r["done"] == r["total"] and r["total"]]
    assert ended[-2:] == ["vae-decode", "save"]
    assert [r["phase"] for r in records][-2:] == ["save", "save"]  # a start, then the end
    assert any(r.get("log", "").startswith("  stage 0 (base)") for r in lines)  # the plan
    again = cli("gen", "a fox", *TINY, "--seed", "2", "-o", str(out), "--progress", "json")
    assert again.exit_code == 2 and "--overwrite" in json.loads(again.stderr)["error"]
    assert_usage_error(cli("gen", "x", "--progress", "jsn"), "'jsn' is not one of")


def test_with_progress_json_warnings_and_stops_are_objects_too(capsys):
    import warnings

    from hires.cli_output import Quiet, exit_codes

    Quiet.progress = "json"
    with pytest.raises(typer.Exit) as stop, exit_codes():
        warnings.warn("a library's warning", UserWarning, stacklevel=1)
        raise KeyboardInterrupt
    assert stop.value.exit_code == 130
    assert [json.loads(x) for x in capsys.readouterr().err.splitlines()] == [
        {"warning": "UserWarning: a library's warning"}, {"error": "interrupted"}]


def test_a_ram_above_this_machines_is_a_warning_before_a_gpu_run(capsys):
    from hires.cli_runs import warn_ram
    from hires.job import Job
    from hires.memory import GIB, ram_bytes

    total = ram_bytes()[0] / GIB
    warn_ram([Job(ram=total * 2, device="cuda"), Job(ram=total * 2, device="cuda:1")])
    (line,) = capsys.readouterr().err.strip().splitlines()  # once for the same figure
    assert line.startswith(f"warning: --ram {total * 2:g} is more than this machine's")
    warn_ram([Job(ram=total / 2, device="cuda"), Job(ram=total / 2, device="cpu")])
    assert capsys.readouterr().err == ""  # within the RAM
    # a batch's: its key, and the jobs that gave it (the same job twice is two jobs)
    over = Job(ram=total * 2, device="cuda")
    warn_ram([over, Job(device="cuda"), over, Job(ram=total * 2, device="cpu")], batch=[4, 5, 6, 7])
    gpu, cpu = capsys.readouterr().err.strip().splitlines()
    assert gpu.startswith(f"warning: jobs 4 and 6: a ram of {total * 2:g} GiB is more than")
    assert cpu.startswith(f"warning: job 7: a ram of {total * 2:g} GiB is the CPU run's")


@pytest.mark.parametrize("flag", ["vram", "ram"])
def test_a_cpu_runs_budget_above_this_machines_ram_is_a_warning(capsys, flag):
    """On a CPU --vram (or --ram) is the run's memory budget: `--vram 100` on 21 GiB planned
    a 52 GiB stage without a word, and the run then meets the OOM killer."""
    from hires.cli_runs import warn_ram
    from hires.job import Job
    from hires.memory import GIB, ram_bytes

    total = ram_bytes()[0] / GIB
    warn_ram([Job(**{flag: total * 2}, device="cpu")])
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"warning: a {flag} of {total * 2:g} GiB is the CPU run's memory "
                           "budget, more than this machine's")


def test_reading_stdin_from_a_terminal_says_how_to_end_it(monkeypatch, capsys):
    import io

    from hires.cli_jobs import stdin_lines

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr("sys.stdin", Terminal("a fox\n# not this\n\n  a hen \n"))
    assert stdin_lines("prompts") == ["a fox", "a hen"]
    assert capsys.readouterr().err == "reading prompts from stdin, one a line; end with Ctrl-D\n"
    monkeypatch.setattr("sys.stdin", io.StringIO("a fox\n"))  # a pipe: nothing to say
    assert stdin_lines("prompts") == ["a fox"] and capsys.readouterr().err == ""


def test_previews_are_first_stages_and_from_one_makes_it_whole_with_that_stage(tmp_path, asked):
    from pathlib import Path

    import numpy as np
    from PIL import Image

    small = ("--model", "tiny", "--size", "512", "--steps", "2", "--seed", "3")
    out = f"{tmp_path / 'pv'}/"
    result = cli("gen", "a fox", *small, "--n", "2", "--preview", "-o", out, "--json")
    assert result.exit_code == 0, result.stderr
    records = json_lines(result.stdout)
    paths = [Path(r["path"]) for r in records]
    assert [p.name for p in paths] == ["hires_512x512_s3_000.stage0.png",
                                       "hires_512x512_s4_001.stage0.png"]
    assert [(r["stage"], r["width"], len(r["stages"])) for r in records] == [(0, 256, 1)] * 2
    assert "preview: stage 0, 256x256, of a 2 stage(s), 512x512 job" in result.stderr
    assert "made already" in cli("gen", "a fox", *small, "--n", "2", "--preview", "-o",
                                 out).stderr
    # The whole job from a preview: its first stage is the preview, pixel for pixel.
    whole = cli("gen", "--from", paths[1], "--save-stages", "-o", f"{tmp_path / 'whole'}/")
    assert whole.exit_code == 0, whole.stderr
    first = tmp_path / "whole" / "hires_512x512_s4.stage0.png"
    with Image.open(paths[1]) as a, Image.open(first) as b:
        assert np.array_equal(np.asarray(a), np.asarray(b))
    with Image.open(tmp_path / "whole" / "hires_512x512_s4.png") as im:
        assert im.size == (512, 512)
    plan = cli("gen", "x", *small, "--preview", "--dry-run", "-o", tmp_path / "d").stdout
    assert "512x512: stage 0 of 2 (--preview)" in plan
    assert "stage 0 (base)" in plan and "stage 1" not in plan
    assert_usage_error(cli("gen", "x", *small, "--preview", "--save-stages"), "drop --save")


@pytest.mark.parametrize("dry", [[], ["--dry-run"]])
def test_a_stage_image_in_the_way_fails_before_any_loading(tmp_path, asked, dry):
    (tmp_path / "x.stage0.png").write_text("someone's")
    (tmp_path / "x.stage1.png").write_text("no stage of this job: its last is x.png")
    args = ["gen", "a", "--model", "tiny", "--size", "512", "--steps", "1", "--save-stages"]
    result = cli(*args, *dry, "-o", tmp_path / "x.png")
    assert_usage_error(result, "x.stage0.png already exists")
    assert asked == [] and (tmp_path / "x.stage0.png").read_text() == "someone's"
    (tmp_path / "x.stage0.png").unlink()
    assert cli(*args, "--dry-run", "-o", tmp_path / "x.png").exit_code == 0


@pytest.mark.parametrize("args", [["info", "{p}"], ["plan", "--from", "{p}"],
                                  ["gen", "--from", "{p}", "--dry-run"]])
def test_a_pipe_given_as_an_image_is_refused_not_waited_on(tmp_path, args):
    import os

    pipe = tmp_path / "p.png"
    os.mkfifo(pipe)  # opening it to read would wait for a writer that never comes
    result = cli(*[a.format(p=pipe) for a in args])
    assert_usage_error(result, "p.png", "not a file")


def test_a_ctrl_c_while_the_cli_loads_is_one_word_and_130(monkeypatch, capsys):
    import sys

    import hires
    from hires import cli as cli_module
    from hires.cli_output import Terminated

    class Interrupting:  # the `hires.cli` import (typer, rich, ...) takes a moment
        def find_spec(self, name, path=None, target=None):
            if name == "hires.cli":
                raise KeyboardInterrupt
            return None

    monkeypatch.delitem(sys.modules, "hires.cli")
    monkeypatch.setattr(sys, "meta_path", [Interrupting(), *sys.meta_path])
    with pytest.raises(SystemExit) as stopped:
        hires.main()
    assert stopped.value.code == 130 and capsys.readouterr().err == "interrupted\n"
    monkeypatch.setattr(sys, "meta_path", sys.meta_path[1:])

    for signal_, code, word in ((KeyboardInterrupt, 130, "interrupted"),
                                (Terminated, 143, "terminated")):
        def building(signal_=signal_):  # typer building the commands, before exit_codes()
            raise signal_()

        monkeypatch.setattr(cli_module, "app", building)
        monkeypatch.setattr("signal.signal", lambda *a: None)  # this worker's SIGTERM stays
        with pytest.raises(SystemExit) as stopped:
            cli_module.main()
        assert stopped.value.code == code and capsys.readouterr().err == f"{word}\n"


@pytest.mark.parametrize("term, kind", [("xterm-256color", "RichProgress"),
                                        ("dumb", "PlainProgress")])
def test_auto_progress_is_plain_lines_on_a_dumb_terminal(monkeypatch, term, kind):
    """With TERM=dumb rich cannot redraw a bar, and showed none until the job ended."""
    import io
    from contextlib import nullcontext

    from hires.cli_output import Quiet, progress_renderer

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr("sys.stderr", Terminal())
    monkeypatch.setenv("TERM", term)
    Quiet.progress = "auto"
    made = progress_renderer(False)
    shown = made.enter_result if isinstance(made, nullcontext) else made
    assert type(shown).__name__ == kind


def test_n_has_the_short_form_people_type(tmp_path):
    """`-n 2` was "no such option: -n" (only --n)."""
    result = cli("gen", "a fox", *TINY, "-n", "2", "--dry-run", "--json", "-o", tmp_path)
    assert result.exit_code == 0, result.stderr
    assert len(json_lines(result.stdout)[0]["images"]) == 2


def test_a_dry_run_warns_of_a_cpu_budget_over_the_ram(tmp_path):
    """Only the run warned: the dry run printed a 100 GiB plan on a 21 GiB machine."""
    from hires.memory import GIB, ram_bytes

    over = f"{ram_bytes()[0] / GIB * 2:.0f}"
    result = cli("gen", "a fox", *TINY, "--device", "cpu", "--vram", over, "--dry-run", "-o",
                 tmp_path / "a.png")
    assert result.exit_code == 0, result.stderr
    assert f"warning: a vram of {over} GiB is the CPU run's memory budget" in result.stderr
    # --gpu plans that card and its machine: this one's RAM is not the budget, nor warned of
    card = cli("gen", "a fox", *TINY, "--gpu", "4090", "--vram", "24", "--ram", over,
               "--dry-run", "-o", tmp_path / "a.png")
    assert card.exit_code == 0 and "warning" not in card.stderr, card.stderr
    assert "24.0 GiB budget" in card.stdout


def test_a_cpu_run_that_cannot_fit_says_which_budget_to_raise(tmp_path):
    """On a CPU the budget is --vram, else --ram; a plan over --ram said no way out."""
    for flag in ("--ram", "--vram"):
        result = cli("gen", "a fox", *TINY, "--device", "cpu", "--size", "2048", flag, "0.9",
                     "--dry-run", "-o", tmp_path / "a.png")
        assert_usage_error(result, "more than the 0.9 GiB one", f"try a larger {flag}")
