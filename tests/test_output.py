"""hires.output: atomic saves in four formats, A1111 + hires metadata, output paths."""

import json
from pathlib import Path

import pytest
from PIL import Image

from hires.job import Job, JobError
from hires.output import (
    EXIF_IFD,
    USER_COMMENT,
    OutputError,
    OutputExists,
    job_values_from_image,
    output_path,
    parameters_text,
    parse_parameters,
    read_metadata,
    save_image,
)

JOB = Job(prompt="a lighthouse, at dusk", negative="blurry", width=256, height=192, seed=1234,
          steps=30, guidance=6.5, model="tiny", linfusion="none")
METADATA = {"hires": "test", "job": JOB.to_dict(), "result": {"seed": 1234}}


def picture(width: int = 64, height: int = 48) -> Image.Image:
    return Image.linear_gradient("L").resize((width, height)).convert("RGB")


@pytest.mark.parametrize("fmt,name,pil_format", [("png", "a.png", "PNG"), ("jpg", "a.jpg", "JPEG"),
                                                 ("webp", "a.webp", "WEBP"),
                                                 ("tiff", "a.tiff", "TIFF")])
def test_save_round_trips_metadata_and_leaves_no_temp_file(tmp_path, fmt, name, pil_format):
    path = save_image(picture(), tmp_path / name, metadata=METADATA)
    assert path == tmp_path / name
    assert [p.name for p in tmp_path.iterdir()] == [name]  # renamed into place, no .part left
    with Image.open(path) as im:
        assert im.format == pil_format and im.size == (64, 48)
    meta = read_metadata(path)
    assert meta["hires"] == METADATA
    assert meta["parameters"] == parameters_text(JOB.to_dict(), 64, 48)
    values = job_values_from_image(path)
    assert Job.from_dict(values) == JOB


@pytest.mark.parametrize("name", ["a.jpg", "a.webp"])
def test_jpeg_and_webp_carry_the_parameters_in_exif_user_comment(tmp_path, name):
    path = save_image(picture(), tmp_path / name, metadata=METADATA)
    with Image.open(path) as im:
        raw = im.getexif().get_ifd(EXIF_IFD)[USER_COMMENT]
    assert raw.startswith(b"UNICODE\0")
    assert raw[8:].decode("utf-16-be").startswith("a lighthouse, at dusk\nNegative prompt: blurry")


def test_png_carries_a1111_parameters_and_the_job_as_json(tmp_path):
    path = save_image(picture(), tmp_path / "a.png", metadata=METADATA)
    with Image.open(path) as im:
        assert set(im.info) >= {"parameters", "hires"}
        assert json.loads(im.info["hires"])["job"]["seed"] == 1234


def test_a1111_parameters_layout():
    text = parameters_text({"prompt": "a red fox", "negative": "blurry", "steps": 50,
                            "guidance": 7.5, "seed": 1234,
                            "model": "stabilityai/stable-diffusion-xl-base-1.0"}, 16384, 16384)
    prompt, negative, settings = text.split("\n")
    assert prompt == "a red fox"
    assert negative == "Negative prompt: blurry"
    assert settings.startswith("Steps: 50, Sampler: Euler, CFG scale: 7.5, Seed: 1234, "
                               "Size: 16384x16384, Model: stabilityai/stable-diffusion-xl-base-1.0")


def test_a1111_denoising_strength_only_where_a_stage_re_noised():
    """A one-stage image from a prompt said "Denoising strength: 0.32", which galleries show
    as img2img's; an upscale's, a later stage's and a multi-stage image's say it (QA 206)."""
    job = {"prompt": "a fox", "steps": 4, "seed": 1, "strength": 0.32}
    said = lambda job, result: "Denoising strength: 0.32" in parameters_text(  # noqa: E731
        job, 256, 256, result)
    assert not said(job, {"stages": [{"index": 0}]})
    assert not said(job, {"stage": 0})
    assert said(job, {"stages": [{"index": 0}, {"index": 1}]})
    assert said(job, {"stage": 1})
    assert said({**job, "image": "in.png"}, {"stages": [{"index": 0}]})
    assert said(job, None)  # not known: as before


