"""`hires up`'s inputs: what reading them drops (warned), repeats and names shared between
them, an output over its own input, and `-o -` as the reader and the progress see it."""

import io
import json
import subprocess

import numpy as np
import pytest
from helpers_cli import (
    REPO,
    assert_usage_error,
    cli,
    error_lines,
    hires_cmd,
    json_lines,
    subprocess_env,
)
from PIL import Image, ImageCms

import hires
from hires.images import load_input

TINY = ("--model", "tiny", "--steps", "1", "--seed", "1")


def test_a_reader_that_closes_mid_image_is_warned_of(tmp_path):
    """A reader that took 10 bytes and quit got `stdout: N bytes of PNG`, exit 0: the pipe took
    part of a write and said so only by its count, which `send` did not read."""
    noise = np.random.default_rng(0).integers(0, 256, (64, 96, 3), np.uint8)
    Image.fromarray(noise).save(tmp_path / "in.png")
    # --scale 4: a PNG well past the pipe's 64 KiB, so the write is cut, not refused whole.
    proc = subprocess.Popen(hires_cmd("up", tmp_path / "in.png", *TINY, "--scale", "4", "-o", "-"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=subprocess_env(TMPDIR=str(tmp_path)), cwd=REPO)
    assert len(proc.stdout.read(10)) == 10
    proc.stdout.close()
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=300) == 0, stderr  # as README: a closed stdout is no error
    said = [line for line in stderr.splitlines() if "stdout was closed after" in line]
    assert len(said) == 1 and said[0].startswith("warning: "), stderr
    sent, size = (int(w.replace(",", "")) for w in said[0].split()
                  if w.replace(",", "").isdigit())
    assert 10 <= sent < size
    assert "bytes of PNG" in said[0] and not any(
        line.startswith("stdout: ") and line.endswith("bytes of PNG")
        for line in stderr.splitlines())


def test_inputs_of_one_name_in_a_folder_are_numbered(tmp_path, asked):
    """`a/photo.png b/photo.png -o out/` exited 2 saying to add {index}, which a folder has no
    place for: hires names them, so it names them apart."""
    for folder, colour in (("a", "red"), ("b", "blue")):
        (tmp_path / folder).mkdir()
        Image.new("RGB", (64, 48), colour).save(tmp_path / folder / "photo.png")
    inputs = (tmp_path / "a" / "photo.png", tmp_path / "b" / "photo.png")
    out = tmp_path / "out"
    result = cli("up", *inputs, *TINY, "--scale", "2", "-o", f"{out}/", "--json")
    assert result.exit_code == 0, result.stderr
    assert [r["image"] for r in json_lines(result.stdout)] == [str(p) for p in inputs]
    assert sorted(p.name for p in out.iterdir()) == [
        "hires_128x96_s1_photo_000.png", "hires_128x96_s1_photo_001.png"]
    # A template the user wrote is theirs to change: the error gives one to copy.
    template = cli("up", *inputs, *TINY, "--scale", "2", "-o", f"{tmp_path}/t/{{name}}.png")
    assert_usage_error(template, f"-o '{tmp_path}/t/{{index}}_{{name}}.png'")


def test_an_input_given_twice_is_upscaled_once(small, tmp_path, asked):
    """`up in.png in.png -o out/` made the same image twice, as _000 and _001, without the
    input's name."""
    out = tmp_path / "out"
    result = cli("up", small, small, *TINY, "--scale", "2", "-o", f"{out}/", "--json")
    assert result.exit_code == 0, result.stderr
    assert len(json_lines(result.stdout)) == 1
    assert [p.name for p in out.iterdir()] == ["hires_192x128_s1_in.png"]
    assert f"warning: {small} is given again; it is upscaled once" in result.stderr


def test_an_output_over_its_input_is_refused_even_with_overwrite(small, asked):
    """`-o in.png --overwrite` replaced the source; `gen --from` the result then failed, its
    input's sha256 changed."""
    before = small.read_bytes()
    for extra in ((), ("--overwrite",), ("--overwrite", "--dry-run")):
        result = cli("up", small, *TINY, "--scale", "2", "-o", small, *extra)
        assert_usage_error(result, f"{small} is the input image", "choose another -o")
    assert small.read_bytes() == before


