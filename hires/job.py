"""`Job`: every user-facing knob of one image, with defaults, validation and preset merging."""

from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass, field, fields
from typing import Any

DEFAULT_MODEL = "stabilityai/stable-diffusion-xl-base-1.0"
MAX_SIDE = 32768
FORMATS = ("png", "jpg", "webp", "tiff")
UPSAMPLE_MODES = ("pixel", "latent")
OFFLOAD_MODES = ("auto", "none", "model", "sequential")
VAE_STATS_MODES = ("fast", "exact")


class JobError(ValueError):
    """A bad job setting; the message is one line that says what to do."""


@dataclass
class Job:
    """One image to make: prompt, size and every sampling knob (reference defaults)."""

    prompt: str = ""
    negative: str = ""
    width: int = 1024
    height: int = 1024
    seed: int | None = None
    steps: int = 50
    guidance: float = 7.5
    strength: float = 0.32
    cosine_scale_1: float = 3.0
    cosine_scale_2: float = 1.0
    cosine_scale_3: float = 1.0
    sigma: float = 0.8
    upsample: str = "pixel"
    dilate_downsamplers: bool = True
    model: str = DEFAULT_MODEL
    linfusion: str = "auto"
    dtype: str = "auto"
    device: str = "auto"
    offload: str = "auto"
    vram: float | None = None
    vae_tile: int | None = None
    vae_stats: str = "fast"
    format: str = "png"
    allow_pickle: bool = False
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    def validate(self) -> Job:
        """Raise JobError on the first bad setting; return self for chaining."""
        for name in ("width", "height"):
            check_side(name, getattr(self, name))
        if not isinstance(self.steps, int) or self.steps < 1:
            raise JobError(f"steps must be a whole number >= 1, got {self.steps!r}")
        if not 0.0 <= self.strength <= 1.0:
            raise JobError(f"strength must be between 0 and 1, got {self.strength}")
        if self.guidance < 0:
            raise JobError(f"guidance must be >= 0, got {self.guidance}")
        if self.sigma <= 0:
            raise JobError(f"sigma must be > 0, got {self.sigma}")
        if self.seed is not None and not 0 <= self.seed < 2**63:
            raise JobError(f"seed must be between 0 and 2**63-1, got {self.seed}")
        _check_choice("upsample", self.upsample, UPSAMPLE_MODES)
        _check_choice("format", self.format, FORMATS)
        _check_choice("offload", self.offload, OFFLOAD_MODES)
        _check_choice("vae_stats", self.vae_stats, VAE_STATS_MODES)
        if self.vae_tile is not None and (self.vae_tile < 64 or self.vae_tile % 8):
            raise JobError(f"vae_tile must be a multiple of 8 and >= 64, got {self.vae_tile}")
        return self

    def to_dict(self) -> dict[str, Any]:
        """The job as plain JSON-ready values (what metadata and manifests record)."""
        out = dataclasses.asdict(self)
        out.pop("extra")
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any], *, where: str = "job") -> Job:
        """Build a Job from keys as written in presets, batch files and metadata."""
        return cls().merged(values, where=where)

    def merged(self, values: dict[str, Any], *, where: str = "job") -> Job:
        """A copy with `values` applied on top; unknown keys are an error naming the closest."""
        updates = {}
        for key, value in values.items():
            name = key.replace("-", "_")
            if name not in JOB_KEYS:
                raise JobError(f"unknown key '{key}' in {where}{closest_hint(name, JOB_KEYS)}")
            updates[name] = _coerce(name, value, where)
        return dataclasses.replace(self, **updates)


JOB_KEYS = tuple(f.name for f in fields(Job) if f.name != "extra")
_TYPES = {f.name: f.type for f in fields(Job)}


def closest_hint(name: str, valid: tuple[str, ...] | list[str]) -> str:
    """'; did you mean X?' for the closest valid name, or a list of valid names."""
    match = difflib.get_close_matches(name, list(valid), n=1, cutoff=0.5)
    if match:
        return f" (did you mean '{match[0]}'?)"
    return f" (valid: {', '.join(valid)})"


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise JobError(f"{name} must be one of {', '.join(choices)}; got '{value}'")


def _coerce(name: str, value: Any, where: str) -> Any:
    kind = _TYPES[name]
    try:
        if value is None:
            return None
        if kind == "int" or name in ("width", "height", "steps"):
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if kind == "int | None":
            return int(value)
        if kind in ("float", "float | None"):
            return float(value)
        if kind == "bool":
            if isinstance(value, str):
                return value.lower() in ("1", "true", "yes", "on")
            return bool(value)
        return str(value)
    except (TypeError, ValueError):
        raise JobError(f"'{name}' in {where} must be a {kind}, got {value!r}") from None


def check_side(name: str, value: int) -> None:
    """A pixel size must be a positive multiple of 8 no larger than MAX_SIDE."""
    if not isinstance(value, int) or value <= 0:
        raise JobError(f"{name} must be a positive number of pixels, got {value}")
    if value % 8:
        lo, hi = value // 8 * 8, value // 8 * 8 + 8
        hint = f"try {hi}" if lo == 0 else f"try {lo} or {hi}"
        raise JobError(f"{name} must be a multiple of 8, got {value}; {hint}")
    if value > MAX_SIDE:
        raise JobError(f"{name} must be at most {MAX_SIDE}, got {value}")


def parse_aspect(aspect: str) -> float:
    """'16:9' (or '1.78') -> width / height."""
    try:
        if ":" in aspect:
            w, h = (float(p) for p in aspect.split(":", 1))
        else:
            w, h = float(aspect), 1.0
        if w <= 0 or h <= 0 or not math.isfinite(w / h):
            raise ValueError
    except ValueError:
        raise JobError(f"aspect must look like 16:9 or 1.5, got '{aspect}'") from None
    return w / h


def size_from(
    size: int | None, aspect: str | None, width: int | None, height: int | None
) -> tuple[int, int] | None:
    """Width and height from --size/--aspect or --width/--height; None when none was given."""
    if width is not None or height is not None:
        if size is not None or aspect is not None:
            raise JobError("give either --size/--aspect or --width/--height, not both")
        if width is None or height is None:
            raise JobError("--width and --height go together; give both (or use --size)")
        return width, height
    if size is None:
        if aspect is not None:
            raise JobError("--aspect needs --size (the long side in pixels)")
        return None
    check_side("size", size)
    ratio = parse_aspect(aspect) if aspect else 1.0
    long_w = ratio >= 1
    short = max(8, round(size * (1 / ratio if long_w else ratio) / 8) * 8)
    return (size, short) if long_w else (short, size)
