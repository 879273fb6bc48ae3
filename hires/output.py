"""Saving images (PNG/JPEG/WebP/TIFF) atomically with A1111 and hires metadata; reading it back."""

from __future__ import annotations

import difflib
import errno
import functools
import io
import json
import os
import re
import shutil
import socket
import stat
import string
import tempfile
import time
import unicodedata
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, PngImagePlugin

from hires import __version__, png, tiff
from hires.images import ORIENTATION, TIFF_MAGIC, pixel_limit, shown_size, srgb_icc
from hires.job import DEFAULT_MODEL, LOSSY_FORMATS, MAX_QUALITY, SAMPLERS, format_name
from hires.leftovers import pid_alive

EXTENSIONS = {"png": ".png", "jpg": ".jpg", "webp": ".webp", "tiff": ".tiff"}
# .jpe, .jfif and .jif are JPEG's too (cameras', browsers' and Windows' names for it).
SUFFIX_FORMATS = {".png": "png", ".jpg": "jpg", ".jpeg": "jpg", ".jpe": "jpg", ".jfif": "jpg",
                  ".jif": "jpg", ".webp": "webp", ".tif": "tiff", ".tiff": "tiff"}
# Image formats hires does not write: a name ending in one is refused, not given PNG bytes.
OTHER_IMAGE_SUFFIXES = frozenset(
    ".gif .bmp .avif .heic .heif .jxl .jp2 .exr .hdr .ppm .pgm .pbm .tga .ico .psd .dng .qoi "
    ".svg .pdf .eps .ps .raw .cr2 .nef .arw .pcx .dds".split())
WEBP_MAX_SIDE = 16383
# JPEG and WebP quality when the job names none: what hires has always written (JPEG with 4:2:0
# chroma subsampling, lossy WebP). 100 is lossless WebP and a JPEG without subsampling.
DEFAULT_QUALITY = 95
QUALITY_LOSSLESS = "--quality applies to jpg and webp; png and tiff are lossless"
USER_COMMENT, IMAGE_DESCRIPTION, EXIF_IFD = 0x9286, 0x010E, 0x8769
TIFF_HIRES_TAG = 65000  # a private TIFF tag for the job JSON
# Pillow refuses to open images above ~179 MP as a decompression-bomb guard; our own 16K
# outputs are 268 MP, so hires lifts the limit around its own reads (`images.pixel_limit`),
# never for the whole process: a library caller's other reads keep their guard.


class OutputError(Exception):
    """The output cannot be written as asked; the message says what to do."""

    usage = False  # True when the user's request is at fault (exit 2), not the machine


class OutputUsage(OutputError):
    """The output the user asked for is impossible as written (bad template, name too long)."""

    usage = True


class OutputExists(OutputUsage):
    pass


class DiskRefused(OutputError):
    """A save the disk refused for as long as it stays so: full, over its quota, or
    read-only. `folder` and `errno` say which and why (`hires.full_disk` reads them)."""

    def __init__(self, message: str, folder: Path | None = None, code: int | None = None):
        super().__init__(message)
        self.folder, self.errno = folder, code


def disk_fix(code: int | None) -> str:
    """What frees a disk that refused a write with errno `code`: room, or a writable mount."""
    return "make it writable" if code == errno.EROFS else "free room there"


# The errors of a disk that refuses every write alike until a person frees space or remounts it.
LASTING_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)


class OutputUnwritable(OutputUsage):
    pass


# The messages above speak of the CLI's flags; a library call (`Result.save`) names its
# keywords instead. Kept beside the messages so that a change to one shows the other.
_LIBRARY_TERMS = ((re.compile(r"--overwrite"), "overwrite=True"),
                  (re.compile(r"another -o\b"), "another path"),
                  (re.compile(r"^-o (\S+) names"), r"\1 names"),
                  (re.compile(r"--format is (\w+)"), r"format is '\1'"),
                  # a result's depth is made, not saved: the library's is a generate keyword
                  (re.compile(r"pass --depth 8 for an 8-bit (\w+) \(it overrides [^)]*\)"),
                   r"a \1 made with depth=8"),
                  (re.compile(r"--depth 8"), "depth=8"),
                  (re.compile(r"--quality"), "quality"),
                  (re.compile(r"a shorter -o\b"), "a shorter path"),
                  # a device's hint at `-o -` (stdout), which a save has not
                  (re.compile(r"; `-o -` writes the image to stdout.*$"),
                   ": give a file's path (save it, then copy the file where it goes)"))


def in_library_terms(error: OutputError) -> OutputError:
    """`error` with the CLI's flags in its message named as the library's keywords."""
    message = str(error)
    for pattern, words in _LIBRARY_TERMS:
        message = pattern.sub(words, message)
    return type(error)(message)


NAME_MAX = 255  # bytes in one file name on Linux, macOS and Windows file systems
JPEG_EXIF_MAX = 65533  # one APP1 segment; longer EXIF cannot be stored in a JPEG


def format_for(path: Path, fmt: str | None) -> str:
    """The format from `fmt`, else from the file's suffix, else PNG; OutputUsage for a format
    hires does not write, or a suffix that names another (the library's `Result.save` too)."""
    other_format(path)
    if fmt is None:
        return SUFFIX_FORMATS.get(path.suffix.lower(), "png")
    wanted = SUFFIX_FORMATS.get("." + str(fmt).lower())
    if wanted is None:
        raise OutputUsage(f"format {fmt!r}: hires writes png, jpg, webp or tiff")
    return format_of(path, wanted, wanted)


def other_format(path: Path) -> None:
    """OutputUsage when `path` names an image format hires does not write (.gif, .bmp, ...)."""
    suffix = path.suffix.lower()
    if suffix in OTHER_IMAGE_SUFFIXES:
        print_hint = " (.tif for print)" if suffix in (".pdf", ".eps", ".ps") else ""
        raise OutputUsage(f"{path.name}: hires writes PNG, JPEG, WebP or TIFF, not "
                          f"{suffix[1:].upper()}; end the name in .png, .jpg, .webp or .tif"
                          f"{print_hint}")


def format_of(path: Path, default: str, flag: str | None) -> str:
    """The file's format: its extension's, which must agree with an explicit --format."""
    if flag:  # --format tif or JPEG: as the suffixes name the formats
        flag = format_name(flag)
    named = SUFFIX_FORMATS.get(path.suffix.lower())
    if named is None:
        return flag or default
    if flag and flag != named:
        raise OutputUsage(f"-o {name_text(path)} names a {named.upper()} file but --format is "
                          f"{flag}; make them agree (or drop one)")
    return named


def format_problem(fmt: str, width: int, height: int, depth: int = 8,
                   channels: int = 3) -> str | None:
    """Why an image of this size and bit depth cannot be a `fmt` file (None: it can); before a
    job, `channels` is 3 (an upscale's alpha is known only when its image is)."""
    if fmt == "webp" and max(width, height) > WEBP_MAX_SIDE:
        return (f"WebP images are at most {WEBP_MAX_SIDE} px a side, and this one is "
                f"{width}x{height}; use png, tiff or jpg, or a smaller size")
    if depth == 16 and fmt not in ("png", "tiff"):
        name = {"jpg": "JPEG", "webp": "WebP"}.get(fmt, fmt)
        # The 16 may be no flag of the command's: a preset's (print-a2) or --from's record.
        return (f"{name} holds 8 bits a channel; a 16-bit image is a .png or .tif file, or "
                f"pass --depth 8 for an 8-bit {name} (it overrides a preset's or a recorded "
                "depth)")
    if fmt == "tiff" and not tiff.fits(width, height, channels, depth):
        alpha = " with transparency" if channels in (2, 4) else ""
        smaller = ", or --depth 8" if depth == 16 and tiff.fits(width, height, channels, 8) else ""
        return (f"a {depth}-bit {width}x{height} image{alpha} does not fit a TIFF's 4 GB; use "
                f".png{smaller}")
    return None


