"""Input images for `hires up`: loading PNG/JPEG/WebP/TIFF into 8-bit RGB (+ a separate alpha),
and the fidelity figure (PSNR of a result, downscaled, against its input).

Transparency: the model only knows RGB, so an input's alpha is kept apart. The RGB goes through
the x2 stages; the alpha is resized with Lanczos to the final size and re-attached at the end
(`attach_alpha`). An alpha that is fully opaque carries nothing and is dropped.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import math
import re
import shlex
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageChops, ImageFile, ImageOps, UnidentifiedImageError

from hires.job import MAX_SIDE

# Pillow format names we accept, and what we report them as. Cameras often write JPEGs with a
# second (preview/depth) picture, which Pillow opens as "MPO": it is a JPEG to the user.
FORMATS = {"PNG": "PNG", "JPEG": "JPEG", "MPO": "JPEG", "WEBP": "WEBP", "TIFF": "TIFF"}
ACCEPTED = "PNG, JPEG, WebP or TIFF"

# The bound: hires' largest output is MAX_SIDE (32768) px a side, so an input larger than that
# on either side (or above 2^30 pixels, 3 GiB as 8-bit RGB) cannot be meant for it, and decoding
# it could exhaust memory.
MAX_PIXELS = 1 << 30

_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")
# The brands of HEIF files (iPhones' photos are HEIC) and AVIF, which Pillow does not read.
HEIF_BRANDS = (b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1",
               b"avif", b"avis")
_ALPHA_MODES = ("RGBA", "LA", "PA", "La", "RGBa")
_GREY_MODES = ("1", "L", "LA", "La", *_SIXTEEN_BIT)
ORIENTATION = 0x0112  # the EXIF tag
TIFF_MAGIC = (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+")  # classic TIFF's and BigTIFF's


class ImageInputError(ValueError):
    """An input image that cannot be used; the one-line message says what to do (CLI: exit 2)."""


@dataclass
class InputImage:
    """A loaded input: 8-bit RGB with EXIF orientation applied, its alpha (or None) kept apart."""

    rgb: Image.Image
    alpha: Image.Image | None
    path: Path
    sha256: str
    format: str
    size: tuple[int, int]
    converted_from: str | None = None  # the colour profile its pixels were converted from
    bits: int = 8  # bits a sample in the file (16: a 16-bit PNG or TIFF, read as 8)
    frames: int = 1  # frames or pages in the file (an animation, a multi-page TIFF): the first
    grey: bool = False  # grey (a grey mode, or R = G = B throughout): the result is made grey
    profile_unused: str | None = None  # why its colour profile was not used ("cannot be read")


@contextlib.contextmanager
def pixel_limit(limit: int | None = MAX_PIXELS) -> Iterator[None]:
    """Set Pillow's decompression-bomb limit for the block and restore it after.

    Pillow's default (~89 MP) refuses our own 16K outputs; we raise it here only, and check our
    own bound explicitly (`check_size`), so the warning Pillow gives short of its error is muted.
    The limit is process-global: do not load images from other threads meanwhile.
    """
    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = limit
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            yield
    finally:
        Image.MAX_IMAGE_PIXELS = saved


@contextlib.contextmanager
def _strict_decoding() -> Iterator[None]:
    """Truncated files must fail, never upscale half a grey picture: force Pillow's
    LOAD_TRUNCATED_IMAGES off for the block even if another library turned it on."""
    saved = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = saved


def check_size(path: Path | str, size: tuple[int, int]) -> None:
    """Refuse images beyond the sane bound (MAX_SIDE a side, MAX_PIXELS in all)."""
    w, h = size
    if w < 1 or h < 1:
        raise ImageInputError(f"{path}: the image is empty ({w}x{h} px)")
    if w > MAX_SIDE or h > MAX_SIDE or w * h > MAX_PIXELS:
        raise ImageInputError(
            f"{path}: {w}x{h} px is too large (at most {MAX_SIDE} px a side and "
            f"{MAX_PIXELS:,} pixels); downscale it first")


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def file_sha256(path: str | Path) -> str:
    """A file's sha256 (hex), read in 1 MiB blocks: what jobs record of their input files."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_once(path: str | Path) -> str:
    """`file_sha256`, once per file and version in a process: a ControlNet (2.5 GB), an
    IP-Adapter (700 MB) or a LoRA is hashed for every job's record and for `--from`'s check."""
    path = Path(path).expanduser().resolve()
    stat = path.stat()
    # ctime too: `cp -p` over a file keeps its inode, size and mtime but not its ctime.
    return _sha256(str(path), stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino)