def test_a1111_parameters_without_negative_has_two_lines():
    text = parameters_text({"prompt": "a red fox", "steps": 4, "seed": 1}, 256, 256)
    assert text.split("\n")[0] == "a red fox"
    assert text.split("\n")[1].startswith("Steps: 4, Sampler: Euler, Seed: 1, Size: 256x256")


def test_parse_a_hand_written_a1111_text():
    text = ("a castle on a hill, golden hour\n"
            "Negative prompt: blurry, lowres\n"
            "Steps: 30, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 123456789, Size: 1024x768, "
            'Model hash: 31e35c80fc, Model: sd_xl_base_1.0, Lora hashes: "a: 1, b: 2", '
            "Denoising strength: 0.4, Version: v1.6.0")
    assert parse_parameters(text) == {
        "prompt": "a castle on a hill, golden hour", "negative": "blurry, lowres", "steps": 30,
        "guidance": 7.0, "seed": 123456789, "width": 1024, "height": 768,
        # A1111's name for SDXL base's checkpoint, read as its Hub id
        "model": "stabilityai/stable-diffusion-xl-base-1.0", "strength": 0.4,
        "sampler": "dpmpp-2m", "karras": True}


def test_parameters_text_parses_back_to_the_job():
    values = parse_parameters(parameters_text(JOB.to_dict(), 256, 192))
    assert values == {"prompt": JOB.prompt, "negative": "blurry", "steps": 30, "guidance": 6.5,
                      "seed": 1234, "width": 256, "height": 192, "model": "tiny",
                      "strength": JOB.strength, "sampler": "euler", "karras": False,
                      "linfusion": "none"}


def test_the_sampler_round_trips_through_a1111_text():
    job = {**JOB.to_dict(), "sampler": "dpmpp-2m", "karras": True}
    assert "Sampler: DPM++ 2M Karras," in parameters_text(job, 256, 256)
    values = parse_parameters(parameters_text(job, 256, 256))
    assert (values["sampler"], values["karras"]) == ("dpmpp-2m", True)


def test_an_a1111_only_image_gives_its_job(tmp_path):
    """A PNG from another tool, with only the `parameters` chunk, can still be re-run."""
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "a fox\nSteps: 20, Sampler: Euler a, CFG scale: 5, Seed: 9, "
                                "Size: 512x768, Model: someModel")
    picture().save(tmp_path / "a1111.png", pnginfo=info)
    assert job_values_from_image(tmp_path / "a1111.png") == {
        "prompt": "a fox", "steps": 20, "guidance": 5.0, "seed": 9, "width": 512, "height": 768,
        "model": "someModel", "sampler": "euler", "karras": False}  # Euler a's nearest


def test_an_image_without_metadata_cannot_be_rerun(tmp_path):
    picture().save(tmp_path / "plain.png")
    with pytest.raises(OutputError, match="no hires or A1111"):
        job_values_from_image(tmp_path / "plain.png")


def test_reading_a_missing_or_non_image_file_is_an_output_error(tmp_path):
    with pytest.raises(OutputError, match="no such image"):
        read_metadata(tmp_path / "missing.png")
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(OutputError, match="cannot read"):
        read_metadata(tmp_path / "notes.txt")


def test_webp_over_16383_px_is_refused_and_nothing_is_written(tmp_path):
    with pytest.raises(OutputError, match="16383"):
        save_image(picture(16384, 8), tmp_path / "wide.webp")
    assert list(tmp_path.iterdir()) == []


def test_an_existing_file_is_refused_without_overwrite(tmp_path):
    target = tmp_path / "a.png"
    target.write_bytes(b"precious")
    with pytest.raises(OutputExists, match="already exists"):
        save_image(picture(), target)
    assert target.read_bytes() == b"precious"
    save_image(picture(), target, overwrite=True)
    with Image.open(target) as im:
        assert im.size == (64, 48)
    assert [p.name for p in tmp_path.iterdir()] == ["a.png"]


def test_a_failed_write_leaves_neither_the_file_nor_a_temp_file(tmp_path, monkeypatch):
    def broken_save(self, fp, *args, **kwargs):
        fp.write(b"half an image")
        raise KeyboardInterrupt  # as if Ctrl-C arrived mid-encode

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(KeyboardInterrupt):
        save_image(picture(), tmp_path / "a.png", metadata=METADATA)
    assert list(tmp_path.iterdir()) == []


