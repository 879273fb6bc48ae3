"""`Job`: every user-facing knob of one image, with defaults, validation and preset merging."""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import numbers
import os
import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hires.plan import Plan

DEFAULT_MODEL = "stabilityai/stable-diffusion-xl-base-1.0"
MIN_SIDE, MAX_SIDE = 64, 32768  # px a side: the sizes hires makes
MIN_VAE_TILE = 256  # px: smaller tiles show seams (Job.validate)
MAX_GUIDANCE = 100.0
# Seeds are below 2**32: torch's CPU generator, which draws the noise, reads a seed's low 32
# bits alone, so a larger seed made the image of its low bits (seed 2**32 was seed 0's).
SEEDS = 2**32
FORMATS = ("png", "jpg", "webp", "tiff")
_FORMAT_ALIASES = {"tif": "tiff", "jpeg": "jpg"}
DEPTHS = (8, 16)  # bits per channel of the file; 16 only as PNG or TIFF
UPSAMPLE_MODES = ("pixel", "latent")
OFFLOAD_MODES = ("auto", "none", "model", "sequential")
VAE_STATS_MODES = ("fast", "exact")
SAMPLERS = ("euler", "dpmpp-2m")
DEFAULT_IP_ADAPTER = "h94/IP-Adapter"
# An upscale's strength unless a preset, file or flag sets one. Lower keeps closer to the
# input; 0.3 (a little under gen's 0.32): the first stage re-draws 30 % of the schedule, enough
# for new texture at 2x, and later stages taper to 0.
UPSCALE_STRENGTH = 0.3
DTYPES = ("auto", "fp16", "bf16", "fp32")
VAE_DTYPES = ("auto", "fp16", "bf16", "fp32")  # fp16 only for a VAE made for it (hires.models)
# The schedulers hires uses are trained on 1000 timesteps: more steps than that only repeat
# timesteps, and a tampered `steps = 1e9` must fail before anything is allocated.
MAX_STEPS = 1000
MAX_DPI = 10000
MAX_QUALITY = 100  # a JPEG's or WebP's quality: from 1; 100 is lossless WebP
LOSSY_FORMATS = ("jpg", "webp")  # the formats a job's `quality` applies to
# Keys that only the command line may set: a preset, a batch file or an image's metadata that
# turned on pickle loading would run code from a file the user never vetted.
TRUSTED_ONLY = ("allow_pickle",)
RECORD_ONLY = ("image_sha256",)  # written by hires into its images' records, not by people
_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
MAX_MEMORY = 1_000_000  # GiB of vram or ram, GB of disk: more than any one machine has


def _as_typed(value: Any) -> Any:
    """A number as a refusal echoes it: 0, not the float 0.0 a flag's '0' became."""
    whole = isinstance(value, float) and value.is_integer() and abs(value) < 1e15
    return int(value) if whole else value


class JobError(ValueError):
    """A bad job setting; the message is one line that says what to do."""


class JobErrors(JobError):
    """Several jobs' errors at once (a batch file's): `errors`, in order; its message is the
    first's, so a caller that shows one still says something true."""

    def __init__(self, errors: list[str]):
        super().__init__(errors[0])
        self.errors = errors


def all_of(errors: list[JobError]) -> JobError:
    """One error as itself, several as one JobErrors."""
    if len(errors) == 1:
        return errors[0]
    return JobErrors([line for e in errors for line in getattr(e, "errors", [str(e)])])


def check_controls(name: str, text: str) -> None:
    """Refuse a control character (tab and line ends aside): the encoders read it as noise, and
    a NUL at every other character is UTF-16 text read as UTF-8 (a file saved without its
    byte-order mark); an escape sequence would reach terminals with the prompt."""
    bad = next((i for i, c in enumerate(text)
                if c not in "\t\n\r" and unicodedata.category(c) == "Cc"), None)
    if bad is None:
        return
    what = f"U+{ord(text[bad]):04X}, character {bad + 1}"
    rest = (f" holds a NUL character ({what}): UTF-16 text read as UTF-8? save it as UTF-8"
            if text[bad] == "\0" else f" holds a control character ({what}); remove it")
    raise KeyedError(f"the {name}{rest}", name, rest)


