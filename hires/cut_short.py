"""Whether an image file ends where its format says it does. hires writes its images whole
(a temporary file, then renamed), but a copy cut short keeps the record at its start, so a
run took it for the image made already and kept it."""

from __future__ import annotations

from pathlib import Path

PNG_END = b"IEND\xaeB`\x82"  # the IEND chunk's type and CRC: a PNG's last 8 bytes
JPEG_END = b"\xff\xd9"  # End Of Image


def cut_short(path: Path) -> str | None:
    """'cut short (N bytes, its end missing)' when the PNG, JPEG, WebP or TIFF at `path` ends
    before its format's end; None when it is whole, or is none of them (reading it says)."""
    try:
        with open(path, "rb") as f:
            head = f.read(12)
            size = f.seek(0, 2)
            f.seek(max(0, size - 16))
            tail = f.read()
    except OSError:
        return None
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        whole = tail.endswith(PNG_END)
    elif head.startswith(b"\xff\xd8"):
        whole = JPEG_END in tail  # a writer may pad after it
    elif head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        whole = size >= 8 + int.from_bytes(head[4:8], "little")
    elif head[:4] in (b"II*\0", b"MM\0*"):
        whole = _tiff_whole(path, size)
    else:
        return None
    return None if whole else f"cut short ({size:,} bytes, its end missing)"


def _tiff_whole(path: Path, size: int) -> bool:
    """Whether every strip (or tile) the TIFF's first directory lists lies in its `size`
    bytes; one whose directory cannot be read passes (reading its record fails first)."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            tags = image.tag_v2
            offsets = tags.get(273) or tags.get(324) or ()
            counts = tags.get(279) or tags.get(325) or ()
    except Exception:  # PIL raises many kinds for a damaged file
        return True
    return all(offset + count <= size for offset, count in zip(offsets, counts))
