"""`hires info IMAGE`: what it reads of a file (header and metadata, never the pixels), and
what it says of files that are not as hires wrote them."""

import errno
import json

import pytest
from PIL import Image, ImageFile, PngImagePlugin
from safetensors.torch import save_file

from hires import resume
from hires.output import job_values_from_image, read_metadata, save_image
from tests.helpers_cli import assert_usage_error, cli

A1111 = ("a cat on a mat\nNegative prompt: ugly\nSteps: 20, Sampler: Euler a, CFG scale: 7, "
         "Seed: 5, Size: 512x512, Model: sdxl")


def made(path, *args: str) -> None:
    """An image made by `hires gen` with the tiny model (256 px, one step)."""
    result = cli("gen", "a fox", "--model", "tiny", "--size", "256", "--steps", "1",
                 "--seed", "3", "-o", path, "-q", *args)
    assert result.exit_code == 0, result.stderr


def no_decoding(monkeypatch) -> None:
    def load(self):
        raise AssertionError("hires info decoded the pixels")

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)


def test_info_reads_no_pixels_and_takes_a_cut_short_png(tmp_path, asked, monkeypatch):
    """A PNG's getexif() decoded it all: 25 s and 6.5 GB for a 40000x40000 header."""
    out = tmp_path / "fox.png"
    made(out)
    cut = tmp_path / "cut.png"
    cut.write_bytes(out.read_bytes()[:out.stat().st_size * 2 // 3])  # its text chunks kept
    no_decoding(monkeypatch)
    for path in (out, cut):
        shown = cli("info", path)
        assert shown.exit_code == 0, shown.stderr
        assert "prompt 'a fox'" in shown.stdout and "size 256x256, seed 3" in shown.stdout
    assert job_values_from_image(cut)["seed"] == 3


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".webp", ".tiff"])
def test_from_reads_every_format_without_its_pixels(tmp_path, monkeypatch, suffix):
    record = {"hires": "0.1.0", "job": {"prompt": "a boat", "seed": 9, "width": 32,
                                        "height": 16}, "result": {"width": 32, "height": 16}}
    path = save_image(Image.new("RGB", (32, 16), "teal"), tmp_path / f"b{suffix}",
                      metadata=record)
    no_decoding(monkeypatch)
    assert job_values_from_image(path)["seed"] == 9
    assert read_metadata(path)["size"] == (32, 16)


def hires_png(path, record: str | None = None, parameters: str | None = None) -> None:
    info = PngImagePlugin.PngInfo()
    if parameters is not None:
        info.add_itxt("parameters", parameters)
    if record is not None:
        info.add_itxt("hires", record)
    Image.new("RGB", (8, 8)).save(path, pnginfo=info)


def test_a_malformed_record_is_said_so_and_the_other_files_still_shown(tmp_path, asked):
    good = tmp_path / "good.png"
    made(good)
    shaped = tmp_path / "shaped.png"
    hires_png(shaped, json.dumps({"job": {"prompt": 5, "width": "x"},
                                  "result": {"stages": [1, 2]}}))
    stages = tmp_path / "stages.png"
    hires_png(stages, json.dumps({"job": {"prompt": "x"}, "result": {"stages": [1, 2]}}))
    cut = tmp_path / "cut.png"
    hires_png(cut, json.dumps({"job": {"prompt": "x"}})[:12], parameters=A1111)
    for path in (shaped, stages, cut):
        assert_usage_error(cli("info", path), f"{path}: its hires metadata is malformed")
    shown = cli("info", shaped, good)
    assert shown.exit_code == 2 and "prompt 'a fox'" in shown.stdout
    assert "result.stages" in cli("info", stages).stderr
    assert "job.prompt is 5, not text" in cli("info", shaped).stderr