class KeyedError(JobError):
    """A JobError said with flags (its text, for the command line), which `in_file` says with
    a file's keys instead: `'key' in WHERE` and the rest."""

    def __init__(self, flags: str, key: str, rest: str):
        super().__init__(flags)
        self.key, self.rest = key, rest

    def in_file(self, where: str) -> str:
        return f"'{self.key}' in {where}{self.rest}"

    def in_level(self, where: str) -> str:
        """Said of a preset's or record's key under the command line's flags."""
        return self.in_file(where)


# A job's extra key: its IP-Adapter was named, the default one too, by a flag, preset or job
# file (the default adapter is otherwise the same as none asked for).
NAMED_IP_ADAPTER = "ip_adapter_named"


class MissingPartner(KeyedError):
    """An add-on's key without the one it needs (a ControlNet without its image), which a
    flag may still give: under flags, the key is named where it is and the need as a flag,
    with the flag's 'none' that goes without the preset's or record's add-on."""

    def in_level(self, where: str) -> str:
        flag = "--" + self.key.replace("_", "-")
        return f"'{self.key}' in {where}{str(self)[len(flag):]}; or {flag} none goes without it"


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
    # The global pass stops once its mix weight falls below this (hires.sampling.GLOBAL_FLOOR);
    # 0 runs it at every step, as the reference does.
    global_floor: float = 0.01
    model: str = DEFAULT_MODEL
    linfusion: str = "auto"
    dtype: str = "auto"
    device: str = "auto"
    offload: str = "auto"
    vram: float | None = None
    ram: float | None = None  # GB of the CPU's memory a GPU plan may fill; None: what is free
    # GB of scratch disk (TMPDIR) where parked maps the RAM cannot hold may wait; None: what is
    # free there less a margin; 0: never
    disk: float | None = None
    vae_tile: int | None = None
    vae_stats: str = "fast"
    vae_dtype: str = "auto"  # bf16 on CUDA and bf16-capable CPUs, else fp32 (hires.models)
    vae: str | None = None  # a VAE instead of the model's: Hub id, folder or .safetensors file
    format: str = "png"
    dpi: float | None = None  # pixels per inch the file records (its print size); None: none
    depth: int = 8  # bits per channel of the image's file (earlier stages' images stay 8-bit)
    # JPEG and WebP quality, 1-100 (100: lossless WebP, JPEG without chroma subsampling); None:
    # hires.output.DEFAULT_QUALITY. PNG and TIFF are lossless: a job for one drops it.
    quality: int | None = None
    image: str | None = None  # upscale this image (hires up) instead of starting from noise
    image_sha256: str | None = None  # the image's hash when the job ran: a re-run checks it
    sampler: str = "euler"
    karras: bool = False  # Karras sigma spacing (more steps near the clean end)
    lora: list[str] = field(default_factory=list)  # "REF" or "REF:SCALE" each, applied in order
    control: str | None = None  # ControlNet conditioning image (`up`: the input by default)
    control_model: str | None = None  # an SDXL ControlNet: Hub id, folder or .safetensors
    control_scale: float = 1.0
    ip_image: str | None = None  # IP-Adapter image prompt
    ip_adapter: str = DEFAULT_IP_ADAPTER
    ip_scale: float = 0.6
    allow_pickle: bool = False
    # How the job was asked for, beyond its settings, for advice: {"print_size": "A2"} when a
    # print size made its sides (a plan that cannot fit then names the dpi that would).
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    def validate(self, *, partners: bool = True, images: bool = True) -> Job:
        """Raise JobError on the first bad setting; return the job with each value of its
        field's kind (a Job built directly is not checked as it is made: `Job(karras="no")`
        is False here, `Job(lora="a.safetensors")` a list of one). Without `partners`, an
        add-on may lack its other half (a preset's ControlNet model waits for --control);
        without `images`, a ControlNet or an IP-Adapter its image alone (a plan does not read
        it)."""
        kinds = {name: _coerce(name, getattr(self, name), "the job") for name in JOB_KEYS}
        return dataclasses.replace(self, **kinds)._checked(partners, images)

    def _checked(self, partners: bool = True, images: bool = True) -> Job:
        for name in ("width", "height"):
            check_side(name, getattr(self, name))
        if not isinstance(self.steps, int) or not 1 <= self.steps <= MAX_STEPS:
            raise JobError(f"steps must be a whole number from 1 to {MAX_STEPS}, "
                           f"got {self.steps!r}")
        for name in ("guidance", "strength", "sigma", "cosine_scale_1", "cosine_scale_2",
                     "cosine_scale_3", "global_floor", "vram", "ram", "disk", "control_scale",
                     "ip_scale", "dpi"):
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):
                raise JobError(f"{name} must be a finite number, got {value}")
        if not 0.0 <= self.strength <= 1.0:
            raise JobError(f"strength must be between 0 and 1, got {_as_typed(self.strength)}")
        # Far past any use (SDXL's are 5-15), a scale overflows the model's output, which
        # then read as broken weights ("NaN or inf ... check its file")
        if not 0 <= self.guidance <= MAX_GUIDANCE:
            raise JobError(f"guidance must be from 0 to {MAX_GUIDANCE:g}, got "
                           f"{_as_typed(self.guidance)}")
        # Each is the exponent of a weight cf(t) ** scale, cf falling from 1 to 0 over the
        # schedule (hires.sampling): below 0 a weight passes 1, a mix extrapolates, and the
        # latents overflow (read as broken weights: "NaN or inf ... check its file"), or a small
        # cf's power raises OverflowError. 0 holds a weight at 1; a large one drops it to 0.
        for name in ("cosine_scale_1", "cosine_scale_2", "cosine_scale_3"):
            if getattr(self, name) < 0:
                raise JobError(f"{name} must be 0 or more (DemoFusion's are 1 to 3), got "
                               f"{getattr(self, name)}")
        if self.sigma <= 0:
            raise JobError(f"sigma must be > 0, got {_as_typed(self.sigma)}")
        if not 0.0 <= self.global_floor < 1.0:
            raise JobError(f"global_floor must be from 0 (every global pass) to below 1, got "
                           f"{self.global_floor}")
        if self.dpi is not None and not 1 <= self.dpi <= MAX_DPI:
            raise JobError(f"dpi must be from 1 to {MAX_DPI} pixels per inch, got "
                           f"{_as_typed(self.dpi)}")
        if self.quality is not None and not 1 <= self.quality <= MAX_QUALITY:
            raise JobError(f"quality must be a whole number from 1 to {MAX_QUALITY} (100: "
                           f"lossless WebP, JPEG at full colour), got {self.quality}")
        if self.depth not in DEPTHS or isinstance(self.depth, bool):
            raise JobError(f"depth must be 8 or 16 bits per channel, got {self.depth!r}")
        # Past MAX_MEMORY no machine has it: a typo, and 1e308 overflowed or made the planner
        # search for minutes.
        for name, unit in (("vram", "GiB"), ("ram", "GiB"), ("disk", "GB")):
            value = getattr(self, name)
            if value is not None and value >= MAX_MEMORY:
                raise JobError(f"{name} must be less than {MAX_MEMORY:,} {unit}, got "
                               f"{_as_typed(value)}")
        if self.vram is not None and self.vram <= 0:
            raise JobError(f"vram must be a positive number of GiB, got {_as_typed(self.vram)}")
        if self.ram is not None and self.ram <= 0:
            raise JobError(f"ram must be a positive number of GiB, got {_as_typed(self.ram)}")
        if self.disk is not None and self.disk < 0:
            raise JobError(f"disk must be 0 (never) or a positive number of GB, got "
                           f"{_as_typed(self.disk)}")
        if self.seed is not None and not 0 <= self.seed < SEEDS:
            low = (f" (the noise generator reads 32 bits: its image is seed "
                   f"{self.seed % SEEDS}'s)") if self.seed >= SEEDS else ""
            raise JobError(f"seed must be between 0 and {SEEDS - 1}, got {self.seed}{low}")
        for name in ("prompt", "negative"):
            try:
                getattr(self, name).encode("utf-8")
            except UnicodeEncodeError:  # undecodable bytes from argv arrive as surrogates
                raise JobError(f"the {name} is not valid UTF-8 text; check its encoding"
                               ) from None
            check_controls(name, getattr(self, name))
        _check_choice("dtype", self.dtype, DTYPES)
        if not _DEVICE.match(self.device):
            case = (f" (in lower case: '{self.device.lower()}')"
                    if _DEVICE.match(self.device.lower()) else "")
            raise JobError(f"device must be auto, cpu, mps, cuda or cuda:N; got '{self.device}'"
                           f"{case}")
        _check_choice("upsample", self.upsample, UPSAMPLE_MODES)
        _check_choice("format", self.format, FORMATS)
        _check_choice("offload", self.offload, OFFLOAD_MODES)
        _check_choice("vae_stats", self.vae_stats, VAE_STATS_MODES)
        _check_choice("vae_dtype", self.vae_dtype, VAE_DTYPES)
        _check_choice("sampler", self.sampler, SAMPLERS)
        self._check_refs()
        self._check_addons(partners, images)
        # Below MIN_VAE_TILE the tiles' overlap (a quarter tile) is under the decoder's reach
        # (~138 px): seams show (35 8-bit steps at 64 px, 8 at 128, 2 at 192, 1 at 256).
        if self.vae_tile is not None and (
                not MIN_VAE_TILE <= self.vae_tile <= MAX_SIDE or self.vae_tile % 8):
            raise JobError(f"vae_tile must be a multiple of 8 from {MIN_VAE_TILE} to "
                           f"{MAX_SIDE} (smaller tiles show seams), or auto; got "
                           f"{self.vae_tile}")
        return self

    def _check_refs(self) -> None:
        # `--model "$MODEL"` with the variable unset: "" read as no choice would fetch the
        # default model (7 GB) or run without the add-on, never what was meant.
        for name, what in (("model", "a Hub id, folder or .safetensors file"),
                           ("linfusion", "auto, none, a Hub id or folder"),
                           ("vae", "a Hub id, folder or .safetensors file"),
                           ("image", "an image file"), ("control", "an image file"),
                           ("control_model", "a Hub id, folder or .safetensors file"),
                           ("ip_image", "an image file"),
                           ("ip_adapter", "a Hub id, folder or .safetensors file")):
            value = getattr(self, name)
            if isinstance(value, str) and not value.strip():
                flag = "--" + name.replace("_", "-")
                raise KeyedError(f"{flag} is empty (an unset variable?): give {what}, or leave "
                                 "it out", name, f" is empty: give {what}, or leave it out")

    def _check_addons(self, partners: bool, images: bool) -> None:
        for name in ("control_scale", "ip_scale"):
            if not 0.0 <= getattr(self, name) <= 10.0:
                raise JobError(f"{name} must be between 0 and 10, got {getattr(self, name)}")
        if partners:
            self._check_partners(images)
        for spec in self.lora:
            from hires.lora import LoraError, parse_lora

            try:
                parse_lora(spec)
            except LoraError as e:
                raise KeyedError(str(e), "lora", f": {e}") from None

    def _check_partners(self, images: bool) -> None:
        if self.control and not self.control_model:
            why = "(an SDXL ControlNet: Hub id, folder or .safetensors file)"
            raise MissingPartner(f"--control needs --control-model {why}", "control",
                                 f" needs 'control_model' {why}")
        named = self.ip_adapter != DEFAULT_IP_ADAPTER or self.extra.get(NAMED_IP_ADAPTER)
        if images and named and not self.ip_image:  # unsaid
            why = "(the image prompt it encodes)"
            raise MissingPartner(f"--ip-adapter needs --ip-image IMAGE {why}", "ip_adapter",
                                 f" needs 'ip_image' {why}")
        if images and self.control_model and not (self.control or self.image):
            raise MissingPartner("--control-model needs --control IMAGE (hires up uses its "
                                 "input image when --control is not given)", "control_model",
                                 " needs 'control' (an upscale's 'image' serves when 'control' "
                                 "is not given)")

    def to_dict(self) -> dict[str, Any]:
        """The job as plain JSON-ready values (what metadata and manifests record).

        Trusted-only keys are left out: a recorded job must not switch them on when re-run.
        """
        out = dataclasses.asdict(self)
        out.pop("extra")
        out["lora"] = list(self.lora)
        for key in TRUSTED_ONLY:
            out.pop(key)
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any], *, where: str = "job") -> Job:
        """Build a Job from keys as written in presets, batch files and metadata (untrusted)."""
        if not isinstance(values, Mapping):  # None and lists failed with an AttributeError
            raise TypeError(f"Job.from_dict takes a dict of job keys (as a preset or an image's "
                            f"record holds them), got {type(values).__name__}")
        return cls().merged(values, where=where, untrusted=True)

    def merged(self, values: dict[str, Any], *, where: str = "job", untrusted: bool = False
               ) -> Job:
        """A copy with `values` applied on top; unknown keys are an error naming the closest.

        `untrusted` values (from files) may not set TRUSTED_ONLY keys such as allow_pickle.
        """
        valid = FILE_KEYS if untrusted else JOB_KEYS
        updates = {}
        for key, value in values.items():
            name = key.replace("-", "_") if isinstance(key, str) else str(key)
            if untrusted and name in TRUSTED_ONLY:
                raise JobError(f"'{key}' in {where} is refused: only the --allow-pickle flag "
                               "may allow pickle loading; remove the key")
            if name not in valid:
                raise JobError(f"unknown key '{key}' in {where}{closest_hint(name, valid)}")
            updates[name] = _coerce(name, value, where, typed=untrusted)
        return dataclasses.replace(self, **updates)


