"""`--quality` (job key `quality`): JPEG and WebP quality, 100 lossless WebP and 4:4:4 JPEG; the
default writes what hires always wrote; refused for PNG and TIFF when asked for; recorded."""

import json

import numpy as np
import pytest
from helpers_cli import assert_usage_error, cli
from PIL import Image, JpegImagePlugin

import hires
from hires import output
from hires.batch import settings_hash
from hires.job import Job, JobError

TINY = ("--model", "tiny", "--size", "128", "--steps", "2", "--seed", "3", "-q")


def gen(tmp_path, name, *args):
    result = cli("gen", "a red fox in snow", *TINY, "-o", tmp_path / name, *args)
    assert result.exit_code == 0, result.stderr
    return tmp_path / name


def pixels(path):
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def recorded(path):
    return output.read_metadata(path)["hires"]["job"]


def test_a_lower_quality_makes_a_smaller_file(tmp_path, asked):
    for ext in ("jpg", "webp"):
        low = gen(tmp_path, f"low.{ext}", "--quality", "30")
        default = gen(tmp_path, f"default.{ext}")
        high = gen(tmp_path, f"high.{ext}", "--quality", "99")
        assert low.stat().st_size < default.stat().st_size < high.stat().st_size, ext
        assert recorded(low)["quality"] == 30 and recorded(default)["quality"] is None


def test_the_default_is_what_hires_wrote_before(tmp_path, asked):
    """No --quality: quality 95, JPEG 4:2:0, lossy WebP; --quality 95 writes the same pixels."""
    png = pixels(gen(tmp_path, "a.png"))
    for ext in ("jpg", "webp"):
        default, given = gen(tmp_path, f"d.{ext}"), gen(tmp_path, f"q.{ext}", "--quality", "95")
        assert np.array_equal(pixels(default), pixels(given))
        assert not np.array_equal(pixels(default), png)  # lossy
    with Image.open(tmp_path / "d.jpg") as im:
        assert JpegImagePlugin.get_sampling(im) == 2  # 4:2:0


def test_webp_at_100_is_lossless(tmp_path, asked):
    png = pixels(gen(tmp_path, "a.png"))
    webp = gen(tmp_path, "a.webp", "--quality", "100")
    assert np.array_equal(pixels(webp), png)
    assert recorded(webp)["quality"] == 100


def test_jpeg_at_100_keeps_full_colour(tmp_path, asked):
    jpg = gen(tmp_path, "a.jpg", "--quality", "100")
    with Image.open(jpg) as im:
        assert JpegImagePlugin.get_sampling(im) == 0  # 4:4:4: no chroma subsampling
    with Image.open(gen(tmp_path, "b.jpg", "--quality", "99")) as im:
        assert JpegImagePlugin.get_sampling(im) == 2  # below 100: as before


@pytest.mark.parametrize("target", ["a.png", "a.tif", "a"])
def test_quality_for_a_lossless_file_is_a_usage_error(tmp_path, asked, target):
    extra = ("--format", "tiff") if target == "a" else ()
    for dry in ((), ("--dry-run",)):
        result = cli("gen", "x", *TINY, "-o", tmp_path / target, "--quality", "80", *extra, *dry)
        assert_usage_error(result, "--quality applies to jpg and webp",
                           "png and tiff are lossless")
    assert not list(tmp_path.iterdir())


def test_quality_for_an_upscale(tmp_path, asked, small):
    result = cli("up", small, "--model", "tiny", "--scale", "2", "--steps", "2", "-q",
                 "-o", tmp_path / "up.jpg", "--quality", "100")
    assert result.exit_code == 0, result.stderr
    with Image.open(tmp_path / "up.jpg") as im:
        assert JpegImagePlugin.get_sampling(im) == 0
    assert recorded(tmp_path / "up.jpg")["quality"] == 100
    refused = cli("up", small, "--model", "tiny", "--scale", "2", "--steps", "2", "-q",
                  "-o", tmp_path / "up.png", "--quality", "50")
    assert_usage_error(refused, "--quality applies to jpg and webp")