def test_save_creates_missing_folders(tmp_path):
    path = save_image(picture(), tmp_path / "new" / "deeper" / "a.png")
    assert path.is_file()


def test_save_under_a_regular_file_is_an_output_error(tmp_path):
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(OutputError):
        save_image(picture(), tmp_path / "file.txt" / "a.png")


def test_output_path_default_name_and_folders(tmp_path):
    kw = {"width": 512, "height": 256, "seed": 7, "fmt": "png"}
    assert output_path(None, **kw) == Path("hires_512x256_s7.png")
    assert output_path(tmp_path, **kw) == tmp_path / "hires_512x256_s7.png"
    new = tmp_path / "not-yet"
    assert output_path(f"{new}/", **kw) == new / "hires_512x256_s7.png"
    assert output_path(tmp_path, **{**kw, "fmt": "jpg"}) == tmp_path / "hires_512x256_s7.jpg"
    assert output_path(tmp_path / "named", **kw) == tmp_path / "named.png"
    assert output_path(tmp_path / "named.tiff", **kw) == tmp_path / "named.tiff"
    # A dot inside the name is no format: the format's extension is added (it was written
    # as PNG bytes under 'poster_v1.2'); a format hires does not write is refused.
    assert output_path(tmp_path / "poster_v1.2", **kw) == tmp_path / "poster_v1.2.png"
    assert output_path(tmp_path / "shot.JPG", **kw) == tmp_path / "shot.JPG"
    with pytest.raises(OutputError, match="not GIF; end the name in .png"):
        output_path(tmp_path / "anim.gif", **kw)
    with pytest.raises(OutputError, match=r"not PDF; .* or \.tif \(\.tif for print\)"):
        output_path(tmp_path / "poster.pdf", **kw)  # it was written as poster.pdf.png


def test_output_path_templates(tmp_path):
    path = output_path(str(tmp_path / "{index:03d}_{seed}_{width}x{height}_{prompt}.png"),
                       width=512, height=256, seed=7, fmt="png", index=3,
                       prompt="A Red Fox, at night!")
    assert path == tmp_path / "003_7_512x256_a-red-fox-at-night.png"


@pytest.mark.parametrize("prompt,name", [
    ("café crème brûlée", "café-crème-brûlée"), ("Straße im Nebel", "straße-im-nebel"),
    ("赤い猫", "赤い猫"), ("青い犬 🐶", "青い犬"), ("ＦＯＸ_2", "fox-2"), ("🐱!", "image")])
def test_a_prompt_in_any_script_keeps_its_words_in_the_name(tmp_path, prompt, name):
    path = output_path(str(tmp_path / "{prompt}.png"), width=64, height=64, seed=1, fmt="png",
                       index=0, prompt=prompt)
    assert path == tmp_path / f"{name}.png"


def test_a_name_leaves_room_for_the_checkpoint_beside_it(tmp_path):
    """A name of 237-250 bytes passed, then the run died after the model loaded: its
    NAME.png.resume.safetensors was too long to exist."""
    from functools import partial

    from hires.output import OutputUsage
    from hires.output import output_path as named

    output_path = partial(named, width=8, height=8, seed=1, fmt="png")

    fits = output_path(tmp_path / ("b" * 227 + ".png"))  # + .resume.safetensors: 250 bytes
    assert len((fits.name + ".resume.safetensors").encode()) <= 255
    with pytest.raises(OutputUsage, match="is 236 bytes; it may be at most 231"):
        output_path(tmp_path / ("b" * 232 + ".png"))
    with pytest.raises(OutputUsage, match="folder name .* is 256 bytes; it may be at most 255"):
        output_path(tmp_path / ("d" * 256) / "x.png")
    assert output_path(tmp_path / ("d" * 255) / "x.png").name == "x.png"  # a folder may


def test_the_format_field_is_the_files_format():
    """`{format}_{seed}.tif` was png_1.tif: --format's default, not the suffix's TIFF."""
    from hires.output import output_path

    args = dict(width=8, height=8, seed=1, fmt="png")
    assert output_path("{format}_{seed}.tif", **args).name == "tiff_1.tif"
    assert output_path("{format}_{seed}", **args).name == "png_1.png"
    assert output_path("{format}/{seed}.JPEG", **args) == Path("jpg/1.JPEG")