JOB_KEYS = tuple(f.name for f in fields(Job) if f.name != "extra")
# Flags that steer a command, not an image: named as keys, what to do instead.
COMMAND_FLAGS = {
    "n": "pass --n to gen; in a batch, give a job for each image",
    "from": "pass --from IMAGE to gen or plan; in a batch, give the job's keys",
    "shard": "pass --shard I/N to hires batch",
    "manifest": "pass --manifest FILE to hires batch",
    # the commands that have it: `hires plan` has none of the run's (QA 209)
    "save_stages": "pass it to gen or up",
    **dict.fromkeys(("preview", "overwrite", "resume", "dry_run", "progress"),
                    "pass it to gen, up or batch"),
    "gpu": "pass it to plan, or to gen, up or batch with --dry-run",
    **dict.fromkeys(("json", "quiet"), "pass it on the command line"),
}
FILE_KEYS = tuple(k for k in JOB_KEYS if k not in TRUSTED_ONLY)
_TYPES = {f.name: f.type for f in fields(Job)}


def keys_for_people(valid: tuple[str, ...] | list[str]) -> list[str]:
    """The keys to list in a message: each once, without those only hires' records hold."""
    return list(dict.fromkeys(k for k in valid if k not in RECORD_ONLY))


def closest_hint(name: str, valid: tuple[str, ...] | list[str],
                 advice: dict[str, str] = COMMAND_FLAGS) -> str:
    """'; did you mean X?' for the closest valid name, or a list of valid names; a command's
    flag is told what to do instead, by `advice` (a batch file's differs from a preset's)."""
    flag = name.lower()  # 'N' too
    if flag in advice:
        return f" (--{flag.replace('_', '-')} is a command's flag, not a key: " \
               f"{advice[flag]})"
    shown = keys_for_people(valid)
    by_case = {v.lower(): v for v in shown}  # 'DRAFT' is 'draft', however far difflib finds it
    match = difflib.get_close_matches(name.lower(), list(by_case), n=1, cutoff=0.5)
    if match:
        return f" (did you mean '{by_case[match[0]]}'?)"
    return f" (valid: {', '.join(shown)})"


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        lower = value.lower() if isinstance(value, str) else None
        case = f" (in lower case: '{lower}')" if lower in choices else ""
        raise JobError(f"{name} must be one of {', '.join(choices)}; got '{value}'{case}")


