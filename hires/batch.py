"""Batch jobs: reading TOML/JSONL job files, sharding across processes, resumable runs."""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import errno
import hashlib
import io
import json
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hires.images import ImageInputError, input_size, pixel_limit, without_shell_advice
from hires.job import (
    COMMAND_FLAGS,
    FILE_KEYS,
    LOSSY_FORMATS,
    TRUSTED_ONLY,
    Job,
    JobError,
    all_of,
    closest_hint,
    idle_setting,
    keys_for_people,
    spelled,
)
from hires.presets import load_preset, parse_toml, read_toml
from hires.sizes import ASPECT_ALONE, OPTIONS, SIZE_KEYS, giver, job_from_levels
from hires.text_bytes import decoded, marked, unmarked, unmarked_problem


@dataclass(frozen=True)
class BatchItem:
    """One job of a batch file: its index in the file, the job, and where its image goes."""

    index: int
    job: Job
    output: str | None
    # `format` set by the job file (the job or [defaults]): an 'output' suffix must agree with
    # it, a png too (it is also the default, which a suffix overrides); a preset's yields to
    # the suffix, as with gen's --preset and -o
    format_given: bool = False
    # `quality` set in the job's own table: a lossless format's job refuses it, where one from
    # [defaults] or a preset serves the jpg and webp jobs alone (and passes the others)
    quality_given: bool = False
    # the keys the job file set (the job, [defaults] or the job's preset), not a flag or
    # torchrun's LOCAL_RANK: whose a `model` or `device` error names
    file_keys: frozenset[str] = frozenset()
    line: int | None = None  # a JSONL job's line in its file
    # the files (FLAG_KEYS' keys) a preset gave and nothing above it did: where, for errors
    given_in: dict[str, str] = dataclasses.field(default_factory=dict)
    # the keys [defaults] gave and nothing above it did: an error of theirs is said once, as
    # [defaults]', not once a job
    from_defaults: frozenset[str] = frozenset()

    def where(self, file_name: str) -> str:
        """The job as errors name it: "jobs.jsonl job 3 (line 5)"."""
        return job_place(file_name, self.index, self.line)


def job_place(file_name: str, index: int, line: int | None) -> str:
    """A job of a file as errors name it: its index, from 0, and a JSONL job's line."""
    return f"{file_name} job {_numbered(index, line)}"


def _numbered(index: int, line: int | None) -> str:
    """A job's number, with a JSONL job's line: "3 (line 5)"."""
    return f"{index}" + (f" (line {line})" if line is not None else "")


# A command's flag written as a key, told what `hires batch` can do instead: it takes the
# others for every job (COMMAND_FLAGS' advice names the other commands).
BATCH_FLAGS = {
    **{key: f"pass --{key.replace('_', '-')} to hires batch (it applies to every job)"
       for key in COMMAND_FLAGS},
    **{key: COMMAND_FLAGS[key] for key in ("shard", "manifest")},
    "n": "a batch makes one image a job: give a job for each image",
    "from": "give the job the recorded keys (hires info IMAGE --json shows them)",
    "save_stages": "`hires batch` keeps no stage images; use `hires gen --save-stages` for "
                   "that job",
}
# A format's problem (hires.output.format_problem) advises flags: in a job file, the key.
FORMAT_ADVICE = {
    "pass --depth 8 for": "set depth = 8 in the job for",
    " (it overrides a preset's or a recorded depth)": "",
    ", or --depth 8": ", or set depth = 8 in the job",
    # the memory planner's (hires.cli_jobs.fitted_plan): batch has no --vram or --ram
    "; try a larger --vram or --offload auto": "; try a larger vram, or offload = \"auto\", in "
                                                "the job",
    "; try a larger --vram": "; try a larger vram in the job",
    "; try --ram with what is free": "; set ram in the job to what is free",
    "; try a larger --ram": "; try a larger ram in the job",
    " at --dpi ": " at dpi = ",  # "A2 fits at --dpi 106 (1752x2480)"
    # "7736x4352 fits (--width 7736 --height 4352)", "7736x7736 fits (--size 7736)"
    " fits (--width ": " fits (width = ", " --height ": ", height = ",
    " fits (--size ": " fits (size = ",
    # the VAE's precision under 16 bits (hires.pipeline.half_vae_note)
    "--depth 16 with the VAE in ": "depth = 16 with the VAE in ",
    "; --vae-dtype fp32 keeps what": "; vae_dtype = \"fp32\" in the job keeps what",
    # a dry run's hints (hires.cli_show.plan_hints)
    "(--size ": "(size = ", "(--width ": "(width = ",
    "; --ram ": "; ram = ",
    "--vae-stats exact gives the same pixels as fast (the default)":
        "vae_stats = \"exact\" gives the same pixels as \"fast\" (the default)",
    "--preview added to the gen command": "--preview added to the batch command",
    # the CPU's note (hires.cli_runs.check_steps_and_notes)
    "--dtype bf16 runs the UNet": "dtype = \"bf16\" in a job runs the UNet",
}

# Keys a batch file takes besides the job's own: the same as `gen`'s flags.
BATCH_ONLY_KEYS = ("size", "aspect", "scale", "print_size", "output", "preset")


def batch_keys() -> tuple[str, ...]:
    """Every key a [defaults] table or a job may hold."""
    return tuple(sorted(FILE_KEYS + BATCH_ONLY_KEYS))


def read_batch(path: str | Path, base: Job | None = None,
               levels: list[tuple[dict[str, Any], str, bool]] | None = None) -> list[BatchItem]:
    """Jobs from a TOML file ([defaults] + [[job]]) or JSONL (one object a line), on top of
    `base` and `levels` (a command's preset: values, where, from a file), which the file's
    keys beat. An upscale job's size (`image` with `size` or `scale`) reads the image's. The
    path '-' reads the jobs from stdin (JSONL when its first entry starts with '{')."""
    name, defaults, entries, line_of = _tables(Path(path))
    # every job's said at once: a file of 1,000 jobs, fixed in one go; [defaults]' first
    given = defaults
    defaults, errors = _good_defaults(defaults, f"{name} [defaults]")
    items, found = _read_jobs(name, entries, line_of, defaults, base, levels)
    if (meant := _as_meant(given, defaults)) is not None:
        # An unknown [defaults] key may be a misspelt one the jobs need ('promt'): their
        # errors are said where they hold both without it and with the key it likely meant
        # (not "has no prompt" a job); the rest, once it is fixed
        try:
            also = [str(e) for e in _read_jobs(name, entries, line_of, meant, base, levels)[1]]
        except Exception:  # a guess's trouble: the jobs' errors as they are
            also = [str(e) for e in found]
        guessed = set(meant) - set(defaults)
        if "preset" in guessed:  # what it gives may be what the jobs lack
            with contextlib.suppress(JobError):
                guessed |= set(load_preset(str(meant["preset"])).values)
        found = _beside_guess(found, also, guessed, f"{name} [defaults]")
    errors += found
    if errors:
        # the good jobs ride along: a caller checks their outputs too (`name_outputs`), so
        # that every bad job of the file is said at once. [defaults]' errors, once.
        error = all_of(list({str(e): e for e in errors}.values()))
        error.items = items
        raise error
    return items