def test_output_path_bad_template_names_the_valid_fields():
    with pytest.raises(OutputError, match=r"\{seed\}"):
        output_path("out_{sed}.png", width=8, height=8, seed=1, fmt="png")


def test_stale_temp_files_of_dead_processes_are_removed(tmp_path):
    import os

    from hires.output import remove_stale_parts

    dead = tmp_path / ".a.png.999999999.x1.part"  # no such pid
    live = tmp_path / f".b.png.{os.getpid()}.x2.part"  # this process, still saving
    other = tmp_path / "c.png"
    for f in (dead, live, other):
        f.write_bytes(b"x")
    assert remove_stale_parts(tmp_path) == [dead]
    assert not dead.exists() and live.exists() and other.exists()


def test_a_record_from_before_the_global_floor_reruns_every_global_pass(tmp_path):
    """Images made before hires skipped negligible global passes ran them all: a re-run does."""
    old = {k: v for k, v in JOB.to_dict().items() if k != "global_floor"}
    path = save_image(picture(), tmp_path / "old.png", metadata={**METADATA, "job": old})
    assert job_values_from_image(path)["global_floor"] == 0.0
    now = save_image(picture(), tmp_path / "new.png", metadata=METADATA)
    assert job_values_from_image(now)["global_floor"] == JOB.global_floor == 0.01
    with pytest.raises(JobError, match="global_floor must be from 0"):
        Job(global_floor=1.0).validate()


def test_images_that_may_not_fit_their_disk_are_warned_of_before_any_work(tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    from helpers_cli import cli

    from hires.output import disk_need, short_of_space

    assert disk_need(16384, 16384, "png") == 3 * 16384**2  # lossless: up to the raw size
    assert disk_need(16384, 16384, "jpg") == 3 * 16384**2 // 4
    assert disk_need(1024, 1024, "png", stage_images=True) == 4 * 1024**2
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**12, 0, 2 * 10**9))
    new = tmp_path / "not-yet"  # a folder the run will make: its disk is its parent's
    one = [(new / "a.png", disk_need(16384, 16384, "png"), 16384**2)]
    assert short_of_space(one) is None  # 0.81 GB + its 0.07 GB checkpoint fit in 2 GB
    note = short_of_space(one * 3)
    assert note is not None and f"{new} has 2.0 GB free" in note and "the 3 images" in note
    assert "up to 2.5 GB" in note and "goes on from the last stage it kept" in note
    small = [(new / "a.png", disk_need(512, 512, "png"), 512**2)]  # 0.0 GB: said in MB
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**12, 0, 300_000))
    assert "has 0.3 MB free" in short_of_space(small) and "up to 0.9 MB" in \
        short_of_space(small)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**12, 0, 2 * 10**9))
    # Said by a dry run and a run alike, before the model loads; -q does not hide it.
    result = cli("gen", "x", "--size", "16384", "--n", "3", "-o", f"{new}/", "--dry-run", "-q",
                 "--gpu", "h100")
    assert result.exit_code == 0 and "warning: " in result.stderr and "the 3 images" in \
        result.stderr
    quiet = cli("gen", "x", "--size", "16384", "-o", f"{new}/", "--dry-run", "--gpu", "h100")
    assert "warning" not in quiet.stderr


@pytest.mark.parametrize("fmt", ["png", "tiff", "jpg", "webp"])
def test_images_are_tagged_srgb_for_colour_managed_software(tmp_path, fmt):
    import io

    from PIL import ImageCms

    path = save_image(Image.new("RGB", (64, 48), (200, 30, 40)), tmp_path / f"a.{fmt}")
    with Image.open(path) as im:
        profile = ImageCms.ImageCmsProfile(io.BytesIO(im.info["icc_profile"]))
        assert im.convert("RGB").getpixel((0, 0))[:2] == (200, 30)
    assert ImageCms.getProfileDescription(profile).startswith("sRGB")


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_a_transparent_image_saved_as_jpeg_is_flattened_on_white_with_a_warning(tmp_path, mode):
    image = Image.new(mode, (32, 16), (40, 255) if mode == "LA" else (200, 10, 10, 255))
    image.paste((0, 0) if mode == "LA" else (0, 0, 255, 0), (0, 0, 16, 16))  # left: clear
    said = []
    path = save_image(image, tmp_path / "a.jpg", warn=said.append)
    with Image.open(path) as saved:
        assert saved.format == "JPEG" and saved.mode == mode[:-1]
        left, right = saved.getpixel((4, 8)), saved.getpixel((28, 8))
    assert left == (255 if mode == "LA" else (255, 255, 255))
    assert right != left
    (line,) = said
    assert "flattened on white" in line and "png, webp or tiff" in line


