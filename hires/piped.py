"""An input image piped to hires as bytes on stdin (`cat photo.png | hires up - ...`).

An upscale reads its input more than once (checked first, then loaded for the run), and a pipe
can be read only once, so the bytes are kept in a private temporary file while the command runs,
removed when it ends (an error and Ctrl-C too). Jobs record such an input as "-" with its
sha256, never by that file's name: `hires gen --from` takes the same image on stdin again.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import tempfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from hires import leftovers
from hires.images import ACCEPTED, ImageInputError, input_size, load_input
from hires.text_bytes import unmarked

if TYPE_CHECKING:
    from hires.images import InputImage
    from hires.job import Job

STDIN = "-"  # what a job records as its image when the image came on stdin

# A pipe gives no size up front, so the bytes are counted as they come, into TMPDIR. 2 GiB is
# more than a 16K PNG takes (up to 0.8 GB); a larger file (an uncompressed 32768 px TIFF) is
# better given by its path, which costs no copy.
MAX_BYTES = 2 << 30

# Enough of the stream to tell an image from text: WebP's is the longest (RIFF, size, WEBP).
HEAD_BYTES = 12
_SIGNATURES = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"II*\x00", b"MM\x00*", b"II+\x00",
               b"MM\x00+")

_held: dict[str, Path] = {}  # STDIN -> the temporary file, while `held` runs


def read_head(stream: BinaryIO) -> bytes:
    """The stream's first HEAD_BYTES (fewer at its end), for `looks_like_image`."""
    head = b""
    while len(head) < HEAD_BYTES:
        chunk = stream.read(HEAD_BYTES - len(head))
        if not chunk:
            break
        head += chunk
    return head


def looks_like_image(head: bytes) -> bool:
    """Whether a stream that starts with `head` is a PNG, JPEG, WebP or TIFF file."""
    return head.startswith(_SIGNATURES) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP")


def looks_binary(head: bytes) -> bool:
    """Whether a stream that starts with `head` is an image or other binary data, not text (a
    list of paths): an accepted image's signature, or a control byte no text has. Other
    images (GIF, BMP, AVIF) have one in their first bytes, so Pillow then says what they are.
    Paths each ended by a NUL (`find -print0`) are text, and so is UTF-16 (said later)."""
    if looks_like_image(head) or head.startswith((b"GIF87a", b"GIF89a")):
        return True
    if unmarked(head) or (not head.startswith(b"\0") and _nul_ended(head)):
        return False
    return any(b < 0x20 and b not in b"\t\n\v\f\r" or b == 0x7F for b in head)


def _nul_ended(head: bytes) -> bool:
    """Whether `head` can start NUL-ended text: its only control bytes are NULs, never three
    together (binary headers hold runs of them: a safetensors file's length, a BMP's; a list
    may hold an empty entry or two)."""
    return b"\0" in head and b"\0\0\0" not in head and not any(
        b < 0x20 and b not in b"\0\t\n\r" or b == 0x7F for b in head)


@contextlib.contextmanager
def spooled(stream: BinaryIO, head: bytes = b"") -> Iterator[Path]:
    """`head` (read already) and the rest of `stream` in a temporary file only this user can
    read, removed when the block ends; at most MAX_BYTES, else an ImageInputError."""
    try:
        folder = Path(tempfile.gettempdir())
    except OSError as e:  # "No usable temporary directory found in [...]": none writable
        raise _no_room(Path(os.environ.get("TMPDIR") or "/tmp"), e) from None
    leftovers.remove_stale(folder, "stdin")  # killed runs' bytes
    # Named before it is made, and made inside the block that removes it: a Ctrl-C as
    # mkstemp made its file left the file (its name not yet returned). The name holds this
    # process's id, so no other process's file has it.
    path = folder / f"{leftovers.prefix('stdin')}{secrets.token_hex(8)}"
    try:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0),
                         0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(head)
                total = len(head)
                while chunk := stream.read(1 << 20):
                    total += len(chunk)
                    if total > MAX_BYTES:
                        raise ImageInputError(
                            f"stdin: more than {MAX_BYTES >> 30} GiB of image; save it to a "
                            "file and give its path")
                    f.write(chunk)
        except OSError as e:
            raise _no_room(path.parent, e) from None
        yield path
    finally:
        path.unlink(missing_ok=True)


def _no_room(folder: Path, error: OSError) -> ImageInputError:
    """TMPDIR full or not writable: the user's to fix, in one line."""
    return ImageInputError(f"stdin: cannot keep the piped image in {folder} "
                           f"({error.strerror or error}); set TMPDIR to a folder with room, or "
                           "give the image's path")


def _as_stdin(error: ImageInputError, path: Path) -> ImageInputError:
    """`error` about the temporary file, told as about stdin (its name means nothing to the
    user and is gone after)."""
    from hires.errors import path_said

    return ImageInputError(path_said(str(error), path, "stdin"))


@contextlib.contextmanager
def held(stream: BinaryIO, head: bytes = b"", expect_sha256: str | None = None,
         again: str = "") -> Iterator[InputImage]:
    """The image piped on `stream` (after `head`, read already), loaded, with the path "-";
    while the block runs, jobs whose image is "-" read it (`local_path`, `load_job_input`).

    Empty or not an image: ImageInputError. `expect_sha256`: a recorded run's; other bytes
    are a JobError that ends in `again` (how to give the right image).
    """
    from hires.job import JobError

    with spooled(stream, head) as path:
        if path.stat().st_size == 0:
            raise ImageInputError(f"stdin is empty{again or f': pipe an image ({ACCEPTED}) in'}")
        try:
            source = load_input(path)
        except ImageInputError as e:
            raise ImageInputError(f"{_as_stdin(e, path)}{again}") from None
        if expect_sha256 and source.sha256 != expect_sha256:
            raise JobError(f"the image on stdin is another (its sha256 differs){again}")
        _held[STDIN] = path
        try:
            yield replace(source, path=Path(STDIN))
        finally:
            _held.pop(STDIN, None)


def local_path(image: str) -> Path:
    """Where a job's input `image` is read: its own path, or for "-" the piped image's file
    while `held` runs (a JobError otherwise: nothing can read that image again)."""
    if image != STDIN:
        return Path(image)
    if STDIN not in _held:
        from hires.job import JobError

        raise JobError("this job's image came on stdin ('-'), and none is piped in now; pipe "
                       "the same image in again")
    return _held[STDIN]


def load(image: str) -> InputImage:
    """`images.load_input` of a job's input `image`; "-" (piped) reads the file `held`
    keeps, and keeps the path "-"."""
    source = load_input(local_path(image))
    return replace(source, path=Path(STDIN)) if image == STDIN else source


def image_size(image: str) -> tuple[int, int]:
    """`images.input_size` of a job's input `image`, "-" (piped) included."""
    return input_size(local_path(image))


def load_job_input(job: Job) -> InputImage:
    """An upscale job's input, checked against its recorded sha256 (`upscale.load_source`);
    a piped one ("-") from the file `held` keeps."""
    from hires.upscale import load_source

    if job.image != STDIN:
        return load_source(job)
    source = load(STDIN)
    if job.image_sha256 and job.image_sha256 != source.sha256:
        from hires.job import JobError

        raise JobError("the image on stdin is not the one this job was made from (its sha256 "
                       "differs); pipe that image in again")
    return source