def check_format(image: Image.Image, path: Path, fmt: str | None,
                 pixels16: np.ndarray | None = None) -> None:
    """OutputUsage when `image` (or its 16-bit `pixels16`) cannot be a file of its format at
    `path` (`format_problem`): what `save_image` refuses, asked before anything is written."""
    path = Path(path)
    fmt = format_for(path, fmt)
    deep = pixels16 is not None
    channels = ((pixels16.shape[2] if pixels16.ndim == 3 else 1) if deep
                else len(image.getbands()))
    problem = format_problem(fmt, image.width, image.height, 16 if deep else 8, channels)
    if problem:
        raise OutputUsage(f"{path.name}: {problem}")


def check_quality(quality: int, fmt: str) -> None:
    """OutputUsage for a quality out of 1-100, or one given for a lossless format."""
    if isinstance(quality, bool) or not isinstance(quality, int) \
            or not 1 <= quality <= MAX_QUALITY:
        raise OutputUsage(f"--quality must be a whole number from 1 to {MAX_QUALITY}, got "
                          f"{quality!r}")
    if fmt not in LOSSY_FORMATS:
        raise OutputUsage(QUALITY_LOSSLESS)


def flattened(image: Image.Image) -> Image.Image:
    """An RGBA (LA) image on white, as RGB (L): what image editors export as JPEG."""
    white = Image.new("RGBA", image.size, (255, 255, 255, 255))
    flat = Image.alpha_composite(white, image.convert("RGBA"))
    return flat.convert("RGB" if image.mode == "RGBA" else "L")


def check_writable(path: Path, overwrite: bool) -> None:
    """Fail before any GPU time is spent when the output cannot be written."""
    if is_folder(path):  # --overwrite or not: a rename onto a folder fails after the work
        raise folder_in_the_way(path)
    if os.path.lexists(path) and not overwrite:  # a dangling symlink counts: it is a name
        from hires.cut_short import cut_short

        cut = cut_short(path)  # a TIFF cut short: no record to say whose, but why it is no use
        raise OutputExists(f"{path} already exists{f', {cut}' if cut else ''}; pass --overwrite "
                           "or choose another -o")
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise OutputUnwritable(f"cannot write under {folder}: it is a file; choose another -o")
    if not os.access(folder, os.W_OK | os.X_OK):
        why = ": its disk is read-only" if read_only(folder) else ""
        raise OutputUnwritable(f"cannot write to {folder}{why}; choose another -o")
    # os.access says yes to root and on read-only mounts (and /proc); a real file says it for
    # sure, in the folder the missing ones would be made in too. The name is a temp file's,
    # so a probe left by a killed run is cleaned like one.
    try:
        fd, probe = part_file(folder, "probe")
    except OutputUnwritable as e:
        if folder == path.parent:
            raise
        raise OutputUnwritable(f"cannot make the folder {path.parent}: {e}") from None
    os.close(fd)
    os.unlink(probe)


def read_only(folder: Path, unknown: bool = False) -> bool:
    """Whether `folder`'s disk is mounted read-only; `unknown` where that cannot be told."""
    try:
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):  # no statvfs on Windows
        return unknown


def folder_in_the_way(path: Path) -> OutputUnwritable:
    """The error for a folder at an output's path: hires never writes over one."""
    return OutputUnwritable(f"{path} is a folder, and hires never writes over a folder: move it "
                            "away or choose another -o")


def is_folder(path: Path) -> bool:
    """Whether `path` is a folder itself (a link to one is a name a rename replaces)."""
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:  # not there, or a name too long: other checks say it
        return False


def disk_need(width: int, height: int, fmt: str, stage_images: bool = False,
              depth: int = 8) -> int:
    """The most bytes an image may take on disk: its raw RGB size as PNG or TIFF (photos
    compress to about half, noise hardly at all; 16-bit files twice that), a quarter of that as
    JPEG or WebP; a third of the 8-bit size more with the stages' images (each x2 stage has 4x
    the pixels of the one before)."""
    raw = 3 * width * height
    need = raw * depth // 8 if fmt in ("png", "tiff") else raw // 4
    return need + raw // 3 if stage_images else need  # stage images are 8-bit


def short_of_space(images: list[tuple[Path, int, int]]) -> str | None:
    """A warning when the images still to make, (path, `disk_need`, pixels), may not fit the
    free space of their disks, with the checkpoint kept while the largest is made; else None."""
    # st_dev: [the first folder named, a folder there now, bytes, images, largest pixels]
    by_disk: dict[int, list] = {}
    for path, need, pixels in images:
        folder = existing = path.parent.absolute()
        while not existing.exists() and existing != existing.parent:  # one a run will make
            existing = existing.parent
        try:
            disk = by_disk.setdefault(existing.stat().st_dev, [folder, existing, 0, 0, 0])
        except OSError:
            continue
        disk[2:] = disk[2] + need, disk[3] + 1, max(disk[4], pixels)
    for folder, existing, total, count, largest in by_disk.values():
        total += largest // 4  # the last stage's checkpoint: 4 fp32 values per 8x8 pixels
        try:
            free = shutil.disk_usage(existing).free
        except OSError:
            continue
        if free < total:
            images_word = "the image" if count == 1 else f"the {count} images"
            return (f"{folder} has {disk_amount(free)} free and {images_word} to make may need "
                    f"up to {disk_amount(total)}; if the disk fills, free some space and run the "
                    "same command again: it goes on from the last stage it kept (at the final "
                    "save, it only decodes)")
    return None


def disk_amount(size: float) -> str:
    """Bytes as a person reads a disk's: 2.5 GB, 310 MB."""
    if size >= 1e9:
        return f"{size / 1e9:.1f} GB"
    if size < 1e5:  # a nearly full disk's few kB were "0.0 MB"
        return f"{size / 1e3:.0f} kB"
    return f"{size / 1e6:.0f} MB" if size >= 1e7 else f"{size / 1e6:.1f} MB"


def breaks_lines(name: str) -> bool:
    """Whether a name holds a line break: stdout lists one path a line, and a script reading it
    would take such a name for two."""
    return "\n" in name or "\r" in name


def default_name(width: int, height: int, seed: int, fmt: str = "png") -> str:
    return f"hires_{width}x{height}_s{seed}{EXTENSIONS[fmt]}"


