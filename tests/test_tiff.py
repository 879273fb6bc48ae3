"""hires.tiff: TIFFs written in parallel strips read back exactly, by Pillow and by tifffile."""

import io

import numpy as np
import pytest
import tifffile
from PIL import Image

from hires import output, strips, tiff
from hires.job import Job


def noisy(mode: str, width: int, height: int) -> Image.Image:
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (height, width, len(mode)), dtype=np.uint8)
    a[: height // 3] = 17  # a flat band
    return Image.fromarray(a[..., 0] if mode == "L" else a, mode)


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA"])
@pytest.mark.parametrize("size", [(1, 1), (97, 1), (1, 53), (129, 67)])
def test_write_tiff_round_trips_pixels_over_many_strips(monkeypatch, mode, size):
    monkeypatch.setattr(strips, "STRIP_BYTES", 700)  # many strips even for tiny images
    image = noisy(mode, *size)
    buf = io.BytesIO()
    tiff.write_tiff(image, buf, {270: "a description"}, threads=3)
    buf.seek(0)
    with Image.open(buf) as back:
        back.load()
        assert back.mode == mode and back.size == image.size
        assert np.array_equal(np.asarray(back), np.asarray(image))
        assert back.tag_v2[270] == "a description" and back.tag_v2[317] == 2  # predictor
    buf.seek(0)
    assert np.array_equal(tifffile.imread(buf).reshape(np.asarray(image).shape),
                          np.asarray(image))


def test_tiff_bytes_do_not_depend_on_threads(monkeypatch):
    monkeypatch.setattr(strips, "STRIP_BYTES", 1000)
    image = noisy("RGB", 200, 90)
    one, many = io.BytesIO(), io.BytesIO()
    tiff.write_tiff(image, one, threads=1)
    tiff.write_tiff(image, many, threads=4)
    assert one.getvalue() == many.getvalue()


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