def test_info_s_advice_on_a_damaged_record_is_what_from_does(tmp_path, asked):
    """A damaged `result` sent the user off --from, which reads the job alone and still ran;
    a job's steps of 2.0 passed info ("steps 2.0"), which --from refuses."""
    good = tmp_path / "good.png"
    made(good)
    with Image.open(good) as im:
        record = json.loads(im.info["hires"])
    stage = {**record["result"]["stages"][0], "steps": 1.0}  # shown as "1.0 step"
    nan = {**record["result"]["stages"][0], "psnr": float("nan")}  # info --json wrote NaN
    for name, part, key, value in (("result", "result", "stage", "x"),
                                   ("stages", "result", "stages", [stage]),
                                   ("nan", "result", "stages", [nan]),
                                   ("steps", "job", "steps", 2.0)):
        damaged = tmp_path / f"{name}.png"
        hires_png(damaged, json.dumps({**record, part: {**record[part], key: value}}))
        shown = cli("info", damaged)
        assert_usage_error(shown, "metadata is malformed")
        repeat = cli("gen", "--from", damaged, "--dry-run", "-o", tmp_path / "again.png")
        if part == "result":
            assert "`hires gen --from` still repeats the job" in shown.stderr
            assert name != "stages" or "result.stages[0].steps is 1.0, not a whole" in \
                shown.stderr
            assert repeat.exit_code == 0, repeat.stderr
        else:
            assert "job.steps is 2.0, not a whole number" in shown.stderr
            assert "not --from" in shown.stderr
            assert repeat.exit_code == 2 and "must be a whole number" in repeat.stderr


@pytest.mark.parametrize(("key", "value", "said"), [
    ("steps", -5, "steps must be a whole number from 1 to 1000, got -5"),
    ("guidance", 1e300, "guidance must be from 0 to 100, got 1e+300"),
    ("width", 10**9, "width must be at most 32768, got 1000000000")])
def test_info_shows_a_record_that_from_refuses_and_says_so(tmp_path, asked, key, value, said):
    """A record whole in shape but with steps -5 was shown as written ("steps -5"), and only
    `hires gen --from` then refused it: info still shows it, and warns first."""
    good = tmp_path / "good.png"
    made(good)
    with Image.open(good) as im:
        record = json.loads(im.info["hires"])
    odd = tmp_path / "odd.png"
    hires_png(odd, json.dumps({**record, "job": {**record["job"], key: value}}))
    for args in ((), ("--json",)):
        shown = cli("info", odd, *args)
        assert shown.exit_code == 0 and shown.stdout, shown.stderr
        assert shown.stderr == f"warning: {odd}: `hires gen --from` refuses its recorded " \
                               f"job: {said}\n"
    repeat = cli("gen", "--from", odd, "--dry-run", "-o", tmp_path / "again.png")
    assert repeat.exit_code == 2, repeat.stderr
    assert cli("info", good).stderr == ""  # a record --from takes: no word


def test_info_reads_a_record_as_from_does(tmp_path, asked):
    """info warned of a record --from takes (size keys in place of the sides), not of one it
    refuses (allow_pickle true, an A1111 text with 0 steps), and said a record's keys as
    flags ("--model is empty")."""
    good = tmp_path / "good.png"
    made(good)
    with Image.open(good) as im:
        record = json.loads(im.info["hires"])
    job = {k: v for k, v in record["job"].items() if k not in ("width", "height")}
    cases = {"sized": ({**job, "size": 256}, None),
             "pickle": ({**record["job"], "allow_pickle": True}, "'allow_pickle' in the record "
                        "is refused: only the --allow-pickle flag"),
             "model": ({**record["job"], "model": ""}, "refuses its recorded job: 'model' is "
                       "empty"),
             "tile": ({**record["job"], "vae_tile": 64}, "it was made with VAE tiles of 64 px, "
                      "which hires no longer takes (seams show under 256); pass --vae-tile auto")}
    for name, (values, said) in cases.items():
        path = tmp_path / f"{name}.png"
        hires_png(path, json.dumps({**record, "job": values}))
        shown = cli("info", path)
        repeat = cli("gen", "--from", path, "--dry-run", "-o", tmp_path / "again.png")
        assert shown.exit_code == 0, shown.stderr
        if said is None:
            assert shown.stderr == "" and repeat.exit_code == 0, (shown.stderr, repeat.stderr)
        else:
            assert said in shown.stderr and len(shown.stderr.splitlines()) == 1, shown.stderr
            assert repeat.exit_code == 2, repeat.stderr
    a1111 = tmp_path / "a1111.png"
    hires_png(a1111, parameters="a cat\nSteps: 0, Sampler: Euler, CFG scale: 7, Seed: 5, "
                                "Size: 256x256")
    for args in ((), ("--json",)):
        shown = cli("info", a1111, *args)
        assert shown.exit_code == 0 and shown.stderr == (
            f"warning: {a1111}: `hires gen --from` refuses its parameters: steps must be a "
            "whole number from 1 to 1000, got 0\n"), shown.stderr