def files_sha256(files: list[Path]) -> str | None:
    """One sha256 for a model's files: a lone file's own; for several (shards, or a config and
    its weights), that of their names and sha256 one a line; None for none."""
    if len(files) == 1:
        return sha256_once(files[0])
    if not files:
        return None
    lines = "".join(f"{f.name} {sha256_once(f)}\n" for f in files)
    return hashlib.sha256(lines.encode()).hexdigest()


@functools.lru_cache(maxsize=32)
def _sha256(path: str, size: int, mtime_ns: int, ctime_ns: int, inode: int) -> str:
    return file_sha256(path)


def to_8bit(values: np.ndarray) -> np.ndarray:
    """16-bit values to 8 bits by rescaling (65535 -> 255, 32768 -> 128), rounded, not
    truncated; values outside 0..65535 clipped. In bands of rows on threads (numpy lets go of
    the GIL): a 16K image in 1.6 s on 2 cores (2.8 s on one), and no 3 GB of scratch."""
    from hires.strips import in_order

    out = np.empty(values.shape, np.uint8)
    if not values.size:
        return out
    rows = max(1, (1 << 22) // max(1, values[0].size)) if values.ndim > 1 else len(values)

    def band(i: int) -> None:
        part = values[i * rows:(i + 1) * rows]
        v = (part if part.dtype == np.uint16 else np.clip(part, 0, 65535)).astype(np.uint32)
        # round(v / 257) with shifts, exact for every 16-bit value: 5x faster than dividing
        v += 128
        v -= v >> 8
        out[i * rows:(i + 1) * rows] = v >> 8

    for _ in in_order(band, -(-len(values) // rows)):
        pass
    return out


def _split(im: Image.Image) -> tuple[Image.Image, Image.Image | None]:
    """A decoded image of any mode Pillow opens to (RGB, alpha or None)."""
    if im.mode in _SIXTEEN_BIT:
        # Pillow's own I;16 -> L conversion clips at 255 (all but black turns white), so the
        # 16-bit range is rescaled here. Mode "I" (32-bit) holds 16-bit PNG/PGM data in Pillow;
        # a 32-bit TIFF's values beyond 0..65535 would clip, so such a file is refused.
        values = np.asarray(im)
        if im.mode == "I" and values.min(initial=0) < 0:  # a signed TIFF's (I;16S opens so)
            raise ImageInputError("its samples are signed, some below 0; save it as an "
                                  "unsigned 8- or 16-bit TIFF or PNG")
        if im.mode == "I" and values.max(initial=0) > 65535:
            raise ImageInputError("its samples are 32-bit integers beyond the 16-bit range; "
                                  "save it as an 8- or 16-bit TIFF or PNG")
        grey = Image.fromarray(to_8bit(values), "L").convert("RGB")
        trns = im.info.get("transparency")
        if isinstance(trns, int):  # a 16-bit grey PNG's tRNS: one grey level is transparent
            alpha = Image.fromarray(np.where(values == trns, 0, 255).astype(np.uint8), "L")
            return grey, alpha
        return grey, None
    if im.mode == "F":
        raise ImageInputError(
            "floating-point images are not supported; save it as 8- or 16-bit")
    if im.mode in _ALPHA_MODES or "transparency" in im.info:
        # Pillow turns palette/grey/RGB transparency and premultiplied modes into plain RGBA.
        rgba = im.convert("RGBA")
        alpha = rgba.getchannel("A")
        rgb = rgba.convert("RGB")
        if alpha.getextrema() == (255, 255):
            return rgb, None
        return rgb, alpha
    # L, 1, P, CMYK, YCbCr, LAB...: Pillow's conversion. For CMYK this is the plain formula,
    # no colour management; Adobe (Photoshop) CMYK JPEGs, stored inverted, are read inverted
    # back by Pillow (JpegImagePlugin's "CMYK;I"), so they come out right too.
    if im.mode != "RGB":
        return im.convert("RGB"), None
    # A multi-frame file's image reloads its frame from the file on use, after it is closed
    # (Pillow then fails an assertion): such a one is copied out.
    return (im.copy() if getattr(im, "n_frames", 1) > 1 else im), None


@functools.cache
def srgb_icc() -> bytes | None:
    """An sRGB ICC profile (lcms' own, through Pillow), which hires' images are tagged with;
    None where Pillow was built without lcms."""
    try:
        from PIL import ImageCms

        return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    except (ImportError, OSError):
        return None


# Pillow's modes as the colours a person knows them by, for messages
_SPACES = {"GRAY": "grey"}  # an ICC profile's colour space, as said
_MODE_COLOURS = {"1": "black-and-white", "L": "grey", "LA": "grey", "I": "grey", "I;16": "grey",
                 "I;16B": "grey", "P": "palette", "PA": "palette", "RGB": "RGB", "RGBA": "RGB",
                 "YCbCr": "RGB", "CMYK": "CMYK", "LAB": "Lab"}


def _in_srgb(im: Image.Image, rgb: Image.Image) -> tuple[Image.Image, str | None, str | None]:
    """`rgb` (decoded from `im`) in sRGB, by the ICC profile `im` carries: a phone's Display
    P3, Adobe RGB, a print shop's CMYK; that profile's name; and why a profile it carries was
    not used, if so (one lcms cannot read, or one for other colours than the file's: its
    values are then read as sRGB). The model was trained on sRGB and hires' images are tagged
    sRGB, so reading P3 values as sRGB would dull every colour. Without a profile, or with an
    sRGB one or a grey one on grey pixels, `rgb` as it is (and None, None)."""
    icc, target = im.info.get("icc_profile"), srgb_icc()
    if not icc or target is None:
        return rgb, None, None
    from PIL import ImageCms

    try:
        profile = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        space = profile.profile.xcolor_space.strip()
        source = rgb if space == "RGB" else im if space == "CMYK" == im.mode else None
        if space == "GRAY":  # grey stays grey; on colour pixels it is not theirs
            if _MODE_COLOURS.get(im.mode) in ("grey", "black-and-white"):
                return rgb, None, None
            source = None
        if source is None:  # a Lab, XYZ or CMYK profile on RGB pixels, say
            return rgb, None, (f"is for {_SPACES.get(space, space)} colours, not the file's "
                               f"{_MODE_COLOURS.get(im.mode, im.mode)} ones")
        transform = ImageCms.buildTransform(profile, ImageCms.ImageCmsProfile(
            io.BytesIO(target)), source.mode, "RGB")
        if space == "RGB" and _identity(transform):
            return rgb, None, None
        converted = ImageCms.applyTransform(source, transform)
        return converted, ImageCms.getProfileDescription(profile).strip() or "unnamed", None
    except (OSError, ValueError, ImageCms.PyCMSError):
        return rgb, None, "cannot be read"


def _identity(transform) -> bool:
    """Whether an RGB-to-sRGB `transform` leaves colours as they are (within 1 of 255): its
    source profile is sRGB by another name ("sRGB built-in", "sRGB IEC61966-2.1", ...),
    told by what it does to a grid of colours, not by the name."""
    from PIL import ImageCms

    steps = np.linspace(0, 255, 18).round().astype(np.uint8)
    grid = np.stack(np.meshgrid(steps, steps, steps, indexing="ij"), -1).reshape(1, -1, 3)
    out = np.asarray(ImageCms.applyTransform(Image.fromarray(grid, "RGB"), transform))
    return int(np.abs(out.astype(np.int16) - grid).max()) <= 1


def load_input(path: Path | str) -> InputImage:
    """Load an input image for upscaling, or raise ImageInputError with one line saying why.

    Multi-frame files (TIFF pages, animated WebP) give their first frame.
    """
    path = Path(path)
    with _reading(path) as im:
        sha = file_sha256(path)
        im.load()  # the full decode: truncation and corruption surface here
        bits = _file_bits(im, path)
        if bits > 16 and im.mode != "F":  # read as 16-bit, its levels came out near black
            raise ImageInputError(f"its samples are {bits}-bit integers; save it as an 8- or "
                                  "16-bit TIFF or PNG")
        ImageOps.exif_transpose(im, in_place=True)
        rgb, alpha = _split(im)
        # The file's own channels: equal ones are neutral in any RGB profile, though the
        # conversion to sRGB leaves them 1 apart (a grey photo saved in Adobe RGB came out
        # tinted). (16-bit LA opens as RGBA.)
        grey = im.mode in _GREY_MODES or _channels_equal(rgb)
        rgb, profile, unused = _in_srgb(im, rgb)
        fmt = FORMATS[im.format or ""]
        frames = getattr(im, "n_frames", 1)
    return InputImage(rgb=rgb, alpha=alpha, path=path, sha256=sha, format=fmt, size=rgb.size,
                      converted_from=profile, bits=bits, frames=frames, grey=grey,
                      profile_unused=unused)


def input_label(source: InputImage) -> str:
    """An input as messages name it: its file's name, or "stdin" for piped bytes (whose path
    is "-", `hires.piped.STDIN`, which imports this module)."""
    return "stdin" if str(source.path) == "-" else source.path.name


def input_notes(source: InputImage, depth: int = 8,
                size: tuple[int, int] | None = None) -> list[str]:
    """What reading `source` left out of it, as warnings: 16 bits a channel read as 8 (unless
    the result is 16-bit, `depth`), every frame or page but the first, a colour profile it
    could not use; and what a result of `size` (another shape) crops off it."""
    name = input_label(source)
    cropped = None if size is None else crop_note(name, source.rgb.size, *size)
    notes = [cropped] if cropped else []
    if source.bits == 16 and depth == 8:
        notes.append(f"{name} has 16 bits a channel; the result has 8 (--depth 16 for 16)")
    if source.frames > 1:  # an animation or a multi-page TIFF
        what = "pages" if source.format == "TIFF" else "frames"
        notes.append(f"{name} has {source.frames} {what}; hires upscales the first")
    if source.profile_unused:
        notes.append(f"{name}'s colour profile {source.profile_unused}; its colours are read "
                     "as sRGB")
    return notes


def crop_note(label: str, size: tuple[int, int], width: int, height: int) -> str | None:
    """A warning where a `width` x `height` result keeps only the centre of the input `label`
    of `size` (scaled to cover, the rest cut off): a shape asked for that is not its own, or
    one its 8 px steps force far from it (1000x10 at x2: 2000x24). None where the steps move
    the shape by the few pixels any upscale's do."""
    from hires.job import JobError
    from hires.sizes import target_size

    if not crops(size, width, height):
        return None
    sw, sh = size
    x0, y0, x1, y1 = cover_box(size, width, height)
    note = (f"{label} is {sw}x{sh}, another shape than the {width}x{height} result: its "
            f"centre is upscaled, {round(x1 - x0)}x{round(y1 - y0)} px of it")
    try:  # its long side as the size keeps its shape, unless the 8 px steps are what cut it
        shaped = target_size(size, size=max(width, height))
    except JobError:
        return note
    if shaped == (width, height) or crop_note(label, size, *shaped):  # it would cut too
        return note
    return f"{note} (a size of {max(width, height)} keeps all of it: {shaped[0]}x{shaped[1]})"


def crops(size: tuple[int, int], width: int, height: int) -> bool:
    """Whether a `width` x `height` result cuts off more of an input of `size` than the few
    pixels any upscale's 8 px steps do (over 8 px and 1 % of a side)."""
    cw, ch = cover_size(size, width, height)
    return max(cw - width, ch - height) > 8 and max((cw - width) / cw, (ch - height) / ch) > 0.01


def _file_bits(im: Image.Image, path: Path) -> int:
    """Bits a sample the file holds; Pillow opens 16-bit RGB(A) PNGs and TIFFs as 8-bit modes
    and keeps no public trace of it, so PNG's header and TIFF's BitsPerSample say (its mode
    "I" is a 32-bit TIFF's, or 16-bit data)."""
    if im.format == "TIFF":
        per = im.tag_v2.get(258, 8)  # BitsPerSample: one count, or one per sample
        return max(per) if isinstance(per, tuple) else int(per)
    if im.mode in _SIXTEEN_BIT:
        return 16
    if im.format == "PNG":
        with open(path, "rb") as f:
            head = f.read(25)  # signature, IHDR's length and type, width, height, bit depth
        return head[24] if len(head) == 25 and head[12:16] == b"IHDR" else 8
    return 8


def input_size(path: Path | str) -> tuple[int, int]:
    """An input image's size as `load_input` gives it (EXIF rotation applied), from its header
    alone: an upscale's output size is known before any image is decoded."""
    path = Path(path)
    with _reading(path) as im:
        return shown_size(im, im.getexif().get(ORIENTATION, 1))


def shown_size(im: Image.Image, orientation: int) -> tuple[int, int]:
    """The opened image's size as shown, turned by its EXIF `orientation` as viewers and
    `load_input` turn it."""
    w, h = im.size
    # EXIF orientations 5-8 turn the picture a quarter: its sides swap. Pillow turns a
    # TIFF as it opens it (13.0): its size is then no longer its width and length tags'.
    turned = orientation in (5, 6, 7, 8)
    tags = getattr(im, "tag_v2", None)
    if turned and im.format == "TIFF" and tags is not None and (w, h) != (
            tags.get(256, w), tags.get(257, h)):
        turned = False
    return (h, w) if turned else (w, h)


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff")
# The shell's advice on an input (a command line's): reworded where a path is no shell's
# (`without_shell_advice`).
_FOLDER_HINT = "for every image in it, give "
GLOB_HINT = ("; a pattern the shell did not expand (quoted, or it matched nothing): leave "
             "its wildcards unquoted ('my shots'/*.png), or name the files")
PIPE_ADVICE = "hires reads an input more than once, so save it to a file first"


def folder_hint(folder: Path) -> str:
    """How to give a folder's images: a pattern for each image suffix in it ('shots/*' also
    named its notes and sidecars, each refused), quoted for the shell ('my shots')."""
    try:
        found = sorted({p.suffix for p in folder.iterdir()
                        if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()})
    except OSError:
        found = []
    if not found:
        return f"it holds no {ACCEPTED} file"
    return _FOLDER_HINT + " ".join(f"{shlex.quote(str(folder))}/*{s}" for s in found)


def glob_hint(path: Path) -> str:
    """GLOB_HINT for a path not found whose name is a pattern no shell expanded, else ''."""
    return GLOB_HINT if any(c in path.name for c in "*?[") else ""


def without_shell_advice(text: str, each: str) -> str:
    """An input's error for a path no shell reads (a job file's, a library call's): one image
    file `each` ("a job for each"), not a folder's glob; a pattern is not expanded there."""
    text = re.sub(rf"; {_FOLDER_HINT}.*\Z", f"; give one of its image files ({each})", text,
                  flags=re.S)
    return text.replace(GLOB_HINT, "; patterns are not expanded here: name the file")


@contextlib.contextmanager
def _reading(path: Path) -> Iterator[Image.Image]:
    """The image at `path`, opened (not decoded) and checked for format and size; whatever
    goes wrong in the block becomes an ImageInputError of one line."""
    if not path.exists():
        raise ImageInputError(f"{path}: no such file{glob_hint(path)}")
    if path.is_dir():
        raise ImageInputError(f"{path}: is a folder, not an image file; {folder_hint(path)}")
    if not path.is_file():  # a pipe (`cat x.png | hires up /dev/stdin`), a device
        raise ImageInputError(f"{path}: not a file (a pipe?); {PIPE_ADVICE}")
    try:
        with pixel_limit(MAX_PIXELS), _strict_decoding(), warnings.catch_warnings():
            # Pillow's own on a damaged file ("Corrupt EXIF data") are no reader's: what
            # cannot be read is said below, in one line.
            warnings.filterwarnings("ignore", category=UserWarning, module="PIL")
            with Image.open(path) as im:
                if FORMATS.get(im.format or "") is None:
                    raise ImageInputError(
                        f"{path}: {im.format} images are not accepted; convert it to {ACCEPTED}")
                check_size(path, im.size)  # before decoding anything
                yield im
    except ImageInputError as e:
        msg = str(e)
        raise ImageInputError(msg if msg.startswith(str(path)) else f"{path}: {msg}") from None
    except Image.DecompressionBombError as e:
        _refuse_bomb(path, e)
    except UnidentifiedImageError:
        raise ImageInputError(f"{path}: {unidentified(path)}") from None
    except PermissionError:
        raise ImageInputError(f"{path}: permission denied") from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, KeyError) as e:
        # Pillow reports broken files through all of these (SyntaxError: bad PNG chunks), a
        # WebP cut short as "could not create decoder object".
        from hires.cut_short import cut_short

        if cut := cut_short(path):
            raise ImageInputError(f"{path}: truncated image, {cut}; re-export or re-download "
                                  "it") from None
        raise ImageInputError(
            f"{path}: truncated or corrupt image ({_one_line(e)}); re-export or re-download it"
        ) from None
    except MemoryError:
        raise ImageInputError(f"{path}: not enough memory to decode it; downscale it first") \
            from None


def unidentified(path: Path) -> str:
    """Why Pillow could not tell what the file at `path` is, and what to do: a phone's HEIC,
    a TIFF cut short or of samples Pillow cannot read, an empty file, or no image at all."""
    with open(path, "rb") as f:
        head = f.read(12)
    if head[4:8] == b"ftyp" and head[8:12] in HEIF_BRANDS:  # a phone's photo, say
        kind = "AVIF" if head[8:12] in (b"avif", b"avis") else "HEIC"
        return f"{kind} images are not accepted; convert it to {ACCEPTED}"
    from hires.cut_short import cut_with_its_record

    if cut := cut_with_its_record(path):  # a TIFF's directory lost: Pillow knows it not
        return f"truncated image, {cut}; re-export or re-download it"
    if head[:4] in TIFF_MAGIC:  # Pillow opens only some sample formats of TIFF
        return unread_tiff(path)
    what = "an empty file" if not head else "not an image file"
    return f"{what}; expected {ACCEPTED}"


def _refuse_bomb(path: Path, error: Exception) -> None:
    """A header claiming more pixels than Pillow's guard lets through, said as `check_size`
    says it (its size, hires' bounds), not in Pillow's words and its other limit."""
    try:
        with pixel_limit(None), warnings.catch_warnings(), Image.open(path) as im:
            warnings.simplefilter("ignore")
            size = im.size  # the header only: nothing is decoded
    except Exception:  # unread a second time: said as Pillow had it
        raise ImageInputError(f"{path}: too large ({_one_line(error)}); at most {MAX_SIDE} px "
                              f"a side and {MAX_PIXELS:,} pixels") from None
    check_size(path, size)
    raise ImageInputError(f"{path}: too large ({_one_line(error)})")  # not reached: too large


def unread_tiff(path: Path) -> str:
    """Why Pillow could not open the TIFF at `path`, and what to save it as, from its first
    directory's sample tags (it reads no TIFF with 32-bit or float samples, more than 4
    channels, or 16-bit grey with alpha)."""
    from PIL import TiffImagePlugin

    damaged = "a TIFF whose first directory is damaged or empty; re-export or re-download it"
    try:
        with open(path, "rb") as f, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow's on a damaged directory: said below
            head = f.read(8)
            tags = TiffImagePlugin.ImageFileDirectory_v2(
                head + f.read(8) if head[2:4] in (b"+\0", b"\0+") else head)  # BigTIFF's 16
            f.seek(tags.next)
            tags.load(f)
        if 256 not in tags or 257 not in tags:  # no width or length: nothing read
            return damaged
        bits, samples = max(tags.get(258) or (1,)), int(tags.get(277) or 1)
        kinds = set(tags.get(339) or ())  # SampleFormat: 1 unsigned, 2 signed, 3 float
        photometric = tags.get(262)
    except Exception:  # a damaged directory: Pillow raises many kinds
        return damaged
    save = "save it as an 8- or 16-bit RGB TIFF or PNG"
    if 3 in kinds or bits > 16:
        kind = "floating-point" if 3 in kinds else "integer"
        return f"a TIFF of {bits}-bit {kind} samples, which Pillow cannot read; {save}"
    if 2 in kinds:
        return f"a TIFF of signed {bits}-bit samples, which Pillow cannot read; {save}"
    if samples > 4:
        return (f"a TIFF of {samples} channels, which Pillow cannot read; save it as RGB or "
                "RGBA")
    if photometric in (0, 1) and samples == 2 and bits == 16:
        return ("a 16-bit grey TIFF with alpha, which Pillow cannot read; save it as a 16-bit "
                "PNG (it keeps both), or drop the alpha")
    if photometric == 3:
        return f"a {bits}-bit palette TIFF, which Pillow cannot read; {save}"
    channels = f"{samples} {bits}-bit channel{'s' if samples != 1 else ''}"
    return f"a TIFF of {channels} that Pillow cannot read; {save}"


def psnr(a: Image.Image, b: Image.Image) -> float:
    """PSNR in dB between two 8-bit images of the same size (as RGB); inf when identical."""
    if a.size != b.size:
        raise ValueError(f"psnr: sizes differ ({a.size[0]}x{a.size[1]} vs {b.size[0]}x{b.size[1]})")
    x = np.asarray(a.convert("RGB") if a.mode != "RGB" else a)
    y = np.asarray(b.convert("RGB") if b.mode != "RGB" else b)
    # Squared errors summed in bands of rows: a float64 copy of a large image would take 24
    # bytes a pixel; the sums are exact integers either way.
    total = 0
    rows = max(1, (1 << 22) // max(1, x.shape[1]))
    for top in range(0, x.shape[0], rows):
        d = x[top:top + rows].astype(np.int32) - y[top:top + rows]
        total += int(np.einsum("ijk,ijk->", d, d, dtype=np.int64))
    mse = total / x.size
    if mse == 0:
        return math.inf
    return 10 * math.log10(255.0**2 / mse)


def cover_size(size: tuple[int, int], width: int, height: int) -> tuple[int, int]:
    """The size an image of `size` is scaled to so that it covers `width` x `height` (its
    aspect kept, to the pixel), before the centre is cropped out (hires.pipeline.fit)."""
    scale = max(width / size[0], height / size[1])
    return max(width, round(size[0] * scale)), max(height, round(size[1] * scale))


def cover_box(size: tuple[int, int], width: int, height: int) -> tuple[float, ...]:
    """The part of an image of `size` that covering `width` x `height` keeps (the centre), in
    the image's own pixels: all of it where the shapes agree."""
    cw, ch = cover_size(size, width, height)
    left, top = (cw - width) // 2, (ch - height) // 2
    sx, sy = size[0] / cw, size[1] / ch
    return left * sx, top * sy, (left + width) * sx, (top + height) * sy


def fidelity(result: Image.Image, source: InputImage) -> float:
    """PSNR (dB) of `result` downscaled to the source's size against the source RGB (against
    the part of it that the result shows, where a new shape cropped it).

    Lanczos, because it is a proper low-pass at any ratio (Pillow widens the kernel by the
    factor), so added detail averages out and only drift in content or tone lowers the figure.
    No box pre-reduction (`reducing_gap`): it is ~7x faster but shaves ~0.5 dB at 16x and not
    at 2x, which would make the stages' figures incomparable; plain Lanczos from 8192x6144 to
    512x384 takes under a second here.
    """
    rgb = result.convert("RGB") if result.mode != "RGB" else result
    box = tuple(round(v) for v in cover_box(source.rgb.size, *rgb.size))
    shown = source.rgb if box == (0, 0, *source.rgb.size) else source.rgb.crop(box)
    if rgb.size != shown.size:
        rgb = rgb.resize(shown.size, Image.Resampling.LANCZOS)
    return psnr(rgb, shown)


def attach_alpha(rgb: Image.Image, alpha: Image.Image | None) -> Image.Image:
    """`rgb` with `alpha` resized (Lanczos) to its size as an RGBA image; `rgb` if no alpha."""
    if alpha is None:
        return rgb
    # Lanczos keeps cut-out edges crisp at a 16x enlargement where bilinear would blur them;
    # the part of it the RGB shows (a new shape crops the centre).
    a = alpha if alpha.size == rgb.size else alpha.resize(
        rgb.size, Image.Resampling.LANCZOS, box=cover_box(alpha.size, *rgb.size))
    out = rgb.convert("RGB") if rgb.mode != "RGB" else rgb.copy()
    out.putalpha(a)
    return out


# Output a band of `resize_lanczos` makes at most (Pillow holds RGB in 4 bytes a pixel). Each
# band resizes across again the source rows next to it that its neighbours also read (Lanczos
# reaches 3 rows, more when shrinking): at x2 a 16K band is 256 rows made from 128 + 10 rows,
# 8% more work across, under 3% in all; larger bands waste less but hold more memory (a band
# per thread at once, up to 16 threads).
BAND_BYTES = 16 << 20
# Pillow 13 (python-pillow/Pillow#9549) resizes down first where the height shrinks more than
# twice as much as the width; earlier versions always resize across first.
_DOWN_FIRST_RULE = int(Image.__version__.split(".")[0]) >= 13


def resize_lanczos(image: Image.Image, size: tuple[int, int],
                   threads: int | None = None) -> Image.Image:
    """`image.resize(size, Image.LANCZOS)`, bit for bit; for L and RGB images (all `fit` is
    given), made in bands of rows on `threads` threads (default: every core)."""
    from hires.strips import cores, in_order

    width, height = size
    # Bands start where the source row under their top is whole (a box is exact in Pillow's
    # 32-bit floats). A band per thread, none above BAND_BYTES.
    step = height // math.gcd(image.height, height)
    rows = min(max(1, BAND_BYTES // (4 * width)), -(-height // (threads or cores())))
    rows = -(-rows // step) * step
    # Only where the height ratio is exact in binary (its denominator `step` a power of two: x2,
    # /2, x4/3 ...) does a band place each row's filter exactly where the whole resize does; at
    # other ratios the last bit can differ, which now and then moves an 8-bit filter weight.
    # Other modes may convert between the passes (RGBA premultiplies), an unchanged height has
    # no pass down to cut, and one band is one whole resize.
    if (step & (step - 1) or image.mode not in ("L", "RGB") or image.height == height
            or rows >= height):
        return image.resize(size, Image.Resampling.LANCZOS)
    image.load()
    out = Image.new(image.mode, size, None)  # not filled: the bands cover it
    shrink_down, shrink_across = image.height - height, image.width - width
    down_first = _DOWN_FIRST_RULE and 0 < shrink_down and 2 * shrink_across < shrink_down
    reach = 3 * -(-image.height // height) + 2  # source rows Lanczos reads past a band, +2 spare

    def band(i: int) -> None:
        top, bottom = i * rows, min(height, (i + 1) * rows)
        start, end = top * image.height // height, bottom * image.height // height  # exact
        first, last = max(0, start - reach), min(image.height, end + reach)
        part = image.crop((0, first, image.width, last))  # all that the two passes read

        def down(im: Image.Image) -> Image.Image:
            box = (0, start - first, im.width, end - first)
            return im.resize((im.width, bottom - top), Image.Resampling.LANCZOS, box=box)

        def across(im: Image.Image) -> Image.Image:
            return im if im.width == width else im.resize((width, im.height),
                                                          Image.Resampling.LANCZOS)

        # Two resizes in Pillow's order: one resize of the band would choose its own order (the
        # band is far shorter than the image), and the 8-bit image between the passes rounds.
        part = across(down(part)) if down_first else down(across(part))
        out.paste(part, (0, top))  # rows no other band writes; Pillow pastes without the GIL

    for _ in in_order(band, -(-height // rows), threads):  # Pillow resizes without the GIL
        pass
    return out


def _channels_equal(rgb: Image.Image) -> bool:
    """Whether an RGB image's three channels are the same everywhere: grey kept as colour (a
    16-bit grey PNG with alpha, which Pillow opens as RGBA; a grey photo saved as RGB)."""
    r, g, b = rgb.split()
    return ImageChops.difference(r, g).getbbox() is None and \
        ImageChops.difference(g, b).getbbox() is None


def greyed(image: Image.Image) -> Image.Image:
    """`image` (RGB or RGBA) with its colour taken out: each pixel's luma (Pillow's, ITU-R 601)
    in all three channels, the alpha kept. A grey input's result: the model knows only colour,
    and tints a black-and-white photo's new detail."""
    grey = image.convert("L").convert("RGB")
    if image.mode == "RGBA":
        grey.putalpha(image.getchannel("A"))
    return grey


def greyed16(pixels: np.ndarray, rows: int = 1024) -> np.ndarray:
    """16-bit H x W x 3 (or 4, the alpha kept) samples made grey as `greyed` does, in place, a
    band of `rows` at a time (a 16K image's luma in floats at once would be 1 GB more)."""
    weights = np.array([0.299, 0.587, 0.114], np.float32)
    for top in range(0, pixels.shape[0], rows):
        band = pixels[top:top + rows]
        luma = np.rint(band[..., :3].astype(np.float32) @ weights)
        band[..., :3] = np.clip(luma, 0, 65535).astype(np.uint16)[..., None]
    return pixels


def attach_alpha16(pixels: np.ndarray, alpha: Image.Image | None) -> np.ndarray:
    """16-bit RGB samples H x W x 3 with `alpha` resized (Lanczos, in floats, so the enlarged
    edges get 16-bit steps) as a fourth channel; `pixels` if no alpha."""
    from hires.strips import in_order

    if alpha is None:
        return pixels
    height, width = pixels.shape[:2]
    x0, y0, x1, y1 = cover_box(alpha.size, width, height)  # the part the RGB shows
    # Across, clipped, then down: as Pillow resizes the 8-bit alpha of `attach_alpha`, so both
    # round alike where Lanczos rings at hard edges (unclipped they differ by up to 14/255).
    across = alpha.convert("F").resize((width, alpha.height), Image.Resampling.LANCZOS,
                                       box=(x0, 0, x1, alpha.height))
    across = Image.fromarray(np.clip(np.asarray(across), 0, 255), "F")
    out = np.empty((height, width, 4), np.uint16)
    rows = max(1, (1 << 20) // width)

    def band(i: int) -> None:
        # Down in bands of rows, on threads (Pillow and numpy let go of the GIL): Pillow's
        # `box` filters with the rows around it, so the bands equal one whole resize, and a
        # 16K float alpha (1 GB, 3x slower to read whole) is never made. 16K: 4.6 s on 2 cores.
        top, bottom = i * rows, min(height, (i + 1) * rows)
        out[top:bottom, :, :3] = pixels[top:bottom]
        box = (0, y0 + top * (y1 - y0) / height, width, y0 + bottom * (y1 - y0) / height)
        part = across.resize((width, bottom - top), Image.Resampling.LANCZOS, box=box)
        out[top:bottom, :, 3] = np.clip(np.rint(np.asarray(part) * 257.0), 0, 65535)

    for _ in in_order(band, -(-height // rows)):
        pass
    return out