def output_path(
    output: str | Path | None, *, width: int, height: int, seed: int, fmt: str, index: int = 0,
    prompt: str = "", name: str = "",
) -> Path:
    """Where an image goes: a folder gets the default name; `{seed}`-style fields are filled.
    `{name}` is an upscale's input file name (its stem), else the prompt's short form."""
    if output is None:
        return Path(default_name(width, height, seed, fmt))
    text = str(output)
    # {format} is the file's: a template's own suffix decides it, as it decides the format
    # (`{format}_{seed}.tif` is tiff_1.tif, not png_1.tif).
    fields = {"seed": seed, "width": width, "height": height, "index": index,
              "prompt": in_file_names(slug(prompt)),
              "name": stem_part(name) if name else in_file_names(slug(prompt)),
              "format": SUFFIX_FORMATS.get(os.path.splitext(text)[1].lower(), fmt)}
    if "{" in text:
        try:
            _check_template(text, fields)
            text = text.format_map(fields)
        except (KeyError, ValueError) as e:
            valid = ", ".join("{" + k + "}" for k in fields)
            raise OutputUsage(f"bad output template '{output}' ({e}); fields: {valid}, each "
                              "with a format as {seed:06d} may have") from None
    if breaks_lines(text):
        raise OutputUsage(f"output name {text!r} holds a line break, and hires lists each image "
                          "it writes as one line: choose another -o")
    path = Path(text).expanduser()
    if ".." in path.parts:  # `new/../in.png` is in.png: the input and file checks see that one
        path = resolved(path)
    from hires.resume import SUFFIX

    # The image's name leaves room for a suffix hires adds and for the checkpoint beside it
    # (NAME.png.resume.safetensors), which is written first.
    longest = NAME_MAX - len(".tiff") - len(SUFFIX)
    for i, part in enumerate(path.parts):  # checked first: stat() of a too-long name fails
        size, most = len(os.fsencode(part)), NAME_MAX if i < len(path.parts) - 1 else longest
        if size > most:
            why = (f"file names hold {NAME_MAX}" if most == NAME_MAX else
                   f"hires writes NAME{SUFFIX} beside it and file names hold {NAME_MAX}")
            raise OutputUsage(f"{'folder' if most == NAME_MAX else 'output'} name "
                              f"'{part[:40]}...' is {size} bytes; it may be at most {most}, as "
                              f"{why}: choose a shorter -o")
    if path.is_dir() or names_folder(text):
        return path / default_name(width, height, seed, fmt)
    refuse_stream(path)
    if path.exists() and not path.is_file():  # a device or a pipe: `-o /dev/null` made null.png
        raise OutputUsage(f"{path} is a device or pipe, not a file: hires writes files (via a "
                          "temporary file); `-o -` writes the image to stdout, to send anywhere "
                          "(`-o - > /dev/null` discards it)")
    other_format(path)
    if path.suffix.lower() not in SUFFIX_FORMATS:  # none, or a dot in a name ('v1.2'): add one
        path = path.with_name(path.name + EXTENSIONS[fmt])
    return path


def refuse_stream(path: str | Path) -> None:
    """OutputUsage where `path` names a process's stream (/dev/stdout, /dev/fd/1,
    /proc/self/fd/2, through a linked folder too): redirected to a file, /dev/stdout is one,
    and hires wrote /dev/stdout.png beside it."""
    folder, name = os.path.split(os.path.abspath(path))
    full = os.path.normpath(os.path.join(os.path.realpath(folder), name))
    if full in ("/dev/stdin", "/dev/stdout", "/dev/stderr") or \
            re.fullmatch(r"/(dev|proc/(self|\d+))/fd/\d+", full) is not None:
        raise OutputUsage(f"{path} names a stream, not a file: give a file's path (gen and "
                          "up: `-o -` writes the image to stdout, `-o - > out.png`)")


def names_folder(text: str) -> bool:
    """Whether an output name is a folder's by its spelling, made yet or not: it ends in a
    separator, '.' or '..' (`-o out/.`; a Path drops a last '.')."""
    return text.endswith(("/", os.sep)) or os.path.basename(text) in (".", "..")


def resolved(path: Path) -> Path:
    """`path` with its '..' resolved as the file system will (a link's parent is its target's;
    a folder not made yet's, the folder it is in), relative still if it was. Its last name is
    kept as it is, a link or not: the rename replaces it, never follows it."""
    folder, name = (path, "") if path.name == ".." else (path.parent, path.name)
    real = Path(os.path.realpath(folder)) / name
    return real if path.is_absolute() else Path(os.path.relpath(real))


# Python's format spec ([[fill]align][sign][#][0][width][,_][.precision][type]) with at most
# 3 digits of width (`{seed:999999999}` would build a gigabyte before the name check), and no
# path separator as the fill (`{prompt:/>12}` made //etc-passwd.png, at the root).
# No type 'c': it makes a number a character (a control one, a NUL, or an OverflowError).
_FORMAT_SPEC = re.compile(
    r"([^/\\]?[<>^=])?[+\- ]?#?0?\d{0,3}[,_]?(\.\d{1,3})?[bdoxXeEfFgGns%]?")


def _check_template(text: str, fields: dict[str, Any]) -> None:
    """Raise ValueError unless `text` uses only `fields` by name, each with a plain format
    spec: str.format alone also reads attributes and items ({seed.real}, {prompt[0]})."""
    for _, name, spec, conversion in string.Formatter().parse(text):
        if name is None:
            continue
        if name not in fields:
            close = difflib.get_close_matches(name.lower(), list(fields), n=1)
            raise ValueError((f"unknown field {{{name}}}" if name else "an empty {}")
                             + (f", did you mean {{{close[0]}}}?" if close else ""))
        if conversion or "{" in (spec or "") or not _FORMAT_SPEC.fullmatch(spec or ""):
            field = (f"{{{name}{'!' + conversion if conversion else ''}"
                     f"{':' + spec if spec else ''}}}")
            raise ValueError(f"{field} {_spec_problem(spec or '', bool(conversion))}")


def _spec_problem(spec: str, conversion: bool) -> str:
    """Why a field's format spec is refused (`_FORMAT_SPEC`), in words: a valid Python spec
    was told it 'is not a field with a format'."""
    if conversion:
        return "has a conversion (!r, !s, !a), which names do not take: drop it"
    if "{" in spec:
        return "nests a field in its format, which names do not take: give the format itself"
    fill = re.match(r"(.)[<>^=]", spec)
    if fill and fill[1] in "/\\":
        return (f"fills with '{fill[1]}', a path separator, which would make folders of the "
                "name: fill with another character")
    if re.search(r"\d{4,}", spec):
        return "asks for a width or precision of 1000 or more: at most 999"
    if spec.endswith("c"):
        return "makes a number a character (type c), which a name cannot hold: drop the c"
    return f"has '{spec}', not a format Python writes"


def named_for_input(path: Path, output: str | Path | None, name: str, *, width: int,
                    height: int, seed: int, fmt: str) -> Path:
    """An upscale's image under the default name (`output` a folder, or None) ends in its
    input's `name`: hires_4096x4096_s1_photo.png. A name given is kept as given."""
    if name and path.name == default_name(width, height, seed, fmt) \
            and (output is None or Path(output).name != path.name):
        return path.with_name(f"{path.stem}_{stem_part(name)}{path.suffix}")
    return path


def slug(text: str, limit: int = 40) -> str:
    """A file-name-safe short form of a prompt: its letters and digits in any script (a
    Japanese or accented prompt keeps its words), the rest made `-`."""
    text = unicodedata.normalize("NFKC", text)  # full-width and composed forms as one
    return re.sub(r"[\W_]+", "-", text).strip("-").lower()[:limit].strip("-") or "image"


def in_file_names(text: str) -> str:
    """`text` as a file name's str whose bytes are its UTF-8: a C locale's file system
    encoding (ASCII) cannot hold 'café', where the bytes of a UTF-8 name can always go."""
    return os.fsdecode(text.encode("utf-8"))


def fs_text(text: str) -> str:
    """A file name written as text (a job file's 'output'): as it is where the locale's
    encoding holds it, else as its UTF-8 bytes (`in_file_names`): a C locale's ASCII cannot
    hold 'café', and os.fsencode failed on it (exit 1)."""
    try:
        os.fsencode(text)
    except UnicodeEncodeError:
        return in_file_names(text)
    return text


def read_whole(text: str, raw: bytes) -> bool:
    """Whether the locale read `raw` (whose reading is `text`) as letters of two or more bytes
    each, with none it could not read: a multi-byte locale's own text (EUC-JP's '猫', C7 AD),
    which is not to be read again as UTF-8 (where C7 AD is 'ǭ')."""
    return len(text) < len(raw) and not _SURROGATES.search(text)