def test_the_size_is_the_files_and_a_resize_is_said(tmp_path, asked):
    out = tmp_path / "fox.png"
    made(out)
    with Image.open(out) as im:
        info = PngImagePlugin.PngInfo()
        for key in ("parameters", "hires"):
            info.add_itxt(key, im.info[key])
        im.resize((100, 80)).save(tmp_path / "small.png", pnginfo=info)
    shown = cli("info", tmp_path / "small.png").stdout
    assert "size 100x80 (recorded 256x256: the file was changed since), seed 3" in shown
    assert "size 256x256, seed 3" in cli("info", out).stdout
    record = json.loads(cli("info", tmp_path / "small.png", "--json").stdout)
    assert (record["image"]["width"], record["image"]["height"]) == (100, 80)


def test_json_names_each_file_that_failed(tmp_path, asked):
    good, bad = tmp_path / "a.png", tmp_path / "bad.png"
    made(good)
    bad.write_bytes(b"not an image")
    result = cli("info", "--json", good, tmp_path / "missing.png", bad)
    assert result.exit_code == 2
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["file"] for line in lines] == [str(good), str(tmp_path / "missing.png"),
                                                str(bad)]
    assert "error" not in lines[0] and lines[0]["job"]["seed"] == 3
    assert "no such image" in lines[1]["error"] and "cannot read" in lines[2]["error"]
    assert "no such image" in result.stderr and "cannot read" in result.stderr


def test_checkpoints_are_known_by_content_and_missing_ones_by_name(tmp_path, asked,
                                                                  monkeypatch):
    import hires.png

    out = tmp_path / "fox.png"

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(hires.png, "write_png", full)
    stopped = cli("gen", "a fox", "--model", "tiny", "--size", "512", "--steps", "1",
                  "--seed", "5", "-o", out)
    assert stopped.exit_code == 1 and resume.path_for(out).is_file(), stopped.stderr
    renamed = tmp_path / "x.safetensors"
    resume.path_for(out).rename(renamed)
    shown = cli("info", renamed)
    assert shown.exit_code == 0, shown.stderr
    assert "checkpoint (renamed" in shown.stdout and "seed 5" in shown.stdout
    assert json.loads(cli("info", renamed, "--json").stdout)["checkpoint"] is True

    missing = tmp_path / "gone.png.resume.safetensors"
    assert_usage_error(cli("info", missing), f"no such file: {missing}")
    folder = tmp_path / "dir.png.resume.safetensors"
    folder.mkdir()
    assert_usage_error(cli("info", folder), "is a folder, not a checkpoint")
    import torch

    weights = tmp_path / "lora.safetensors"
    save_file({"w": torch.zeros(2)}, str(weights), metadata={"name": "a lora"})
    assert_usage_error(cli("info", weights), "a safetensors file but not a hires checkpoint")
    named = tmp_path / "w.png.resume.safetensors"
    named.write_bytes(weights.read_bytes())
    assert_usage_error(cli("info", named), "a safetensors file but not a hires checkpoint")


@pytest.mark.parametrize(("hires_fix", "size"), [
    ("Hires upscale: 2, Hires steps: 10, Hires upscaler: Latent", (640, 400)),
    ("Hires upscale: 1.5", (480, 304)),  # 300, then the nearest multiple of 8
    ("Hires resize: 1024x768, Hires upscaler: ESRGAN_4x", (1024, 768)),
    ("Hires upscale: 2, Hires resize: 1024x0", (1024, 640))])  # A1111's 0 keeps the aspect
def test_an_a1111_hires_fix_is_read_at_its_final_size(hires_fix, size, tmp_path, asked):
    """A1111's Size is a hires fix's first pass: --from made the image at half its size, and
    nothing said so."""
    path = tmp_path / "fix.png"
    hires_png(path, parameters="a cat\nSteps: 20, Sampler: Euler, CFG scale: 7, Seed: 5, "
                               f"Size: 320x200, Denoising strength: 0.4, {hires_fix}")
    values = job_values_from_image(path)
    assert (values["width"], values["height"], values["strength"]) == (*size, 0.4)
    shown = json.loads(cli("info", path, "--json").stdout)
    assert (shown["a1111"]["width"], shown["a1111"]["height"]) == size
    note = (f"A1111's hires fix (320x200 first) is read as a {size[0]}x{size[1]} job, which "
            "hires makes in its own stages")
    assert any(note in n for n in shown["notes"]), shown["notes"]
    dry = cli("gen", "--from", path, "--model", "tiny", "--dry-run", "-o", tmp_path / "o.png")
    assert dry.exit_code == 0, dry.stderr
    assert dry.stdout.startswith(f"{size[0]}x{size[1]}: ") and note in dry.stderr