def _coerce(name: str, value: Any, where: str, typed: bool = False) -> Any:
    """`value` as `name`'s kind, or a JobError naming `where`. `typed`: from a TOML or JSON file
    (a preset, a batch job, a record), where a number is written as one and a whole one
    whole: steps = "30" and steps = 30.0 are refused, as the seed and size keys and the
    library refuse them."""
    kind = _TYPES[name]
    value = plain_number(value)  # numpy's 1.7 is a float: not taken for a seed of 1
    whole = kind in ("int", "int | None") or name in ("width", "height", "steps")
    slip = typed and (isinstance(value, str) and kind.startswith(("int", "float"))
                      or whole and isinstance(value, float))
    if name == "ip_adapter" and value is None:  # not given: the default
        return DEFAULT_IP_ADAPTER
    if name == "vae_tile" and isinstance(value, str) and value.strip().lower() == "auto":
        return None  # the planner's pick again, over a preset's or a record's tile
    try:
        if value is None:
            if "None" not in kind:  # e.g. `guidance: null` in a tampered record
                raise ValueError
            return None
        if slip:
            raise ValueError
        if whole:
            if isinstance(value, bool) or isinstance(value, float) and not (
                    math.isfinite(value) and value.is_integer()):
                raise ValueError  # seed = 1.7 or true is a typo, not a seed
            return int(value)
        if kind in ("float", "float | None"):
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if kind == "list[str]":  # paths too, as the other add-ons' references take them
            items = [value] if isinstance(value, (str, os.PathLike)) else value
            if not isinstance(items, (list, tuple)):
                raise ValueError
            items = [os.fspath(v) if isinstance(v, os.PathLike) else v for v in items]
            if not all(isinstance(v, str) for v in items):
                raise ValueError
            return items
        if kind == "bool":
            word = value.strip().lower() if isinstance(value, str) else value
            if word in ("1", "true", "yes", "on", True, 1):
                return True
            if word in ("0", "false", "no", "off", False, 0):
                return False
            raise ValueError  # karras = "ture" is a typo, not a quiet "no"
        if isinstance(value, os.PathLike):  # the library's callers may pass paths
            return os.fspath(value)
        if not isinstance(value, str):
            raise ValueError  # negative = ["a", "b"] would become the text "['a', 'b']"
        if name == "format":  # as the file suffixes name them: .tif and .jpeg are taken
            return format_name(value)
        if name == "negative" and not value.strip():
            return ""  # a blank negative ran CFG against "  ", not as none: it is none
        return value
    except (TypeError, ValueError):
        words = {"int": "a whole number", "float": "a number", "str": "text",
                 "bool": "true or false", "list[str]": "text or a list of text"}
        what = words.get(kind.replace(" | None", ""), kind) + (
            " or auto" if name == "vae_tile" else "")
        # a command's flags (hires.sizes.OPTIONS) are named as the user gave them
        said = f"--{name.replace('_', '-')}" if where == "options" else f"'{name}' in {where}"
        # a record's value is no one's writing to mend (its image's metadata is damaged)
        hint = number_hint(value) if slip and not where.startswith("metadata of ") else ""
        shown = spelled(value) if typed else repr(value)
        raise JobError(f"{said} must be {what}{hint}, got {shown}") from None


