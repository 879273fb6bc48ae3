"""A fast TIFF writer for 8- and 16-bit L, RGB and RGBA images: deflate strips on threads.

Why our own: Pillow hands TIFFs to libtiff, which deflates on one thread and, as Pillow calls
it, without a predictor; a 16K image took about 20 s and came out 70 % larger than our PNG.
TIFF's strips are independent zlib streams, so they compress in parallel as they are; each row
is first differenced horizontally (TIFF predictor 2, what Photoshop writes), which shrinks
photos and generated images about as much as PNG's filters. zlib level 1 with the RLE strategy,
as for PNG (hires.png). Classic (32-bit) TIFF: images up to 32768 px a side fit its 4 GB.
"""

from __future__ import annotations

import struct
import zlib
from fractions import Fraction

import numpy as np

from hires import strips

_PHOTOMETRIC = {"L": 1, "RGB": 2, "RGBA": 2}  # BlackIsZero, RGB
SHORT, LONG, ASCII, RATIONAL, UNDEFINED = 3, 4, 2, 5, 7
_SIZES = {SHORT: 2, LONG: 4, ASCII: 1, RATIONAL: 8, UNDEFINED: 1}
MAX_BYTES = 2**32 - 1
# XResolution, YResolution and ResolutionUnit are baseline tags (TIFF 6.0 requires them). A file
# made without --dpi holds 72 with ResolutionUnit 1, "no absolute unit": TIFF 6's way to say the
# pixels have no size on paper (only their 1:1 aspect). Print software (Photoshop, InDesign,
# libtiff's tiffinfo "(unitless)", exiftool "Resolution Unit: None") reads it as no dpi given
# and picks its own; 72 is what it shows where it must show a number. 72 dpi in inches would
# instead claim a 16K image is a 5.7 m print. hires reads unit 1 as no dpi (output.read_metadata).
NO_DPI, UNIT_NONE, UNIT_INCH = 72, 1, 2


def can_write(image: strips.Pixels) -> bool:
    """8-bit L/RGB/RGBA without an ICC profile (Pillow does the rest), or an array of 8- or
    16-bit samples; either within a classic TIFF's 4 GB."""
    width, height, mode, bits = strips.layout(image)
    plain = isinstance(image, np.ndarray) or (
        image.mode in _PHOTOMETRIC and "icc_profile" not in image.info)
    return plain and fits(width, height, len(mode), bits)


def fits(width: int, height: int, channels: int, bits: int) -> bool:
    """Whether such an image, even incompressible, fits a classic TIFF's 4 GB (hires writes no
    BigTIFF: many print shops' and older tools' readers cannot open one)."""
    return width * height * channels * bits / 8 * 1.01 + (1 << 20) < MAX_BYTES


def _ascii(text: str | bytes) -> bytes:
    # TIFF 6 says ASCII, but exiftool, Photoshop and most readers take UTF-8 there: a prompt
    # "灯台 au café" kept whole, not "?? au caf?" (the JSON is ASCII already).
    return (text if isinstance(text, bytes) else text.encode("utf-8")) + b"\0"


def write_tiff(image: strips.Pixels, f, texts: dict[int, str | bytes] | None = None,
               threads: int | None = None, dpi: float | None = None,
               icc: bytes | None = None) -> None:
    """Write `image` (see `can_write`) as a deflate-compressed TIFF to the binary file `f`,
    with `texts` as ASCII tags (tag number: text, written as UTF-8), `dpi` as its resolution
    and `icc` as its colour profile, strips compressed in parallel."""
    width, height, mode, bits = strips.layout(image)
    channels = len(mode)
    rows = strips.rows_per_strip(width * channels * bits // 8)
    spans = [(y, min(y + rows, height)) for y in range(0, height, rows)]

    def strip(i: int) -> bytes:
        y0, y1 = spans[i]
        raw = strips.rows(image, y0, y1).reshape(y1 - y0, width, channels)
        diff = np.empty_like(raw)
        # predictor 2: each sample minus the one left of it, mod 256 (mod 65536 at 16 bits)
        diff[:, :1] = raw[:, :1]
        np.subtract(raw[:, 1:], raw[:, :-1], out=diff[:, 1:])
        deflate = zlib.compressobj(1, zlib.DEFLATED, 15, 9, zlib.Z_RLE)
        return deflate.compress(diff.astype("<u2") if bits == 16 else diff) + deflate.flush()

    f.write(b"II*\0" + struct.pack("<I", 0))  # the first IFD's offset, filled in at the end
    offsets, counts = [], []
    position = 8
    for packed in strips.in_order(strip, len(spans), threads):
        f.write(packed)
        offsets.append(position)
        counts.append(len(packed))
        position += len(packed)
    if position + (1 << 20) > MAX_BYTES:
        raise ValueError("the image does not fit a classic TIFF's 4 GB")
    position += position % 2
    f.write(b"\0" * (position - offsets[-1] - counts[-1]))  # the IFD starts on a word
    tags: list[tuple[int, int, list[int] | bytes]] = [
        (256, LONG, [width]), (257, LONG, [height]), (258, SHORT, [bits] * channels),
        (259, SHORT, [8]),  # Adobe deflate
        (262, SHORT, [_PHOTOMETRIC[mode]]), (273, LONG, offsets),
        (277, SHORT, [channels]), (278, LONG, [rows]), (279, LONG, counts),
        (284, SHORT, [1]),  # samples interleaved
        (317, SHORT, [2]),  # horizontal differencing
    ]
    if mode == "RGBA":
        tags.append((338, SHORT, [2]))  # unassociated alpha
    # X and Y resolution, in inches; without a dpi, NO_DPI's (TIFF 6 requires the tags)
    per_inch = Fraction(NO_DPI if dpi is None else dpi).limit_denominator(10000)
    resolution = struct.pack("<II", per_inch.numerator, per_inch.denominator)
    tags += [(282, RATIONAL, resolution), (283, RATIONAL, resolution),
             (296, SHORT, [UNIT_NONE if dpi is None else UNIT_INCH])]
    if icc is not None:
        tags.append((34675, UNDEFINED, icc))  # InterColorProfile
    tags += [(tag, ASCII, _ascii(text)) for tag, text in (texts or {}).items()]
    tags.sort()
    _write_ifd(f, position, tags)
    f.seek(4)
    f.write(struct.pack("<I", position))
    f.seek(0, 2)


def _write_ifd(f, position: int, tags: list[tuple[int, int, list[int] | bytes]]) -> None:
    """The IFD at `position` (where `f` is): entries, then the values that do not fit in one."""
    extra = position + 2 + 12 * len(tags) + 4  # where out-of-line values go
    entries, values = [], []
    for tag, kind, value in tags:
        data = value if isinstance(value, bytes) else struct.pack(
            f"<{len(value)}{'H' if kind == SHORT else 'I'}", *value)
        count = len(data) // _SIZES[kind]
        if len(data) <= 4:
            entries.append(struct.pack("<HHI", tag, kind, count) + data.ljust(4, b"\0"))
        else:
            entries.append(struct.pack("<HHII", tag, kind, count, extra))
            data += b"\0" * (len(data) % 2)  # values start on a word
            values.append(data)
            extra += len(data)
    f.write(struct.pack("<H", len(tags)) + b"".join(entries) + struct.pack("<I", 0))
    f.write(b"".join(values))
