"""Whether an image file ends where its format says it does. hires writes its images whole
(a temporary file, then renamed), but a copy cut short keeps the record at its start, so a
run took it for the image made already and kept it. Bytes after the image's end (a camera's
trailer, padding) are no fault."""

from __future__ import annotations

import mmap
import struct
import warnings
from pathlib import Path

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def cut_short(path: Path) -> str | None:
    """'cut short (N bytes, its end missing)' when the PNG, JPEG, WebP or TIFF at `path` ends
    before its format's end; None when it is whole, or is none of them (reading it says)."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, 2)
            if size < 12:
                return None
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
                whole = _whole(data, size, path)
    except (OSError, ValueError):  # not a regular file, or none to map
        return None
    return None if whole in (True, None) else f"cut short ({size:,} bytes, its end missing)"


def cut_with_its_record(path: Path) -> str | None:
    """`cut_short` for a TIFF or a WebP alone: the formats whose record hires writes after the
    pixels, so that a cut takes it too and one without a record may still be a job's own (a
    PNG's and a JPEG's come first: one cut, with none, was never hires')."""
    try:
        with open(path, "rb") as f:
            head = f.read(12)
    except OSError:
        return None
    late = head[:4] in (b"II*\0", b"MM\0*") or (head[:4] == b"RIFF" and head[8:12] == b"WEBP")
    return cut_short(path) if late else None


def _whole(data: mmap.mmap, size: int, path: Path) -> bool | None:
    """Whether the image in `data` reaches its end; None for a format not judged here."""
    if data[:8] == PNG_SIGNATURE:
        return _png_whole(data, size)
    if data[:2] == b"\xff\xd8":
        return _jpeg_whole(data, size)
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return size >= 8 + int.from_bytes(data[4:8], "little")
    if data[:4] in (b"II*\0", b"MM\0*"):
        return _tiff_whole(data, size, path)
    return None


def _png_whole(data: mmap.mmap, size: int) -> bool:
    """Every chunk, from the signature on, is there up to IEND's CRC (its length, type, data
    and CRC: 12 bytes more than its data)."""
    at = 8
    while at + 8 <= size:
        length, kind = struct.unpack_from(">I4s", data, at)
        at += 12 + length
        if kind == b"IEND":
            return at <= size
    return False


def _jpeg_whole(data: mmap.mmap, size: int) -> bool | None:
    """The segments before the first scan are there, and the End Of Image marker after it:
    in the scan's coded data 0xFF is always followed by 0x00 or a restart marker, so the
    first FF D9 after it is the end (an EXIF thumbnail's own FF D9 lies inside its segment,
    which is skipped)."""
    at = 2
    while at + 4 <= size:
        if data[at] != 0xFF:
            return None  # no marker where one must be: damaged, not judged by its end
        marker = data[at + 1]
        if marker == 0xFF:  # fill bytes before a marker
            at += 1
            continue
        if marker == 0xD9:
            return True
        length = struct.unpack_from(">H", data, at + 2)[0]
        if marker == 0xDA:  # Start Of Scan: the coded data follows its header
            return data.find(b"\xff\xd9", at + 2 + length) != -1
        at += 2 + length
    return False


# Bytes of one value of each TIFF field type (BYTE, ASCII, SHORT, LONG, RATIONAL, ..., IFD8).
_TIFF_TYPE_BYTES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8,
                    13: 4, 16: 8, 17: 8, 18: 8}


def _tiff_whole(data: mmap.mmap, size: int, path: Path) -> bool | None:
    """Whether the TIFF's first directory, the values it holds out of its entries and every
    strip (or tile) it lists lie in its `size` bytes; None when its directory is there but
    cannot be read (reading its record fails first)."""
    from PIL import Image

    from hires.images import pixel_limit

    # hires writes the directory after the strips, and its values after it, the record last:
    # a copy cut short lost them, and was refused as anyone's file rather than remade.
    order = "<" if data[:2] == b"II" else ">"
    first = struct.unpack_from(order + "I", data, 4)[0]
    if first < 8:  # within the header: damaged, not judged by its end
        return None
    if first + 2 > size:
        return False
    count = struct.unpack_from(order + "H", data, first)[0]
    if first + 2 + 12 * count + 4 > size:
        return False
    for at in range(first + 2, first + 2 + 12 * count, 12):
        kind, n, offset = struct.unpack_from(order + "2xHII", data, at)
        length = n * _TIFF_TYPE_BYTES.get(kind, 1)
        if length > 4 and offset + length > size:  # a value held out of the entry
            return False

    try:
        with warnings.catch_warnings():  # Pillow's own on a damaged file are no reader's
            warnings.simplefilter("ignore")
            with pixel_limit(None), Image.open(path) as image:  # its header alone
                tags = image.tag_v2
                offsets = tags.get(273) or tags.get(324) or ()
                counts = tags.get(279) or tags.get(325) or ()
    except Exception:  # Pillow raises many kinds for a damaged file
        return None
    return all(offset + count <= size for offset, count in zip(offsets, counts))
