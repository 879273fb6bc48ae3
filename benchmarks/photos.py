"""The photos the benchmarks run on: scikit-image's (`skimage.data`), which ship inside it, so
nothing is downloaded. `coffee` and `chelsea` are held out of the tiny VAE's training
(tools/train_tiny_vae.py)."""

from __future__ import annotations

import numpy as np
from PIL import Image


def photo(name: str) -> np.ndarray:
    """skimage.data's `name` photo, H x W x 3 uint8."""
    from skimage import data

    return getattr(data, name)()


def cropped(name: str, multiple: int) -> np.ndarray:
    """The photo cropped from its top left to sides that are multiples of `multiple` px."""
    image = photo(name)
    h, w = image.shape[0] // multiple * multiple, image.shape[1] // multiple * multiple
    return np.ascontiguousarray(image[:h, :w])


def resized(name: str, *, width: int | None = None, long_side: int | None = None,
            multiple: int = 1) -> np.ndarray:
    """The photo Lanczos-resized to `width` px wide, or `long_side` px on its long side; the
    other side keeps the aspect, rounded to a multiple of `multiple` px (at least one)."""
    image = Image.fromarray(photo(name))
    w, h = image.size

    def other(side: int, ratio: float) -> int:
        return max(multiple, round(side * ratio / multiple) * multiple)

    if width is not None:
        size = (width, other(width, h / w))
    elif w >= h:
        size = (long_side, other(long_side, h / w))
    else:
        size = (other(long_side, w / h), long_side)
    return np.asarray(image.resize(size, Image.Resampling.LANCZOS))
