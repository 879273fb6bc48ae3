"""Small things a user meets at the shell: completion, presets' listing, sizes and units."""

from __future__ import annotations

import json

import pytest
from helpers_cli import cli
from typer.testing import CliRunner

from hires.cli import app
from hires.plan import make_plan, upscale_sizes


def completions(words: str, env: dict[str, str] | None = None) -> list[str]:
    """What bash's TAB offers after `words` (as `hires --install-completion` wires it)."""
    cword = str(len(words.split()) - (0 if words.endswith(" ") else 1))
    result = CliRunner().invoke(app, [], prog_name="hires", env={
        "_HIRES_COMPLETE": "complete_bash", "COMP_WORDS": words, "COMP_CWORD": cword,
        **(env or {})})
    assert result.exit_code == 0, result.output
    return result.stdout.split()


@pytest.fixture
def own_presets(tmp_path):
    folder = tmp_path / "presets"
    folder.mkdir()
    (folder / "bad.toml").write_text("stepz = 3\n")  # a typo: a broken preset
    (folder / ".draft.toml").write_text("steps = 3\n")  # an editor's backup
    (folder / "draft.toml").write_text('description = "mine"\nsteps = 3\n')
    (folder / "own.toml").write_text('description = "own one"\nsteps = 4\n')
    (folder / "a.toml.toml").write_text("steps = 4\n")
    return {"HIRES_PRESETS": str(folder)}


def test_a_broken_preset_of_the_users_does_not_break_completion(own_presets):
    """It crashed with a traceback at every TAB, offering nothing."""
    offered = completions("hires gen --preset ", own_presets)
    assert {"16k", "draft", "own"} <= set(offered)
    assert "bad" not in offered and ".draft" not in offered


NOT_HERE = "; give a .toml file's path, or a preset's name ('hires presets' lists them)"


@pytest.mark.parametrize(("given", "hint"), [("own.toml", " (a preset named 'own' is known: "
                                                             "give its name)"),
                                             ("16k.toml", " (a preset named '16k' is known: "
                                                          "give its name)"),
                                             ("none.toml", NOT_HERE),
                                             ("a.toml.toml", NOT_HERE)])  # 'a.toml': a path
def test_a_presets_file_name_not_here_points_to_its_name(own_presets, given, hint):
    """`--preset own.toml` for the user's own preset said 'not found' and no more."""
    from helpers_cli import error_lines

    result = cli("gen", "x", "--preset", given, "--dry-run", env=own_presets)
    assert result.exit_code == 2
    assert error_lines(result.stderr) == [f"error: preset file not found: {given}{hint}"]


def test_presets_show_completes_preset_names(own_presets):
    assert {"16k", "own"} <= set(completions("hires presets show ", own_presets))


@pytest.mark.parametrize("words, wanted", [
    ("hires gen --print-size A", {"A2", "A4-landscape"}),
    ("hires plan --aspect 16", {"16:9"}),
    ("hires gen --linfusion ", {"auto", "none"}),
    ("hires gen --model ti", {"tiny"}),
])
def test_values_complete(words, wanted):
    assert wanted <= set(completions(words))


def test_presets_list_says_which_are_yours_and_skips_hidden_files(own_presets):
    result = cli("presets", env=own_presets)
    assert result.exit_code == 0
    lines = {line.split()[0]: line for line in result.stdout.splitlines()}
    assert lines["draft"].endswith("mine (yours; replaces the shipped one)")
    assert lines["own"].endswith("own one (yours)")
    assert "(yours" not in lines["16k"]
    assert ".draft" not in lines
    assert "skipped a broken preset" in result.stderr


def test_a_broken_preset_of_a_shipped_name_is_not_listed_as_the_shipped_one(tmp_path):
    """Your broken draft.toml left the shipped 'draft' in the list, which --preset draft does
    not run (it reads yours, and fails); a description that is no text was listed as one."""
    folder = tmp_path / "presets"
    folder.mkdir()
    (folder / "draft.toml").write_text("size = 100\n")
    (folder / "notes.toml").write_text("description = 5\nsteps = 2\n")
    (folder / "long.toml").write_text('description = """one\ntwo"""\nsteps = 2\n')
    env = {"HIRES_PRESETS": str(folder)}
    result = cli("presets", env=env)
    listed = {line.split()[0]: line for line in result.stdout.splitlines()}
    assert "draft" not in listed and "notes" not in listed
    assert listed["long"].endswith("one two (yours)")
    assert "'description' in preset 'notes'" in result.stderr and "got 5" in result.stderr
    assert "'size' must be a multiple of 8" in result.stderr
    assert "draft" not in cli("presets", "--json", env=env).stdout


def test_a_preset_s_name_given_to_presets_is_pointed_to_show(tmp_path):
    result = cli("presets", "16k")
    assert result.exit_code == 2
    assert "'hires presets show 16k' shows a preset" in result.stderr
    folder = cli("plan", "--preset", tmp_path)
    assert folder.exit_code == 2 and "is a folder; give a preset's .toml file" in folder.stderr


