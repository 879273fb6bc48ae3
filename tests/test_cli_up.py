"""`hires up`: an existing image upscaled from the command line, reproducible with --from."""

import json
import os

import numpy as np
import pytest
from helpers_cli import assert_usage_error, cli, json_lines, run_hires
from PIL import Image


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    from skimage import data

    path = tmp_path_factory.mktemp("photo") / "chelsea.jpg"
    Image.fromarray(data.chelsea()).resize((144, 96), Image.LANCZOS).save(path, quality=95)
    return path


def test_an_exact_copy_scores_null_not_infinity_which_is_no_json(photo, tmp_path, monkeypatch):
    """An identical stage's PSNR is inf: `--json`, the record and `info --json` wrote
    `Infinity`, which strict JSON parsers refuse."""
    import math

    import hires.images

    monkeypatch.setattr(hires.images, "psnr", lambda a, b: math.inf)
    out = tmp_path / "same.png"
    result = cli("up", photo, "--scale", "2", "--model", "tiny", "--steps", "1", "-o", out,
                 "--json")
    assert result.exit_code == 0, result.stderr

    def strict(text):
        return json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} in {text}"))

    assert [s["psnr"] for s in strict(result.stdout)["stages"]] == [None]
    info = cli("info", out, "--json")
    assert info.exit_code == 0, info.stderr
    assert strict(info.stdout)["result"]["stages"][0]["psnr"] is None
    # said in words, not 'inf dB' as the run said it, nor 'None dB' as info did
    assert "stage 0 (288x192): identical to the input" in result.stderr
    assert "inf dB" not in result.stderr
    assert "identical to the input" in cli("info", out).stdout


def test_up_makes_the_exact_size_and_reports_fidelity_per_stage(photo, tmp_path, asked):
    out = tmp_path / "big.png"
    result = cli("up", photo, "--scale", "4", "--model", "tiny", "--steps", "4", "--seed", "2",
                 "-o", out, "--json")
    assert result.exit_code == 0, result.stderr
    (record,) = json_lines(result.stdout)
    assert (record["width"], record["height"]) == (576, 384)
    assert [(s["width"], s["height"]) for s in record["stages"]] == [(288, 192), (576, 384)]
    assert all(s["psnr"] > 5 for s in record["stages"])
    assert record["image"] == str(photo) and len(record["image_sha256"]) == 64
    # Each stage's score as the stage ends (before the next stage's progress), once.
    lines = result.stderr.splitlines()
    scores = [i for i, x in enumerate(lines) if x.endswith("dB PSNR against the input")]
    said = [lines[i].split(":") for i in scores]
    assert [label.strip() for label, _ in said] == [
        f"stage {i} ({s['width']}x{s['height']})" for i, s in enumerate(record["stages"])]
    for (_, value), stage in zip(said, record["stages"]):  # the record keeps 2 decimals
        assert abs(float(value.split()[0]) - stage["psnr"]) <= 0.051
    assert scores[0] < min(i for i, x in enumerate(lines) if x.startswith("[2/2]"))
    with Image.open(out) as im:
        assert im.size == (576, 384)
    assert cli("info", out).stdout.count("dB PSNR against the input") == 2

    again = tmp_path / "again.png"
    rerun = cli("gen", "--from", out, "-o", again)
    assert rerun.exit_code == 0, rerun.stderr
    assert np.array_equal(np.asarray(Image.open(out)), np.asarray(Image.open(again)))


def test_up_dry_run_plans_from_the_input(photo):
    result = cli("up", photo, "--size", "2304", "--dry-run", "--json")
    assert result.exit_code == 0, result.stderr
    plan = json.loads(result.stdout)
    assert (plan["width"], plan["height"]) == (2304, 1536)
    # SDXL's stages start at 512x512's area: the input is resized to 1152x768 first
    assert [s["width"] for s in plan["stages"]] == [1152, 2304]


def test_up_takes_upsample_as_gen_and_batch_do(photo):
    """README offers --upsample latent for every job; up had no such flag."""
    result = cli("up", photo, "--size", "2304", "--upsample", "latent", "--dry-run", "--json")
    assert result.exit_code == 0, result.stderr
    assert [s["upsample"] for s in json.loads(result.stdout)["stages"]][1:] == ["latent"]