def _read_jobs(name: str, entries: list, line_of: dict[int, int], defaults: dict[str, Any],
               base: Job | None, levels: list[tuple[dict[str, Any], str, bool]] | None
               ) -> tuple[list[BatchItem], list[JobError]]:
    """`read_batch`'s jobs on `defaults`: those that pass, and every error of the others."""
    items: list[BatchItem] = []
    errors: list[JobError] = []
    drawn: dict[str, int] = {}  # the seeds drawn so far for each job text (`stable_seed`)
    for i, entry in enumerate(entries):
        # Numbered from 0, as the run, the manifest and the default names number it.
        where = job_place(name, i, line_of.get(i))
        if isinstance(entry, BadLine):  # said with every other job's error
            errors.append(JobError(f"{where}: {entry.error}"))
            continue
        try:
            # JSON's null is a value not given (pandas and jq write it for one): the key is
            # left to the levels below, as if absent (a command's own too: "n": null, and
            # "allow_pickle": null allows nothing). A misspelt key is said, null or not. An
            # add-on is switched off with 'none'.
            _check_keys({k: v for k, v in entry.items() if v is not None
                         or not _refused_key(k)}, where)
            entry = {k: v for k, v in entry.items() if v is not None}
            _check_seed(entry, where)
            item = dataclasses.replace(_item(i, entry, defaults, where, name, base, levels),
                                       line=line_of.get(i))
        except JobError as e:
            errors += [e, *_hidden_errors(i, entry, defaults, where, name, base, levels, e)]
            continue
        if item.job.seed is None:
            text = json.dumps([item.job.prompt, item.job.negative, item.job.image])
            drawn[text] = drawn.get(text, -1) + 1
            item = dataclasses.replace(
                item, job=item.job.merged({"seed": stable_seed(text, drawn[text])}))
        items.append(item)
    return items, errors


def _beside_guess(found: list[JobError], also: list[str], guessed: set[str],
                  home: str) -> list[JobError]:
    """The jobs' errors `found` without a misspelt [defaults] key that `also` holds, read as
    the `guessed` keys it likely meant. Where the guess itself fails in [defaults] (`home`: a
    value that key refuses), it hides the jobs' errors: then those naming no guessed key."""
    said = {str(e) for e in found}
    failed = any(home in e and e not in said for e in also)
    return [e for e in found if str(e) in also or (failed and not any(
        _as_word(key, str(e)) for key in guessed))]


def _as_word(key: str, text: str) -> bool:
    """Whether `text` names `key` as a word of its own ('add ip_image', not 'ip_image_x')."""
    return re.search(rf"(?<![\w-]){re.escape(key)}(?![\w-])", text) is not None


def _meant_key(key: Any) -> str | None:
    """The valid key an unknown `key` is closest to ('promt': 'prompt'), or None."""
    name = str(key).replace("-", "_")
    if name in batch_keys():
        return None
    close = difflib.get_close_matches(name.lower(), batch_keys(), n=1, cutoff=0.5)
    return close[0] if close else None


def _as_meant(given: dict[str, Any], good: dict[str, Any]) -> dict[str, Any] | None:
    """[defaults] (`good`, its checked keys) with each unknown key of `given` as the valid key
    it is closest to ('promt' as 'prompt'), where one is close and not given too; None where
    no unknown key has one (a refused key, 'n' or 'allow_pickle', is no misspelling)."""
    valid = batch_keys()
    meant = dict(good)
    for key, value in given.items():
        name = str(key).replace("-", "_")
        if key in good or name in valid or _refused_key(key):
            continue
        close = _meant_key(key)
        if close and close not in given and close not in meant:
            meant[close] = value
    return meant if meant != good else None


def _good_defaults(defaults: dict[str, Any], where: str) -> tuple[dict[str, Any],
                                                                  list[JobError]]:
    """[defaults] without its unknown or refused keys and a seed that is no whole number, and
    an error for each: the jobs are still read on the rest, so that their own errors are
    said beside these (not hidden until the next run)."""
    good, errors = {}, []
    for key, value in defaults.items():
        try:
            _check_keys({key: value}, where)
            _check_seed({key: value}, where)
        except JobError as e:
            errors.append(e)
            continue
        good[key] = value
    return good, errors


def _hidden_errors(i: int, entry: dict[str, Any], defaults: dict[str, Any], where: str,
                     name: str, base: Job | None,
                     levels: list[tuple[dict[str, Any], str, bool]] | None,
                     error: JobError) -> list[JobError]:
    """The errors that job `i`'s first (`error`) hid: the job checked again without the keys
    at fault, [defaults]' or its own, until it passes. An error that names a key left out may
    be of its absence ('aspect' needs a 'size'): not said (it is once the first is fixed), and
    the keys it names are left out in turn. Else a bad [defaults] value, said for every job,
    hid the jobs' own errors, and a job's own error the [defaults] one it also has."""
    said, found, rest, own = str(error), [], dict(defaults), dict(entry)
    home = f"{name} [defaults]"

    def named(key: str) -> bool:
        """Whether the error names `key`: vae-tile as 'vae_tile', print_size as 'print size',
        and a table's "jobs.toml [defaults]: aspect = 16:9 at size = 64 makes ..." its first;
        not its guess at a misspelt key ("(did you mean 'steps'?)": 'stepz' is at fault)."""
        key = str(key).replace("-", "_")
        text = re.sub(r" \(did you mean [^)]*\)", "", said)
        return f"'{key}'" in text or ("_" in key and key.replace("_", " ") in text) or \
            text.startswith((f"{home}: {key} = ", f"{where}: {key} = "))

    def mentions(key: str) -> bool:
        """`named`, or the key as a bare word ('add ip_image'): an error about a key left out
        is the absence's, not the job's."""
        key = str(key).replace("-", "_")
        return named(key) or _as_word(key, said)

    for _ in range(len(defaults) + len(entry)):
        if home in said:
            at_fault = [k for k in rest if named(k)]
            rest = {k: v for k, v in rest.items() if k not in at_fault}
        elif where in said:
            at_fault = [k for k in own if named(k) and k != "prompt"]
            own = {k: v for k, v in own.items() if k not in at_fault}
        else:
            break
        # Nothing to leave out; or a preset, whose values the job may have needed
        if not at_fault or "preset" in at_fault:
            break
        try:
            _item(i, own, rest, where, name, base, levels)
            break
        except JobError as e:
            said = str(e)
            # Of a key left out ('width' and 'height' go together): not said, and the keys it
            # names are left out too, so the job's other errors are still found
            # ... and so is one of the key a misspelt one likely meant, where that key is not
            # given ('promt': "has no prompt"), said once the spelling is fixed
            left = [k for k in [*defaults, *entry] if k not in rest and k not in own]
            given = {str(k).replace("-", "_") for k in [*defaults, *entry]}
            meant = [m for m in map(_meant_key, left) if m and m not in given]
            if not any(mentions(k) for k in [*left, *meant]):
                found.append(e)
    return found


