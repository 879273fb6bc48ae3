"""Compressing an image strip by strip on threads, handed back in order (zlib releases the GIL,
so threads use every core): what the PNG and TIFF writers share."""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

import numpy as np
from PIL import Image

STRIP_BYTES = 4 << 20  # raw bytes per strip: enough work per thread, little memory
MAX_THREADS = 16

T = TypeVar("T")
Pixels = Image.Image | np.ndarray  # an 8-bit Pillow image, or H x W x C uint8 / uint16 samples
MODES = {1: "L", 3: "RGB", 4: "RGBA"}  # channels -> mode


def layout(image: Pixels) -> tuple[int, int, str, int]:
    """(width, height, mode, bits per sample) of a Pillow image or an array of samples."""
    if isinstance(image, np.ndarray):
        channels = image.shape[2] if image.ndim == 3 else 1
        return image.shape[1], image.shape[0], MODES[channels], image.dtype.itemsize * 8
    image.load()
    return image.width, image.height, image.mode, 8


def rows(image: Pixels, top: int, bottom: int) -> np.ndarray:
    """Rows top..bottom of the image as an array (of a Pillow image, only those rows copied)."""
    if isinstance(image, np.ndarray):
        return image[top:bottom]
    return np.asarray(image.crop((0, top, image.width, bottom)))


def rows_per_strip(row_bytes: int) -> int:
    """Rows in one strip of about STRIP_BYTES."""
    return max(1, STRIP_BYTES // max(1, row_bytes))


def cores() -> int:
    """CPU cores this process may run on."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return cores or 1


def in_order(work: Callable[[int], T], count: int, threads: int | None = None) -> Iterator[T]:
    """work(0), work(1), ... work(count - 1), run on threads and yielded in order; a couple of
    results per thread are in flight, never the whole compressed image."""
    workers = max(1, min(threads or cores(), MAX_THREADS, count))
    pool = ThreadPoolExecutor(workers, thread_name_prefix="strips")
    pending: deque[Future] = deque()
    try:
        for i in range(count):
            pending.append(pool.submit(work, i))
            while len(pending) > 2 * workers or (pending and i == count - 1):
                yield pending.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