def test_up_without_a_size_names_every_way_to_give_one(photo):
    assert_usage_error(cli("up", photo, "--dry-run"), "--size, --scale, --width/--height or "
                       "--print-size", "preset")


def test_a_multi_frame_input_says_only_its_first_is_upscaled(tmp_path, asked):
    """An animated WebP or a multi-page TIFF gave its first frame without a word."""
    frames = [Image.new("RGB", (64, 64), c) for c in ("red", "green", "blue")]
    frames[0].save(tmp_path / "anim.webp", save_all=True, append_images=frames[1:])
    frames[0].save(tmp_path / "pages.tif", save_all=True, append_images=frames[1:])
    for name, said in (("anim.webp", "anim.webp has 3 frames; hires upscales the first"),
                       ("pages.tif", "pages.tif has 3 pages; hires upscales the first")):
        result = cli("up", tmp_path / name, "--model", "tiny", "--scale", "2", "--steps", "1",
                     "-o", tmp_path / f"{name}.png")
        assert result.exit_code == 0 and said in result.stderr, result.stderr


def test_a_size_of_another_shape_says_what_it_cuts_off(photo, tmp_path, asked):
    """--width/--height of another shape keep the photo's centre: that went unsaid."""
    args = ("up", photo, "--model", "tiny", "--steps", "1", "--json")
    result = cli(*args, "--width", "288", "--height", "128", "-o", tmp_path / "wide.png")
    assert result.exit_code == 0, result.stderr
    said = ("chelsea.jpg is 144x96, another shape than the 288x128 result: its centre is "
            "upscaled, 144x64 px of it (a size of 288 keeps all of it: 288x192)")
    assert result.stderr.count(said) == 1
    assert said in json.loads(result.stdout)["warnings"]
    dry = cli(*args, "--width", "288", "--height", "128", "--dry-run")  # before any work
    assert dry.exit_code == 0 and dry.stderr.count(said) == 1, dry.stderr
    jobs = tmp_path / "jobs.jsonl"  # a batch's dry run: in the job's warnings too
    jobs.write_text(json.dumps({"image": str(photo), "width": 288, "height": 128}) + "\n")
    dry = cli("batch", jobs, "--model", "tiny", "--dry-run", "--json", "-o", tmp_path / "b")
    assert dry.exit_code == 0, dry.stderr
    assert json.loads(dry.stdout.splitlines()[0])["warnings"] == [said]
    assert f"warning: job 0: {said}" in dry.stderr
    kept = cli(*args, "--size", "288", "-o", tmp_path / "kept.png")
    assert kept.exit_code == 0 and "another shape" not in kept.stderr, kept.stderr


@pytest.mark.parametrize("content", [b"", b"not an image", "truncated"])
def test_bad_inputs_exit_2_with_one_line_and_write_nothing(photo, tmp_path, content):
    bad = tmp_path / "bad.png"
    bad.write_bytes(photo.read_bytes()[:200] if content == "truncated" else content)
    out = tmp_path / "out.png"
    proc = run_hires("up", str(bad), "--scale", "2", "--model", "tiny", "-o", str(out))
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and str(bad) in proc.stderr
    assert not out.exists() and not list(tmp_path.glob(".*.part"))