def _tables(path: Path) -> tuple[str, dict[str, Any], list[dict[str, Any]], dict[int, int]]:
    """A job file's (or stdin's, '-') name, [defaults], job tables and, for JSONL, each job's
    line number (by index)."""
    if str(path) == "-":
        label = name = "stdin"
        text = _stdin_text().removeprefix("\ufeff")  # a byte-order mark (Windows editors)
        firsts = [ln.lstrip() for ln in text.splitlines() if ln.strip()
                  and not ln.lstrip().startswith("#")]
        jsonl = bool(firsts) and firsts[0].startswith("{")
    else:
        if path.is_dir():
            raise JobError(f"{path} is a folder; give a batch file (TOML: [defaults] and "
                           "[[job]] entries, or JSONL: one object a line)")
        if not path.is_file():
            raise JobError(f"batch file not found: {path}")
        label, name, text = str(path), path.name, None
        jsonl = path.suffix.lower() in (".jsonl", ".json", ".ndjson") or (
            path.suffix.lower() != ".toml" and _starts_like_json(path))
    if jsonl:
        lines = list(_jsonl(path, text))
        first = lines[0][1] if lines else None
        if isinstance(first, BadLine) and first.toml and not any(  # a .json of TOML
                isinstance(e, dict) for _, e in lines):
            raise JobError(f"{label} holds TOML, not JSON lines: name it "
                           f"{Path(label).stem}.toml, or write one JSON object a line")
        defaults, entries = {}, [entry for _, entry in lines]
        line_of = {i: n for i, (n, _) in enumerate(lines)}
    else:
        data = read_toml(path, JOB_FILE_TEXT) if text is None else parse_toml(text, label)
        unknown = set(data) - {"defaults", "job"}
        if unknown:
            raise JobError(f"{label}: unknown table '{sorted(unknown)[0]}'; "
                           "a batch file has [defaults] and [[job]] entries")
        defaults, entries, line_of = data.get("defaults", {}), data.get("job", []), {}
        if not isinstance(defaults, dict) or not isinstance(entries, list) or not all(
                isinstance(e, dict) for e in entries):
            raise JobError(f"{label}: write [defaults] as a table and each job as [[job]]")
    if not entries:
        raise JobError(f"{label} holds no jobs; add [[job]] entries (TOML) or lines (JSONL)")
    return name, defaults, entries, line_of


def _item(i: int, entry: dict[str, Any], defaults: dict[str, Any], where: str, name: str,
          base: Job | None, levels: list[tuple[dict[str, Any], str, bool]] | None) -> BatchItem:
    """Job `i` of a file (its table `entry`, named `where`) on top of [defaults], the command's
    `levels` and `base`."""
    values = {**defaults, **entry}
    output = values.pop("output", None)
    said = where if "output" in entry else f"{name} [defaults]"
    if output is not None and not isinstance(output, str):
        raise JobError(f"'output' in {said} must be a file name, got {spelled(output)}")
    if isinstance(output, str) and not output.strip():
        raise JobError(f"'output' in {said} is empty: give a file name or template, or "
                       "leave it out (the job's image gets the batch's name)")
    if output == "-":  # stdout is for gen and up's one image, not a batch's many
        raise JobError(f"'output' in {said} is '-', but a batch writes files; name one")
    preset = values.pop("preset", None)
    if preset is not None and not isinstance(preset, str):  # `"preset": 5`: no preset's name
        said = where if "preset" in entry else f"{name} [defaults]"
        raise JobError(f"'preset' in {said} must be text (a preset's name or .toml file), got "
                       f"{spelled(preset)}")
    job_levels = list(levels or [])
    if preset is not None:
        said = where if "preset" in entry else f"{name} [defaults]"
        job_levels.append((_preset_values(preset, said), f"preset '{preset}' ({where})", True))
    job_levels += [(_without(defaults), f"{name} [defaults]", True),
                   (_without(entry), where, True)]
    piped = [level for values, level, _ in job_levels if values.get("image") == "-"]
    if piped:
        # stdin holds the batch file, or is read once: it cannot also be a job's image
        raise JobError(f"'image' in {piped[-1]} is '-' (stdin), but a batch's images are "
                       "files; give the image's path")
    try:
        job = job_from_levels(job_levels, base=base, size_of=input_size)
    except ImageInputError as e:  # named as the key of the level that gave the image
        given = giver(job_levels, "image")
        said = without_shell_advice(str(e), "a job for each")  # no shell reads a job file
        if given is None or given == OPTIONS:
            raise JobError(f"{where}: {said}") from None
        raise JobError(by_key(f"--image {said}", given, "the preset's" if given.startswith(
            "preset ") else "the job file's")) from None
    except JobError as e:
        said = str(e).replace(ASPECT_ALONE, "set 'size' (in pixels) with it, in the job or in "
                              "[defaults]")  # no --size to give a batch
        raise JobError(keyed(said, [w for _, w, _ in job_levels])) from None
    if not job.image and not job.prompt.strip():  # as gen refuses '': a forgotten key
        raise JobError(f"{where} has no prompt; give it a 'prompt' (or an 'image' to "
                       "upscale)")
    # A job's own control_scale, ip_scale or ip_adapter with no add-on image to use it on was
    # ignored without a word; one from [defaults] or a preset is a default, and passes (as
    # gen's flags and presets).
    idle = idle_setting(job, {str(k).replace("-", "_") for k in entry})
    if idle:
        key, lacks, needs = idle
        raise JobError(f"'{key}' in {where} {lacks}: add {' and '.join(needs)}, or leave "
                       "it out")
    format_given = "format" in {str(k).replace("-", "_") for k in values}
    quality_given = "quality" in {str(k).replace("-", "_") for k in entry}
    file_keys = frozenset(str(k).replace("-", "_") for keys, _, _ in
                          job_levels[len(levels or []):] for k in keys)
    # and the settings the CPU's notes name (hires.cli_runs.check_steps_and_notes)
    given_in = {key: level for key in (*FLAG_KEYS.values(), "dtype", "offload")
                if (level := giver(job_levels, key) or "").startswith("preset '")}
    home = f"{name} [defaults]"
    from_defaults = frozenset(key for key in (str(k).replace("-", "_") for k in defaults)
                              if giver(job_levels, key) == home and key not in entry)
    if "output" in defaults and "output" not in entry:
        from_defaults |= {"output"}
    return BatchItem(i, job, output, format_given, quality_given, file_keys,
                     given_in=given_in, from_defaults=from_defaults)


