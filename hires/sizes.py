"""How big an image is, from the size keys of every level that sets a job: a preset, a batch
file's [defaults], a job or the command's flags, an image's record (`--from`).

The keys are `size` (the long side) with `aspect`, `width` and `height` (exact), `print_size`
(a print's width and height, e.g. "60x90cm", at the job's dpi, 300 when it names none), and for
an upscale `scale` (a multiple of the input's size). The most specific level that names a size
decides it; where that level gives only `aspect`, the long side comes from the level below
(`--preset 8k --aspect 16:9` is 8192 x 4608; over a print size, the largest of that shape the
paper holds), and where it gives only `size`, the shape does
(`--from wide.png --size 8192` keeps the recorded aspect). An upscale keeps its input's aspect:
`size` is the input's long side made that long, not a square it would be cropped to, and
`print_size` the largest the input fits in the print, turned to the input's orientation.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable
from dataclasses import replace
from itertools import takewhile
from typing import Any

from hires.job import (
    DEFAULT_IP_ADAPTER,
    MAX_DPI,
    MAX_SIDE,
    MIN_SIDE,
    NAMED_IP_ADAPTER,
    UPSCALE_STRENGTH,
    Job,
    JobError,
    KeyedError,
    check_side,
    number_hint,
    parse_aspect,
    size_from,
    spelled,
)

SIZE_KEYS = ("size", "aspect", "scale", "width", "height", "print_size")
PRINT_DPI = 300  # a print size's resolution when the job names no dpi: photo print quality
_UNITS = {"cm": 1 / 2.54, "mm": 1 / 25.4, "in": 1.0, "inch": 1.0, "inches": 1.0, '"': 1.0}
# Paper sizes by name, portrait (width x height, in mm); "-landscape" turns one.
PAPER_MM = {"a0": (841, 1189), "a1": (594, 841), "a2": (420, 594), "a3": (297, 420),
            "a4": (210, 297), "a5": (148, 210), "a6": (105, 148),
            "letter": (215.9, 279.4), "legal": (215.9, 355.6), "tabloid": (279.4, 431.8)}
_BLEED = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-z\"]+)\s*$")
_PRINT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*[x×*]\s*(\d+(?:\.\d+)?)\s*([a-z\"]*)\s*$")
OPTIONS = "options"  # the `where` of a command's flags: its keys are named as flags (--size)
# What a preset or job of only an aspect lacks, said for gen and up (a batch has no --size:
# hires.batch says it with the job file's keys).
ASPECT_ALONE = "give --size (in pixels) with it, or set 'size' there"

Level = tuple[dict[str, Any], str]  # (values, where they come from, for errors)


def _name(key: str, where: str) -> str:
    return f"--{key.replace('_', '-')}" if where == OPTIONS else f"'{key}'"


def _in(where: str) -> str:
    return "" if where == OPTIONS else f" (in {where})"


def _said(error: JobError, where: str) -> JobError:
    """A shared check's error (worded with flags: 'use --scale 1.6 or more') for `where`: a
    file's in its keys ('use scale = 1.6 or more', '--dpi' as 'dpi'), after the file, job or
    preset that gave them."""
    if where == OPTIONS:
        return error

    def key(m: re.Match) -> str:
        name = m.group(1).replace("-", "_")
        return f"{name} = {m.group(2)}" if m.group(2) else _name(name, where)

    text = re.sub(r"--([a-z][a-z0-9-]*)(?: (\d[^\s,;)]*))?", key, str(error))
    return JobError(f"{where}: {text}")


def size_keys(values: dict[str, Any]) -> dict[str, Any]:
    """The size keys `values` sets (None is unset); `print-size` is `print_size`."""
    named = {str(k).replace("-", "_"): v for k, v in values.items()}
    return {k: named[k] for k in SIZE_KEYS if named.get(k) is not None}


def print_inches(text: Any) -> tuple[float, float]:
    """A print's width and height in inches, from '60x90cm', '600x900mm', '24x36in' or a paper
    name ('A2', 'letter'; portrait, or turned with '-landscape'); '+3mm' adds that much bleed
    on every side ('A2+3mm' is 426 x 600 mm; turned, 'A2-landscape+3mm' or 'A2+3mm-landscape')."""
    text, _, bleed_text = str(text).partition("+")
    # 'A4+3mm-landscape' as 'A4-landscape+3mm': the turn may follow the bleed
    for turn in ("-landscape", " landscape"):
        if bleed_text.lower().rstrip().endswith(turn):
            bleed_text = bleed_text.rstrip()[:-len(turn)]
            text = text.rstrip() + "-landscape"
            break
    bleed = 0.0
    if bleed_text:
        m = _BLEED.match(bleed_text.lower())
        if not m or m.group(2) not in _UNITS:
            raise JobError(f"bleed must look like +3mm, +0.3cm or +0.125in, got "
                           f"{spelled('+' + bleed_text)}")
        bleed = float(m.group(1)) * _UNITS[m.group(2)]
    w, h = _print_inches(text)
    return w + 2 * bleed, h + 2 * bleed


def _print_inches(text: str) -> tuple[float, float]:
    name, turned = text.strip().lower(), False
    if name.endswith(("-landscape", " landscape")):
        name, turned = name[:-len("-landscape")].strip(), True
    if name in PAPER_MM:
        w, h = (side / 25.4 for side in PAPER_MM[name])
        return (h, w) if turned else (w, h)
    m = _PRINT.match(str(text).lower())
    if not m or m.group(3) not in _UNITS or not float(m.group(1)) or not float(m.group(2)):
        unit = "" if not m or m.group(3) else " with its unit"
        raise JobError(f"print size must look like 60x90cm, 600x900mm or 24x36in{unit}, or be a "
                       f"paper (A0-A6, letter, legal, tabloid; A2-landscape), got "
                       f"{spelled(text.strip())}")
    per_unit = _UNITS[m.group(3)]
    return float(m.group(1)) * per_unit, float(m.group(2)) * per_unit


def print_pixels(text: Any, dpi: float | None,
                 source: tuple[int, int] | None = None) -> tuple[int, int]:
    """A print size's pixels at `dpi` (PRINT_DPI when None), each side the nearest multiple
    of 8 (at 300 dpi, within 0.34 mm of the print); with `source`, an upscale's input size,
    the largest that input fits in the print (`fit_print`)."""
    dpi = PRINT_DPI if dpi is None else dpi  # 0 is refused, not the default
    if not 1 <= dpi <= MAX_DPI:  # inf or 1e308 overflows the pixels: a library call's dpi
        raise JobError(f"dpi must be from 1 to {MAX_DPI} pixels per inch, got {dpi}")
    inches = print_inches(text)
    most = math.floor(MAX_SIDE / max(inches))
    if most < 1:  # not the shape: its long side alone is past the limit at the least dpi
        raise JobError(f"print size {text} is {math.ceil(max(inches))} px on its long side even "
                       f"at 1 dpi, more than the {MAX_SIDE} px a side hires makes; a smaller print")
    if math.ceil(MIN_SIDE / min(inches)) > most:
        raise JobError(f"print size {text} is {max(inches) / min(inches):.0f} times longer "
                       f"than wide; hires makes {MIN_SIDE} to {MAX_SIDE} px a side, at most "
                       f"{MAX_SIDE // MIN_SIDE} times: a print closer to square")
    most = min(MAX_DPI, most)  # no advice past the dpi taken
    w, h = _print_pixels(inches, dpi)
    made = (w, h) if source is None else fit_print(source, w, h)
    sw, sh = source or made
    fitted = "" if source is None else f", the {sw}x{sh} input fitted to it {made[0]}x{made[1]}"
    if source is not None:  # what is made is the input fitted to the print, not the whole print
        most = _most_dpi(inches, source, most)
    if max(made) > MAX_SIDE:
        raise JobError(f"print size {text} at {dpi:g} dpi is {w}x{h} px{fitted}, more than the "
                       f"{MAX_SIDE} px a side hires makes; at most {most} dpi for that print "
                       "(--dpi), or a smaller print")
    if _in_range(made, source):
        return made
    problems = ([f"less than the {MIN_SIDE} px a side hires makes"] if min(made) < MIN_SIDE
                else [])
    if source is not None and (made[0] < sw or made[1] < sh):
        problems.append("smaller than the input (hires up makes images larger)")
    problem = " and ".join(problems)
    least = _least_dpi(inches, source, most)
    whole = "" if least is None or source is None else _dpi_keeping_all(inches, source, least,
                                                                         most)
    fix = "a larger print" if least is None else (f"at least {least} dpi for that print "
                                                 f"(--dpi){whole}, or a larger print")
    raise JobError(f"print size {text} at {dpi:g} dpi is {w}x{h} px{fitted}, {problem}; {fix}")


def _dpi_keeping_all(inches: tuple[float, float], source: tuple[int, int], least: int,
                     most: int) -> str:
    """' (N dpi keeps all of it)' where the input fitted to the print at the `least` dpi that
    works is cut by its 8 px steps (a 4000x16 strip: 15000x64 keeps 3750x16 of it), and a
    dpi up to `most` is not; else ''. (See `_keeping_all`.)"""
    def made(d: int) -> tuple[int, int]:
        return fit_print(source, *_print_pixels(inches, d))

    d = _first_keeping_all(source, least, range(least + 1, most + 1), made)
    return "" if d is None else f" ({d} dpi keeps all of it)"


def _first_keeping_all(source: tuple[int, int], least: Any, values: Iterable[Any],
                       made: Callable[[Any], tuple[int, int]]) -> Any:
    """The first of `values` whose size (`made`) is one hires makes from `source` and cuts
    none of it off, where `least`'s cuts some; None where `least`'s does not, or none does."""
    from hires.images import crops

    if not crops(source, *made(least)):
        return None
    return next((v for v in values if _in_range(made(v), source)
                 and not crops(source, *made(v))), None)


def _print_pixels(inches: tuple[float, float], dpi: float) -> tuple[int, int]:
    w, h = (max(8, round(side * dpi / 8) * 8) for side in inches)
    return w, h


def _in_range(made: tuple[int, int], source: tuple[int, int] | None) -> bool:
    """Whether an image of size `made` is one hires makes (from `source`: larger than it)."""
    fits = MIN_SIDE <= min(made) and max(made) <= MAX_SIDE
    return fits and (source is None or (made[0] >= source[0] and made[1] >= source[1]))


def _most_dpi(inches: tuple[float, float], source: tuple[int, int], least: int) -> int:
    """The most whole dpi (from `least`, the whole print's) at which `source` fitted to the
    print has no side over MAX_SIDE: a 4:3 photo on a 2:3 print fills its short side alone."""
    def fits(dpi: int) -> bool:
        return max(fit_print(source, *_print_pixels(inches, dpi))) <= MAX_SIDE

    # The fitted input fills one side of the print, so its long side is at least the short one.
    lo, hi = least, min(MAX_DPI, math.ceil(MAX_SIDE / min(inches))) + 1  # fits(lo), not hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


def _least_dpi(inches: tuple[float, float], source: tuple[int, int] | None,
               most: int) -> int | None:
    """The least whole dpi at which the print (and `source` fitted to it) is in range, or None
    when none up to `most` is. Sides are rounded to multiples of 8, so the estimate from the
    sides' ratio can fall a little short: the few dpi above it are tried in turn."""
    if source is None:
        need = MIN_SIDE / min(inches)
    else:  # the input fitted to the print is its size times dpi * (inches per input px)
        pw, ph = inches if (source[0] - source[1]) * (inches[0] - inches[1]) >= 0 else inches[::-1]
        need = scale_range(source)[0] / min(pw / source[0], ph / source[1])
    for d in range(max(1, math.floor(need * 0.9)), min(most, math.ceil(need * 1.1) + 64) + 1):
        px = _print_pixels(inches, d)
        if _in_range(px if source is None else fit_print(source, *px), source):
            return d
    return None


def print_name(text: str) -> str:
    """A print size as messages name it: on one line, spaces around it dropped."""
    return " ".join(str(text).split())


def sized_by_print(job: Job, text: str | None) -> Job:
    """`job` marked as sized by print size `text` (None: by anything else, a print it was
    made from before forgotten): a plan that cannot fit then names the dpi at which that
    print fits (hires.plan.fitting_print)."""
    extra = {k: v for k, v in job.extra.items() if k != "print_size"}
    if text is not None:
        extra["print_size"] = print_name(text)
    return replace(job, extra=extra)


def print_sizes(text: str, below: float, source: tuple[int, int] | None = None
                ) -> list[tuple[int, tuple[int, int]]]:
    """(dpi, image size) for print size `text` at each whole dpi under `below` whose image
    (with `source`, an upscale's input fitted to the print) hires makes, smallest first."""
    inches = print_inches(text)
    made = ((d, _print_pixels(inches, d)) for d in range(1, min(math.ceil(below), MAX_DPI + 1)))
    fitted = ((d, px if source is None else fit_print(source, *px)) for d, px in made)
    return [(d, px) for d, px in fitted if _in_range(px, source)]


def check_size_keys(values: dict[str, Any], where: str) -> None:
    """Raise JobError (one line, naming `where`) for size keys that cannot go together or have
    bad values; any image's size is not needed for this."""
    keys, n = size_keys(values), (lambda key: _name(key, where))
    try:
        if "print_size" in keys:
            if len(keys) > 1:
                others = sorted(keys.keys() - {"print_size"})
                raise JobError(f"{n('print_size')} sets both sides: drop "
                               + " and ".join(n(other) for other in others))
            if not isinstance(keys["print_size"], str):  # `print_size = true`: no paper's name
                raise JobError(f"{n('print_size')} must be text like \"60x90cm\" or \"A2\", got "
                               f"{_shown(keys['print_size'], where)}")
            print_inches(keys["print_size"])
        if "width" in keys or "height" in keys:
            clash = sorted(keys.keys() & {"size", "aspect", "scale"})
            if clash:  # name only what was given: gen has no --scale
                raise JobError(f"give either {n('width')}/{n('height')} or "
                               f"{'/'.join(n(k) for k in clash)}, not both")
            if not ("width" in keys and "height" in keys):
                raise JobError(f"{n('width')} and {n('height')} go together; give both (or use "
                               f"{n('size')})")
            for key in ("width", "height"):
                _whole(key, keys[key], n, where)
                check_side(n(key), keys[key])
        if "scale" in keys:
            if keys.keys() & {"size", "aspect"}:
                # what clashes, then the choices the no-size error lists (layered_size's
                # callers), print's too: "give one of" alone read as if none was given
                other = "size" if "size" in keys else "aspect"
                raise JobError(f"{n('scale')} and {n(other)} do not go together: give one of "
                               f"{n('size')}, {n('scale')}, {n('width')}/{n('height')} or "
                               f"{n('print_size')}")
            scale = keys["scale"]
            if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not (
                    math.isfinite(scale) and scale > 0):
                hint = number_hint(scale) if isinstance(scale, str) else ""
                raise JobError(f"{n('scale')} must be a positive number{hint}, "
                               f"got {_shown(scale, where)}")
        if "size" in keys:
            _whole("size", keys["size"], n, where)
            check_side(n("size"), keys["size"])
        if "aspect" in keys:
            parse_aspect(str(keys["aspect"]))
    except JobError as e:
        raise JobError(f"{e}{_in(where)}") from None


def _whole(key: str, value: Any, n: Callable[[str], str], where: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise JobError(f"{n(key)} must be a whole number of pixels{number_hint(value)}, "
                       f"got {_shown(value, where)}")


def _shown(value: Any, where: str) -> str:
    """A bad value as its writer wrote it: a file's as TOML and JSON spell it, a flag's as is."""
    return repr(value) if where == OPTIONS else spelled(value)


# The keys that give a level's long side, and those that give its shape: a level that gives
# only the other takes it from the nearest level below that gives it.
LONG_SIDE_KEYS = ("size", "width", "print_size")
SHAPE_KEYS = ("aspect", "width", "print_size")


def nearest(lower: list[dict[str, Any]], keys: tuple[str, ...]) -> dict[str, Any]:
    """The size keys of the nearest of the `lower` levels (least specific first) that gives
    any of `keys`; {} where none does."""
    return next((level for level in reversed(lower) if any(k in level for k in keys)), {})


def layered_size(levels: list[Level],
                 source: tuple[int, int] | Callable[[], tuple[int, int]] | None = None,
                 dpi: float | None = None) -> tuple[int, int] | None:
    """Width and height from the levels' size keys (least specific first), or None when no
    level names a size. `source`: an upscale's input size (its aspect is kept), or a function
    that reads it, called only when the size depends on it; `dpi`: a print size's."""
    named = [(size_keys(values), where) for values, where in levels]
    named = [(keys, where) for keys, where in named if keys]
    if not named:
        return None
    for keys, where in named:
        check_size_keys(keys, where)
    (top, where), lower = named[-1], [keys for keys, _ in named[:-1]]
    n = (lambda key: _name(key, where))  # noqa: E731
    if "print_size" in top:
        try:
            return print_pixels(top["print_size"], dpi,
                                (source() if callable(source) else source) if source else None)
        except JobError as e:
            raise _said(e, where) from None
    if "width" in top:
        return top["width"], top["height"]
    if source is not None:
        if "aspect" in top:
            raise JobError(f"an upscale keeps its input's aspect: drop {n('aspect')}, or give "
                           f"{n('width')} and {n('height')} for another shape{_in(where)}")
        try:
            return target_size(source() if callable(source) else source, size=top.get("size"),
                               scale=top.get("scale"))
        except JobError as e:
            raise _said(e, where) from None
    if "scale" in top:
        raise JobError(f"{n('scale')} multiplies an input image's size: it is for upscales "
                       f"(hires up, or a job with 'image'); give {n('size')} instead{_in(where)}")
    size, aspect = top.get("size"), top.get("aspect")
    if size is None:  # only the aspect: the long side from below
        below = nearest(lower, LONG_SIDE_KEYS)
        size = below.get("size") or max(below.get("width", 0), below.get("height", 0)) or None
        if "print_size" in below:  # the largest of that shape the paper holds, turned to it
            size = _most_on_paper(aspect, print_pixels(below["print_size"], dpi))
        if size is None and where == OPTIONS:
            raise JobError("--aspect needs --size (the long side in pixels)")
        if size is None:  # a preset or job of only a shape: the long side is for the run
            raise JobError(f"'aspect' in {where} needs a long side: {ASPECT_ALONE}")
    elif aspect is None:  # only the long side: the shape from below
        below = nearest(lower, SHAPE_KEYS)
        aspect = below.get("aspect") or (f"{below['width']}:{below['height']}"
                                         if "width" in below else None)
        if "print_size" in below:
            aspect = "{}:{}".format(*print_inches(below["print_size"]))
    try:
        return size_from(size, None if aspect is None else str(aspect), None, None)
    except JobError as e:  # "--aspect 30:1 at --size 64 ...": the level that gave the aspect
        raise _said(e, where) from None


def _most_on_paper(aspect: Any, paper: tuple[int, int]) -> int:
    """The long side of the largest image of `aspect` that a paper of `paper` px holds, turned
    to the aspect: its short side, rounded as size_from rounds it, never past the paper's."""
    ratio = parse_aspect(aspect)
    size = max(fit_print((round(ratio * 10_000), 10_000), *paper))
    while size > 8:
        w, h = size_from(size, str(aspect), None, None) if size >= MIN_SIDE else (size, size)
        if max(w, h) <= max(paper) and min(w, h) <= min(paper):
            break
        size -= 8
    return size


def fit_print(source: tuple[int, int], width: int, height: int) -> tuple[int, int]:
    """An upscale for a print of `width` x `height` px: turned to the input's orientation (a
    60x90 cm poster of a landscape photo is 90 x 60), the input's aspect kept, as large as fits
    the print (sides multiples of 8, at least 8 px)."""
    sw, sh = source
    if (sw - sh) * (width - height) < 0:
        width, height = height, width
    factor = min(width / sw, height / sh)
    return max(8, round(sw * factor / 8) * 8), max(8, round(sh * factor / 8) * 8)


def target_size(source: tuple[int, int], *, size: int | None = None, scale: float | None = None,
                width: int | None = None, height: int | None = None) -> tuple[int, int]:
    """An upscale's output size from exactly one of size (long side), scale, or width/height.

    The input's aspect is kept (sides rounded to multiples of 8) unless both sides are given.
    """
    sw, sh = source
    given = [name for name, v in (("--size", size), ("--scale", scale),
                                  ("--width/--height", width or height)) if v]
    if len(given) != 1:
        raise JobError("give one of --size, --scale, --width/--height or --print-size for the "
                       "output size")
    if width or height:
        if not (width and height):
            raise JobError("--width and --height go together; give both (or use --size)")
        check_larger(source, width, height)
        return width, height
    factor = scale if scale else size / max(sw, sh)
    if not factor or factor <= 0 or not math.isfinite(factor):
        raise JobError(f"--scale must be a positive number, got {scale}")
    # A finite scale can still make an infinite side (1e308 x 128): round() takes no infinity,
    # and any side past MAX_SIDE gets the same refusal, so it stands in for one.
    w, h = (_on_grid(side * factor) for side in source)
    if w >= sw and h >= sh and MIN_SIDE <= min(w, h) and max(w, h) <= MAX_SIDE:
        return w, h
    flag, (least, most) = ("--scale", scale_range(source)) if scale else ("--size",
                                                                          size_range(source))
    if least > most:
        raise JobError(f"the {sw}x{sh} input is too narrow to keep its aspect within {MIN_SIDE} "
                       f"to {MAX_SIDE} px a side; give --width and --height")
    asked = f"{flag} {scale:g}" if scale else f"{flag} {size}"
    # Smaller than the input: said so when asked to shrink or where the least side is no
    # reason (an 8 px input at --scale 2 is too small, not "smaller than the input").
    whole = _keeping_all(source, least, most, flag)
    if (w < sw or h < sh) and (factor < 1 or min(w, h) >= MIN_SIDE):
        # a side the 8 px grid rounds to nothing is said as the pixel it would be (4000x16 at
        # --size 128 made "128x0")
        shown = "x".join(str(side or max(1, round(raw * factor)))
                         for side, raw in zip((w, h), source))
        raise JobError(f"hires up makes images larger: {asked} makes {shown}, smaller than the "
                       f"{sw}x{sh} input; ask for {flag} {least:g} or more{whole}")
    if max(w, h) > MAX_SIDE:
        made = f"{w}x{h} px" if max(w, h) <= _HUGE else f"sides of over {_HUGE:,} px"
        raise JobError(f"{asked} makes {made} from the {sw}x{sh} input, more than the "
                       f"{MAX_SIDE} px a side hires makes; use {flag} {most:g} or less")
    raw = f"{max(1, round(sw * factor))}x{max(1, round(sh * factor))}"  # before the 8 px grid
    raise JobError(f"{asked} makes {raw} px from the {sw}x{sh} input, less than the "
                   f"{MIN_SIDE} px a side hires makes; use {flag} {least:g} or more{whole}")


def _keeping_all(source: tuple[int, int], least: float, most: float, flag: str) -> str:
    """' (--scale 4 keeps all of it)' where the least `flag` that works makes another shape
    than the input's, its 8 px steps cutting some of it off (4000x16 at 3.75: 15000x64, 6 %
    gone), and a larger one up to `most` does not; else ''."""
    def made(value: float) -> tuple[int, int]:
        factor = value if flag == "--scale" else value / max(source)
        return _on_grid(source[0] * factor), _on_grid(source[1] * factor)

    larger = (round(least + n * 0.01, 2) if flag == "--scale" else int(least + n * 8)
              for n in range(1, 2001))
    value = _first_keeping_all(source, least, takewhile(lambda v: v <= most, larger), made)
    return "" if value is None else f" ({flag} {value:g} keeps all of it)"


# Past this a side is not worth its digits in a message (nor representable, for 1e308 x 128)
_HUGE = 10 ** 9


def _on_grid(px: float) -> int:
    """A side of `px` rounded to a multiple of 8; past _HUGE (inf too) _HUGE + 8, which is as
    much too large for hires as the side itself."""
    return round(px / 8) * 8 if px <= _HUGE else _HUGE + 8


def check_larger(source: tuple[int, int], width: int, height: int) -> None:
    """Refuse an upscale to `width` x `height` that is smaller than its `source` on a side (a
    JobError naming the flags that are short and the least each may be). Another aspect is
    the caller's to ask for: both sides given is the way to a new shape."""
    sw, sh = source
    short = [(flag, asked, _multiple_of_8(side)) for flag, asked, side in
             (("--width", width, sw), ("--height", height, sh)) if asked < side]
    if not short:
        return
    named = " and ".join(f"{flag} {asked}" for flag, asked, _ in short)
    least = " and ".join(f"{flag} {need} or more" for flag, _, need in short)
    verb = "make" if len(short) > 1 else "makes"
    raise JobError(f"hires up makes images larger: {named} {verb} {width}x{height}, smaller "
                   f"than the {sw}x{sh} input; ask for {least}")


def scale_range(source: tuple[int, int]) -> tuple[float, float]:
    """The least --scale (to 2 decimals, from 1) that makes no side smaller than the input's
    or MIN_SIDE (each side is round(side * scale / 8) * 8), and the most that makes none over
    MAX_SIDE before that rounding (256, not the 256.03 that rounds down to it)."""
    # The estimate, then the few hundredths past it that the rounding asks, tried in turn;
    # never under 1, which the rounding can allow (0.96 keeps 96x64 as it is) but no upscale is.
    least = _first(max(100, math.floor(_least_factor(source) * 100)),
                   lambda s: _makes(source, s / 100))
    return least / 100, math.floor(MAX_SIDE / max(source) * 100) / 100


def size_range(source: tuple[int, int]) -> tuple[int, int]:
    """The least and the most --size (multiples of 8) that keep every side from the input's
    (or MIN_SIDE) to MAX_SIDE, the input's aspect kept."""
    long = max(source)
    least = _first(math.floor(_least_factor(source) * long / 8),
                   lambda s: _makes(source, 8 * s / long))
    return 8 * least, MAX_SIDE


def _least_factor(source: tuple[int, int]) -> float:
    """About the least factor that makes no side of `source` smaller than itself or
    MIN_SIDE: a side rounds up to the multiple of 8 it needs from half a step (4 px) below."""
    return max((math.ceil(max(side, MIN_SIDE) / 8) - 0.5) * 8 / side for side in source)


def _makes(source: tuple[int, int], factor: float) -> bool:
    """Whether `factor` makes `source` no smaller than itself or MIN_SIDE, as target_size
    rounds its sides."""
    w, h = (_on_grid(side * factor) for side in source)
    return w >= source[0] and h >= source[1] and min(w, h) >= MIN_SIDE


def _first(start: int, holds: Callable[[int], bool]) -> int:
    """The first of start, start + 1, ... for which `holds`; `start` is an estimate a few
    short of it (after 1,000 tries, where it is)."""
    n = start
    for _ in range(1000):
        if holds(n):
            return n
        n += 1
    return n


def _multiple_of_8(px: float) -> int:
    return math.ceil(px / 8) * 8


# An add-on's reference 'none' drops the add-on that a level below brings (a preset's, a
# record's, a batch file's [defaults]): its key and the keys that go with it.
_CONTROL = ("control", "control_model", "control_scale")
_IP = ("ip_image", "ip_adapter", "ip_scale")
SWITCHES = {"control": _CONTROL, "control_model": _CONTROL, "ip_image": _IP, "ip_adapter": _IP,
            "lora": ("lora",)}
_WHAT = {_CONTROL: "the ControlNet", _IP: "the IP-Adapter"}


def switched_off(values: dict[str, Any], where: str = OPTIONS
                 ) -> tuple[dict[str, Any], set[str]]:
    """`values` without its add-on references given as 'none' (of a LoRA list, its 'none'
    entries: the LoRAs left are this level's own), and the keys those drop from the levels
    below. A reference given beside its add-on's 'none' is a contradiction (JobError)."""
    kept, dropped, off = dict(values), set(), {}
    for key, value in values.items():
        name = str(key).replace("-", "_")
        if name == "lora" and isinstance(value, list) and "none" in value:
            dropped.add("lora")
            rest = [spec for spec in value if spec != "none"]
            if rest:
                kept[key] = rest
            else:
                del kept[key]
        elif name in SWITCHES and value == "none":
            dropped.update(SWITCHES[name])
            off[SWITCHES[name]] = key
            del kept[key]
    for key in kept:
        name = str(key).replace("-", "_")
        group = SWITCHES.get(name)
        if group in off:  # (a strength is checked as one without its add-on is)
            what, switch = _WHAT[group], str(off[group]).replace("-", "_")
            if where == OPTIONS:
                raise JobError(f"{_name(switch, where)} none drops {what}: leave out "
                               f"{_name(name, where)}, or give {_name(switch, where)} a file")
            raise JobError(f"'{key}' in {where} is given with {switch} = 'none', which drops "
                           f"{what}; remove one of them")
    return kept, dropped


def without(values: dict[str, Any], keys: set[str]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if str(k).replace("-", "_") not in keys}


def _gives(values: dict[str, Any], key: str) -> bool:
    """Whether a level's values give `key` (as a key or its dashed spelling)."""
    return key in {str(k).replace("-", "_") for k in values}


def giver(levels: list[tuple[dict[str, Any], str, bool]], key: str) -> str | None:
    """Where the most specific level that gives `key` is; None if none does."""
    return next((where for values, where, _ in reversed(levels) if _gives(values, key)), None)


def job_from_levels(levels: list[tuple[dict[str, Any], str, bool]], base: Job | None = None,
                    size_of: Callable[[str], tuple[int, int]] | None = None,
                    images: bool = True, scale: bool = True) -> Job:
    """`base` with each level's keys applied in turn, least specific first (values, where,
    untrusted: from a file), and its size from all of them (`layered_size`); validated
    (`images`: as `Job.validate`'s).

    `size_of(path)` reads an upscale input's size (a job with an `image`); an upscale must be
    given its size at some level, as the default 1024 x 1024 would crop most pictures.
    `scale`: whether the command has --scale (`up`), to name it in that error.
    """
    levels = list(levels)
    for i in reversed(range(len(levels))):  # each level's 'none' drops the add-on below it
        values, where, untrusted = levels[i]
        kept, dropped = switched_off(values, where)
        levels[i] = (kept, where, untrusted)
        levels[:i] = [(without(v, dropped), w, u) for v, w, u in levels[:i]]
    job = base or Job()
    for values, where, untrusted in levels:
        job = job.merged({k: v for k, v in values.items()
                          if str(k).replace("-", "_") not in SIZE_KEYS}, where=where,
                         untrusted=untrusted)
    image = job.image
    if image and base is None and not any("strength" in values for values, _, _ in levels):
        # An upscale made by `up`, a batch job or --from gets up's strength, not gen's.
        job = job.merged({"strength": UPSCALE_STRENGTH})
    source = (lambda: size_of(image)) if image and size_of else None
    named = [(values, where) for values, where, _ in levels]
    # A dpi out of range (inf, nan, 1e308) would overflow a print's pixels: left unsized, the
    # job's own check below refuses it, naming the flag or file that gave it.
    dpi_ok = job.dpi is None or 1 <= job.dpi <= MAX_DPI
    size = layered_size(named, source, job.dpi) if dpi_ok else None
    if size is None and image and dpi_ok:
        where = levels[-1][1] if levels else OPTIONS
        n = (lambda key: _name(key, where))  # noqa: E731
        preset = " (or a preset that gives one)" if where == OPTIONS else ""
        # `gen` and `plan` have no --scale: an image a preset or record gave is sized without
        scaled = f"{n('scale')}, " if scale or where != OPTIONS else ""
        raise JobError(f"give one of {n('size')}, {scaled}{n('width')}/{n('height')} or "
                       f"{n('print_size')} for the upscale's output size{preset}{_in(where)}")
    job = sized_by_print(job, None)  # not a base job's print that other keys sized again
    if size is not None:
        job = job.merged({"width": size[0], "height": size[1]})
        given = [(size_keys(values), where) for values, where in named if size_keys(values)]
        (top, top_where), lower = given[-1], [keys for keys, _ in given[:-1]]
        if source is not None and "width" in top:
            # Exact sides are the size without the input (layered_size does not open it), but
            # an upscale smaller than its input is refused however it is sized.
            try:
                check_larger(source(), *size)
            except JobError as e:
                raise _said(e, top_where) from None
        # A print's size decides the pixels (an aspect over it keeps its long side): the file
        # records the dpi it was priced at.
        from_print = "print_size" in top or (set(top) == {"aspect"} and
                                              "print_size" in nearest(lower, LONG_SIDE_KEYS))
        if from_print and job.dpi is None:
            job = job.merged({"dpi": PRINT_DPI})
        if "print_size" in top:
            job = sized_by_print(job, top["print_size"])
    named_at = giver(levels, "ip_adapter")
    if named_at not in (None, OPTIONS) and not named_at.startswith("metadata of ") and \
            job.ip_adapter == DEFAULT_IP_ADAPTER:
        # A preset or job file that names the default adapter asks for it, as one naming
        # another does (a record names every key: the default there is no ask).
        job = replace(job, extra={**job.extra, NAMED_IP_ADAPTER: True})
    try:
        return job.validate(images=images)
    except KeyedError as e:  # "--control needs --control-model": said where the key is
        found = giver(levels, e.key)
        last = levels[-1][1] if levels else OPTIONS
        if last != OPTIONS:  # a batch's job, in keys; a preset's or [defaults]' key named there
            said = e.in_file(last) if found in (None, last) else f"{last}: {e.in_file(found)}"
            raise JobError(said) from None
        if found not in (None, OPTIONS):  # a preset's or record's, not a flag never typed
            raise JobError(e.in_level(found)) from None
        raise
    except JobError as e:  # "steps must be ...": say which preset, file or job gave it
        key = str(e).split(" ", 1)[0]
        where = giver(levels, key) or OPTIONS
        if where != OPTIONS:
            raise JobError(f"{e}{_in(where)}") from None
        if any(_gives(values, key)
               for values, w, _ in levels if w == OPTIONS):  # a flag's: "--strength must ..."
            raise JobError(f"{_name(key, OPTIONS)}{str(e)[len(key):]}") from None
        raise