def spelled(value: Any) -> str:
    """A file's value as TOML and JSON write it (true, "30", [1], nan, a date as 1979-05-27),
    not as Python does (True, '30', datetime.date(...)), on one line: characters that would
    break or turn it (a line separator, a right-to-left mark) escaped as \\uXXXX (or
    \\UXXXXXXXX). TOML's words for what JSON has none for: nan and inf, not NaN and Infinity."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif value is None:
        text = "null"
    elif isinstance(value, float) and not math.isfinite(value):
        text = "nan" if math.isnan(value) else "inf" if value > 0 else "-inf"
    elif isinstance(value, (int, float)):
        text = repr(value)
    elif isinstance(value, (list, tuple)):
        text = "[" + ", ".join(spelled(v) for v in value) + "]"
    elif isinstance(value, dict):
        text = "{" + ", ".join(f"{spelled(str(k))}: {spelled(v)}" for k, v in value.items()) + "}"
    elif hasattr(value, "isoformat"):  # a TOML date or time
        text = value.isoformat()
    else:
        text = json.dumps(str(value), ensure_ascii=False)
    return "".join(c if c.isprintable() else f"\\u{ord(c):04x}" if ord(c) <= 0xFFFF
                   else f"\\U{ord(c):08x}" for c in text)


def number_hint(value: Any) -> str:
    """How to write a number a file (or a caller) gave in another form: ' (write it without
    quotes)' for "30", ' (write it without a decimal point)' for a whole 30.0; else ''."""
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return " (write it without a decimal point)"
    if not isinstance(value, str):
        return ""
    try:
        number = float(value)
    except ValueError:
        return ""
    return " (write it without quotes)" if math.isfinite(number) else ""