def _starts_like_json(path: Path) -> bool:
    """Whether a file's first entry (past blank and `#` lines) starts with '{': jobs.txt may
    hold JSONL as well as TOML."""
    head = b""
    try:
        with path.open("rb") as f:
            # read on past any length of comments (64 KiB of them made a .txt TOML)
            while chunk := f.read(1 << 16):
                head += chunk
                if (first := _first_entry(head)) is not None:
                    return first
    except OSError:
        return False  # read_toml says why it cannot be read
    return False


def _first_entry(head: bytes) -> bool | None:
    """Whether the first entry of a file's first bytes (past blank and `#` lines) starts
    with '{'; None while they hold no entry yet."""
    if encoding := marked(head):  # UTF-16 or UTF-32: its first entry as UTF-8 bytes
        head = head.decode(encoding, "replace").encode()
    for line in head.splitlines():
        line = line.removeprefix(b"\xef\xbb\xbf").strip()  # a byte-order mark
        if line and not line.startswith(b"#"):  # its first byte is known, if not its end
            return line.startswith(b"{")
    return None


JOB_FILE_TEXT = "a job file: TOML, or one JSON object a line"  # what a binary one is not


def _stdin_text() -> str:
    """The job file piped in (`hires batch -`)."""
    import sys

    try:
        return decoded(sys.stdin.buffer.read(), "the jobs on stdin", "give them as UTF-8",
                       JOB_FILE_TEXT)
    except ValueError as e:
        raise JobError(str(e)) from None


PATH_KEYS = ("image", "control", "ip_image", "model", "vae", "linfusion", "control_model",
             "ip_adapter", "lora")


def _without(table: dict[str, Any]) -> dict[str, Any]:
    """A table's job keys: what is not the batch's own (output, preset), with `~/` in its
    paths expanded as a shell does for the same paths given as flags."""
    return {k: _home(v) if k in PATH_KEYS else v
            for k, v in table.items() if k not in ("output", "preset")}


def _home(value: Any) -> Any:
    """A path (or a list of them: LoRAs) with a leading `~` expanded; anything else as is."""
    if isinstance(value, list):
        return [_home(v) for v in value]
    return os.path.expanduser(value) if isinstance(value, str) and value.startswith("~") \
        else value


def _refused_key(key: object) -> bool:
    """A key hires knows but a job file may not set: trusted-only, or a command's flag."""
    name = str(key).replace("-", "_")
    return name in TRUSTED_ONLY or name.lower() in BATCH_FLAGS


def _check_keys(table: dict[str, Any], where: str) -> None:
    """An unknown key names its table and the closest valid key, or lists them all."""
    valid = batch_keys()
    for key in table:
        name = str(key).replace("-", "_")
        if name in TRUSTED_ONLY:
            raise JobError(f"'{key}' in {where} is refused: only the --allow-pickle flag may "
                           "allow pickle loading; remove the key")
        if name not in valid:
            hint = closest_hint(name, valid, BATCH_FLAGS)
            shown = ", ".join(keys_for_people(valid))
            flag = name.lower() in BATCH_FLAGS
            listing = "" if "valid:" in hint or flag else f"; valid keys: {shown}"
            raise JobError(f"unknown key '{key}' in {where}{hint}{listing}")


def _check_seed(table: dict[str, Any], where: str) -> None:
    """A seed is a whole number as written, as `hires.generate(seed=...)` takes it: 1.0 or
    "5" in a typed file (TOML, JSON) is a slip, not a seed."""
    seed = table.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise JobError(f"'seed' in {where} must be a whole number (no quotes, no decimal "
                       f"point), got {spelled(seed)}")


def keyed(message: str, wheres: Iterable[str]) -> str:
    """A job's range error, "steps must be ... (in jobs.toml job 3)", in the words of batch's
    other errors: "'steps' in jobs.toml job 3 must be ..."; one naming no single key is
    "jobs.toml job 3: ...". Any other message is returned as it is."""
    for where in wheres:
        tail = f" (in {where})"
        if not message.endswith(tail):
            continue
        text = message[:-len(tail)]
        first, _, rest = text.partition(" ")
        key = first.strip("'")
        if key in batch_keys() and not rest.startswith("and "):
            return f"'{key}' in {where} {rest}"
        return f"{where}: {text}"
    return message


def _jsonl(path: Path, text: str | None = None
           ) -> Iterator[tuple[int, dict[str, Any] | BadLine]]:
    """(line number, job) for each job line of a JSONL file, or of `text` (stdin)."""
    # Lines as a file reads them: str.splitlines() also breaks at U+2028, which JSON allows
    # unescaped inside a string. A file is read a line at a time (a JSONL of 200,000 jobs
    # read whole took 5x its size), and read whole only to say where it is not text.
    try:
        f = io.StringIO(text, newline=None) if text is not None else open(
            path, encoding=_file_encoding(path))
    except OSError as e:
        raise JobError(f"cannot read {path}: {e.strerror}") from None
    if text is None and (name := unmarked(f.buffer.peek(400)[:400])):  # else each line bad
        f.close()
        raise JobError(unmarked_problem(name, str(path)))
    with f:
        try:
            yield from _jsonl_entries(enumerate(f, start=1))
        except UnicodeDecodeError:
            try:
                decoded(path.read_bytes(), str(path), "save it as UTF-8", JOB_FILE_TEXT)
            except ValueError as e:
                raise JobError(str(e)) from None
            raise


def _file_encoding(path: Path) -> str:
    """The encoding to read a job file in: as its byte-order mark says, else UTF-8 (its own
    mark, if any, skipped)."""
    with open(path, "rb") as f:
        return marked(f.read(4)) or "utf-8-sig"


@dataclass(frozen=True)
class BadLine:
    """A JSONL line that is no job object: said with the other jobs' errors, not alone."""

    error: str
    toml: bool = False  # the line reads as TOML ('[[job]]', 'key = ...')


def _jsonl_entries(lines: Iterable[tuple[int, str]]
                   ) -> Iterator[tuple[int, dict[str, Any] | BadLine]]:
    for n, line in lines:
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            entry = json.loads(line, object_pairs_hook=_once_each)
        except json.JSONDecodeError as e:
            toml = re.match(r"\s*(\[\[?\w+\]\]?\s*$|[\w-]+\s*=)", line) is not None
            yield n, BadLine(f"not valid JSON ({e.msg})", toml)
            continue
        except ValueError as e:  # a key given twice: JSON keeps the last, unsaid
            yield n, BadLine(str(e))
            continue
        yield n, entry if isinstance(entry, dict) else BadLine(
            "each line must be a JSON object")


