"""The banded Lanczos resize (hires.images.resize_lanczos) and `fit`, which uses it: bit for bit
Pillow's one whole `Image.resize`, on small real photos cut into bands of a row or two."""

import numpy as np
import pytest
from PIL import Image
from skimage import data

from hires import images, strips
from hires.images import resize_lanczos
from hires.pipeline import fit

LANCZOS = Image.Resampling.LANCZOS


@pytest.fixture(scope="module")
def astronaut():
    """skimage's astronaut, 512 x 512 RGB."""
    return Image.fromarray(data.astronaut())


@pytest.fixture(scope="module")
def coffee():
    """skimage's coffee, 600 x 400 RGB."""
    return Image.fromarray(data.coffee())


@pytest.fixture
def counts(monkeypatch):
    """The list of how many bands each resize made (none where it made one whole resize)."""
    made: list[int] = []
    in_order = strips.in_order

    def counting(work, count, threads=None):
        made.append(count)
        return in_order(work, count, threads)

    monkeypatch.setattr(strips, "in_order", counting)
    return made


@pytest.fixture
def bands(counts, monkeypatch):
    """Bands of one output row (rounded up to the height ratio's step), so that every row's
    filter reads rows of the bands beside it; returns `counts`."""
    monkeypatch.setattr(images, "BAND_BYTES", 1)
    return counts


def assert_same(got: Image.Image, want: Image.Image) -> None:
    """The same mode, size and bytes; else which rows differ, and by how much."""
    assert (got.mode, got.size) == (want.mode, want.size)
    if got.tobytes() != want.tobytes():
        diff = np.abs(np.asarray(got, np.int32) - np.asarray(want, np.int32))
        rows = np.unique(np.nonzero(diff)[0])
        pytest.fail(f"{len(rows)} rows differ (first {rows[:5].tolist()}), by up to {diff.max()}")


# (source size, output size, banded?): banded wherever the height ratio is exact in binary
CASES = [
    ((101, 67), (202, 134), True),  # x2, odd sizes: the pipeline's stages
    ((96, 64), (192, 128), True),
    ((120, 90), (160, 120), True),  # x4/3
    ((75, 50), (121, 80), True),  # x1.6 down, x1.61 across
    ((100, 61), (100, 122), True),  # down only: no pass across
    ((200, 151), (100, 75), False),  # / 2.01: not exact in binary, one whole resize
    ((150, 120), (100, 80), True),  # / 1.5
    ((60, 301), (50, 150), False),  # tall, shrunk down more than across (Pillow 13: down first)
    ((60, 300), (50, 150), True),  # the same, / 2 exactly
    ((33, 208), (31, 104), True),  # down first, odd widths
    ((100, 80), (150, 120), False),  # x1.5: 2/3 of a row a row, not exact in binary
    ((64, 1), (128, 2), False),  # one source row
    ((80, 40), (160, 1), False),  # one output row
    ((1, 64), (2, 128), True),  # one source column
    ((64, 48), (1, 96), True),  # one output column
    ((90, 64), (180, 64), False),  # across only: nothing to cut
]


@pytest.mark.parametrize("mode", ["RGB", "L"])
@pytest.mark.parametrize(("source", "size", "banded"), CASES)
def test_bands_match_one_whole_resize(astronaut, coffee, bands, mode, source, size, banded):
    photo = astronaut if source[0] >= source[1] else coffee
    image = photo.resize(source, Image.Resampling.BICUBIC).convert(mode)
    got = resize_lanczos(image, size, threads=4)
    assert_same(got, image.resize(size, LANCZOS))
    assert (max(bands, default=1) > 1) == banded


def test_image_smaller_than_one_band(astronaut, counts):
    # On one thread the band is the whole height (under BAND_BYTES): one whole resize
    image = astronaut.resize((120, 90), Image.Resampling.BICUBIC)
    assert_same(resize_lanczos(image, (240, 180), threads=1), image.resize((240, 180), LANCZOS))
    assert counts == []


def test_last_band_shorter(astronaut, counts, monkeypatch):
    monkeypatch.setattr(images, "BAND_BYTES", 4 * 160 * 40)  # 40 rows: 100 = 40 + 40 + 20
    image = astronaut.resize((80, 50), Image.Resampling.BICUBIC)
    assert_same(resize_lanczos(image, (160, 100), threads=2), image.resize((160, 100), LANCZOS))
    assert counts == [3]


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P", "I;16", "F"])
def test_other_modes_are_one_whole_resize(astronaut, bands, mode):
    image = astronaut.resize((64, 48), Image.Resampling.BICUBIC).convert(mode)
    assert_same(resize_lanczos(image, (128, 96), threads=4), image.resize((128, 96), LANCZOS))
    assert bands == []


@pytest.mark.parametrize(("source", "target"), [((101, 67), (202, 134)), ((96, 64), (150, 150)),
                                                 ((512, 512), (256, 128)), ((64, 64), (64, 64))])
def test_fit_is_cover_and_centre_crop(astronaut, bands, source, target):
    image = astronaut.resize(source, Image.Resampling.BICUBIC)
    width, height = target
    scale = max(width / image.width, height / image.height)
    size = (max(width, round(image.width * scale)), max(height, round(image.height * scale)))
    whole = image.resize(size, LANCZOS) if size != image.size else image
    left, top = (size[0] - width) // 2, (size[1] - height) // 2
    assert_same(fit(image, width, height), whole.crop((left, top, left + width, top + height)))
