"""Presets: TOML tables of job defaults, shipped in the package or kept in a user folder."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hires.job import (
    FILE_KEYS,
    TRUSTED_ONLY,
    Job,
    JobError,
    KeyedError,
    closest_hint,
    spelled,
)
from hires.sizes import SIZE_KEYS, check_size_keys
from hires.text_bytes import decoded

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]


@dataclass(frozen=True)
class Preset:
    """A named set of job defaults and its one-line description."""

    name: str
    description: str
    values: dict[str, Any]
    path: str


def user_folder() -> Path:
    """$HIRES_PRESETS, else $XDG_CONFIG_HOME/hires/presets (~/.config/hires/presets)."""
    if os.environ.get("HIRES_PRESETS", "").strip():  # (" ": unset, as "" is)
        return Path(os.environ["HIRES_PRESETS"]).expanduser()
    config = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(config) / "hires" / "presets"


def read_toml(path: str | Path, wanted: str = "a preset's .toml text file (key = value lines)"
              ) -> dict[str, Any]:
    """Parse a TOML file; errors name the file and the line (`wanted`: what the file should
    be, for one that is no text)."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise JobError(f"no such file: {path}") from None
    except OSError as e:
        raise JobError(f"cannot read {path}: {e.strerror}") from None
    try:
        text = decoded(data, str(path), "save it as UTF-8", wanted)
    except ValueError as e:
        raise JobError(str(e)) from None
    return parse_toml(text, str(path))


def parse_toml(text: str, where: str) -> dict[str, Any]:
    """Parse TOML text (a file's, or stdin's); errors name `where` and the line."""
    try:  # a byte-order mark (Windows editors write one) is no TOML: skipped
        return tomllib.loads(text.removeprefix("\ufeff"))
    except tomllib.TOMLDecodeError as e:
        raise JobError(f"{where} is not valid TOML: {e}") from None


def _parse(name: str, path: str, data: dict[str, Any]) -> Preset:
    values = dict(data)
    description = values.pop("description", "")
    where = f"preset '{name}' ({path})"
    if not isinstance(description, str):  # `hires presets` lists it on one line: text
        raise JobError(f"'description' in {where} must be text (in quotes), got "
                       f"{spelled(description)}")
    description = " ".join(description.split())  # a multi-line one, on its one line
    if not values:  # a file saved empty by mistake ran the defaults without a word
        what = "but its description" if description else "(an empty file?)"
        raise JobError(f"{where} sets nothing {what}: give it settings (steps = 30, say), or "
                       "leave the preset out")
    # Unknown keys and out-of-range numbers (nan, inf) fail here, whoever uses the preset. The
    # size keys (size, aspect, scale, width, height) are kept as written: what they make
    # depends on the flags and, for an upscale, the input (hires.sizes).
    for key in values:
        if key in ("output", "preset"):  # a batch file's keys: a preset's hint misleads
            what = ("name the file (give -o, or 'output' in a batch job)" if key == "output"
                    else "take another preset (copy that one's keys in)")
            raise JobError(f"'{key}' in {where}: a preset does not {what}; remove the key")
        if str(key).replace("-", "_") not in (*FILE_KEYS, *SIZE_KEYS, *TRUSTED_ONLY):
            valid = sorted((*FILE_KEYS, *SIZE_KEYS))
            raise JobError(f"unknown key '{key}' in {where}{closest_hint(str(key), valid)}")
    check_size_keys(values, where)
    job = Job.from_dict({k: v for k, v in values.items()
                         if str(k).replace("-", "_") not in SIZE_KEYS}, where=where)
    try:
        # A preset may pick an add-on's model and leave its image to the flags (--control)
        job.validate(partners=False)
    except KeyedError as e:  # "--model is empty": the preset's key, not a flag never given
        raise JobError(e.in_file(where)) from None
    except JobError as e:  # "steps must be ...": in this preset
        raise JobError(f"{e} (in {where})") from None
    return Preset(name, description, values, path)


def shipped_folder() -> Path:
    """Installed: hires/preset_files (see pyproject.toml); from a checkout: the repo's presets/."""
    here = Path(__file__).resolve().parent
    installed = here / "preset_files"
    return installed if installed.is_dir() else here.parent / "presets"


def shipped() -> dict[str, Preset]:
    """The presets that come with hires."""
    paths = sorted(shipped_folder().glob("*.toml"))
    return {p.stem: _parse(p.stem, str(p), read_toml(p)) for p in paths}