@pytest.mark.parametrize("scale", ["inf", "1e400", "nan", "x"])
def test_an_a1111_hires_fix_of_no_number_leaves_the_size(scale, tmp_path):
    """'Hires upscale: inf' was a raw OverflowError in info and --from."""
    path = tmp_path / "fix.png"
    hires_png(path, parameters=f"a cat\nSteps: 20, Size: 320x200, Hires upscale: {scale}")
    assert (job_values_from_image(path)["width"], job_values_from_image(path)["height"]) == (
        320, 200)
    assert cli("info", path).exit_code == 0


def test_a1111_parameters_are_shown_as_from_takes_them(tmp_path):
    path = tmp_path / "cat.png"
    hires_png(path, parameters=A1111)
    shown = cli("info", path)
    assert shown.exit_code == 0, shown.stderr
    assert "A1111 parameters" in shown.stdout and "prompt 'a cat on a mat'" in shown.stdout
    assert "negative 'ugly'" in shown.stdout and "steps 20" in shown.stdout
    record = json.loads(cli("info", path, "--json").stdout)
    assert record["a1111"] == job_values_from_image(path)
    # the file's facts where a hires image's are
    assert record["image"] == {"format": "PNG", "width": 8, "height": 8, "dpi": None}


def test_an_upscale_without_prompt_and_a_negative_prompt(tmp_path, asked, small):
    up = tmp_path / "up.png"
    result = cli("up", small, "--model", "tiny", "--scale", "2", "--steps", "1", "-o", up, "-q")
    assert result.exit_code == 0, result.stderr
    shown = cli("info", up).stdout
    assert "no prompt" in shown and "prompt ''" not in shown
    neg = tmp_path / "neg.png"
    made(neg, "--negative", "blurry, dark")
    assert "negative 'blurry, dark'" in cli("info", neg).stdout
    assert "negative" not in cli("info", up).stdout


def test_the_dpi_is_what_the_file_holds(tmp_path, asked):
    jpg, png = tmp_path / "a.jpg", tmp_path / "a.png"
    made(jpg, "--dpi", "72.5")
    made(png, "--dpi", "72.5")
    with Image.open(jpg) as im:
        held = im.info["dpi"][0]
    assert held != 72.5  # JPEG keeps whole numbers
    shown = cli("info", jpg).stdout
    assert f"at {held:g} dpi (as the file holds it; 72.5 dpi was asked for)" in shown
    assert "at 72.5 dpi\n" in cli("info", png).stdout  # PNG's 72.49: the same to a printer


def test_a_file_whose_sides_hold_different_dpi_prints_at_each(tmp_path, asked):
    """A record's print size took the horizontal dpi for both sides (QA 188)."""
    png, odd = tmp_path / "a.png", tmp_path / "odd.png"
    made(png, "--dpi", "300")
    with Image.open(png) as im:
        info = PngImagePlugin.PngInfo()
        for key in ("hires", "parameters"):
            info.add_text(key, im.info[key])
        im.save(odd, pnginfo=info, dpi=(300, 150))
        width, height = im.size
    shown = cli("info", odd).stdout
    assert (f"print size {width / 300 * 2.54:.1f} x {height / 150 * 2.54:.1f} cm, "
            f"{width / 300:.1f} x {height / 150:.1f} in at 300x150 dpi "
            "(as the file holds it; 300 dpi was asked for)") in shown
    facts = json.loads(cli("info", odd, "--json").stdout)["image"]
    assert facts["dpi"] == pytest.approx(300, abs=0.01)
    assert facts["dpi_vertical"] == pytest.approx(150, abs=0.01)
    assert "dpi_vertical" not in json.loads(cli("info", png, "--json").stdout)["image"]
    Image.open(odd).save(odd, dpi=(300, 300.04))  # to a hundredth, as the text's tenth (QA 191)
    facts = json.loads(cli("info", odd, "--json").stdout)["image"]
    assert facts["dpi_vertical"] == round(facts["dpi_vertical"], 2) == 300.05


def test_an_empty_path_is_named():
    assert_usage_error(cli("info", ""), "an empty path was given")
    # and --from's: it read '' as the folder '.' ("'. is a folder"; found by QA)
    for command in (("gen", "--dry-run"), ("plan",)):
        assert_usage_error(cli(*command, "--from", ""), "--from is empty (an unset variable?)")