def plain_number(value: Any) -> Any:
    """numpy's whole and real numbers (any numbers.Integral or numbers.Real) as Python's int
    and float, numpy's bools as bools; anything else, a torch tensor among them, as it is."""
    if isinstance(value, bool) or type(value) in (int, float):
        return value
    if type(value).__module__ == "numpy" and type(value).__name__ in ("bool_", "bool"):
        return bool(value)  # no numbers.Integral: not to be taken for 1 or 0 either
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    return value


def check_kind(name: str, value: Any) -> None:
    """A library caller's number or switch setting, strictly of its kind: a whole number is an
    int (not a bool, text or float), a number an int or float (not a bool or text), a switch
    (karras, allow_pickle) a bool; numpy's numbers count as Python's (`plain_number`). Files
    and flags are read as text and coerced; a script's "256" is a slip."""
    kind = _TYPES.get(name, "").replace(" | None", "")
    # "no" is truthy (allow_pickle="no": pickle on!); karras="no" read as False, but a
    # script's "no" or 1 is a slip as its "256" is
    if (name in TRUSTED_ONLY or kind == "bool") and not isinstance(plain_number(value), bool):
        raise JobError(f"{name} must be True or False, got {value!r}")
    if value is None or kind not in ("int", "float"):
        return
    if name == "vae_tile" and isinstance(value, str) and value.strip().lower() == "auto":
        return  # the planner's pick over a job's tile, as --vae-tile auto (and its error) say
    value = plain_number(value)
    # A tensor's number is a slip too, but one with a one-word fix.
    item = "; a tensor's .item() is one" if type(value).__module__.startswith("torch") else ""
    if kind == "int" and (isinstance(value, bool) or not isinstance(value, int)):
        raise JobError(f"{name} must be a whole number (an int), got {value!r}{item}")
    if kind == "float" and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise JobError(f"{name} must be a number (an int or float), got {value!r}{item}")