def available(broken: list[str] | None = None) -> dict[str, Preset]:
    """Shipped presets, then the user's (a user preset of the same name wins).

    With a `broken` list, a user preset that does not parse is left out and its error appended
    there, so one bad file does not hide the rest; without it, the error is raised.
    """
    found = shipped()
    folder = user_folder()
    paths: list[Path] = []
    problem = None
    if folder.exists() and not folder.is_dir():
        problem = (f"your own presets: {folder} is a file, not a folder (HIRES_PRESETS or "
                   "XDG_CONFIG_HOME names it)")
    elif folder.is_dir():
        try:
            # Not hidden files: an editor's lock or backup (.draft.toml) is no preset.
            paths = sorted(p for p in folder.glob("*.toml") if not p.name.startswith("."))
        except OSError as e:
            problem = f"your own presets: cannot read {folder}: {e.strerror}"
    if problem and broken is None:
        raise JobError(problem)
    if problem:
        broken.append(problem)
    for path in paths:
        try:
            if not path.is_file():  # reading a pipe would wait for a writer for ever
                raise _not_a_file(path)
            found[path.stem] = _parse(path.stem, str(path), read_toml(path))
        except JobError as e:
            if broken is None:
                raise
            broken.append(str(e))
            # A shipped one of its name is replaced all the same: --preset reads this file.
            found.pop(path.stem, None)
    return found


def _not_a_file(path: Path) -> JobError:
    return JobError(f"your own preset {path} is not a file (a folder, a pipe or a link to "
                    "nothing); make it a preset's .toml file, or remove it")


def load_preset(ref: str) -> Preset:
    """A preset by name, or from a path to a .toml file."""
    if not ref.strip():  # `--preset "$PRESET"` with the variable unset
        raise JobError("--preset is empty: give a preset's name ('hires presets' lists them) "
                       "or a .toml file's path")
    path = Path(ref).expanduser()
    if ref.endswith(".toml") or os.sep in ref:
        if path.is_dir():
            raise JobError(f"--preset {ref} is a folder; give a preset's .toml file or name")
        if not path.is_file():
            name = ref.removesuffix(".toml")
            # a name that loads as one (not 'a.toml' of the user's 'a.toml.toml')
            known = os.sep not in ref and not name.endswith(".toml") and (
                (user_folder() / ref).is_file() or name in shipped())
            toml = Path(f"{path}.toml")  # 'p/many' of p/many.toml
            hint = f" (a preset named '{name}' is known: give its name)" if known else \
                f" (did you mean {ref}.toml?)" if not ref.endswith(".toml") and toml.is_file() \
                else "; give a .toml file's path, or a preset's name ('hires presets' lists them)"
            raise JobError(f"preset file not found: {ref}{hint}")
        return _parse(path.stem, str(path), read_toml(path))
    own = user_folder() / f"{ref}.toml"
    if own.is_file():  # the user's own wins; its errors are reported, others' are not
        return _parse(ref, str(own), read_toml(own))
    if os.path.lexists(own):  # it hides a shipped one of its name: "unknown preset" misled
        raise _not_a_file(own)
    presets = available(broken=[])
    if ref not in presets:
        # a file of the user's here, named without the path that makes it a file
        here = next((f for f in (f"{ref}.toml", ref) if Path(f).is_file()), None)
        hint = (f" ({here} is a file here: give ./{here} to read it)" if here.endswith(".toml")
                else f" ({here} is a file here, not a preset: a preset is a .toml text file)"
                ) if here else closest_hint(ref, sorted(presets))
        raise JobError(f"unknown preset '{ref}'{hint}; 'hires presets' lists them"
                       f"{_folder_note()}")
    return presets[ref]


def _folder_note() -> str:
    """Where the user's presets folder is a file, or HIRES_PRESETS names nothing (a typo in
    a script): what it is, for an unknown preset's error; '' otherwise."""
    folder = user_folder()
    if folder.exists() and not folder.is_dir():
        return (f" (your own presets: {folder} is a file, not a folder; HIRES_PRESETS or "
                "XDG_CONFIG_HOME names it)")
    if folder.exists() or not os.environ.get("HIRES_PRESETS", "").strip():
        return ""
    return (f" (HIRES_PRESETS names {folder}, which is not there: your own presets are read "
            "from a folder)")