def test_a_folder_says_how_to_give_its_images(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    result = cli("up", tmp_path, "--scale", "2", "--dry-run")
    assert result.exit_code == 2 and f"give {tmp_path / '*.png'}" in result.stderr


def test_a_pipe_says_to_save_it_first_without_waiting_on_it(tmp_path):
    os.mkfifo(tmp_path / "pipe")  # opening it would wait for a writer: it must not be opened
    result = cli("up", tmp_path / "pipe", "--scale", "2", "--dry-run")
    assert_usage_error(result, "pipe: not a file (a pipe?)", "save it to a file first")


def test_size_options_are_checked(photo):
    for args in (["--scale", "2", "--size", "1024"], ["--scale", "0.5"], []):
        result = cli("up", photo, *args, "--dry-run")
        assert result.exit_code == 2, args


def test_a_batch_job_with_an_image_is_an_upscale(photo, tmp_path, asked):
    cat = tmp_path / "cat.jpg"
    cat.write_bytes(photo.read_bytes())
    jobs = tmp_path / "jobs.toml"
    jobs.write_text(f'''
[defaults]
model = "tiny"
steps = 4

[[job]]
image = "{cat}"
width = 288
height = 192
strength = 0.3
seed = 1
output = "cat.png"

[[job]]
image = "{cat}"
scale = 1
steps = 1
output = "cat-1x.png"
''', encoding="utf-8")
    result = cli("batch", jobs, "-o", tmp_path / "out", "--json")
    assert result.exit_code == 0, result.stderr
    record, _ = json_lines(result.stdout)
    assert record["image"] == str(cat) and record["stages"][0]["psnr"] > 5
    # A batch job says what `hires up` says of the same image: its plan and each stage's PSNR.
    assert f"job 0 -> {tmp_path / 'out' / 'cat.png'}: seed 1, 1 stage(s), 288x192" \
        in result.stderr
    assert "  stage 0 (from the input): 288x192" in result.stderr
    assert "dB PSNR against the input" in result.stderr
    with Image.open(tmp_path / "out" / "cat.png") as im:
        assert im.size == (288, 192)
    assert "skipped" in cli("batch", jobs, "-o", tmp_path / "out").stderr
    # The input edited under the same name: its upscale is made again, the old one kept.
    Image.open(photo).transpose(Image.FLIP_LEFT_RIGHT).save(cat)
    again = cli("batch", jobs, "-o", tmp_path / "out")
    assert again.exit_code == 0, again.stderr
    assert f"{cat} changed since cat.png was made; the old image is kept as cat." in again.stderr
    assert "1 more to make: ~" in again.stderr  # the second job counts as one to make again
    assert len(list((tmp_path / "out").glob("cat.*png"))) == 2


def test_several_inputs_load_the_model_once_and_keep_their_names(photo, tmp_path, asked):
    second = tmp_path / "my coffee.png"
    Image.open(photo).resize((96, 64)).save(second)
    out = tmp_path / "out"
    result = cli("up", photo, second, "--scale", "2", "--model", "tiny", "--steps", "1",
                 "--seed", "4", "-o", f"{out}/", "--json")
    assert result.exit_code == 0, result.stderr
    records = json_lines(result.stdout)
    assert [(r["image"], r["width"], r["height"], r["seed"]) for r in records] == [
        (str(photo), 288, 192, 4), (str(second), 192, 128, 4)]
    assert sorted(p.name for p in out.iterdir()) == [
        "hires_192x128_s4_my-coffee.png", "hires_288x192_s4_chelsea.png"]
    assert result.stderr.count("running on the CPU") == 1  # one load for both
    assert result.stderr.count("1 more to make: ~") == 1  # the time the second takes
    # Paths on stdin, a template with the input's name; a broken input stops all before work.
    plans = cli("up", "-", "--scale", "2", "--dry-run", input=f"{photo}\n# skipped\n{second}\n")
    assert [line.split(":")[0] for line in plans.stdout.splitlines()
            if not line.startswith(("stage", "total", "settings"))] == ["288x192", "192x128"]
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    stopped = cli("up", photo, bad, "--scale", "2", "--model", "tiny", "-o",
                  f"{tmp_path}/{{name}}_2x.png")
    assert stopped.exit_code == 2 and "bad.png" in stopped.stderr
    assert not (tmp_path / "chelsea_2x.png").exists()


def test_an_upscale_preview_is_its_first_stage_with_its_psnr(photo, tmp_path, asked):
    result = cli("up", photo, "--model", "tiny", "--scale", "4", "--steps", "2", "--seed", "2",
                 "--preview", "-o", f"{tmp_path}/", "--json")
    assert result.exit_code == 0, result.stderr
    (record,) = json_lines(result.stdout)
    assert record["path"] == str(tmp_path / "hires_576x384_s2_chelsea.stage0.png")
    assert record["stage"] == 0 and len(record["stages"]) == 1
    assert record["width"] < 576 and record["stages"][0]["psnr"] > 5
    assert "dB PSNR against the input" in result.stderr


def test_plan_and_dry_run_from_an_upscaled_image_plan_an_upscale(tmp_path):
    """They planned the record as a generation (a base stage at strength 1), not the upscale
    that `gen --from` runs: its stages start from the input image's size."""
    source, out = tmp_path / "in.png", tmp_path / "out.png"
    Image.new("RGB", (96, 64), "gray").save(source)
    made = cli("up", str(source), "--scale", "2", "--model", "tiny", "--steps", "2", "-o", out)
    assert made.exit_code == 0, made.stderr
    for args in (("plan", "--from", out), ("gen", "--dry-run", "--from", out, "-o",
                                           tmp_path / "again.png")):
        result = cli(*args, "--device", "cpu", "--json")
        assert result.exit_code == 0, result.stderr
        stages = json.loads(result.stdout.splitlines()[-1])["stages"]
        assert [(s["width"], s["height"], s["strength"]) for s in stages] == [(192, 128, 0.3)]
    # Its input changed since: refused as the run refuses it (both planned it, exit 0; found
    # by QA)
    Image.new("RGB", (96, 64), "white").save(source)
    for args in (("plan", "--from", out), ("gen", "--dry-run", "--from", out, "-o",
                                           tmp_path / "again.png")):
        refused = cli(*args, "--device", "cpu")
        assert refused.exit_code == 2 and refused.stdout == ""
        assert refused.stderr.splitlines()[-1].endswith(
            "in.png has changed since this job ran (its sha256 differs); restore the original, "
            "or upscale the new file with hires up"), refused.stderr


def test_a_transparent_input_too_large_for_a_tiff_is_refused_before_the_run(tmp_path,
                                                                             monkeypatch):
    """The output keeps the input's alpha: a 4th channel. 32768 px square fits a TIFF's 4 GB
    as RGB, not as RGBA; this was found only at the save, after the whole run."""
    from hires import cli_runs

    def no_run(*args, **kwargs):  # were the check gone, no 32K job on this CPU
        raise AssertionError("the model loaded: the check came too late")

    monkeypatch.setattr(cli_runs, "load_model", no_run)
    see_through, opaque, rgb = (tmp_path / n for n in ("a.png", "opaque.png", "rgb.png"))
    Image.new("RGBA", (64, 64), (9, 9, 9, 128)).save(see_through)
    Image.new("RGBA", (64, 64), (9, 9, 9, 255)).save(opaque)  # its alpha carries nothing
    Image.new("RGB", (64, 64)).save(rgb)
    for args in ((), ("--dry-run",)):
        refused = cli("up", str(see_through), "--size", "32768", "--model", "tiny",
                      "-o", tmp_path / "big.tif", *args)
        assert_usage_error(refused, "with transparency does not fit a TIFF's 4 GB; use .png")
    for fine in (opaque, rgb):
        result = cli("up", str(fine), "--size", "32768", "--model", "tiny", "--dry-run",
                     "-o", tmp_path / "big.tif")
        assert result.exit_code == 0, result.stderr


def test_an_upscales_stages_are_labelled_by_their_scale_over_the_first(tmp_path):
    # They showed the global pass's dilation against SDXL's 1024 px: x1, x2, x3 here.
    source = tmp_path / "in.png"
    Image.new("RGB", (300, 200)).save(source)
    result = cli("up", str(source), "--size", "4096", "--dry-run", "-o", tmp_path / "o.png")
    assert result.exit_code == 0, result.stderr
    labels = [line.split(":")[0] for line in result.stdout.splitlines()
              if line.startswith("stage ")]
    assert labels == ["stage 0 (from the input)", "stage 1 (x2)", "stage 2 (x3.41)"]


def test_every_way_to_upscale_uses_ups_strength_unless_one_is_set(photo, tmp_path):
    """`up`, `up --preset` and a batch job with an `image` all default to 0.3, not gen's 0.32
    (a batch upscale once took 0.32 and made a different image than `hires up`)."""
    def first_strength(result):  # each job's first re-noised stage (a gen's base is 1.0)
        assert result.exit_code == 0, result.stderr
        return [max(s["strength"] for s in json.loads(line)["stages"] if s["strength"] < 1)
                for line in result.stdout.splitlines()]

    for preset in ((), ("--preset", "4k"), ("--preset", "draft")):
        up = cli("up", photo, "--scale", "4", *preset, "--dry-run", "--json", "--device", "cpu",
                 "--vram", "64")
        assert first_strength(up) == [0.3], preset
    assert first_strength(cli("up", photo, "--scale", "4", "--strength", "0.5", "--dry-run",
                              "--json", "--device", "cpu")) == [0.5]
    jobs = tmp_path / "jobs.toml"
    jobs.write_text(f'[[job]]\nimage = "{photo}"\nscale = 4\n\n'
                    f'[[job]]\nimage = "{photo}"\nscale = 4\nstrength = 0.4\n\n'
                    '[[job]]\nprompt = "a fox"\nsize = 1024\n', encoding="utf-8")
    from hires.batch import read_batch

    assert [item.job.strength for item in read_batch(jobs)] == [0.3, 0.4, 0.32]


def test_from_an_upscale_made_elsewhere_says_where_to_run_it(tmp_path, monkeypatch):
    """The record keeps the input's path as typed; from another folder it names none here."""
    monkeypatch.chdir(tmp_path)
    Image.new("RGB", (96, 64), "gray").save("in.png")
    made = cli("up", "in.png", "--scale", "2", "--model", "tiny", "--steps", "1", "-q",
               "-o", "o/up.png")
    assert made.exit_code == 0, made.stderr
    assert cli("plan", "--from", "o/up.png", "--device", "cpu").exit_code == 0
    monkeypatch.chdir(tmp_path / "o")
    for args in (("plan", "--from", "up.png"), ("gen", "--from", "up.png", "-o", "again.png")):
        assert_usage_error(cli(*args), "made from in.png", "run this command in that folder")
    assert not (tmp_path / "o" / "again.png").exists()


def _as_older_hires_made_it(stage0) -> None:
    """The stage image at `stage0` at 64 px a side, its record kept."""
    from PIL import PngImagePlugin

    with Image.open(stage0) as image:
        assert image.size == (128, 128)
        info = PngImagePlugin.PngInfo()
        for key, value in image.info.items():
            if isinstance(value, str):
                info.add_text(key, value)
        image.resize((64, 64)).save(stage0, pnginfo=info)


def test_a_preview_planned_by_an_older_hires_is_not_taken_as_made(tmp_path):
    """A 32 px input's stage 0 was 64 px before its first stage held a quarter of the native
    area; that preview, of the same settings, was kept as made ("made already by these
    settings") where this hires makes a 128 px one (QA 195)."""
    Image.new("RGB", (32, 32), "teal").save(tmp_path / "in.png")
    settings = ("--size", "512", "--model", "tiny", "--steps", "1", "--seed", "1", "--preview")
    args = ("up", tmp_path / "in.png", *settings, "-o", tmp_path / "p.png")
    assert cli(*args).exit_code == 0
    stage0 = tmp_path / "p.stage0.png"
    _as_older_hires_made_it(stage0)
    assert_usage_error(cli(*args), f"{stage0} holds this job's stage 0 image at 64x64, where "
                       "this hires plans stage 0 at 128x128 (an older hires'); pass --overwrite")
    assert cli(*args, "--overwrite").exit_code == 0
    with Image.open(stage0) as image:
        assert image.size == (128, 128)
    jobs = tmp_path / "j.toml"  # a batch's: made again, the older one kept aside
    jobs.write_text(f'[[job]]\nimage = "{tmp_path / "in.png"}"\nsize = 512\nmodel = "tiny"\n'
                    'steps = 1\nseed = 1\n')
    batch = ("batch", jobs, "--preview", "-o", tmp_path / "out")
    assert cli(*batch).exit_code == 0
    (made,) = (tmp_path / "out").glob("*.stage0.png")
    assert [row["status"] for row in json_lines(cli(*batch, "--dry-run", "--json").stdout)] == [
        "made"]
    _as_older_hires_made_it(made)
    rows = json_lines(cli(*batch, "--dry-run", "--json").stdout)
    assert [row["status"] for row in rows] == ["to make"]
    again = cli(*batch)
    assert again.exit_code == 0 and "image at 64x64, where this hires plans stage 0 at " \
        "128x128; it is kept as" in again.stderr
