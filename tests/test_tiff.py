"""hires.tiff through save_image: metadata and the Pillow fallback (the writer's pixels, read
back by Pillow and tifffile, and its bytes across threads: tests/test_gpu_path.py, with the PNG
writer's)."""

import numpy as np
from PIL import Image

from hires import output, tiff
from hires.job import Job


def noisy(mode: str, width: int, height: int) -> Image.Image:
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (height, width, len(mode)), dtype=np.uint8)
    a[: height // 3] = 17  # a flat band
    return Image.fromarray(a[..., 0] if mode == "L" else a, mode)


def test_a_saved_tiff_keeps_its_metadata_and_others_go_through_pillow(tmp_path):
    job = Job(prompt="a fox at dawn", seed=4)
    metadata = {"hires": "0.1.0", "job": job.to_dict(), "result": {"seed": 4}}
    image = noisy("RGB", 64, 48)
    path = output.save_image(image, tmp_path / "fox.tiff", metadata=metadata)
    back = output.read_metadata(path)
    assert back["hires"] == metadata and back["parameters"].startswith("a fox at dawn")
    assert output.job_values_from_image(path)["seed"] == 4
    assert np.array_equal(np.asarray(Image.open(path)), np.asarray(image))
    palette = image.convert("P")  # not ours to write: Pillow's libtiff does it
    assert not tiff.can_write(palette)
    path = output.save_image(palette, tmp_path / "p.tiff", metadata=metadata)
    assert output.read_metadata(path)["hires"] == metadata


def test_a_prompt_in_any_script_is_kept_whole_in_the_image_description(tmp_path):
    """ImageDescription (tag 270) made '灯台 au café' '?? au caf?': written as ASCII with
    anything else replaced. UTF-8 there is what exiftool and most readers take."""
    import tifffile

    prompt = "灯台 au café"
    job = Job(prompt=prompt, negative="brûlé", seed=3, model="tiny")
    metadata = {"hires": "test", "job": job.to_dict(), "result": {"seed": 3}}
    for name, image in (("ours.tif", noisy("RGB", 40, 30)),  # hires.tiff writes it
                        ("pillows.tif", noisy("RGB", 40, 30).convert("P"))):  # Pillow does
        path = output.save_image(image, tmp_path / name, metadata=metadata)
        assert f"{prompt}\nNegative prompt: brûlé\n".encode() in path.read_bytes()
        with tifffile.TiffFile(path) as tif:  # another reader: UTF-8 there
            assert tif.pages[0].tags[270].value.startswith(f"{prompt}\nNegative prompt: brûlé")
        meta = output.read_metadata(path)
        assert meta["parameters"].startswith(f"{prompt}\nNegative prompt: brûlé\n")
        assert meta["hires"] == metadata  # the JSON tag as it was
    # A TIFF another program wrote in Latin-1 is read as it is, not refused (as parameters
    # where it reads as A1111's: its last line 'Steps: N, ...')
    text = "café\nSteps: 20, Seed: 1"
    Image.new("RGB", (8, 8)).save(tmp_path / "latin.tif",
                                  tiffinfo={270: text.encode("latin-1")})
    assert output.read_metadata(tmp_path / "latin.tif")["parameters"] == text