def _once_each(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object whose keys are each given once (as TOML requires); else ValueError."""
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise ValueError(f"'{key}' is given twice; keep one")
        seen[key] = value
    return seen


def stable_seed(text: str, repeat: int = 0) -> int:
    """The seed of a batch job given none, fixed by what it depicts (`text`: its prompt,
    negative prompt and input) and, for the same again, how many came before it (`repeat`):
    a restarted batch finds its outputs, and editing a job's other settings (guidance, steps,
    size) or other jobs keeps its seed, so its image changes by that setting alone."""
    key = json.dumps([text, repeat])
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "big")


def parse_shard(shard: str | None, env: dict[str, str] | None = None) -> tuple[int, int]:
    """(rank, world) from `--shard I/N`, else torchrun/accelerate's RANK and WORLD_SIZE."""
    env = os.environ if env is None else env
    if shard:
        # ASCII digits only: int() also reads "1_0" as 10 and full-width digits
        parts = re.fullmatch(r"\s*(-?\d{1,9})\s*/\s*(-?\d{1,9})\s*", shard, re.ASCII)
        if parts is None:
            raise JobError(f"--shard must look like I/N (e.g. 0/4), got '{shard}'")
        i, n = int(parts[1]), int(parts[2])
        if n < 1 or not 0 <= i < n:
            raise JobError(f"--shard {shard}: need 0 <= I < N")
        return i, n
    world = _env_number(env, "WORLD_SIZE", 1)
    rank = _env_number(env, "RANK", None)
    rank = _env_number(env, "LOCAL_RANK", 0) if rank is None else rank
    named = _shard_env(env, quoted=False)
    if world > 1 and "RANK" not in env and "LOCAL_RANK" not in env:
        # every process of such a launcher would run shard 0, and the rest of the jobs none
        raise JobError(f"{named} in the environment, but RANK is not set: set RANK (or "
                       "LOCAL_RANK) in each process, or pass --shard I/N")
    if world < 1 or not 0 <= rank < world:
        # Running zero jobs and exiting 0 would hide a broken launcher from the user.
        unset = "" if "WORLD_SIZE" in env else " (WORLD_SIZE is not set: read as 1)"
        raise JobError(f"{named} in the environment{unset}: need WORLD_SIZE >= 1 and 0 <= RANK "
                       "< WORLD_SIZE (or pass --shard I/N)")
    return rank, world


SHARD_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE")  # torchrun's and accelerate's


def _shard_env(env: Mapping[str, str], quoted: bool) -> str:
    """The shard variables that are set, as an error shows them (a long value cut short)."""
    def shown(value: str) -> str:
        value = value if len(value) <= 20 else value[:20] + "..."
        return repr(value) if quoted else value

    return " ".join(f"{k}={shown(env[k])}" for k in SHARD_VARIABLES if k in env)


def _env_number(env: Mapping[str, str], name: str, default: int | None) -> int | None:
    """A whole number from the environment (`default` where it is not set); a JobError naming
    the shard variables that are set, an empty one too (an unset variable in a script)."""
    if name not in env:
        return default
    if re.fullmatch(r"\s*-?\d{1,9}\s*", env[name], re.ASCII):  # int() refuses 4,300 digits
        return int(env[name])
    got = _shard_env(env, quoted=True)
    raise JobError(f"{got} in the environment: each must be a whole number; set them, unset "
                   "them, or pass --shard I/N")


def local_device(strict: bool = True) -> str | None:
    """Under torchrun each process takes the GPU of its LOCAL_RANK. Not `strict` (--shard
    given, so the environment shards nothing): values that are not numbers pick none."""
    env = os.environ
    try:
        if (_env_number(env, "WORLD_SIZE", 1) or 1) > 1 and "LOCAL_RANK" in env:
            return f"cuda:{_env_number(env, 'LOCAL_RANK', 0)}"
    except JobError:
        if not strict:
            return None
        raise
    return None


def my_share(items: list[BatchItem], rank: int, world: int) -> list[BatchItem]:
    """Every world-th job starting at rank: shards are disjoint and cover every job."""
    return [item for item in items if item.index % world == rank]


# Where and how a job runs, not what it makes: a resumed batch on another machine keeps its images.
PLACEMENT_KEYS = ("device", "offload", "vram", "ram", "disk")
# Keys added after images were made, left out while at their default, so that those images
# keep their fingerprint and a batch re-run does not redo them.
LATER_KEYS: dict[str, Any] = {"vae": None, "dpi": None, "depth": 8, "quality": None}


def name_outputs(items: list[BatchItem], folder: Path, file_name: str
                 ) -> tuple[list[BatchItem], dict[int, Path]]:
    """Every job's output path (by index), named and checked before any work: names must not
    collide (one image would be lost), a format must hold its image, inputs must exist. The
    items come back with the format their file's extension names, as with `gen`."""
    from hires.model_refs import ModelError

    named: list[BatchItem] = []
    paths: dict[int, Path] = {}
    owner: dict[str, BatchItem] = {}
    errors: list[JobError] = []  # every job's said at once, as read_batch says them
    missing: ModelError | None = None  # a Hub add-on not cached: after the settings to fix
    for item in items:
        try:
            path, fmt, lossless = _named_one(item, folder, file_name, owner)
        except JobError as e:
            errors.append(e)
            continue
        except ModelError as e:
            missing = missing or e
            continue
        paths[item.index] = path
        j = item.job
        named.append(item if fmt == j.format and not lossless else dataclasses.replace(
            item, job=j.merged({"format": fmt, **({"quality": None} if lossless else {})})))
    if errors:
        raise all_of(list({str(e): e for e in errors}.values()))  # [defaults]' once
    if missing is not None:
        raise missing
    return named, paths