def idle_setting(job: Job, given: Iterable[str]) -> tuple[str, str, tuple[str, ...]] | None:
    """The first add-on setting among the `given` keys whose add-on `job` does not run: its
    key, what it lacks, and the keys that would run it; None if there is none. Only what the
    caller gave counts: a preset's or record's value alone is a default, and passes."""
    control = ("control_model",) if job.image else ("control", "control_model")
    for key, runs, lacks, needs in (
            ("control_scale", job.control_model, "has nothing to scale", control),
            ("ip_scale", job.ip_image, "has nothing to scale", ("ip_image",)),
            # the default adapter too: named, it was ignored without a word
            ("ip_adapter", job.ip_image, "needs an image prompt", ("ip_image",))):
        if key in given and not runs:
            return key, lacks, needs
    return None


def idle_strength(job: Job, plan: Plan) -> list[str]:
    """A warning when the job's strength (other than the default) re-noises nothing: a job from
    noise whose plan is its base stage alone. A preview (the first stage of more) is not one."""
    stages = plan.stages
    if job.image or job.strength == Job.strength or len(stages) != 1 or \
            (stages[0].width, stages[0].height) != (plan.width, plan.height):
        return []
    return [f"strength {job.strength:g} is ignored: a {plan.width}x{plan.height} job is its "
            "base stage alone, with no upscale stage to re-noise; a larger size adds them"]