def test_presets_list_and_show_in_json_for_scripts(own_presets):
    """`hires presets --json` was 'no such option': a script had to parse the columns."""
    # --json before the subcommand is the group's: it printed text, exit 0
    for args in (("presets", "--json"), ("presets", "list", "--json"),
                 ("presets", "--json", "list")):
        result = cli(*args, env=own_presets)
        assert result.exit_code == 0, result.stderr
        listed = {r["name"]: r for r in map(json.loads, result.stdout.splitlines())}
        assert (listed["own"]["origin"], listed["own"]["replaces_shipped"]) == ("yours", False)
        assert (listed["draft"]["origin"], listed["draft"]["replaces_shipped"]) == \
            ("yours", True)
        assert (listed["16k"]["origin"], listed["16k"]["values"]["size"]) == ("shipped", 16384)
        assert listed["own"]["values"] == {"steps": 4} and "bad" not in listed
    shown = cli("presets", "show", "own", "--json", env=own_presets)
    assert shown.exit_code == 0, shown.stderr
    assert cli("presets", "--json", "show", "own", env=own_presets).stdout == shown.stdout
    assert json.loads(shown.stdout) == {"name": "own", "description": "own one",
                                        "path": own_presets["HIRES_PRESETS"] + "/own.toml",
                                        "origin": "yours", "replaces_shipped": False,
                                        "values": {"steps": 4}}
    for name, origin, replaces in (("draft", "yours", True), ("16k", "shipped", False)):
        said = json.loads(cli("presets", "show", name, "--json", env=own_presets).stdout)
        assert (said["origin"], said["replaces_shipped"]) == (origin, replaces)


def test_disk_sizes_typed_in_gib_count_as_gib():
    """`--disk 24GiB` was taken as 24 GB (10^9 bytes); --vram and --ram count GB as GiB."""
    from hires.cli_options import disk_gigabytes

    def planned(*args):
        return json.loads(cli("plan", "x", "--size", "2048", "--gpu", "h100", "--json",
                              *args).stdout)

    assert planned("--vram", "24GiB") == planned("--vram", "24 GB") == planned("--vram", "24")
    assert disk_gigabytes("30") == disk_gigabytes("30GB") == 30
    assert disk_gigabytes("30 GiB") == pytest.approx(32.212, abs=1e-3)
    assert cli("plan", "--help").stdout.count("<GiB>") == 2  # --vram, --ram; --disk in GB


def test_a_presets_errors_name_it_alike(tmp_path):
    """A size error in a preset given by path named it by the path as typed, others by name."""
    preset = tmp_path / "asponly.toml"
    preset.write_text('aspect = "16:9"\n')
    result = cli("plan", "x", "--preset", str(preset))
    assert result.exit_code == 2
    assert f"in preset 'asponly' ({preset}) needs a long side: give --size" in result.stderr


def test_an_upscale_that_changes_the_aspect_runs_no_stage_twice_at_one_size():
    """A 4000x1 strip to 4000x64 ran stages 0-2 all at 4000x8 (its width at the request, its
    height at the 8 px floor), each labelled x1."""
    sizes = upscale_sizes(4000, 64, (4000, 1), native=64)
    assert sizes == [(4000, 8), (4000, 16), (4000, 32), (4000, 64)]
    assert len(set(sizes)) == len(sizes)
    # 128x96 to 256x1024: the height grows more than the width, and names the scale.
    assert [line.split(":")[0] for line in _describe(256, 1024, (128, 96))] == [
        "stage 0 (from the input)", "stage 1 (x2)", "stage 2 (x4)", "stage 3 (x5.33)"]


def _describe(width, height, source):
    from hires.plan import describe

    return describe(make_plan(width, height, source=source, native=128))


def test_a_plan_that_cannot_fit_names_the_budget_that_would():
    """It said "needs at least 4.9 GiB ... plus a margin", and --vram 5 did not fit."""
    def plan(vram: str):
        return cli("plan", "x", "--size", "4096", "--gpu", "t4", "--ram", "64", "--vram", vram)

    refused = plan("5")
    assert refused.exit_code == 2
    budget = refused.stderr.split("plus a margin: a ")[1].split(" GiB budget")[0]
    assert float(budget) > 5
    assert plan(budget).exit_code == 0
    assert plan(f"{float(budget) - 0.1:.1f}").exit_code == 2


def test_a_dry_run_shows_the_settings_preset_and_flags_made(tmp_path):
    """Only sizes, steps and strengths were shown: a preset's seed, sampler or guidance merged
    with flags could not be checked before the image was made."""
    preset = tmp_path / "mine.toml"
    preset.write_text('sampler = "dpmpp-2m"\nguidance = 5.5\nseed = 3\nnegative = "blur"\n')
    args = ("gen", "a cat", "--model", "tiny", "--size", "512", "--preset", str(preset),
            "--seed", "9", "--dry-run", "-o", str(tmp_path / "a.png"))
    text = cli(*args).stdout.splitlines()[1]
    assert text == ("settings: seed 9, dpmpp-2m sampler, guidance 5.5, model tiny, "
                    "negative 'blur'")
    job = json.loads(cli(*args, "--json").stdout)["job"]
    assert (job["seed"], job["sampler"], job["guidance"], job["prompt"]) == (9, "dpmpp-2m", 5.5,
                                                                           "a cat")