def test_a_path_typed_otherwise_is_said_as_typed_not_inside_words(tmp_path, monkeypatch):
    """'g/' for the folder 'g' made 'not an imag/e; g/ive an imag/e file' (found by QA)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "g").mkdir()
    (tmp_path / "e").write_text("x")
    assert_usage_error(cli("info", "g/"), "error: g/ is a folder, not an image; it holds no "
                       "PNG, JPEG, WebP or TIFF file")
    Image.new("RGB", (8, 8)).save(tmp_path / "g" / "a.png")  # its images, as `up` says them
    assert_usage_error(cli("info", "g/"), "error: g/ is a folder, not an image; for every image "
                       "in it, give g/*.png")
    assert_usage_error(cli("info", "./e"), "error: cannot read ./e as an image: not an image "
                       "file; expected PNG")
    (tmp_path / "image").write_text("x")  # a name that is a word of the message
    assert_usage_error(cli("info", "./image"), "error: cannot read ./image as an image: "
                       "not an image file; expected PNG")


def test_info_says_an_empty_or_unknown_file_as_up_does(tmp_path):
    """info said Pillow's 'cannot identify image file', up 'an empty file' (QA 183)."""
    (tmp_path / "zero.png").write_bytes(b"")
    (tmp_path / "photo.heic").write_bytes(b"\0\0\0\x18ftypheic" + bytes(16))
    for name, why in (("zero.png", "an empty file; expected PNG, JPEG, WebP or TIFF"),
                      ("photo.heic", "HEIC images are not accepted; convert it to PNG, "
                                     "JPEG, WebP or TIFF")):
        path = tmp_path / name
        assert_usage_error(cli("info", path), f"cannot read {path} as an image: {why}")
        assert_usage_error(cli("up", path, "--model", "tiny", "--dry-run"), f"{path}: {why}")
        row = json.loads(cli("info", path, "--json").stdout)
        assert row["error"] == f"cannot read {path} as an image: {why}"


def test_a_bad_recorded_value_is_told_the_flag_that_replaces_it(tmp_path):
    """'steps must be ..., got -5 (in metadata of a.png)' said nothing to do (QA 189)."""
    path, bad = tmp_path / "a.png", tmp_path / "bad.png"
    made(path)

    def recorded(**values) -> None:
        with Image.open(path) as im:
            record = json.loads(im.info["hires"])
            record["job"].update(values)
            info = PngImagePlugin.PngInfo()
            info.add_text("hires", json.dumps(record))
            im.save(bad, pnginfo=info)

    recorded(steps=-5)
    assert_usage_error(cli("gen", "--from", bad, "--dry-run", "-q"), f"got -5 (in metadata of "
                       f"{bad}); give --steps to replace the recorded value")
    assert cli("gen", "--from", bad, "--steps", "2", "--dry-run", "-q").exit_code == 0
    recorded(sigma=-1)  # the method's own setting: no flag sets it, and none is offered
    refused = cli("gen", "--from", bad, "--dry-run", "-q")
    assert_usage_error(refused, "sigma")
    assert "give --" not in refused.stderr


def _with_record(record: dict) -> PngImagePlugin.PngInfo:
    info = PngImagePlugin.PngInfo()
    info.add_text("hires", json.dumps(record))
    return info


def test_a_recorded_linfusion_checkpoint_is_said_as_recorded_before_its_error(tmp_path):
    """A record's LinFusion that is not here was refused naming --linfusion, a flag never
    typed, with no word that the record gave it (as --from says of its model and VAE)."""
    path, bad = tmp_path / "a.png", tmp_path / "bad.png"
    made(path)
    with Image.open(path) as im:
        record = json.loads(im.info["hires"])
        record["job"]["linfusion"] = "someone/no-such-linfusion"
        im.save(bad, pnginfo=_with_record(record))
    refused = cli("gen", "--from", bad, "--dry-run")
    assert refused.exit_code != 0
    said = refused.stderr.splitlines()
    assert (f"--from {bad}: LinFusion someone/no-such-linfusion (as recorded; --linfusion "
            "picks another)") in said
    assert said[-1].startswith("error: LinFusion checkpoint someone/no-such-linfusion ")
    plain = cli("gen", "--from", path, "--dry-run")  # the default's: no word
    assert plain.exit_code == 0 and "LinFusion" not in plain.stderr
    with Image.open(path) as im:  # "None" is no switch to the loader: a checkpoint's name
        record["job"]["linfusion"] = "None"
        im.save(bad, pnginfo=_with_record(record))
    assert "LinFusion None (as recorded; --linfusion picks another)" in cli(
        "gen", "--from", bad, "--dry-run").stderr