def name_text(path: str | Path) -> str:
    """A file's name (or a message naming files) as text for JSON: its bytes read as UTF-8
    (what `in_file_names` writes), not the lone surrogates (C locale) or 'cafÃ©' (Latin-1) the
    locale makes of them; bytes that are not UTF-8, and text a multi-byte locale read whole
    (`read_whole`), stay as the locale read them."""
    text = str(path)
    try:
        raw = os.fsencode(path)
        return text if read_whole(text, raw) else raw.decode("utf-8")
    except UnicodeError:  # text the locale cannot encode (a prompt's '猫' in a C locale), or
        # bytes not all UTF-8: each run of the surrogates read as UTF-8 on its own
        return _SURROGATES.sub(lambda run: bytes(ord(c) - 0xDC00 for c in run[0]).decode(
            "utf-8", "surrogateescape"), text)


_SURROGATES = re.compile("[\udc80-\udcff]+")  # bytes a locale's codec did not read


def stem_part(stem: str, limit: int = 80) -> str:
    """An input file's stem as part of an output name: kept as written (case, `_`, `.`), but
    spaces and shell-unfriendly characters made `-`. A UTF-8 name is cut and cleaned as its
    letters, not as the locale reads its bytes (Latin-1 made 'café' 'cafÃ©', whose '©' went);
    a name a multi-byte locale read whole (`read_whole`) as that locale read it."""
    try:
        raw = os.fsencode(stem)
        text = None if read_whole(stem, raw) else raw.decode("utf-8")
    except UnicodeError:  # not UTF-8 on disk: as the locale reads it
        text = None
    part = re.sub(r"[^\w.\-]+", "-", stem if text is None else text).strip("-.")[:limit]
    part = part or "image"
    return part if text is None else in_file_names(part)


# (sampler, karras) -> the names A1111 and image sites show; read back by parse_parameters.
A1111_SAMPLERS = {("euler", False): "Euler", ("euler", True): "Euler Karras",
                  ("dpmpp-2m", False): "DPM++ 2M", ("dpmpp-2m", True): "DPM++ 2M Karras"}
# A1111 samplers hires has none of, read as its nearest, and why its image differs (said by
# `a1111_notes`): Euler a draws fresh noise at each step, which hires' samplers never do.
A1111_NEAREST = {"Euler a": (("euler", False), "it has no ancestral sampler")}


def parameters_text(job: dict[str, Any], width: int, height: int,
                    result: dict[str, Any] | None = None) -> str:
    """The A1111 'parameters' layout, read by PNG Info, civitai and image galleries; `result`
    (the record's) says whether a stage re-noised an image."""
    lines = [job.get("prompt", "")]
    if job.get("negative"):
        lines.append(f"Negative prompt: {job['negative']}")
    sampler = A1111_SAMPLERS.get((job.get("sampler", "euler"), bool(job.get("karras"))))
    pairs = [("Steps", job.get("steps")), ("Sampler", sampler), ("CFG scale", job.get("guidance")),
             ("Seed", job.get("seed")), ("Size", f"{width}x{height}"), ("Model", job.get("model")),
             ("Denoising strength", job.get("strength") if _refined(job, result) else None),
             ("LinFusion", job.get("linfusion")),
             ("Version", f"hires {__version__}")]
    lines.append(", ".join(f"{k}: {_a1111_value(v)}" for k, v in pairs if v is not None))
    return "\n".join(lines)


def _refined(job: dict[str, Any], result: dict[str, Any] | None) -> bool:
    """Whether a stage re-noised an image at the job's strength (an upscale's input, or a
    stage after the base), as A1111's "Denoising strength" means: a one-stage image from a
    prompt ran none (it said 0.32, which galleries show as img2img's). Unknown: True."""
    if job.get("image") or not isinstance(result, dict):
        return True
    if "stage" in result:  # a stage image: the base, or one after it
        return not (isinstance(result["stage"], int) and result["stage"] == 0)
    stages = result.get("stages")
    return not isinstance(stages, list) or len(stages) > 1


def _a1111_value(value: Any) -> str:
    text = str(value)
    return json.dumps(text) if "," in text or ":" in text and " " in text else text


class _Checked:
    """A file that Pillow writes through `write`, not its descriptor: Pillow's C encoders
    (JPEG's) write to a descriptor without checking for short writes, so a full disk or a
    file-size limit left a cut image saved as whole (exit 0); Python's `write` raises."""

    def __init__(self, file: Any):
        self._file = file

    def fileno(self) -> int:
        raise io.UnsupportedOperation("fileno")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._file, name)


def save_image(
    image: Image.Image,
    path: str | Path,
    *,
    fmt: str | None = None,
    metadata: dict[str, Any] | None = None,
    overwrite: bool = False,
    quality: int | None = None,
    warn: Callable[[str], None] | None = None,
    dpi: float | None = None,
    pixels16: np.ndarray | None = None,
) -> Path:
    """Write `image` via a temp file moved into place: a crash never leaves half a file.

    Without `overwrite` the name is claimed atomically at the end, so of two processes saving
    to one path exactly one wins and the other gets OutputExists. `metadata` is the JSON-ready
    record of the run (with a 'job' key), embedded as A1111 parameters plus the full JSON.
    `dpi`: the resolution the file records (its print size); WebP has no field for it.
    `pixels16`: H x W x 3 (or 4, RGBA) uint16 samples the file holds instead of `image`'s (PNG
    and TIFF). `quality`: a JPEG's or WebP's, 1-100 (None: DEFAULT_QUALITY; 100: lossless
    WebP, JPEG without chroma subsampling); for PNG or TIFF, OutputUsage.
    """
    path = Path(path)
    fmt = format_for(path, fmt)
    if quality is not None:
        check_quality(quality, fmt)
    if is_folder(path):  # made there since the checks: --overwrite cannot help
        raise folder_in_the_way(path)
    if os.path.lexists(path) and not overwrite:  # a dangling symlink is still someone's name
        raise OutputExists(f"{path} already exists; pass --overwrite or choose another -o")
    check_format(image, path, fmt, pixels16)
    folder = path.parent if str(path.parent) else Path(".")
    _make_folder(folder)
    image, kwargs = _save_args(image, path.name, fmt, metadata, quality, warn, dpi)
    try:
        fd, tmp = part_file(folder, path.name)
    except OutputUnwritable as e:  # a read-only disk refuses the file's making, not its bytes
        code = getattr(e, "errno", None)
        if code in LASTING_ERRNOS:
            raise DiskRefused(f"cannot write {path}: {os.strerror(code)}", folder.absolute(),
                              code) from None
        raise
    try:
        with os.fdopen(fd, "wb") as f:
            _encode(image, f, fmt, kwargs, dpi, pixels16)
            # On disk before the rename: after a power cut, ext4 and xfs (delayed allocation)
            # may otherwise show the new name with an empty or cut file.
            f.flush()
            os.fsync(f.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            claim_rename(tmp, path)
        sync_folder(folder)
    except FileExistsError:
        Path(tmp).unlink(missing_ok=True)
        raise OutputExists(f"{path} was written by another process while this one was saving; "
                           "pass --overwrite or choose another -o") from None
    except OSError as e:  # a full disk, a quota, a folder gone: the machine's, not the request's
        Path(tmp).unlink(missing_ok=True)
        if e.errno in LASTING_ERRNOS:
            raise DiskRefused(f"cannot write {path}: {e.strerror or e}", folder.absolute(),
                              e.errno) from None
        raise OutputError(f"cannot write {path}: {e.strerror or e}") from None
    except BaseException:
        # Interrupts included: whatever happens, no partial file is left behind.
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _make_folder(folder: Path) -> None:
    """The output's folder, made with those above it where missing."""
    if folder.is_dir():
        return
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):  # a file has its name, or one above
        raise OutputUnwritable(f"cannot create output folder {folder}: a file is in the "
                               "way; choose another -o") from None
    except OSError as e:
        raise OutputUnwritable(f"cannot create output folder {folder}: {e.strerror}") from None