def test_a_lossless_refusal_names_no_file_the_run_would_not_write(tmp_path, small):
    """It named hires_128x96_s0_x.png for a seed not drawn yet, and r.tif for zz/r.tif
    (QA 201)."""
    drawn = cli("up", small, "--model", "tiny", "--scale", "2", "--quality", "50", "--dry-run")
    assert_usage_error(drawn, "--quality applies to jpg and webp")
    assert "_s0_" not in drawn.stderr and drawn.stderr.rstrip().endswith("(this output is png)")
    folder = cli("up", small, "--model", "tiny", "--scale", "2", "-o",
                 f"{tmp_path}/zz/{{name}}.tif", "--quality", "90", "--dry-run")
    assert_usage_error(folder, f"{tmp_path}/zz/{small.stem}.tif: --quality applies to jpg")


@pytest.mark.parametrize("value", ["0", "101", "abc", "-5", "9.5"])
def test_bad_values_are_usage_errors(tmp_path, value):
    for command in (("gen", "x", "-o", tmp_path / "a.jpg"), ("up", tmp_path / "in.png"),
                    ("batch", tmp_path / "jobs.toml")):
        result = cli(*command, "--quality", value)
        assert_usage_error(result, "invalid value for '--quality'")


@pytest.mark.parametrize("value", ["0", "101", "'abc'", "true", "9.5"])
def test_bad_values_in_a_file_are_usage_errors(tmp_path, value):
    preset = tmp_path / "p.toml"
    preset.write_text(f'description = "q"\nquality = {value}\n')
    result = cli("gen", "x", *TINY, "--preset", preset, "-o", tmp_path / "a.jpg")
    assert_usage_error(result, "quality", "must be a whole number")


def test_a_preset_sets_it_and_a_png_drops_it(tmp_path, asked):
    preset = tmp_path / "web.toml"
    preset.write_text('description = "for the web"\nquality = 40\n')
    jpg = gen(tmp_path, "a.jpg", "--preset", preset)
    assert recorded(jpg)["quality"] == 40
    assert jpg.stat().st_size < gen(tmp_path, "b.jpg").stat().st_size
    # The preset serves lossy outputs; with a PNG it is not an error (the flag is), nor recorded.
    png = gen(tmp_path, "a.png", "--preset", preset)
    assert recorded(png)["quality"] is None
    assert gen(tmp_path, "c.jpg", "--preset", preset, "--quality", "90").stat().st_size > \
        jpg.stat().st_size  # the flag wins


def test_gen_from_replays_the_quality(tmp_path, asked):
    first = gen(tmp_path, "a.webp", "--quality", "100")
    again = cli("gen", "--from", first, "--model", "tiny", "-q", "-o", tmp_path / "b.webp")
    assert again.exit_code == 0, again.stderr
    assert recorded(tmp_path / "b.webp")["quality"] == 100
    assert np.array_equal(pixels(tmp_path / "b.webp"), pixels(first))  # lossless again
    # A record's quality does not stop a PNG of the same job, which records none.
    png = cli("gen", "--from", first, "--model", "tiny", "-q", "-o", tmp_path / "c.png")
    assert png.exit_code == 0, png.stderr
    assert recorded(tmp_path / "c.png")["quality"] is None
    assert np.array_equal(pixels(tmp_path / "c.png"), pixels(first))


def batch_file(tmp_path, defaults: str = "") -> str:
    path = tmp_path / "jobs.toml"
    path.write_text(f"[defaults]\nwidth = 128\nheight = 128\nsteps = 2\nseed = 3\n{defaults}\n"
                    '[[job]]\nprompt = "a fox"\noutput = "fox.jpg"\n'
                    '[[job]]\nprompt = "a fox"\noutput = "fox.png"\n'
                    '[[job]]\nprompt = "a fox"\noutput = "fox100.webp"\nquality = 100\n')
    return path