def test_a_record_of_a_newer_hires_says_to_upgrade(tmp_path):
    """An unknown key of a newer version's record said only 'unknown key' (found by QA)."""
    path, newer = tmp_path / "a.png", tmp_path / "newer.png"
    made(path)
    with Image.open(path) as im:
        record = json.loads(im.info["hires"])
        record["hires"], record["job"]["new_key"] = "99.0.0", 1
        info = PngImagePlugin.PngInfo()
        info.add_text("hires", json.dumps(record))
        im.save(newer, pnginfo=info)
    upgrade = "it was made by hires 99.0.0, newer than this 0.1.0: upgrade hires"
    assert_usage_error(cli("gen", "--from", newer, "--dry-run", "-q"), "unknown key 'new_key'",
                       upgrade)
    assert upgrade in cli("info", newer).stderr
    record["job"].pop("new_key")  # a value only --allow-pickle may set: said so, and newer
    record["job"]["allow_pickle"] = "maybe"
    info = PngImagePlugin.PngInfo()
    info.add_text("hires", json.dumps(record))
    Image.open(path).save(newer, pnginfo=info)
    assert_usage_error(cli("gen", "--from", newer, "--dry-run", "-q"), "allow_pickle", upgrade)
    record["hires"] = "0.1.0"  # this version's own: no such words
    from hires.record import newer_note

    assert newer_note("0.1.0") == newer_note("0.0.9") == newer_note("dev") == ""
    assert newer_note("0.2") != ""


def test_info_of_a_checkpoint_says_its_model_and_addons(tiny, tmp_path):
    import torch

    from hires.job import Job
    from hires.pipeline import plan_for

    job = Job(prompt="a fox", model="tiny", width=512, height=512, steps=2, seed=5,
              lora=["style.safetensors:0.8", "ink.safetensors"], control_model="cn",
              control="edges.png", control_scale=0.7, ip_image="look.png", ip_scale=0.4)
    plan = plan_for(Job(prompt="a fox", model="tiny", width=512, height=512, steps=2), tiny)
    kept = resume.path_for(tmp_path / "fox.png")
    resume.save(kept, job, plan, 0, torch.zeros(1, 4, 32, 32), (torch.zeros(4), torch.ones(4)),
                [])
    shown = cli("info", kept)
    assert shown.exit_code == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[3:8] == [
        "model tiny, linfusion auto",
        "lora style.safetensors at 0.8", "lora ink.safetensors at 1.0",
        "controlnet cn at 0.7, image edges.png",
        "ip-adapter h94/IP-Adapter at 0.4, image look.png"]


def test_info_says_the_precisions_that_ran(tmp_path):
    """The record keeps the UNet's and the VAE's precision as they ran; info showed neither."""
    image = tmp_path / "p.png"
    made(image, "--dtype", "bf16")
    shown = cli("info", str(image))
    assert shown.exit_code == 0, shown.stderr
    (line,) = [ln for ln in shown.stdout.splitlines() if ln.startswith("model ")]
    result = json.loads(cli("info", str(image), "--json").stdout)["result"]
    assert line.endswith(f", UNet bf16, VAE {result['vae_dtype']}")


@pytest.mark.parametrize("sampler, said", [
    ("Euler a", "'Euler a' is not in hires (it has no ancestral sampler): read as euler"),
    ("UniPC", "'UniPC' is not in hires: the job's own runs")])
def test_info_says_an_a1111_sampler_that_from_would_change(sampler, said, tmp_path):
    """`--from` warned of it; `info`, showing what --from takes, said 'sampler euler' or
    nothing."""
    path = tmp_path / "a.png"
    hires_png(path, parameters=f"a cat\nSteps: 20, Sampler: {sampler}, CFG scale: 7, Seed: 1, "
                               "Size: 512x512")
    shown = cli("info", path)
    assert shown.exit_code == 0 and f"warning: {path}: A1111's sampler {said}" in shown.stderr
    as_json = json.loads(cli("info", path, "--json").stdout)
    assert len(as_json["notes"]) == 1 and said in as_json["notes"][0]