def test_from_refuses_a_malformed_hires_record_rather_than_its_a1111_text(tmp_path):
    """A cut 'hires' record beside A1111 parameters was re-run from the A1111 text alone, a
    different job, without a word."""
    from PIL import Image, PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_itxt("parameters", "a cat\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 5, "
                                "Size: 512x512")
    info.add_itxt("hires", json.dumps({"job": {"prompt": "a dog", "seed": 8}})[:12])
    path = tmp_path / "cut.png"
    Image.new("RGB", (8, 8)).save(path, pnginfo=info)
    result = cli("gen", "--from", str(path), "--model", "tiny", "--dry-run")
    assert result.exit_code == 2
    assert f"{path}: its hires metadata is malformed (not JSON" in result.stderr


def test_info_shows_a_lossy_files_quality(tmp_path, asked):
    out = tmp_path / "q.jpg"
    made = cli("gen", "a fox", "--model", "tiny", "--size", "128", "--steps", "1", "--seed", "2",
               "--quality", "80", "-o", str(out), "-q")
    assert made.exit_code == 0, made.stderr
    assert "guidance 7.5, quality 80" in cli("info", str(out)).stdout


@pytest.mark.parametrize("progress", ["plain", "json"])
def test_a_log_reader_that_goes_away_does_not_end_the_run(tmp_path, progress):
    """`hires gen ... 2>&1 | head -2`: rich ended the run (exit 1, no image) as its log's
    reader closed; a --progress line did the same."""
    import subprocess

    from helpers_cli import REPO, hires_cmd, subprocess_env

    out = tmp_path / "a.png"
    proc = subprocess.Popen(hires_cmd("gen", "a cat", "--model", "tiny", "--size", "128",
                                      "--steps", "2", "-o", out, "--progress", progress),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, env=subprocess_env(), cwd=REPO)
    proc.stdout.readline()
    proc.stdout.readline()
    proc.stdout.close()  # as `| head -2` does
    assert proc.wait(timeout=300) == 0
    assert out.is_file()


def test_the_more_ram_hint_never_says_the_same_time_twice():
    """'with 64 GiB of RAM free, ~6 min instead of ~6 min': a tenth saved, lost to rounding."""
    result = cli("plan", "x", "--size", "16384", "--vram", "24", "--ram", "16")
    assert result.exit_code == 0
    hint = next(line for line in result.stderr.splitlines() if "RAM limits" in line)
    faster, now = hint.split("free, ")[1].split(" (hires plans")[0].split(" instead of ")
    assert faster != now


def test_a_dry_run_refuses_json_with_the_image_on_stdout():
    """The run refused `-o - --json`; its dry run printed a plan (exit 0)."""
    result = cli("gen", "p", "--model", "tiny", "--size", "64", "-o", "-", "--json",
                 "--dry-run")
    assert result.exit_code == 2 and "--json prints to stdout" in result.stderr


def test_a_ram_error_says_what_ram_would_do_with_the_maps_on_a_disk():
    """It said only the 26.2 GiB that RAM alone would need, and no disk size helped: the
    streamed weights must be in RAM, the parked maps may wait on a disk."""
    result = cli("plan", "x", "--size", "16384", "--gpu", "3060", "--ram", "8", "--disk", "100")
    assert result.exit_code == 2
    said = result.stderr.split(" GB of parked maps on a disk, ")[1]
    ram = float(said.split(" GiB of free RAM would do")[0])
    assert 5 < ram < 26.2 and "--disk the room" not in said
    # the figure is free RAM, as --ram takes it: it plans, and a little less does not (it
    # said the part left after hires' margin, 6.5 where 9.5 was needed: QA 202)
    for given, code in ((ram, 0), (ram - 0.2, 2)):
        assert cli("plan", "x", "--size", "16384", "--gpu", "3060", "--ram", f"{given:.1f}",
                   "--disk", "100").exit_code == code
    no_disk = cli("plan", "x", "--size", "16384", "--gpu", "3060", "--ram", "8", "--disk", "0")
    assert no_disk.exit_code == 2 and "parked maps on a disk" not in no_disk.stderr
    # a plan that streams no weights needs no RAM for them; a disk too small is said so, not
    # "0.0 GiB of it would do: the weights it streams" (QA 189)
    small = cli("plan", "x", "--size", "16384", "--gpu", "4090", "--ram", "1", "--disk", "1")
    assert small.exit_code == 2 and "0.0 GiB of it would do" not in small.stderr
    assert "GB of parked maps on a disk, it needs no RAM for them; " in small.stderr
    assert "has room for 1.0 GB, TMPDIR picks the folder and --disk the room)" in small.stderr


def test_an_option_without_its_value_points_to_its_command_s_help():
    """`hires plan --gpu` said "(see 'hires -h')", the top level's help, not plan's."""
    result = cli("plan", "--gpu")
    assert result.exit_code == 2
    assert result.stderr.strip() == ("error: option '--gpu' requires an argument "
                                     "(see 'hires plan -h')")