@pytest.mark.parametrize("name,fmt,words", [("x.gif", None, "not GIF"), ("x.gif", "png", "not GIF"),
                                            ("y.png", "bmp", "format 'bmp'"),
                                            ("z.png", "jpg", "names a PNG file")])
def test_save_refuses_a_format_it_would_mislabel(tmp_path, name, fmt, words):
    from hires.output import OutputError

    with pytest.raises(OutputError, match=words):
        save_image(Image.new("RGB", (16, 16)), tmp_path / name, fmt=fmt)
    assert list(tmp_path.iterdir()) == []
    with Image.open(save_image(Image.new("RGB", (16, 16)), tmp_path / "w.jpg", fmt="JPEG")) as im:
        assert im.format == "JPEG"


def test_an_8_bit_tiff_with_transparency_over_4_gb_is_refused_before_writing(tmp_path,
                                                                            monkeypatch):
    from hires import output, tiff
    from hires.output import OutputUsage

    # 32768 px square: RGB (3.2 GB) fits a classic TIFF, RGBA (4.3 GB) does not.
    assert output.format_problem("tiff", 32768, 32768, 8, channels=3) is None
    assert ("8-bit 32768x32768 image with transparency does not fit a TIFF's 4 GB; use .png"
            in output.format_problem("tiff", 32768, 32768, 8, channels=4))
    # The save counts the image's own channels: with a 4 GB shrunk to fit 64 x 64 RGB but not
    # RGBA, the RGBA image is refused up front and nothing is left behind.
    monkeypatch.setattr(tiff, "MAX_BYTES", 64 * 64 * 3.5 * 1.01 + (1 << 20))
    save_image(Image.new("RGB", (64, 64)), tmp_path / "rgb.tif", metadata=METADATA)
    with pytest.raises(OutputUsage, match="with transparency does not fit"):
        save_image(Image.new("RGBA", (64, 64)), tmp_path / "rgba.tif", metadata=METADATA)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rgb.tif"]


def test_the_format_takes_the_names_the_suffixes_take():
    # --format tif or jpeg was refused ("format must be one of png, jpg, webp, tiff") though
    # -o x.tif and x.jpeg were taken; and --format JPEG disagreed with -o x.jpg.
    from hires.output import format_of

    assert Job(format="tif").validate().format == "tiff"
    assert Job(format="JPEG").validate().format == "jpg"
    assert format_of(Path("a.tif"), "png", "tif") == "tiff"
    assert format_of(Path("a.jpg"), "png", "JPEG") == "jpg"
    assert format_of(Path("a"), "png", "jpeg") == "jpg"
    with pytest.raises(JobError, match="format must be one of"):
        Job(format="gif").validate()


@pytest.mark.parametrize("kind", ["device", "fifo"])
def test_a_device_or_pipe_is_refused_not_given_a_png_beside_it(tmp_path, kind):
    # -o /dev/null wrote /dev/null.png: a temp file and a rename cannot write to a device.
    import os

    target = Path("/dev/null") if kind == "device" else tmp_path / "pipe"
    if kind == "fifo":
        os.mkfifo(target)
    with pytest.raises(OutputError, match="device or pipe.*-o - > /dev/null"):
        output_path(target, width=64, height=64, seed=1, fmt="png")
    assert not Path(f"{target}.png").exists()