def test_info_reads_an_image_or_paths_on_stdin(tmp_path, asked, monkeypatch):
    out = tmp_path / "fox.png"
    made(out)
    as_file = json.loads(cli("info", out, "--json").stdout)
    piped = cli("info", "-", "--json", input=out.read_bytes())
    assert piped.exit_code == 0, piped.stderr
    assert json.loads(piped.stdout) == {**as_file, "file": "-"}
    assert "prompt 'a fox'" in cli("info", "-", input=out.read_bytes()).stdout
    cat = tmp_path / "cat.png"
    hires_png(cat, parameters=A1111.replace("Euler a", "DDIM"))
    a1111 = cli("info", "-", "--json", input=cat.read_bytes())
    assert json.loads(a1111.stdout)["file"] == "-" and "stdin: " in a1111.stderr
    listed = cli("info", "-", input=f"{out}\n# a comment\n{cat}\n")
    assert listed.exit_code == 0 and f"file {out}" in listed.stdout
    assert f"file {cat}" in listed.stdout
    bare = tmp_path / "bare.png"
    Image.new("RGB", (8, 8)).save(bare)
    no_record(cli("info", "-", input=bare.read_bytes()), "stdin carries no hires or A1111 "
              "metadata", "PNG 8x8, no dpi")
    assert_usage_error(cli("info", "-", input=b""), "'-' read nothing from stdin")
    assert_usage_error(cli("info", "-", out, input=out.read_bytes()), "not both")
    assert_usage_error(cli("info", "-", "-", input=out.read_bytes()),
                       "'-' is given more than once; stdin is read once")


def test_a_checkpoint_on_stdin_is_asked_for_by_path(tmp_path):
    import torch

    kept = tmp_path / "k.safetensors"
    save_file({"w": torch.zeros(2)}, str(kept), metadata={"format": resume.FORMAT})
    assert_usage_error(cli("info", "-", input=kept.read_bytes()),
                       "a checkpoint on stdin: give its path")
    weights = tmp_path / "lora.safetensors"
    save_file({"w": torch.zeros(2)}, str(weights), metadata={"name": "a lora"})
    assert_usage_error(cli("info", "-", input=weights.read_bytes()),
                       "stdin is a safetensors file but not a hires checkpoint")


@pytest.mark.parametrize("encoded", [
    lambda text: b"UNICODE\0" + text.encode("utf-16-be"),  # A1111's (piexif's)
    lambda text: b"UNICODE\0" + text.encode("utf-16-le"),  # an Intel-order file's
    lambda text: b"UNICODE\0" + text.encode("utf-16"),  # with a byte-order mark
    lambda text: b"ASCII\0\0\0" + text.encode(),
    # NUL-terminated, and a stray last byte: no NUL or U+FFFD in the last value
    lambda text: b"UNICODE\0" + (text + "\0").encode("utf-16-le"),
    lambda text: b"UNICODE\0" + text.encode("utf-16-be") + b"\0",
    lambda text: b"ASCII\0\0\0" + text.encode() + b"\0",
], ids=["be", "le", "bom", "ascii", "le-nul", "odd", "ascii-nul"])
def test_a_jpegs_a1111_comment_reads_in_either_byte_order(encoded, tmp_path):
    from hires.output import EXIF_IFD, USER_COMMENT

    exif = Image.Exif()
    exif.get_ifd(EXIF_IFD)[USER_COMMENT] = encoded(A1111)
    path = tmp_path / "cat.jpg"
    Image.new("RGB", (8, 8)).save(path, exif=exif)
    values = job_values_from_image(path)
    assert values["prompt"] == "a cat on a mat" and values["model"] == "sdxl"
    assert "prompt 'a cat on a mat'" in cli("info", path).stdout


def no_record(result, words: str, facts: str | None = None) -> None:
    """`info` on an image without a record: exit 2, one error line, its facts on stdout."""
    assert result.exit_code == 2, (result.stdout, result.stderr)
    (line,) = result.stderr.splitlines()
    assert line.startswith("error: ") and words in line, line
    assert result.stdout.count("\n") == 1 and (facts is None or result.stdout == f"{facts}\n")