def test_batch_file_keys(tmp_path, asked):
    out = tmp_path / "out"
    result = cli("batch", batch_file(tmp_path, "quality = 30"), "-o", out, "--model", "tiny",
                 "-q")
    assert result.exit_code == 0, result.stderr
    assert recorded(out / "fox.jpg")["quality"] == 30
    assert recorded(out / "fox.png")["quality"] is None  # [defaults]' is for the lossy jobs
    assert recorded(out / "fox100.webp")["quality"] == 100
    assert np.array_equal(pixels(out / "fox100.webp"), pixels(out / "fox.png"))
    with Image.open(out / "fox.jpg") as im:
        assert JpegImagePlugin.get_sampling(im) == 2
    small = (out / "fox.jpg").stat().st_size
    # --quality for every job: refused where one writes a PNG
    refused = cli("batch", batch_file(tmp_path), "-o", tmp_path / "b", "--model", "tiny",
                  "--quality", "90")
    assert refused.exit_code == 2
    # the file as written, in its folder (QA 203: "writes y.png" was b/x/y.png)
    assert f"job 1 writes {tmp_path / 'b' / 'fox.png'}: --quality applies to jpg and webp" \
        in refused.stderr
    # A changed quality re-makes the job (its settings changed); the PNG is kept as made.
    again = cli("batch", batch_file(tmp_path, "quality = 90"), "-o", out, "--model", "tiny",
                "-q", "--json")
    assert again.exit_code == 0, again.stderr
    assert (out / "fox.jpg").stat().st_size > small
    assert recorded(out / "fox.jpg")["quality"] == 90


def test_a_checkpoint_is_not_stale_for_another_quality():
    from hires import resume

    assert resume._settings(Job(quality=40)) == resume._settings(Job())
    # Images made before the key keep their fingerprint: a batch re-run does not redo them.
    old = {k: v for k, v in Job().to_dict().items() if k != "quality"}
    assert settings_hash(Job()) == settings_hash(old)
    assert settings_hash(Job(quality=40)) != settings_hash(Job())


def test_library(tmp_path, tiny):
    result = hires.generate("a fox", components=tiny, width=128, height=128, steps=2, seed=3)
    result.save(tmp_path / "a.jpg", quality=100)
    with Image.open(tmp_path / "a.jpg") as im:
        assert JpegImagePlugin.get_sampling(im) == 0
    assert recorded(tmp_path / "a.jpg")["quality"] == 100
    result.save(tmp_path / "a.webp", quality=100)
    assert np.array_equal(pixels(tmp_path / "a.webp"), np.asarray(result.image))
    result.save(tmp_path / "l.webp", quality=20)
    assert (tmp_path / "l.webp").stat().st_size < (tmp_path / "a.webp").stat().st_size
    with pytest.raises(output.OutputUsage, match="^quality applies to jpg and webp"):
        result.save(tmp_path / "a.png", quality=80)
    with pytest.raises(output.OutputUsage, match="from 1 to 100"):
        result.save(tmp_path / "b.jpg", quality=0)
    assert not (tmp_path / "a.png").exists() and not (tmp_path / "b.jpg").exists()
    with pytest.raises(JobError, match="quality applies to jpg and webp"):
        hires.generate("a fox", components=tiny, width=128, height=128, steps=2, quality=80)
    made = hires.generate("a fox", components=tiny, width=128, height=128, steps=2, seed=3,
                          format="webp", quality=100)
    made.save(tmp_path / "job.webp")  # the job's quality
    assert np.array_equal(pixels(tmp_path / "job.webp"), np.asarray(result.image))
    made.save(tmp_path / "job.png")  # a PNG of it: lossless anyway, no quality recorded
    assert json.dumps(recorded(tmp_path / "job.png")["quality"]) == "null"