# How a save's warning names the image `-o -` writes (its temporary file's name means nothing)
STDOUT_NAME = "the image on stdout"


def format_losses(fmt: str, name: str, dpi: float | None, alpha: bool) -> list[str]:
    """What a file of `fmt` named `name` cannot keep of its image (a transparency, a dpi), as
    the save warns it and a dry run says it before."""
    said = []
    if fmt == "jpg" and alpha:
        said.append(f"JPEG holds no transparency: {name} is flattened on white; use png, webp "
                    "or tiff to keep it")
    if fmt == "webp" and dpi is not None:
        said.append(f"WebP files record no resolution: {name} keeps no dpi; use png, tiff or "
                    "jpg for print")
    if fmt == "jpg" and dpi is not None and round(dpi) != dpi:
        # JFIF's density is a whole number (Pillow rounds it): the print would be off by that
        held = round(dpi)
        said.append(f"JPEG records a whole dpi: {name} keeps {held} dpi, not {dpi:g} (it prints "
                    f"{abs(dpi / held - 1) * 100:.2f} % {'larger' if held < dpi else 'smaller'}"
                    "); use png or tiff, or a whole dpi")
    return said


def _save_args(image: Image.Image, name: str, fmt: str, metadata: dict[str, Any] | None,
               quality: int | None, warn: Callable[[str], None] | None, dpi: float | None
               ) -> tuple[Image.Image, dict[str, Any]]:
    """The image as `fmt` holds it (a JPEG's flattened) and its encoder's arguments: the
    record, quality, dpi and colour profile; `warn` says what the format cannot keep."""
    for loss in format_losses(fmt, name, dpi, image.mode in ("RGBA", "LA")) if warn else []:
        warn(loss)  # before the metadata is encoded: the record holds it too
    if fmt == "jpg" and image.mode in ("RGBA", "LA"):
        image = flattened(image)
    kwargs = _encoder_args(image, fmt, metadata, quality, warn)
    if dpi is None and fmt == "tiff":  # the baseline tags, saying no dpi (see hires.tiff)
        kwargs.update(resolution_unit=tiff.UNIT_NONE, x_resolution=tiff.NO_DPI,
                      y_resolution=tiff.NO_DPI)
    if dpi is not None and fmt != "webp":
        kwargs["dpi"] = (dpi, dpi)
    # Tagged sRGB, the model's colours, so that print shops' software and colour-managed
    # viewers need not guess; an image that carries its own profile keeps it.
    icc = srgb_icc() if image.mode in ("RGB", "RGBA") else None
    if icc and "icc_profile" not in image.info:
        kwargs["icc_profile"] = icc
    return image, kwargs


def _encode(image: Image.Image, f: Any, fmt: str, kwargs: dict[str, Any], dpi: float | None,
            pixels16: np.ndarray | None) -> None:
    """Write the file's bytes to `f`: PNG and TIFF by hires' own writers where they take the
    image (16-bit samples, fast zlib), the rest by Pillow."""
    if fmt == "png" and (pixels16 is not None or png.can_write(image)):
        png.write_png(image if pixels16 is None else pixels16, f, kwargs["pnginfo"],
                      dpi=dpi, icc=kwargs.get("icc_profile"))
    elif fmt == "tiff" and (pixels16 is not None or tiff.can_write(image)):
        tiff.write_tiff(image if pixels16 is None else pixels16, f,
                        kwargs.get("tiffinfo"), dpi=dpi, icc=kwargs.get("icc_profile"))
    else:
        image.save(_Checked(f), format=_PIL_FORMATS[fmt], **kwargs)