def test_an_output_reaching_its_input_through_a_folder_not_made_yet_is_refused(small, asked):
    """`-o new/../in.png --overwrite` replaced the input: `new` did not exist, so the path did
    not either, until the save made the folder; a refusal made `new` all the same."""
    before = small.read_bytes()
    through = small.parent / "new" / ".." / small.name
    result = cli("up", small, *TINY, "--scale", "2", "-o", through, "--overwrite")
    assert_usage_error(result, "is the input image", "choose another -o")
    assert small.read_bytes() == before and not (small.parent / "new").exists()


def test_a_stage_image_over_the_input_is_refused(small, asked):
    """`up o.stage0.png --save-stages -o o.png --overwrite` wrote stage 0 over its input."""
    staged = small.with_name("o.stage0.png")
    small.rename(staged)
    before = staged.read_bytes()
    for extra in (("--dry-run",), ()):
        result = cli("up", staged, *TINY, "--scale", "4", "--save-stages", "-o",
                     staged.with_name("o.png"), "--overwrite", *extra)
        assert_usage_error(result, f"{staged} is the input image", "choose another -o")
    assert staged.read_bytes() == before


def test_an_output_over_a_later_inputs_file_is_refused(small, tmp_path, asked):
    """`up x.png out_x.stage0.png --save-stages -o 'out_{name}.png' --overwrite` wrote job 0's
    stage image over job 1's input, then failed that job; a control image went the same way."""
    later = tmp_path / "out_in.stage0.png"
    later.write_bytes(small.read_bytes())
    before = later.read_bytes()
    for extra in (("--dry-run",), ()):
        result = cli("up", small, later, *TINY, "--scale", "4", "--save-stages", "-o",
                     f"{tmp_path}/out_{{name}}.png", "--overwrite", *extra)
        assert_usage_error(result, f"{later} is an input image", "choose another -o")
    edges = tmp_path / "edges.png"
    edges.write_bytes(before)
    result = cli("gen", "a", "--model", "tiny", "--size", "256", "--control", edges,
                 "--control-model", "owner/net", "-o", edges, "--overwrite", "--dry-run")
    assert_usage_error(result, f"{edges} is a control image ({edges})")
    assert later.read_bytes() == before and edges.read_bytes() == before