def test_a_stream_redirected_to_a_file_is_refused_not_given_a_png_in_dev(tmp_path):
    """`hires gen ... -o /dev/stdout > img.png` wrote /dev/stdout.png (QA 189): there
    /dev/stdout is a regular file's link, so the device check passed."""
    import subprocess
    import sys

    code = ("from hires.output import output_path, OutputError\n"
            "for name in ('/dev/stdout', '/dev/stderr', '/dev/fd/1', '/proc/self/fd/2'):\n"
            "    try:\n"
            "        output_path(name, width=64, height=64, seed=1, fmt='png')\n"
            "    except OutputError as e:\n"
            "        print(e, file=sys.stderr)\n")
    with open(tmp_path / "out.txt", "wb") as out, open(tmp_path / "err.txt", "wb") as err:
        subprocess.run([sys.executable, "-c", "import sys\n" + code], stdout=out, stderr=err,
                       check=True)
    said = (tmp_path / "err.txt").read_text().splitlines()
    told = "names a stream, not a file: give a file's path (gen and up: `-o -` writes the image"
    assert len(said) == 4 and all(told in line for line in said), said
    assert not list(Path("/dev").glob("std*.png"))
    # through a folder linked to /dev, and as several images' template (QA 191)
    (tmp_path / "devlink").symlink_to("/dev")
    with pytest.raises(OutputError, match="names a stream, not a file"):
        output_path(tmp_path / "devlink" / "stdout", width=64, height=64, seed=1, fmt="png")
    from hires.job import Job
    from hires.runs import check_output_for_many

    with pytest.raises(OutputError, match="/dev/stderr names a stream"):
        check_output_for_many([Job()], "/dev/stderr", True)
    # /dev/shm is a folder, and files go there
    if Path("/dev/shm").is_dir():
        shm = output_path("/dev/shm/x.png", width=64, height=64, seed=1, fmt="png")
        assert shm == Path("/dev/shm/x.png")


@pytest.mark.parametrize("fmt", ["jpg", "png", "webp", "tiff"])
def test_a_short_write_is_an_error_not_a_cut_image_kept_as_whole(tmp_path, fmt):
    """Under a file-size limit (as a full disk) a JPEG was cut at the limit and kept under its
    name with exit 0: Pillow's encoder ignored the short write to its file descriptor."""
    import subprocess
    import sys

    script = f"""
import resource, sys
import numpy as np
from PIL import Image
from hires.output import OutputError, save_image
# ~70 KB as JPEG: within Pillow's first buffer, whose cut write went unnoticed
noise = np.random.default_rng(0).integers(0, 256, (160, 160, 3), dtype=np.uint8)
resource.setrlimit(resource.RLIMIT_FSIZE, (20480, 20480))  # Python ignores SIGXFSZ
try:
    save_image(Image.fromarray(noise), sys.argv[1], fmt="{fmt}")
except OutputError as e:
    print("refused:", e)
"""
    out = tmp_path / f"noise.{fmt}"
    said = subprocess.run([sys.executable, "-c", script, str(out)], capture_output=True,
                          text=True, timeout=120)
    assert said.returncode == 0, said.stderr
    assert said.stdout.startswith(f"refused: cannot write {out}: File too large"), said.stdout
    assert list(tmp_path.iterdir()) == []  # neither the image nor its temporary file


@pytest.mark.parametrize("suffix", [".jfif", ".jpe", ".JFIF", ".jif"])
def test_jpegs_other_suffixes_are_jpegs(tmp_path, suffix, asked):
    """x.jfif was written as PNG bytes under x.jfif.png; `-o y.jpe --quality 80` was refused
    as y.jpe.png."""
    kw = {"width": 8, "height": 8, "seed": 1, "fmt": "png"}
    assert output_path(tmp_path / f"x{suffix}", **kw) == tmp_path / f"x{suffix}"
    path = save_image(picture(), tmp_path / f"x{suffix}", metadata=METADATA, quality=80)
    with Image.open(path) as im:
        assert im.format == "JPEG"
    assert read_metadata(path)["hires"] == METADATA
    from tests.helpers_cli import cli

    out = tmp_path / f"y{suffix}"
    made = cli("gen", "a fox", "--model", "tiny", "--size", "256", "--steps", "1", "--seed", "2",
               "-o", out, "--quality", "80", "-q")
    assert made.exit_code == 0, made.stderr
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("y")] == [out.name]
    with Image.open(out) as im:
        assert im.format == "JPEG"
    assert read_metadata(out)["hires"]["job"]["format"] == "jpg"