def _named_one(item: BatchItem, folder: Path, file_name: str, owner: dict[str, BatchItem]
               ) -> tuple[Path, str, bool]:
    """`name_outputs` for one job: its image's path, format, and whether a `quality` it
    has is dropped (a lossless format); `owner`: the jobs by the paths named so far."""
    from hires import output as out
    from hires.addons import check_inputs
    from hires.model_refs import ModelError

    j, where = item.job, item.where(file_name)
    # -o is a folder, not a template: its braces are its name's. The job's output is joined
    # to it, and the whole filled in where it holds a '{' ('a{b' read as a broken template
    # of the job's): only then are they doubled ('a}b' alone is never filled in).
    if "{" in str(folder) + (item.output or ""):
        folder = Path(str(folder).replace("{", "{{").replace("}", "}}"))
    fields: dict[str, Any] = dict(width=j.width, height=j.height, seed=j.seed, fmt=j.format,
                                  index=item.index, prompt=j.prompt,
                                  name=Path(j.image).stem if j.image else "")
    name = f"job{item.index:04d}_{j.width}x{j.height}_s{j.seed}" + (
        f"_{out.stem_part(Path(j.image).stem)}" if j.image else "")  # an upscale's input
    given = ""
    try:
        if item.output is None:
            path = out.output_path(folder / name, **fields)
        else:
            # keeps a trailing '/'; an absolute one (or ~/..., as a shell reads it) wins
            given = os.path.join(folder, os.path.expanduser(out.fs_text(item.output)))
            # A folder takes the batch's own names (as gen's -o its own), not hires_...;
            # one that exists counts once its template is filled.
            if out.names_folder(given) or out.output_path(
                    os.path.join(given, ""), **fields).parent.is_dir():
                given = os.path.join(given, name)
            path = out.output_path(given, **fields)
    except out.OutputError as e:
        text = str(e)
        if item.output is not None:
            # the name is shown as the job wrote it, not joined to -o as tried here
            for tried in (os.path.join(given, ""), given):
                text = text.replace(repr(tried), repr(item.output)).replace(
                    f"'{tried}'", f"'{item.output}'")
            text = text.replace("choose another -o", "change its 'output'")
        raise JobError(f"{where}: {text}") from None
    named_fmt = out.SUFFIX_FORMATS.get(path.suffix.lower())
    if item.format_given and named_fmt and named_fmt != j.format:
        raise JobError(f"'output' in {where} names a {named_fmt.upper()} file ({path.name}) "
                       f"but 'format' is {j.format}; make them agree (or drop one)")
    fmt = named_fmt or j.format
    problem = out.format_problem(fmt, j.width, j.height, j.depth)
    if problem:
        # Of [defaults]' keys alone (a jpg of depth 16 there): said once, not once a job. The
        # size has a part only where the problem is the size's (a WebP's limits).
        sized = out.format_problem(fmt, j.width, j.height) is not None
        shaping = ("format", "depth", "output", *(SIZE_KEYS if sized else ()))
        theirs = [k for k in shaping if k in item.file_keys or (k == "output" and item.output)]
        alone = theirs and all(k in item.from_defaults for k in theirs)
        raise JobError(f"{f'{file_name} [defaults]' if alone else where}: "
                       f"{in_job_words(problem)}")
    # The folder as the file system sees it (a symlink to another job's folder is that
    # folder); the name itself is replaced by the rename, never followed.
    key = os.path.normcase(os.path.join(os.path.realpath(path.parent), path.name))
    if key in owner:
        first, second = (_numbered(i.index, i.line) for i in (owner[key], item))
        raise JobError(f"{file_name} jobs {first} and {second} both write "
                       f"{path}; give them different 'output' names (or add {{index}} or "
                       "{seed})")
    owner[key] = item
    try:
        check_inputs(j)
    except JobError as e:
        raise JobError(by_giver(str(e), item, file_name)) from None
    except ModelError as e:  # a Hub add-on not cached offline: still exit 1, but which job's
        raise ModelError(by_giver(str(e), item, file_name), usage=e.usage) from None
    # A quality is for JPEG and WebP: [defaults]' (or a preset's) serve every job, the
    # job's own only its own (it was dropped without a word).
    lossless = j.quality is not None and fmt not in LOSSY_FORMATS
    if lossless and item.quality_given:
        raise JobError(f"'quality' in {where} is for jpg and webp, and {path.name} is "
                       f"{fmt} (lossless); leave it out or write a .jpg or .webp")
    return path, fmt, lossless


# The flags the file checks name (`check_inputs`, `check_paths`), and the job file's keys.
FLAG_KEYS = {"--lora": "lora", "--control-model": "control_model", "--control": "control",
             "--ip-adapter": "ip_adapter", "--ip-image": "ip_image", "--model": "model",
             "--vae": "vae", "--linfusion": "linfusion"}


def _preset_values(preset: Any, where: str) -> dict[str, Any]:
    """A job's `preset`, its errors said by the file and job that name it."""
    try:
        return load_preset(str(preset)).values
    except JobError as e:
        said = str(e).replace("--preset is empty", "it is empty", 1)
        if "not found" in said and not os.path.isabs(os.path.expanduser(str(preset))):
            said += (f"; relative paths are read from the current folder ({os.getcwd()}), "
                     "not the job file's")
        raise JobError(f"'preset' in {where}: {said}") from None


def in_job_words(problem: str, file_keys: Iterable[str] = ()) -> str:
    """A format's or the memory's problem with its flag advice as a job file's keys
    (FORMAT_ADVICE); a model or VAE not here, where the job file named it (`file_keys`), with
    the advice to name another there rather than with the batch's flag."""
    for said, meant in FORMAT_ADVICE.items():
        problem = problem.replace(said, meant)
    problem = re.sub(r"\(--vae (\S+)\)", r'(vae = "\1" in the job)', problem)  # fp16_vae_hint
    for key in set(file_keys) & KEY_ADVICE.keys():
        problem = problem.replace(*KEY_ADVICE[key])
    return problem


# A model or VAE not here (hires.model_refs, hires.models), told its flag: where the job file
# named it, the fix is the job's key (in_job_words).
KEY_ADVICE = {
    "model": ("pass a local folder or .safetensors file with --model (or --model tiny to try "
              "hires offline)", "give the job's model as a local folder or .safetensors file "
              "(or model = \"tiny\" to try hires offline)"),
    "vae": ("pass a local folder or .safetensors file with --vae",
            "give the job's vae as a local folder or .safetensors file"),
    # hires.dry_run: --gpu with a CPU's or a Mac's device
    "device": (", and --device ", ", and the job's device "),
}


def flag_key(message: str) -> str | None:
    """The job key of the file a check's message names by its flag ("--lora x: ..."), if so."""
    return next((key for flag, key in FLAG_KEYS.items() if message.startswith(f"{flag} ")),
                None)


def by_giver(message: str, item: BatchItem, file_name: str) -> str:
    """`by_key` for a job's file error, naming the preset that gave the file where one did
    ("'lora' in preset 'p' (jobs.toml job 3): ..."), not the job file."""
    where = item.where(file_name)
    key = flag_key(message)
    if key in item.from_defaults:  # said once, as [defaults]', not once a job
        return by_key(message, f"{file_name} [defaults]")
    preset = item.given_in.get(key) if key else None
    if preset is None:
        return by_key(message, where)
    said = by_key(message, preset, "the preset's")
    return said if preset.endswith(f"({where})") else f"{where}: {said}"


def key_place(item: BatchItem, key: str, file_name: str) -> str:
    """Where a batch job's `key` was given, as its notes name it: the job file's [defaults],
    a preset (the job's own, "(jobs.toml job 3)" said, or the batch's --preset), else the
    job."""
    if key in item.from_defaults:
        return f"{file_name} [defaults]"
    return item.given_in.get(key) or item.where(file_name)


def warning_by_giver(message: str, item: BatchItem, file_name: str) -> str:
    """A job's warning about a file it was given (an add-on image's crop), named by the key
    that gave it, as `by_giver` names errors; a [defaults] key's names the job too, as it
    differs from job to job (each job's size). Any other warning as it is."""
    key = flag_key(message)
    if key is None:
        return message
    if key in item.from_defaults:
        return by_key(message, f"{file_name} [defaults] ({item.where(file_name)})")
    return by_giver(message, item, file_name)