def test_an_output_ending_in_dot_is_a_folder_made_or_not(small, tmp_path, asked):
    """`-o out/.` wrote out.png beside the folder (a Path drops a last '.'), and `-o a/b/..`
    a file named '...png'."""
    for given, folder in ((f"{tmp_path}/out/.", tmp_path / "out"),
                          (f"{tmp_path}/a/b/..", tmp_path / "a")):
        result = cli("up", small, *TINY, "--scale", "2", "-o", given, "-q")
        assert result.exit_code == 0, result.stderr
        assert [p.name for p in folder.iterdir() if p.is_file()] == ["hires_192x128_s1_in.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "in.png", "out"]


def test_a_jpegs_lost_transparency_is_in_the_json_record_and_the_file(tmp_path, asked):
    """It was said on stderr alone: a script reading stdout could not tell the alpha went."""
    clear = tmp_path / "clear.png"
    image = Image.new("RGBA", (96, 64), (200, 50, 50, 255))
    image.paste((0, 0, 0, 0), (0, 0, 8, 8))
    image.save(clear)
    result = cli("up", clear, *TINY, "--scale", "2", "-o", tmp_path / "c.jpg", "--json")
    assert result.exit_code == 0, result.stderr
    said = "JPEG holds no transparency: c.jpg is flattened on white"
    assert result.stderr.count(said) == 1
    (record,) = json_lines(result.stdout)
    assert [w for w in record["warnings"] if said in w]
    info = json.loads(cli("info", tmp_path / "c.jpg", "--json").stdout)
    assert info["result"]["warnings"] == record["warnings"]


def _anim(tmp_path):
    frames = [Image.new("RGB", (64, 64), c) for c in ("red", "green", "blue")]
    frames[0].save(tmp_path / "anim.webp", save_all=True, append_images=frames[1:])
    return tmp_path / "anim.webp", "anim.webp has 3 frames; hires upscales the first"


def _deep(tmp_path):
    ramp = np.linspace(0, 65535, 64 * 64).astype(np.uint16).reshape(64, 64)
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    return tmp_path / "deep.png", "deep.png has 16 bits a channel; the result has 8"


@pytest.mark.parametrize("make", [_anim, _deep], ids=["frames", "16-bit"])
def test_what_reading_an_input_drops_is_a_warning(tmp_path, asked, make):
    """Were log lines: gone under -q, and not in the record's warnings."""
    image, note = make(tmp_path)
    result = cli("up", image, *TINY, "--scale", "2", "-q", "--json", "-o", tmp_path / "o.png")
    assert result.exit_code == 0, result.stderr
    assert result.stderr.count(note) == 1  # before the work; not again after it
    assert any(line.startswith("warning: ") and note in line
               for line in result.stderr.splitlines()), result.stderr
    assert any(note in w for w in json.loads(result.stdout)["warnings"])
    shown = json.loads(cli("info", "--json", tmp_path / "o.png").stdout)
    assert any(note in w for w in shown["result"]["warnings"])
    # The library's result says it too.
    assert any(note in w for w in hires.upscale(image, scale=2, model="tiny", steps=1,
                                                seed=1).warnings)


def test_an_srgb_tagged_input_is_taken_as_it_is(tmp_path, asked):
    """An sRGB profile was 'converted to sRGB': work that changes nothing, said as if it did."""
    tagged = tmp_path / "tagged.png"
    original = Image.new("RGB", (96, 64), (200, 30, 90))
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    original.save(tagged, icc_profile=srgb)
    source = load_input(tagged)
    assert source.converted_from is None
    assert np.array_equal(np.asarray(source.rgb), np.asarray(original))
    result = cli("up", tagged, *TINY, "--scale", "2", "-o", tmp_path / "o.png")
    assert result.exit_code == 0, result.stderr
    assert "colour profile" not in result.stderr


def test_piped_progress_events_name_stdout(small, scratch, asked):
    """`-o - --progress json` events named the temporary file the image was made in."""
    result = cli("up", small, *TINY, "--scale", "2", "-o", "-", "--progress", "json")
    assert result.exit_code == 0, result.stderr
    images = {e["image"] for e in json_lines(result.stderr) if "phase" in e}
    assert images == {"-"}, images


@pytest.mark.parametrize(("mode", "grey"), [("L", True), ("LA", True), ("RGB", False)])
def test_a_grey_input_comes_out_grey(tmp_path, asked, mode, grey):
    """A black-and-white photo came out in colour: the model tints the detail it adds."""
    noise = np.random.default_rng(1).integers(0, 256, (64, 64), np.uint8)
    image = Image.fromarray(noise, "L").convert(mode)
    if mode == "RGB":  # a colour photo: its blue differs
        image = Image.fromarray(np.stack([noise, noise, noise // 2], -1))
    if mode == "LA":
        image.putalpha(Image.fromarray(np.tile(np.arange(64, dtype=np.uint8) * 4, (64, 1))))
    image.save(tmp_path / "in.png")
    result = cli("up", tmp_path / "in.png", *TINY, "--scale", "2", "-o", tmp_path / "out.png")
    assert result.exit_code == 0, result.stderr
    out = np.asarray(Image.open(tmp_path / "out.png")).astype(int)
    spread = (out[..., :3].max(-1) - out[..., :3].min(-1)).max()
    assert (spread == 0) == grey, spread
    assert out.shape[-1] == (4 if mode == "LA" else 3)
    if mode == "LA":
        assert out[..., 3].min() < 40 and out[..., 3].max() > 200  # the alpha kept, not greyed


def test_16_bit_samples_are_greyed_band_by_band_with_their_alpha_kept():
    from hires.images import greyed16

    rng = np.random.default_rng(2)
    pixels = rng.integers(0, 65536, (37, 5, 4), dtype=np.uint16)
    alpha = pixels[..., 3].copy()
    luma = pixels[..., :3].astype(np.float64) @ [0.299, 0.587, 0.114]
    out = greyed16(pixels.copy(), rows=8)  # bands that do not divide the height
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()
    assert np.abs(out[..., 0] - luma).max() <= 1
    assert (out[..., 3] == alpha).all()


def test_grey_kept_as_colour_is_found_by_its_channels(tmp_path):
    """A 16-bit grey PNG with alpha opens as RGBA in Pillow: its mode says nothing."""
    from hires.images import load_input

    values = np.random.default_rng(3).integers(0, 256, (32, 32), np.uint8)
    Image.fromarray(np.stack([values] * 3, -1)).save(tmp_path / "grey_rgb.png")
    tinted = np.stack([values, values, values // 2], -1)
    Image.fromarray(tinted).save(tmp_path / "colour.png")
    assert load_input(tmp_path / "grey_rgb.png").grey
    assert not load_input(tmp_path / "colour.png").grey


def test_grey_is_told_by_the_files_channels_before_its_profile_is_converted(tmp_path,
                                                                          monkeypatch):
    """A grey photo saved as RGB in Adobe RGB: lcms' conversion to sRGB left its channels 1
    apart, so it was taken for colour and came out tinted (found by QA)."""
    from hires import images

    def rounded_apart(im, rgb):  # the conversion's rounding: blue one level off here and there
        a = np.asarray(rgb).copy()
        a[::2, ::2, 2] = np.clip(a[::2, ::2, 2].astype(int) + 1, 0, 255)
        return Image.fromarray(a), "Adobe RGB (1998)", None

    monkeypatch.setattr(images, "_in_srgb", rounded_apart)
    values = np.random.default_rng(3).integers(0, 255, (32, 32), np.uint8)
    Image.fromarray(np.stack([values] * 3, -1)).save(tmp_path / "grey_rgb.png")
    got = images.load_input(tmp_path / "grey_rgb.png")
    assert got.grey and got.converted_from == "Adobe RGB (1998)"


def test_a_stage_under_64_px_a_side_runs_as_its_dry_run_said(tmp_path, asked):
    """A 20 px input's stage of 40 px: the planner clipped its VAE tile to 40, which the
    tiled VAE refuses (under 64), and the run failed after the load (exit 1). A first stage
    now holds a quarter of the native area, so a side that short is a strip's."""
    Image.new("RGB", (400, 20), "teal").save(tmp_path / "in.png")
    args = ("up", tmp_path / "in.png", *TINY, "--scale", "4", "--steps", "2",
            "-o", tmp_path / "out.png")
    planned = cli(*args, "--dry-run")
    assert planned.exit_code == 0, planned.stderr
    assert "stage 0 (from the input): 800x40," in planned.stdout
    made = cli(*args)
    assert made.exit_code == 0, made.stderr
    with Image.open(tmp_path / "out.png") as out:
        assert out.size == (1600, 80)


def test_an_input_that_cannot_fit_stops_the_run_before_any_image_and_is_named(tmp_path,
                                                                              asked):
    """Of several inputs, one whose plan cannot fit failed after the ones before it were
    made, and its error ("696x696 fits") did not say which input it was for."""
    Image.new("RGB", (20, 20), "teal").save(tmp_path / "small.png")
    Image.new("RGB", (300, 300), "teal").save(tmp_path / "big.png")
    Image.new("RGB", (8, 8), "teal").save(tmp_path / "speck.png")
    out = tmp_path / "out"
    inputs = (tmp_path / "small.png", tmp_path / "big.png")
    result = cli("up", *inputs, *TINY, "--scale", "4", "--vram", "1", "-o", out / "{name}.png")
    assert result.exit_code == 2, result.stderr
    said = error_lines(result.stderr)
    assert len(said) == 1 and said[0].startswith(f"error: {tmp_path / 'big.png'}: stage ")
    assert "fits" in said[0] and not list(out.glob("*.png"))  # small.png not made first
    planned = cli("up", *inputs, *TINY, "--scale", "4", "--vram", "1", "--dry-run")
    assert planned.exit_code == 2 and [line.split(": stage ")[0] for line in
                                       error_lines(planned.stderr)] == [f"error: {inputs[1]}"]
    # the small one made already: the one left to make is still named
    assert cli("up", inputs[0], *TINY, "--scale", "4", "-o", out / "{name}.png").exit_code == 0
    again = cli("up", *inputs, *TINY, "--scale", "4", "--vram", "1", "-o", out / "{name}.png")
    assert again.exit_code == 2 and error_lines(again.stderr)[0].startswith(
        f"error: {tmp_path / 'big.png'}: stage "), again.stderr
    sized = cli("up", tmp_path / "big.png", tmp_path / "speck.png", *TINY, "--scale", "2",
                "--dry-run")
    assert_usage_error(sized, f"{tmp_path / 'speck.png'}: --scale 2 makes 16x16 px")


def test_inputs_without_a_seed_are_told_the_one_seed_they_share(tmp_path, asked):
    """'seeds from N' said they counted up from N, where every input uses N (only --n counts)."""
    for name in ("a", "b"):
        Image.new("RGB", (64, 48), "red").save(tmp_path / f"{name}.png")
    result = cli("up", tmp_path / "a.png", tmp_path / "b.png", "--model", "tiny", "--steps",
                 "1", "--scale", "2", "-o", f"{tmp_path}/out/", "--json")
    assert result.exit_code == 0, result.stderr
    seeds = {r["seed"] for r in json_lines(result.stdout)}
    assert len(seeds) == 1
    assert f"seed {seeds.pop()} (--seed" in result.stderr and "seeds from" not in result.stderr


def test_a_dry_run_warns_what_reading_the_inputs_leaves_out_as_the_run_records(tmp_path, asked):
    """An animation's frames, 16 bits read as 8 and a profile not used: the run warned of them
    and recorded them, and `up --dry-run`, used to check a set of inputs, said none (QA 183)."""
    frames = [Image.new("RGB", (64, 48), c) for c in ("red", "blue")]
    frames[0].save(tmp_path / "anim.png", save_all=True, append_images=frames[1:])
    grey16 = np.random.default_rng(1).integers(0, 65535, (48, 64), np.uint16)
    Image.fromarray(grey16).save(tmp_path / "g16.png")
    Image.new("RGB", (64, 48), "teal").save(tmp_path / "icc.png", icc_profile=b"garbage" * 20)
    inputs = [tmp_path / n for n in ("anim.png", "g16.png", "icc.png")]
    args = ("up", *inputs, *TINY, "--width", "128", "--height", "128", "-o", f"{tmp_path}/out/",
            "--json")
    planned = cli(*args, "--dry-run")
    assert planned.exit_code == 0, planned.stderr
    made = cli(*args, "-q")
    assert made.exit_code == 0, made.stderr
    said = [image["warnings"] for line in json_lines(planned.stdout) for image in line["images"]]
    recorded = [line["warnings"] for line in json_lines(made.stdout)]
    assert said == recorded
    assert [len(w) for w in said] == [2, 2, 2]  # each one's note, and the crop to 1:1
    assert "anim.png has 2 frames; hires upscales the first" in said[0]
    assert "g16.png has 16 bits a channel; the result has 8 (--depth 16 for 16)" in said[1]
    assert ("icc.png's colour profile cannot be read; its colours are read as sRGB"
            in said[2])
    for note in (w for notes in said for w in notes):  # on the terminal too
        assert f"warning: {note}" in planned.stderr


def test_a_profile_for_other_colours_than_the_files_is_said_and_not_used(tmp_path):
    lab = ImageCms.ImageCmsProfile(ImageCms.createProfile("LAB")).tobytes()
    Image.new("RGB", (64, 48), (10, 150, 200)).save(tmp_path / "lab.png", icc_profile=lab)
    got = load_input(tmp_path / "lab.png")
    assert got.rgb.getpixel((5, 5)) == (10, 150, 200) and got.converted_from is None
    assert got.profile_unused == "is for Lab colours, not the file's RGB ones"
    from hires.images import input_notes

    assert input_notes(got) == ["lab.png's colour profile is for Lab colours, not the file's "
                                "RGB ones; its colours are read as sRGB"]
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    Image.new("RGB", (64, 48), (10, 150, 200)).save(tmp_path / "srgb.png", icc_profile=srgb)
    Image.new("LA", (64, 48), (90, 200)).save(tmp_path / "grey.png", icc_profile=lab)
    assert load_input(tmp_path / "grey.png").profile_unused == ("is for Lab colours, not the "
                                                                "file's grey ones")
    assert load_input(tmp_path / "srgb.png").profile_unused is None  # used (as sRGB): unsaid


def test_a_grey_profile_is_said_unused_on_colour_pixels_and_kept_quiet_on_grey_ones(tmp_path):
    # Pillow makes no grey profile: sRGB's, its header's colour space made GRAY, reads as one
    made = bytearray(ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes())
    made[16:20] = b"GRAY"
    assert ImageCms.ImageCmsProfile(io.BytesIO(bytes(made))).profile.xcolor_space == "GRAY"
    Image.new("RGB", (64, 48), (10, 150, 200)).save(tmp_path / "rgb.png", icc_profile=made)
    Image.new("L", (64, 48), 100).save(tmp_path / "l.png", icc_profile=made)
    got = load_input(tmp_path / "rgb.png")
    assert got.rgb.getpixel((5, 5)) == (10, 150, 200) and got.converted_from is None
    assert got.profile_unused == "is for grey colours, not the file's RGB ones"
    grey = load_input(tmp_path / "l.png")
    assert grey.profile_unused is None and grey.rgb.getpixel((5, 5)) == (100, 100, 100)
