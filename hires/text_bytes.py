"""Text from bytes a user gave (a job file, a preset, prompts or jobs on stdin): UTF-8, or
UTF-16 or UTF-32 where a byte-order mark says so (Windows' "Unicode" text files, PowerShell's
pipes); an error names the line and says how to fix it."""

from __future__ import annotations

import re

# Byte-order marks, UTF-32's first: its little-endian mark starts with UTF-16's.
MARKS = ((b"\xff\xfe\x00\x00", "utf-32"), (b"\x00\x00\xfe\xff", "utf-32"),
         (b"\xff\xfe", "utf-16"), (b"\xfe\xff", "utf-16"))
LATIN1_FIX = "iconv -f latin1 -t utf-8 converts Latin-1"
_BREAK = re.compile(r"\r\n|\r|\n")  # a line break, as a text file's lines are read


def marked(data: bytes) -> str | None:
    """The encoding a byte-order mark at the start of `data` names (utf-16, utf-32), if any."""
    return next((name for mark, name in MARKS if data.startswith(mark)), None)


def unmarked(data: bytes) -> str | None:
    """'UTF-16LE', 'UTF-16BE', 'UTF-32LE' or 'UTF-32BE' for text saved so without a
    byte-order mark, else None: UTF-32's characters have two NUL bytes each (all but emoji
    and the like); UTF-16's Latin letters one each, and a text's last line break is one (in
    UTF-16LE a newline and a NUL: CJK letters have none)."""
    head = data[:400]
    if len(head) < 2 or marked(head):
        return None
    if len(head) % 4 == 0 or len(head) == 400:
        groups = [head[i:i + 4] for i in range(0, len(head) - 3, 4)]
        for name, zeros in (("UTF-32LE", slice(2, 4)), ("UTF-32BE", slice(0, 2))):
            if groups and sum(g[zeros] == b"\0\0" for g in groups) >= 0.9 * len(groups):
                return name
    for name, zeros, letters, end in (("UTF-16LE", head[1::2], head[0::2], b"\n\0"),
                                      ("UTF-16BE", head[0::2], head[1::2], b"\0\n")):
        latin = len(head) >= 4 and zeros.count(0) >= 0.9 * len(zeros) and \
            letters.count(0) <= 0.1 * len(letters)
        # ends in a line break, every NUL a high byte: a CJK text's (a NUL-ended list's NULs
        # fall anywhere)
        ended = len(data) % 2 == 0 and data.endswith(end) and \
            letters.count(0) <= 0.1 * len(letters)
        if latin or ended:
            return name
    return None


def unmarked_problem(name: str, what: str) -> str:
    """The error for `what` in UTF-16 or UTF-32 (`name`) without its byte-order mark."""
    return (f"{what}: {name} text without its byte-order mark; save it as UTF-8 "
            f"(iconv -f {name.lower()} -t utf-8 converts it)")


# What a file that is no text often is, by its first bytes: said, rather than Latin-1 advice
_BINARY_KINDS = ((b"\x89PNG", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"),
                 (b"II*\x00", "a TIFF image"), (b"MM\x00*", "a TIFF image"),
                 (b"GIF8", "a GIF image"), (b"%PDF", "a PDF"), (b"PK\x03\x04", "a zip file"),
                 (b"\x1f\x8b", "a gzip file"))


def binary_kind(data: bytes, nuls: bool = True) -> str | None:
    """'a PNG image' (or with `nuls`, 'binary data' for NUL bytes) where `data` is no text;
    None: it may be. A format's mark counts only where the bytes after it are no text: a
    prompt may start 'GIF89a' or 'BM'."""
    kind = next((kind for magic, kind in _BINARY_KINDS if data.startswith(magic)), None)
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        kind = "a WebP image"
    elif data[:2] == b"BM":
        kind = "a BMP image"
    elif data[:4] == b"\x00\x00\x01\x00":
        kind = "an ICO image"
    if kind and _binary(data[:64]):
        return kind
    return "binary data" if nuls and b"\x00" in data[:8192] and not marked(data) else None


def _binary(head: bytes) -> bool:
    """Whether `head` (a file's first bytes) holds what no text does: a NUL or another control
    byte than tab and line ends, or bytes that are not UTF-8 (before a character cut at its
    end)."""
    if any(b < 0x20 and b not in b"\t\n\r" for b in head):
        return True
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as e:
        return e.start < len(head) - 3
    return False


def decoded(data: bytes, what: str, fix: str, wanted: str = "a text file") -> str:
    """`data` as text (a UTF-8 byte-order mark dropped); ValueError naming `what` ("j.toml",
    "the jobs on stdin") and the bad line, and saying `fix` ("save it as UTF-8"); for bytes
    that are no text at all (an image), what they are and that `wanted` is needed."""
    # a PNG given as a preset was told to convert from Latin-1; a BMP's NULs read as UTF-32
    if kind := binary_kind(data, nuls=False):
        raise ValueError(f"{what}: {kind}, not text; give {wanted}")
    if name := unmarked(data):  # else read as a TOML error at line 1, column 2
        raise ValueError(unmarked_problem(name, what))
    if kind := binary_kind(data):
        raise ValueError(f"{what}: {kind}, not text; give {wanted}")
    encoding = marked(data)
    try:
        return data.decode(encoding or "utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as e:
        raise ValueError(problem(e, what, fix)) from None


def problem(error: UnicodeDecodeError, what: str, fix: str) -> str:
    """What `error` says of `what`'s bytes, in a line: where, and how to fix it."""
    encoding = marked(error.object)
    # Lines counted in the text before, as they are split: in UTF-16 a byte 0x0A is no line
    # break, and a lone '\r' is one.
    before = error.object[:error.start].decode(encoding or "utf-8", "replace")
    where = f"(line {len(_BREAK.findall(before)) + 1}, byte {error.start})"
    if encoding:  # its mark says which, and Latin-1 advice would garble it
        name = encoding.upper()
        return (f"{what}: {name} text (its byte-order mark says so), broken or cut short "
                f"{where}; give it whole, as {name} or UTF-8")
    return f"{what}: not UTF-8 text {where}; {fix} ({LATIN1_FIX})"