def by_key(message: str, where: str, home: str = "the job file's", keyed: bool = True) -> str:
    """A job's file error in a job file's words: "'lora' in jobs.toml job 3: ..." rather than
    its flag; a file not found says where relative paths are read from (not `home`). `keyed`
    (a batch's, which has none of those flags): its advice's other flags as keys too ("pass it
    as 'vae'", not "--vae")."""
    if keyed:
        message = keyed_flags(message)
    for flag, key in {**FLAG_KEYS, "--image": "image"}.items():
        if message.startswith(f"{flag} "):
            text = message[len(flag) + 1:].replace(f"{flag} ", f"'{key}' ")
            ref = text.split(": ")[0]
            if "no such file" in text and not os.path.isabs(os.path.expanduser(ref)):
                text += (f"; relative paths are read from the current folder ({os.getcwd()}), "
                         f"not {home}")
            return f"'{key}' in {where}: {text}"
    return f"{where}: {message}"


def keyed_flags(message: str) -> str:
    """`message` with the job keys' flags as the keys ('--vae' as 'vae'): a batch has no
    such flags. A leading one is left as it is: `by_key` names where it was given."""
    head, rest = (message.split(" ", 1) + [""])[:2] if message.startswith("--") else ("", message)
    for flag, key in FLAG_KEYS.items():
        rest = re.sub(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", f"'{key}'", rest)
    return f"{head} {rest}" if head else rest


def said_where_given(error: Exception, job: Job) -> Exception:
    """A file's error worded for its flag ("--lora x: no such file"), said of the preset's or
    record's key that gave the file instead; any other error as it is."""
    where = job.extra.get("given_in", {}).get(flag_key(str(error)))
    if where is None:
        return error
    said = by_key(str(error), where, "the preset's" if where.startswith("preset ") else
                  "the image's folder", keyed=False)  # gen's, up's or plan's: flags they have
    from hires.model_refs import ModelError

    if isinstance(error, ModelError):
        return ModelError(said, usage=error.usage)
    return JobError(said)


def settings_hash(job: Job | dict[str, Any]) -> str:
    """A short fingerprint of everything that decides a job's image (recorded with the image)."""
    values = job.to_dict() if isinstance(job, Job) else dict(job)
    kept = {k: v for k, v in values.items() if k not in PLACEMENT_KEYS + TRUSTED_ONLY
            and not (k in LATER_KEYS and v == LATER_KEYS[k])}
    text = json.dumps(kept, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def recorded(path: Path) -> dict[str, Any] | None:
    """The record an image made by hires holds (its "job" and "result"); None for a file
    without one."""
    from hires.output import OutputError, read_metadata

    try:
        record = read_metadata(path)["hires"]
    except OutputError:
        return None
    return record if isinstance(record, dict) else None


def recorded_hash(path: Path) -> str | None:
    """The settings hash an image made by hires records (computed from its job if older)."""
    record = recorded(path)
    if record is None:
        return None
    result = record.get("result")
    if isinstance(result, dict) and isinstance(result.get("settings"), str):
        return result["settings"]
    if isinstance(record.get("job"), dict):
        return settings_hash(record["job"])
    return None


@dataclass
class Outcome:
    """What happened to one batch job."""

    item: BatchItem
    # "done" | "skipped" (made already) | "busy" (another run is making it) | "failed" |
    # "interrupted" (Ctrl-C, SIGTERM: the batch stops there)
    status: str
    path: Path
    error: str | None = None  # also, for "busy", which run is making it
    record: dict[str, Any] | None = None
    moved_to: Path | None = None  # the older image of changed settings, kept under this name
    why: str = "settings changed"  # why an older image was moved aside
    cut: bool = False  # it was moved aside as cut short (`why` says how)
    raised: BaseException | None = None  # what failed it, for HIRES_DEBUG's traceback


def changed_input(path: Path, job: Job) -> str | None:
    """The input file of `job` that differs now from the one the image at `path` was made
    from (edited since under the same name): an upscale's input, a LoRA, a control or IP image,
    ControlNet or IP-Adapter weights, by the sha256 its record keeps. None if none does."""
    from hires.output import OutputError, read_metadata

    try:
        record = read_metadata(path)["hires"]
    except OutputError:
        return None
    record = record if isinstance(record, dict) else {}
    from hires.addons import RecordedFile, first_changed, recorded_files
    from hires.images import sha256_once

    made, result = record.get("job"), record.get("result")
    files = [RecordedFile("the input", job.image,
                          made.get("image_sha256") if isinstance(made, dict) else None,
                          lambda ref: sha256_once(Path(ref).expanduser()))] if job.image else []
    addons = result.get("addons") if isinstance(result, dict) else None
    files += recorded_files(job, addons) if isinstance(addons, dict) else []
    changed = first_changed(files)
    return changed.label if changed else None


def recorded_result(path: Path) -> dict[str, Any] | None:
    """The record ("result") an image made by hires holds, with its path as given; None for
    a file without one."""
    result = (recorded(path) or {}).get("result")
    return {**result, "path": str(path)} if isinstance(result, dict) else None


def recorded_stage(path: Path) -> int | None:
    """The stage an image made by hires records being (a --preview's or --save-stages'
    image: one stage of a bigger job); None for a whole job's image, or none of hires'."""
    result = (recorded(path) or {}).get("result")
    stage = result.get("stage") if isinstance(result, dict) else None
    return stage if isinstance(stage, int) and not isinstance(stage, bool) else None


def made_already(path: Path, job: Job, stage: int | None = None) -> bool:
    """Whether the image at `path` is this job's and whole, so a run skips it: its settings,
    its input and add-on files as they are now, not a copy cut short, and the image wanted:
    `stage`'s alone (a --preview's), or with None the whole job's."""
    from hires.cut_short import cut_short

    return (of_this_job(path, job) and recorded_stage(path) == stage
            and (stage is None or older_plan(path, job, stage) is None)
            and cut_short(path) is None)


def older_plan(path: Path, job: Job, stage: int) -> str | None:
    """Why `job`'s `stage` image at `path` is not this hires' (an older one planned an
    upscale's first stages smaller, with the same settings): "64x64, where ... plans 128x128";
    None where its size is the plan's."""
    from PIL import Image

    from hires.runs import stage_size

    try:
        with pixel_limit(None), Image.open(path) as image:  # its header alone
            size = image.size
        want = stage_size(job, stage)
    except (OSError, ValueError, IndexError):  # unreadable, or the input gone: said elsewhere
        return None
    if size == want:
        return None
    return (f"{size[0]}x{size[1]}, where this hires plans stage {stage} at "
            f"{want[0]}x{want[1]}")


def of_this_job(path: Path, job: Job) -> bool:
    """Whether the file at `path` records `job`'s settings, with its input and add-on files as
    they are now (whole or not): a run of the job may write over it."""
    return recorded_hash(path) == settings_hash(job) and changed_input(path, job) is None


def in_the_way(path: Path, overwrite: bool = False) -> str | None:
    """Why a batch job may not write its image at `path`, if so: a file there that records no
    hires settings may be anyone's, kept unless --overwrite. One that records some is the
    batch's to skip, or to move aside when they differ."""
    from hires.cut_short import cut_with_its_record
    from hires.output import is_folder

    if is_folder(path):  # --overwrite or not: no image is ever written over a folder
        return f"{path} is a folder, and hires never writes over a folder: move it away"
    if overwrite or not os.path.lexists(path) or recorded_hash(path) is not None:
        return None
    if cut_with_its_record(path):  # a TIFF's or WebP's record is at its end: cut, it is gone
        return None  # set aside, as one cut short with its record is (_run_one)
    return (f"{path} exists but holds no hires settings record, so it may not be this job's "
            "image; move it away or pass --overwrite")


def _run_one(item: BatchItem, path: Path, settings: str,
             make: Callable[[BatchItem, Path], dict[str, Any]], overwrite: bool,
             check_settings: bool, stage: int | None = None) -> Outcome:
    """One job of `run_batch`: skipped if its image is there with the same settings (and is
    `stage`'s image, or with None the whole job's), else made (an older image of other
    settings, or another stage's, moved aside first)."""
    from hires.cut_short import cut_short, cut_with_its_record

    moved, why, cut = None, "settings changed", None
    if os.path.lexists(path) and not overwrite:
        old = recorded_hash(path) if check_settings else settings
        # An edited input keeps the job's settings (the file's name is the setting).
        stale = changed_input(path, item.job) if old == settings and check_settings else None
        if stale:
            why = f"{stale} changed"
        if old == settings and not stale:
            cut = cut_short(path)
            held = recorded_stage(path) if check_settings else stage
            if not cut and held != stage:  # a preview where the whole image goes, or back
                cut = (f"this job's stage {held} image, not its whole one" if held is not None
                       else f"this job's whole image, not its stage {stage} one")
            elif not cut and stage is not None and (older := older_plan(path, item.job, stage)):
                cut = f"this job's stage {stage} image at {older}"
        elif old is None:  # a TIFF or WebP cut short lost its record with its end
            cut = cut_with_its_record(path)
        if cut:  # kept aside as one of other settings is: the user's bytes, whatever they are
            why = cut
        if old == settings and not stale and not cut:
            # its record, as the manifest's line for a done job has it (README)
            return Outcome(item, "skipped", path, record=recorded_result(path))
        if old is None and not cut:  # put there since the checks before the run (in_the_way)
            return Outcome(item, "failed", path, error=in_the_way(path))
        try:
            moved = _set_aside(path, old[:8] if old else "cut-short")
        except OSError as e:
            made = f"is {cut}" if cut else "was made with other settings"
            return Outcome(item, "failed", path, error=(
                f"{path} {made} and cannot be moved aside ({e.strerror}); pass --overwrite to "
                "replace it"))
    try:
        return Outcome(item, "done", path, record=make(item, path), moved_to=moved, why=why,
                       cut=bool(cut))
    except KeyboardInterrupt:
        raise
    except Exception as e:  # a failed job is reported; the batch goes on
        return Outcome(item, "failed", path, error=in_job_words(
            str(e).splitlines()[0][:500], item.file_keys) if str(e) else type(e).__name__,
            moved_to=moved, why=why, cut=bool(cut), raised=e)


def manifest_line(outcome: Outcome, settings: str) -> dict[str, Any]:
    """A job's manifest line: how it went, the job's facts, and a made image's record; an
    interrupted or failed job's checkpoint, where one was kept."""
    stopped = kept_checkpoint(outcome.path) if outcome.status in ("interrupted", "failed") \
        else {}
    return {"index": outcome.item.index, "status": outcome.status, "path": str(outcome.path),
            "error": outcome.error, "settings": settings, **job_facts(outcome.item.job),
            **stopped, **(outcome.record or {})}


def kept_checkpoint(path: Path) -> dict[str, str]:
    """{"checkpoint": its path} where a stopped run of the image at `path` kept one (the same
    command goes on from it), else {}: an interrupted or failed image's line says it."""
    from hires.resume import path_for

    kept = path_for(path)
    return {"checkpoint": str(kept)} if kept.is_file() else {}


def job_facts(job: Job) -> dict[str, Any]:
    """What every line of a job says, a failed one's too (a made one's record says them as
    well): a script reads `width` of any line."""
    return {"seed": job.seed, "width": job.width, "height": job.height, "prompt": job.prompt}


def _set_aside(path: Path, tag: str) -> Path:
    """Move the file at `path` to NAME.TAG.EXT, or NAME.TAG-2.EXT and on where that is taken
    (a second copy cut short, say); the name it went to."""
    from hires.output import claim_rename

    for n in range(1, 1000):
        moved = path.with_name(f"{path.stem}.{tag}{'' if n == 1 else f'-{n}'}{path.suffix}")
        try:
            claim_rename(path, moved)
            return moved
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free name beside it", str(path))


def run_batch(
    items: list[BatchItem],
    resolve_path: Callable[[BatchItem], Path],
    make: Callable[[BatchItem, Path], dict[str, Any]],
    manifest: Path | None = None,
    overwrite: bool = False,
    on_outcome: Callable[[Outcome], None] | None = None,
    check_settings: bool = True,
    stage: int | None = None,
) -> list[Outcome]:
    """Run each job unless its output exists with the same settings; failures do not stop others.

    `make(item, path)` generates and saves one image and returns its record. An existing image
    made with other settings (an edited job) is kept under a new name and the job is re-run.
    `stage`: the images are that stage's alone (--preview), not the whole jobs'.
    """
    from hires.busy import Busy, making
    from hires.output import OutputError, append_manifest

    outcomes = []
    for item in items:
        path = resolve_path(item)
        settings = settings_hash(item.job)
        try:
            # The check and the work under one lock: a second batch of the same job file skips
            # what this one is making, and finds it made once it is.
            with making(path):
                outcome = _run_one(item, path, settings, make, overwrite, check_settings, stage)
        except Busy as e:
            # not "skipped": a script counting those as made would count an image not there
            outcome = Outcome(item, "busy", path, error=f"{e.who} is making it")
        except KeyboardInterrupt as stop:  # Ctrl-C, SIGTERM: the job stopped has its line too
            outcome = Outcome(item, "interrupted", path,
                              error=getattr(stop, "word", "interrupted"))
            if manifest is not None:
                with contextlib.suppress(OSError):  # the stop, not a full disk, ends the run
                    append_manifest(manifest, manifest_line(outcome, settings))
            if on_outcome:
                on_outcome(outcome)
            raise
        if manifest is not None:
            try:
                append_manifest(manifest, manifest_line(outcome, settings))
            except OSError as e:  # a full disk: the images made so far are kept all the same
                fix = ("free some space" if e.errno in (errno.ENOSPC, errno.EDQUOT)
                       else "fix that or choose another --manifest")
                raise OutputError(f"cannot append job {item.index} to the manifest {manifest} "
                                  f"({e.strerror}); {fix} and run the same command again (made "
                                  "images are skipped)") from None
        if on_outcome:
            on_outcome(outcome)
        outcomes.append(outcome)
    return outcomes