def test_a_tiff_description_or_exif_comment_that_is_no_a1111_text_is_not_a_prompt(tmp_path):
    """tifffile's JSON shape was shown as an A1111 prompt, and --from would have run it."""
    import numpy as np
    import tifffile

    from hires.output import EXIF_IFD, USER_COMMENT

    tifffile.imwrite(tmp_path / "t.tif", np.zeros((16, 16), np.uint8))
    exif = Image.Exif()
    exif.get_ifd(EXIF_IFD)[USER_COMMENT] = b"ASCII\0\0\0" + b"Shot on a phone"
    Image.new("RGB", (8, 8)).save(tmp_path / "c.jpg", exif=exif)
    for path in (tmp_path / "t.tif", tmp_path / "c.jpg"):
        assert read_metadata(path)["parameters"] is None
        no_record(cli("info", path), "carries no hires or A1111 metadata")
    # --json: an image with no record is still an image, its facts said (not only an error)
    said = cli("info", tmp_path / "c.jpg", "--json")
    assert said.exit_code == 2
    assert json.loads(said.stdout)["image"] == {"format": "JPEG", "width": 8, "height": 8,
                                                "dpi": None}
    # and in words: its format, size and dpi (printed nothing but the error)
    Image.new("RGB", (600, 300)).save(tmp_path / "p.png", dpi=(300, 300))
    Image.new("RGB", (600, 300)).save(tmp_path / "q.png", dpi=(300, 150))
    Image.new("RGB", (600, 300)).save(tmp_path / "b.bmp", dpi=(96, 96))  # reads 96.0119
    Image.new("RGB", (600, 300)).save(tmp_path / "t.tif", dpi=(0.04, 0.04))  # said "0 dpi"
    Image.new("RGB", (600, 300)).save(tmp_path / "z.png", dpi=(0, 72))  # --json said 0.0
    for path, facts in ((tmp_path / "c.jpg", "JPEG 8x8, no dpi"),
                        (tmp_path / "p.png", "PNG 600x300, 300 dpi: 5.1 x 2.5 cm"),
                        (tmp_path / "q.png", "PNG 600x300, 300x150 dpi: 5.1 x 5.1 cm"),
                        (tmp_path / "b.bmp", "BMP 600x300, 96 dpi: 15.9 x 7.9 cm"),
                        (tmp_path / "t.tif", "TIFF 600x300, 0.04 dpi: 38100.0 x 19050.0 cm"),
                        (tmp_path / "z.png", "PNG 600x300, 72 dpi: 21.2 x 10.6 cm")):
        no_record(cli("info", path), "carries no hires or A1111 metadata", facts)
    said = cli("info", tmp_path / "z.png", "--json")
    assert json.loads(said.stdout)["image"]["dpi"] == pytest.approx(72, abs=0.01)
    said = json.loads(cli("info", tmp_path / "t.tif", "--json").stdout)["image"]
    assert said["dpi"] == 0.04  # as the text's, not rounded to 0.0 (QA 192)
    said = json.loads(cli("info", tmp_path / "q.png", "--json").stdout)["image"]
    assert (said["dpi"], said["dpi_vertical"]) == pytest.approx((300, 150), abs=0.01)
    tifffile.imwrite(tmp_path / "a.tif", np.zeros((16, 16), np.uint8), description=A1111)
    assert read_metadata(tmp_path / "a.tif")["parameters"] == A1111


def test_info_shows_a_records_switch_as_from_reads_it(tmp_path, asked):
    """A hand-edited karras = "false" read as on by info, off by --from (QA 187)."""
    out = tmp_path / "a.png"
    assert cli("gen", "a", "--model", "tiny", "--size", "256", "--steps", "1", "--karras",
               "-o", out).exit_code == 0
    with Image.open(out) as im:
        record, params = json.loads(im.info["hires"]), im.info["parameters"]
        shown = {}
        for value, said in (("false", "euler,"), ("yes", "euler karras,"), (True, "euler karras,")):
            record["job"]["karras"] = value
            info = PngImagePlugin.PngInfo()
            info.add_text("parameters", params)
            info.add_text("hires", json.dumps(record))
            edited = tmp_path / f"k_{value}.png"
            im.save(edited, pnginfo=info)
            shown[said] = cli("info", edited).stdout
    for said, text in shown.items():
        assert f"steps 1, {said}" in text, text


def test_from_dash_says_to_give_the_images_path(tmp_path):
    """`gen --from -` said only "no such image: -" (QA 187)."""
    for command in (("gen", "--dry-run"), ("plan",)):
        assert_usage_error(cli(*command, "--from", "-", input=b"\x89PNG"),
                           "--from takes the image's path, not '-'")