def format_name(text: str) -> str:
    """A format as hires names it (FORMATS), from any case and the suffixes' names: 'TIF' and
    'jpeg' are 'tiff' and 'jpg'."""
    return _FORMAT_ALIASES.get(text.lower(), text.lower())


def check_side(name: str, value: int) -> None:
    """A pixel size must be a positive multiple of 8 from MIN_SIDE to MAX_SIDE."""
    if isinstance(value, bool) or not isinstance(value, int):
        # A library caller's "256" or 256.0: its repr, or the message reads "got 256"
        raise JobError(f"{name} must be a whole number of pixels, got {value!r}")
    if value <= 0:
        raise JobError(f"{name} must be a positive number of pixels, got {value}")
    # The range first where no multiple of 8 near the value is a side (99999 was told to "try
    # 64"); a near miss (32769, 60) is told the side it meant.
    if value > MAX_SIDE + 8:
        raise JobError(f"{name} must be at most {MAX_SIDE}, got {value}")
    if value % 8:
        near = [v for v in (value // 8 * 8, value // 8 * 8 + 8) if MIN_SIDE <= v <= MAX_SIDE]
        hint = f"try {' or '.join(map(str, near))}" if near else f"try {MIN_SIDE}"
        raise JobError(f"{name} must be a multiple of 8, got {value}; {hint}")
    if value > MAX_SIDE:
        raise JobError(f"{name} must be at most {MAX_SIDE}, got {value}")
    if value < MIN_SIDE:
        raise JobError(f"{name} must be at least {MIN_SIDE} px, got {value}")


def parse_aspect(aspect: str | float) -> float:
    """'16:9' (or '1.78', or the library's 1.78) -> width / height."""
    if isinstance(aspect, bool) or not isinstance(aspect, (str, int, float)):
        raise JobError(f"aspect must be text like '16:9' or a number like 1.5, got {aspect!r}")
    try:
        if not isinstance(aspect, str):
            w, h = float(aspect), 1.0
        elif ":" in aspect:
            w, h = (float(p) for p in aspect.split(":", 1))
        else:
            w, h = float(aspect), 1.0
        if not (math.isfinite(w) and math.isfinite(h)) or w <= 0 or h <= 0:
            raise ValueError
    except ValueError:
        got = f"'{aspect}'" if isinstance(aspect, str) else f"{aspect:g}"  # as it was given
        raise JobError(f"aspect must look like 16:9 or 1.5 (above 0), got {got}") from None
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
    # `is not None`: a library caller's aspect=0 (or "") is refused as "0" is, not a square
    ratio = parse_aspect(aspect) if aspect is not None else 1.0
    long_w = ratio >= 1
    stretch = 1 / ratio if long_w else ratio  # short side / long side
    short = max(8, round(size * stretch / 8) * 8)
    if short < MIN_SIDE:
        least = next((s for s in range(size, MAX_SIDE + 1, 8)
                      if round(s * stretch / 8) * 8 >= MIN_SIDE), None)
        bigger = f"--size {least} or more, or " if least else ""
        # The short side is rounded to 8 px: from 60 px it makes 64 (1000 px: 16.6:1, not 15).
        # The widest in tenths, worked out as above (size / most and size * (1 / most) can
        # round apart).
        most = math.ceil(size / (MIN_SIDE - 4) * 10) / 10 + 0.1
        while most > 1 and round(size * (1 / most) / 8) * 8 < MIN_SIDE:
            most = round(most - 0.1, 1)
        widest = f"{most:g}:1" if long_w else f"1:{most:g}"
        raise JobError(f"--aspect {aspect} at --size {size} makes the short side {short} px, "
                       f"under {MIN_SIDE}: give {bigger}an aspect of at most {widest}")
    return (size, short) if long_w else (short, size)