def test_a_format_refusal_says_what_is_at_fault_and_what_to_do(tmp_path, asked, tiny):
    """`size=16384, format='webp'` was refused "with depth=8", which has nothing to do with
    it; a preset's 16 bits (print-a2) refused a .jpg without saying that --depth 8 fixes it."""
    import numpy as np

    import hires
    from hires.output import OutputUsage
    from hires.pipeline import Result, StageReport
    from tests.helpers_cli import cli

    with pytest.raises(JobError) as refused:
        hires.generate("a fox", components=tiny, size=16384, format="webp", steps=1)
    assert "depth" not in str(refused.value)
    assert "16384x16384" in str(refused.value) and "use png, tiff or jpg" in str(refused.value)
    with pytest.raises(JobError, match=r"^format='jpg' with depth=16: .* or pass depth=8 for "
                                       r"an 8-bit JPEG$"):
        hires.generate("a fox", components=tiny, size=256, depth=16, format="jpg", steps=1)
    made = cli("gen", "fox", "--preset", "print-a2", "--model", "tiny", "-o", tmp_path / "x.jpg")
    assert made.exit_code == 2
    assert "JPEG holds 8 bits a channel" in made.stderr and "pass --depth 8" in made.stderr
    assert "preset" in made.stderr
    deep = Result(picture(), JOB, None, [StageReport(0, 64, 48, 1.0, 1, 1, 0.1, None)],  # type: ignore[arg-type]
                  0.1, None, pixels16=np.zeros((48, 64, 3), np.uint16))
    with pytest.raises(OutputUsage, match=r"\.tif file, or a JPEG made with depth=8$"):
        deep.save(tmp_path / "deep.jpg")
    assert not list(tmp_path.glob("*.jpg"))


def test_a1111_text_with_a_negative_of_several_lines_and_a_schedule_type():
    """The negative's later lines went into the prompt; 'Schedule type: Karras' (A1111 1.9
    on) was read as no karras."""
    from hires.output import parameters_text, parse_parameters

    text = ("a castle\non a hill\nNegative prompt: blurry,\nlowres, bad hands\n"
            "Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 3, "
            "Size: 512x768")
    values = parse_parameters(text)
    assert values["prompt"] == "a castle\non a hill"
    assert values["negative"] == "blurry,\nlowres, bad hands"
    assert (values["sampler"], values["karras"]) == ("dpmpp-2m", True)
    job = {"prompt": "a fox", "negative": "ugly\nsecond line", "steps": 4, "seed": 1}
    assert parse_parameters(parameters_text(job, 256, 256))["negative"] == "ugly\nsecond line"


def test_a1111_seed_minus_1_is_a_random_seed_not_an_error():
    """--from such an image was refused: 'seed must be between 0 and ..., got -1'."""
    from hires.output import parse_parameters

    assert "seed" not in parse_parameters("a fox\nSteps: 20, Seed: -1, Size: 512x512")
    assert parse_parameters("a fox\nSteps: 20, Seed: 5, Size: 512x512")["seed"] == 5


@pytest.mark.parametrize("template", ["{seed:c}.png", "{index:c}.png", "{width:>5c}.png"])
def test_a_template_may_not_make_a_number_a_character(template):
    """`{seed:c}` crashed (OverflowError), `{index:c}` made a NUL, a small seed a control
    character in the name."""
    from hires.output import OutputError, output_path

    with pytest.raises(OutputError, match=r"makes a number a character \(type c\)"):
        output_path(template, width=64, height=64, seed=5, fmt="png")


def test_a_suffix_against_format_names_the_whole_path(tmp_path, monkeypatch):
    """`-o 't/{prompt}/{seed}.png' --format jpg` said '-o 7.png names a PNG file': not where
    the user looks (the folder of a template's filling dropped)."""
    from helpers_cli import assert_usage_error, cli

    monkeypatch.chdir(tmp_path)
    result = cli("gen", "A Fox", "--model", "tiny", "--size", "256", "--seed", "7",
                 "--format", "jpg", "-o", "t/{prompt}/{seed}.png", "--dry-run")
    assert_usage_error(result, "-o t/a-fox/7.png names a PNG file but --format is jpg")