def part_file(folder: Path, name: str) -> tuple[int, str]:
    """A temp file for `name` in `folder`, open: (fd, path), named `.NAME.@HOST.PID.xxx.part`.
    `remove_stale_parts` reads host and pid back to clean up after a killed run; `name` is cut
    so that the whole stays within NAME_MAX."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{_cut(name, PART_NAME_MAX)}.@{this_host()}."
                                          f"{os.getpid()}.", suffix=".part", dir=folder)
    except OSError as e:
        # /proc says "No such file or directory" of a new file in a folder that is there
        why = ("it takes no new files" if e.errno == errno.ENOENT and os.path.isdir(folder)
               else e.strerror)
        error = OutputUnwritable(f"cannot write to {folder}: {why}; choose another -o")
        error.errno = e.errno  # a save tells a full or read-only disk by it (DiskRefused)
        raise error from None
    # mkstemp makes it 0600; renamed into place it must read as any file made here does
    # (images and checkpoints in a shared folder: 0666 less the umask).
    os.fchmod(fd, file_mode())
    return fd, tmp


def sync_folder(folder: str | Path) -> None:
    """fsync `folder`, so that a rename into it outlives a power cut. Where the OS or file
    system refuses a folder's fsync (Windows, some network and FUSE ones) it is skipped: the
    file itself was synced, and the rename is as durable as that system makes it."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def claim_rename(src: str | Path, dst: str | Path) -> None:
    """Move `src` to `dst` unless `dst` exists (FileExistsError): never replaces a file.

    A hard link is the atomic "create unless exists" for a finished file; where the file system
    has no hard links, the name is first claimed with an exclusive create, then replaced.
    """
    try:
        os.link(src, dst)
    except FileExistsError:
        raise
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK,
                           errno.ENOSYS, errno.EACCES):
            raise
        os.close(os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        os.replace(src, dst)
        return
    os.unlink(src)


_PIL_FORMATS = {"png": "PNG", "jpg": "JPEG", "webp": "WEBP", "tiff": "TIFF"}


def file_mode() -> int:
    """The mode a file made here gets (as open() gives it): 0666 less the umask."""
    return 0o666 & ~_umask()


@functools.cache
def _umask() -> int:
    """The process's umask, read once: reading it sets it, for a moment, for every thread."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _encoder_args(image: Image.Image, fmt: str, metadata: dict | None, quality: int | None,
                  warn: Callable[[str], None] | None = None) -> dict:
    if fmt == "jpg" and metadata is not None:
        metadata = _fit_jpeg_metadata(metadata, image.width, image.height, warn)
    params = blob = None
    if metadata is not None:
        params = parameters_text(metadata.get("job", {}), image.width, image.height,
                                 metadata.get("result"))
        blob = json.dumps(metadata, ensure_ascii=True, sort_keys=True)
    if fmt == "png":
        info = PngImagePlugin.PngInfo()
        if params is not None:
            info.add_itxt("parameters", params)
            info.add_itxt("hires", blob)
        # zlib level 1: a 16K PNG saves in seconds instead of minutes, for ~10 % more bytes.
        return {"pnginfo": info, "compress_level": 1}
    if fmt == "tiff":
        args: dict[str, Any] = {"compression": "tiff_deflate"}
        if params is not None:
            # UTF-8 bytes: Pillow (which writes the TIFFs tiff.write_tiff does not) would
            # make a str's non-ASCII characters '?'; hires.tiff writes str as UTF-8 too.
            args["tiffinfo"] = {IMAGE_DESCRIPTION: params.encode("utf-8"), TIFF_HIRES_TAG: blob}
        return args
    args = _lossy_args(fmt, DEFAULT_QUALITY if quality is None else quality)
    if params is not None:
        exif = Image.Exif()
        # A1111 writes UserComment as "UNICODE\0" + UTF-16BE; galleries read it that way.
        exif.get_ifd(EXIF_IFD)[USER_COMMENT] = b"UNICODE\0" + params.encode("utf-16-be")
        exif[IMAGE_DESCRIPTION] = blob
        args["exif"] = exif.tobytes()
    return args


def _lossy_args(fmt: str, quality: int) -> dict[str, Any]:
    """Pillow's JPEG or WebP options for `quality`: at 100, a JPEG keeps every pixel's colour
    (4:4:4, no chroma subsampling) and a WebP is lossless. A lossless WebP's `quality` is
    Pillow's effort: 0 saves a 1024 px photo 2.5x faster than the 80 it defaults to, for 0.4 %
    more bytes."""
    if quality < MAX_QUALITY:
        return {"quality": quality}
    if fmt == "jpg":
        return {"quality": quality, "subsampling": 0}
    return {"lossless": True, "quality": 0, "exact": True}  # exact: RGB under alpha 0 too


def _jpeg_exif(metadata: dict, width: int, height: int) -> bytes:
    params = parameters_text(metadata.get("job", {}), width, height, metadata.get("result"))
    exif = Image.Exif()
    exif.get_ifd(EXIF_IFD)[USER_COMMENT] = b"UNICODE\0" + params.encode("utf-16-be")
    exif[IMAGE_DESCRIPTION] = json.dumps(metadata, ensure_ascii=True, sort_keys=True)
    return exif.tobytes()


def _fit_jpeg_metadata(metadata: dict, width: int, height: int,
                       warn: Callable[[str], None] | None) -> dict:
    """`metadata` with its prompts cut until the EXIF fits a JPEG segment (the image is kept)."""
    if len(_jpeg_exif(metadata, width, height)) <= JPEG_EXIF_MAX:
        return metadata
    limit = 8000
    while True:
        cut = json.loads(json.dumps(metadata))
        for part in (cut.get("job"), cut.get("result")):
            for key in ("prompt", "negative"):
                if isinstance(part, dict) and isinstance(part.get(key), str) \
                        and len(part[key]) > limit:
                    part[key] = part[key][:limit] + " [truncated]"
        cut["truncated"] = True
        if len(_jpeg_exif(cut, width, height)) <= JPEG_EXIF_MAX or limit < 100:
            break
        limit //= 2
    if warn:
        warn(f"the prompt is too long for JPEG metadata (64 KB): its first {limit} characters "
             "are recorded; use PNG or TIFF to keep it whole")
    return cut


# A part file's name: the name it is for, cut to PART_NAME_MAX bytes, then the host (at most
# HOST_MAX bytes of [A-Za-z0-9_-]), the pid, mkstemp's 8 characters and ".part": all within
# NAME_MAX (1 + 100 + 2 + 63 + 1 + 10 + 1 + 8 + 5 = 191).
PART_NAME_MAX, HOST_MAX = 100, 63
_PART = re.compile(r"^\..+\.@([\w-]+)\.(\d+)\.[^.]+\.part$", re.ASCII)
_OLD_PART = re.compile(r"^\..+\.(\d+)\.[^.]+\.part$")  # before the host was in the name
_SAVED_AS = re.compile(r"^\.(.+?)\.(?:@[\w-]+\.)?\d+\.[^.]+\.part$", re.ASCII)
# Another host's pid cannot be probed from here, so its part is removed only when nothing has
# written it for this long: a save writes its file within minutes (a 16K PNG's included) and
# then renames it, so a day-old part is a dead run's, while a job suspended mid-save (SIGSTOP,
# a scheduler's preemption) or hosts' clocks apart by hours keep theirs. A dead host's part
# costs its disk space for a day.
OTHER_HOST_STALE_S = 24 * 3600


@functools.cache
def this_host() -> str:
    """This machine's name as a part file holds it: its first HOST_MAX bytes, each character
    not a letter, digit, '_' or '-' made '-' (a dot would split the name)."""
    host = re.sub(r"[^\w-]", "-", socket.gethostname(), flags=re.ASCII)
    return host[:HOST_MAX] or "host"


def _cut(name: str, size: int) -> str:
    """`name` cut to at most `size` bytes of UTF-8, a character never split."""
    raw = os.fsencode(name)
    return name if len(raw) <= size else raw[:size].decode("utf-8", "ignore")


def remove_stale_parts(folder: str | Path) -> list[Path]:
    """Delete temp files left by hires processes that died mid-save (not by live ones): this
    host's whose pid is gone, another host's not written for OTHER_HOST_STALE_S (on a folder
    shared by NFS), and those named before the host was (by their pid, as then)."""
    removed = []
    for part in Path(folder).glob(".*.part"):
        if _stale_part(part):
            part.unlink(missing_ok=True)
            removed.append(part)
    return removed


def saved_as(part: Path) -> str:
    """The file a temp part was to become ('o.png' of '.o.png.@host.123.ab12cd.part'; long
    names come cut), to name it to a user rather than the part."""
    named = _SAVED_AS.match(part.name)
    return named.group(1) if named else part.name


def _stale_part(part: Path) -> bool:
    """Whether the temp file `part` is a dead run's (see `remove_stale_parts`)."""
    named = _PART.match(part.name)
    if named and named.group(1) != this_host():
        try:
            return time.time() - part.lstat().st_mtime >= OTHER_HOST_STALE_S
        except OSError:  # removed meanwhile (by its own run, renamed into place)
            return False
    if named:  # this host's: its pid says
        return not pid_alive(int(named.group(2)))
    old = _OLD_PART.match(part.name)  # no host: taken as this one's, as it was
    return old is not None and not pid_alive(int(old.group(1)))


def _a1111_only(text: str | None) -> str | None:
    """A TIFF description or EXIF comment as A1111 parameters where it reads as them (its last
    line 'Steps: N, ...'), else None: cameras and libraries write their own texts there
    (tifffile a JSON shape), which no one meant as a prompt. PNG's `parameters` is A1111's."""
    if not isinstance(text, str) or not text.strip():
        return None
    last = text.strip().split("\n")[-1]
    return text if re.match(r"^\s*Steps: \d", last) else None


def user_comment(raw: bytes) -> str:
    """An EXIF UserComment's text: after its 8-byte code, "UNICODE\0" text is UTF-16 (A1111
    and most tools write big-endian; little-endian files, which the EXIF byte order allows,
    are told by a byte-order mark or by where an ASCII text's zero bytes fall), else UTF-8."""
    text = raw[8:]
    if not raw.startswith(b"UNICODE\0"):
        return text.decode("utf-8", errors="replace").rstrip("\0")  # a C writer's terminator
    text = text[:len(text) // 2 * 2]  # a stray last byte is half of no character
    if text.startswith((b"\xff\xfe", b"\xfe\xff")):
        return text.decode("utf-16", errors="replace").rstrip("\0")  # the mark says the order
    little = text[1::2].count(0) > text[0::2].count(0)
    return text.decode("utf-16-le" if little else "utf-16-be", errors="replace").rstrip("\0")


def _orientation(fmt: str | None, exif: Image.Exif, tags: dict, info: dict,
                 path: str | Path) -> int:
    """The EXIF orientation of an opened image, from what its header gave (a TIFF's own
    tag), or a PNG's eXIf chunk, before its pixels or after them."""
    if fmt == "TIFF":
        return tags.get(ORIENTATION, 1)
    raw = info.get("exif") if fmt == "PNG" else None
    if fmt == "PNG" and not isinstance(raw, bytes) and "hires" not in info:  # (hires' has none)
        raw = _late_png_exif(path)
    if isinstance(raw, bytes):
        exif = Image.Exif()
        try:
            exif.load(raw)
        except Exception:  # a damaged chunk: Pillow raises many kinds; shown unturned
            return 1
    value = exif.get(ORIENTATION, 1)
    return value if isinstance(value, int) else 1


def _starts_with(path: str | Path, heads: tuple[bytes, ...]) -> bool:
    """Whether the file at `path` starts with one of `heads` (False where it cannot be read)."""
    try:
        with open(path, "rb") as f:
            return f.read(max(map(len, heads))).startswith(heads)
    except OSError:
        return False


def _late_png_exif(path: str | Path) -> bytes | None:
    """A PNG's eXIf chunk after its pixels, which Pillow's open does not reach (its getexif
    decodes the image first), found by stepping over the chunks: a read of 8 bytes each."""
    import struct

    try:
        with open(path, "rb") as f:
            f.seek(8)  # the signature
            while len(head := f.read(8)) == 8:
                length, kind = struct.unpack(">I4s", head)
                if kind == b"eXIf":
                    return f.read(length)
                if kind == b"IEND":
                    return None
                f.seek(length + 4, os.SEEK_CUR)  # its data and CRC
    except OSError:
        return None
    return None


def read_metadata(path: str | Path) -> dict[str, Any]:
    """{'parameters': A1111 text or None, 'hires': the run's JSON record or None,
    'hires_error': why a 'hires' record there cannot be read (or None), 'format', 'size' and
    'dpi' (None if unrecorded) of the file}, from its header and metadata only."""
    if os.path.isdir(path):
        raise OutputUsage(f"{path} is a folder, not an image; give an image file")
    if os.path.exists(path) and not os.path.isfile(path):
        # A pipe would block the open until someone writes to it: hires would hang, silent.
        raise OutputError(f"cannot read {path} as an image: not a file (a pipe?); give the image "
                          "file itself")
    try:
        # Pillow's own warnings on a damaged file ('Corrupt EXIF data') are no reader's: what
        # cannot be read is said here, in one line.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with pixel_limit(None), Image.open(path) as im:  # its header alone
                # Never im.load() nor a PNG's getexif() (which loads): pixels are not needed,
                # and decoding a 16K image, or a bomb whose header claims 40000x40000, takes
                # GBs. hires writes its PNG text chunks before the pixels: open() has them.
                fmt, info = im.format, dict(im.info)
                exif = im.getexif() if fmt in ("JPEG", "WEBP", "MPO") else Image.Exif()
                tags = dict(getattr(im, "tag_v2", {}) or {})
                # As shown (and upscaled): a photo's EXIF orientation turns it
                size = shown_size(im, _orientation(fmt, exif, tags, info, path))
    except FileNotFoundError:
        raise OutputError(f"no such image: {path}") from None
    except (OSError, ValueError) as e:  # ValueError: Pillow's limit on a text chunk's size
        from PIL import UnidentifiedImageError

        from hires.cut_short import cut_short
        from hires.images import unidentified, unread_tiff

        # A TIFF cut short loses its directory, at its end: Pillow says only that it cannot
        # identify the file (or one of samples it cannot read: why is said); an empty file or
        # a HEIC is said as `hires up` says it, not in Pillow's words.
        cut = cut_short(Path(path))
        # what to do, as `hires up` says it: a TIFF's or WebP's record went with its end
        why = f"it is {cut}; copy the whole file again" if cut else unidentified(Path(path)) \
            if isinstance(e, UnidentifiedImageError) else unread_tiff(Path(path)) \
            if _starts_with(path, TIFF_MAGIC) else e
        raise OutputError(f"cannot read {path} as an image: {why}") from None
    params = blob = None
    if fmt == "PNG":
        params, blob = info.get("parameters"), info.get("hires")
    elif fmt == "TIFF":
        params, blob = _a1111_only(_utf8(tags.get(IMAGE_DESCRIPTION))), tags.get(TIFF_HIRES_TAG)
    else:
        raw = exif.get_ifd(EXIF_IFD).get(USER_COMMENT)
        params = _a1111_only(user_comment(raw) if isinstance(raw, bytes) else None)
        blob = exif.get(IMAGE_DESCRIPTION)
    record = error = None
    if blob:
        try:
            record = json.loads(blob)
        except (json.JSONDecodeError, TypeError) as e:
            error = f"not JSON: {e}"
    dpi = _recorded_dpi(fmt, info, tags, exif)
    return {"parameters": params if isinstance(params, str) else None, "hires": record,
            "hires_error": error, "format": fmt, "size": size,
            "dpi": tuple(float(d) for d in dpi) if isinstance(dpi, tuple) else None}


def _recorded_dpi(fmt: str | None, info: dict, tags: dict, exif: Image.Exif) -> Any:
    """The resolution the file records, else None. Pillow makes one up where it has none: 1
    for a TIFF without XResolution, 72 for a JPEG whose JFIF header has no unit (hires' without
    --dpi) and whose EXIF names no resolution; a TIFF's unit 1 ("none", hires' without --dpi)
    it leaves out already, as a PNG's unknown unit."""
    if fmt == "TIFF" and 282 not in tags:  # XResolution
        return None
    if fmt in ("JPEG", "MPO") and info.get("jfif_unit") not in (1, 2):
        unit, xres = exif.get(0x0128, 2), exif.get(0x011A)  # EXIF's; inches unless it says
        if xres is None or unit not in (2, 3):
            return None
        try:
            per_inch = float(xres) * (2.54 if unit == 3 else 1)
        except (TypeError, ValueError, ZeroDivisionError):
            return None
        return (per_inch, per_inch) if per_inch > 0 else None
    dpi = info.get("dpi")
    if fmt == "PNG" and isinstance(dpi, tuple):
        return tuple(_png_dpi(d) for d in dpi)
    return dpi


def _png_dpi(dpi: float) -> float:
    """A PNG's dpi as written: PNG keeps whole pixels per metre, so --dpi 300 reads back as
    299.9994; the whole dpi that gives the same pixels per metre is the one written."""
    whole = round(dpi)
    return float(whole) if whole > 0 and round(whole / 0.0254) == round(dpi / 0.0254) else dpi


def _utf8(text: Any) -> Any:
    """A TIFF text tag as UTF-8 (what hires, exiftool and most writers put there): Pillow reads
    its bytes as Latin-1. Text that is no UTF-8 (an old Latin-1 writer's) stays as read."""
    if isinstance(text, bytes):
        return text.decode("utf-8", "replace")
    if isinstance(text, str):
        try:
            return text.encode("latin-1").decode("utf-8")
        except UnicodeError:
            return text
    return text


def job_values_from_image(path: str | Path, warn: Callable[[str], None] | None = None
                          ) -> dict[str, Any]:
    """The recorded job of an image made by hires (or, failing that, its A1111 parameters;
    `warn` gets a line for each of their settings that hires cannot make as asked)."""
    meta = read_metadata(path)
    record = meta["hires"]
    if meta["hires_error"] or (record is not None and not (
            isinstance(record, dict) and isinstance(record.get("job"), dict))):
        # Not the A1111 text beside it instead: that is a short form of this record (hires
        # writes both), and re-running it would be another job.
        why = meta["hires_error"] or "no 'job' table in it"
        raise OutputError(f"{path}: its hires metadata is malformed ({why}); give the settings "
                          "as options instead of --from")
    if record is not None:
        values = dict(record["job"])
        # Recorded before hires skipped negligible global passes: it ran them all.
        values.setdefault("global_floor", 0.0)
        return values
    if isinstance(meta["parameters"], str) and meta["parameters"].strip():
        try:
            values = parse_parameters(meta["parameters"])
        except (ValueError, TypeError) as e:
            raise OutputError(f"{path}: its generation parameters are malformed ({e}); "
                              "give the settings as options instead of --from") from None
        for note in a1111_notes(meta["parameters"]) if warn else []:
            warn(f"--from {path}: {note}")  # as --from's other notes start
        return values
    raise OutputError(f"{path} carries no hires or A1111 generation metadata to re-run")


# A1111 records a model by its checkpoint file's name: SDXL base's, as Stability AI names its
# files, is hires' default model.
A1111_MODELS = {"sd_xl_base_1.0": DEFAULT_MODEL, "sd_xl_base_1.0_0.9vae": DEFAULT_MODEL}


def unfound_checkpoint(model: Any) -> str | None:
    """Why an A1111 text's model cannot be loaded as named: a checkpoint's name or path
    (juggernautXL_v9, C:\\models\\x) that is no file or folder here, nor a Hub id; None if it may
    be one (or is hires' own 'tiny', which hires writes there)."""
    if not isinstance(model, str) or model == "tiny" or Path(model).exists() or \
            re.fullmatch(r"[\w.-]+/[\w.-]+", model):
        return None
    return (f"its model is named as A1111 names one, by a checkpoint's name ({model}), which "
            "is no file or Hub id here; give --model with that checkpoint's .safetensors file "
            "or its Hub id")


def parse_parameters(text: str) -> dict[str, Any]:
    """The job keys an A1111 'parameters' text can give (prompt, negative, steps, ...)."""
    lines = text.strip().split("\n")
    last = lines.pop() if lines and re.match(r"^\s*Steps: ", lines[-1]) else ""
    # The negative runs from its line to the settings line: its lines after the first too
    at = next((i for i, line in enumerate(lines) if line.startswith("Negative prompt: ")),
              len(lines))
    values: dict[str, Any] = {"prompt": "\n".join(lines[:at])}
    if at < len(lines):
        values["negative"] = "\n".join([lines[at][len("Negative prompt: "):], *lines[at + 1:]])
    pairs = _settings_pairs(last)
    # LinFusion: hires' own field (auto, none or a reference), which decides the attention
    keys = {"Steps": ("steps", int), "CFG scale": ("guidance", float), "Seed": ("seed", int),
            "Model": ("model", str), "Denoising strength": ("strength", float),
            "LinFusion": ("linfusion", str)}
    for key, (name, kind) in keys.items():
        if key in pairs:
            raw = pairs[key].strip()
            values[name] = kind(json.loads(raw) if raw.startswith('"') else raw)
    if values.get("seed") == -1:  # A1111's "a random one": none recorded, so one is drawn
        del values["seed"]
    if values.get("model") in A1111_MODELS:  # a checkpoint's file name, known by its Hub id
        values["model"] = A1111_MODELS[values["model"]]
    sampler = pairs.get("Sampler", "").strip()
    named = {v: k for k, v in A1111_SAMPLERS.items()}.get(sampler) or \
        A1111_NEAREST.get(sampler, (None, ""))[0]
    if named:
        values["sampler"], values["karras"] = named
        if pairs.get("Schedule type", "").strip() == "Karras":  # A1111 1.9 on says it so
            values["karras"] = True
    if "Size" in pairs:
        w, _, h = pairs["Size"].strip().partition("x")
        values["width"], values["height"] = int(w), int(h)
    if final := hires_fix_size(pairs):  # Size is its first pass: the image is the larger one
        values["width"], values["height"] = final
    return values


def hires_fix_size(pairs: dict[str, str]) -> tuple[int, int] | None:
    """The image size of an A1111 hires fix (its `Hires resize`, else `Size` times its `Hires
    upscale`), each side the nearest multiple of 8; None without one."""
    try:
        first = [int(n) for n in pairs["Size"].strip().split("x")] if "Size" in pairs else None
        rw, _, rh = pairs.get("Hires resize", "0x0").strip().partition("x")
        sides = (int(rw), int(rh))
        if first and min(sides) == 0 < max(sides):  # A1111's 0: the side that keeps the aspect
            sides = (sides[0] or sides[1] * first[0] // first[1],
                     sides[1] or sides[0] * first[1] // first[0])
        elif first and max(sides) == 0 and "Hires upscale" in pairs:  # no resize: the scale's
            scale = float(pairs["Hires upscale"])
            sides = (int(first[0] * scale), int(first[1] * scale))  # A1111 truncates so
        elif max(sides) == 0:
            return None
    except (ValueError, OverflowError, ZeroDivisionError):  # not numbers: Size's size stays
        return None
    return (max(8, round(sides[0] / 8) * 8), max(8, round(sides[1] / 8) * 8)) \
        if min(sides) > 0 else None


def _settings_pairs(line: str) -> dict[str, str]:
    """An A1111 settings line's `Key: value` pairs, a quoted value as written."""
    return dict(re.findall(r'\s*([\w ]+): ("(?:\\.|[^"])*"|[^,]*)(?:,|$)', line))


def a1111_notes(text: str) -> list[str]:
    """A line for each setting of an A1111 text that hires makes otherwise than asked: a hires
    fix (read as a job of its final size), LoRAs (not applied), a sampler it has not (read as
    its nearest, or left to the job's)."""
    lines = text.strip().split("\n")
    if not re.match(r"^\s*Steps: ", lines[-1]):
        return []
    pairs = _settings_pairs(lines[-1])
    notes = []
    # "Lora hashes" names them, or the prompt's <lora:name:0.8> (read as text): not applied
    loras = [part.split(":")[0].strip() for part in pairs.get("Lora hashes", "").strip(
        ' "').split(",") if part.strip()] or re.findall(r"<lora:([^:>]+)", "\n".join(lines[:-1]))
    if loras:
        notes.append(f"A1111's LoRAs ({', '.join(dict.fromkeys(loras))}) are not applied, so "
                     "the image will differ (--lora FILE applies one)")
    if final := hires_fix_size(pairs):
        notes.append(f"A1111's hires fix ({pairs.get('Size', '?').strip()} first) is read as a "
                     f"{final[0]}x{final[1]} job, which hires makes in its own stages (its "
                     "denoising strength as their first's), so the image will differ")
    sampler = pairs.get("Sampler", "").strip()
    if not sampler or sampler in A1111_SAMPLERS.values():
        return notes
    if sampler in A1111_NEAREST:
        (nearest, _), why = A1111_NEAREST[sampler]
        read = f" ({why}): read as {nearest}"
    else:
        read = ": the job's own runs"
    return [*notes, f"A1111's sampler '{sampler}' is not in hires{read}, so the image will "
            f"differ (--sampler picks {' or '.join(SAMPLERS)})"]


def append_manifest(path: str | Path, record: dict[str, Any]) -> None:
    """One JSON line per result, flushed at once so a killed batch keeps what it finished."""
    # the files it names (in "path", and an "error"'s) as --json names them, in any locale
    record = {**record, **{k: name_text(record[k]) for k in ("path", "error")
                           if isinstance(record.get(k), str)}}
    line = (json.dumps(record, sort_keys=True) + "\n").encode()
    # One write() on an O_APPEND descriptor: shards appending at once never interleave lines.
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        # A line cut short before (a full disk) ends without its newline: this one starts on
        # a line of its own, not glued to it (every whole line ends in one)
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            line = b"\n" + line
        # A short write (a disk filling up) writes the rest, whose error then says so: the
        # job's line was said written, and cut short
        view = memoryview(line)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
