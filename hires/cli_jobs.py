"""From the command line's options and inputs to checked jobs and their plans."""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from hires.cli_output import say, warn

if TYPE_CHECKING:
    from hires.images import InputImage
    from hires.job import Job


CMDLINE = Path("/proc/self/cmdline")  # this process's argv as bytes, NUL-ended (Linux)


def job_flags(options: dict[str, Any]) -> dict[str, Any]:
    """The job keys the user actually gave, from a command's `locals()` (its options), the size
    keys (--size, --aspect, --scale, --width, --height) among them. `prompt` and `image` are the
    commands' own to handle."""
    from hires.job import JOB_KEYS
    from hires.sizes import SIZE_KEYS

    values = {("format" if k == "fmt" else k): v for k, v in options.items()}
    if isinstance(values.get("negative"), str):
        values["negative"] = argv_text(values["negative"])
    # False means "not given" for plain flags; --no-karras is a real False.
    return {k: v for k, v in values.items()
            if (k in JOB_KEYS or k in SIZE_KEYS) and k not in ("prompt", "image")
            and v is not None and (v is not False or k == "karras")
            and not (isinstance(v, list) and not v)}


def argv_text(value: str) -> str:
    """A text argument (a prompt) as typed. Python decodes argv with the locale's encoding: in
    a C locale (ASCII) a UTF-8 prompt's bytes arrive as surrogates, in a Latin-1 one as other
    letters ('cafÃ©'). Such bytes that read as UTF-8 are read so (Latin-1 text with accents
    is almost never valid UTF-8); others stay as they came: in a C locale the job refuses
    them. Text a multi-byte locale (EUC-JP, GBK) read whole stays as it read it: EUC-JP's
    '猫' (C7 AD) is valid UTF-8 too, for another letter."""
    from hires.output import read_whole

    try:  # argv's bytes, as the shell passed them (`argv_as_typed` made sure they can be had)
        typed = value.encode(sys.getfilesystemencoding(), "surrogateescape")
    except UnicodeError:
        return value
    if typed.isascii():
        return value
    if read_whole(value, typed):
        return value  # letters of two or more bytes each, all the locale's own
    try:
        return typed.decode("utf-8")
    except UnicodeError:
        return value


def argv_as_typed() -> None:
    """Each of `sys.argv`'s values that the locale's codec cannot encode back to the bytes the
    shell passed is decoded again from those bytes (/proc/self/cmdline), as os.fsdecode does.
    In an EUC-JP or Shift-JIS locale the C library decodes argv in ways Python's codecs do not
    reverse: a UTF-8 prompt could not be read as typed, nor a file named in UTF-8 opened."""
    encoding = sys.getfilesystemencoding()

    def reversible(value: str) -> bool:
        try:
            value.encode(encoding, "surrogateescape")
        except UnicodeError:
            return False
        return True

    if all(map(reversible, sys.argv[1:])):
        return
    try:
        raw = CMDLINE.read_bytes().split(b"\0")[:-1]
    except OSError:
        return
    # sys.argv[1:] are the last values of the command line (after `python -m hires` or the
    # script), the ones `sys.orig_argv` ends with
    if len(raw) != len(sys.orig_argv) or len(raw) < len(sys.argv):
        return
    typed = raw[len(raw) - len(sys.argv) + 1:]
    sys.argv[1:] = [value if reversible(value) else os.fsdecode(given)
                    for value, given in zip(sys.argv[1:], typed)]


def refuse_empty(flag: str, value: str | None, what: str) -> None:
    """`-o "$OUT"` with the variable unset is a usage error: "" read as not given would write
    somewhere else than meant."""
    from hires.job import JobError

    if value is not None and not value.strip():
        raise JobError(f"{flag} is empty (an unset variable?): give {what}, or leave it out")


def build_job(preset: str | None, from_image: Path | None, flags: dict[str, Any],
              source: tuple[int, int] | None = None, images: bool = True):
    """Defaults, then the preset, then a recorded job (--from), then explicit flags; the size
    from all of them (`hires.sizes`). `source`: an upscale's input size, when it is loaded
    (a record of an image piped to `up`, "-": that image's, from `recorded_stdin`); without
    `images`, a ControlNet may lack its image (`hires plan`)."""
    from hires import piped
    from hires.batch import by_key
    from hires.batch import recorded as recorded_record
    from hires.images import ImageInputError
    from hires.job import TRUSTED_ONLY, Job, JobError
    from hires.output import OutputError, job_values_from_image, unfound_checkpoint
    from hires.presets import load_preset
    from hires.record import newer_note
    from hires.sizes import OPTIONS, giver, job_from_levels, switched_off, without

    def size_of(path: str) -> tuple[int, int]:
        try:
            return source or piped.image_size(path)
        except ImageInputError as e:  # a preset's image: said as its key, as its add-ons' are
            where = giver(levels, "image") if "image" not in flags else None
            if where is None or not where.startswith("preset "):
                raise
            raise ImageInputError(by_key(f"--image {e}", where, "the preset's")) from None

    levels: list[tuple[dict[str, Any], str, bool]] = []
    if preset is not None:  # "" too: an unset variable is an error, not no preset
        chosen = load_preset(preset)  # named as its own errors name it
        levels.append((chosen.values, f"preset '{chosen.name}' ({chosen.path})", True))
    if from_image is None:
        job = job_from_levels([*levels, (flags, OPTIONS, False)], size_of=size_of,
                              images=images, scale="image" in flags)
        return check_scale_flags(files_given_in(job, [*levels, (flags, OPTIONS, False)]),
                                 flags, images)
    def noted(line: str) -> None:
        """An A1111 text's note, unless a flag given answers it: --sampler its sampler's,
        --lora its LoRAs' (the hires fix's stays)."""
        if not (flags.get("sampler") is not None and "--sampler picks" in line
                or flags.get("lora") and "--lora FILE" in line):
            warn(line)

    try:
        recorded = job_values_from_image(from_image, warn=noted)
    except OutputError as e:  # a missing or unreadable input is the user's to fix
        raise JobError(str(e)) from None
    if recorded.get("allow_pickle") in (False, None):
        recorded.pop("allow_pickle", None)  # hires 0.1 recorded the (harmless) default
    where = f"metadata of {from_image}"

    def newer(e: JobError) -> JobError:
        """`e`, about the record, said to be a newer hires' where it is (a key or value this
        one does not know)."""
        made_by = (recorded_record(from_image) or {}).get("hires")
        if where not in str(e):
            return e
        if note := newer_note(made_by):
            return JobError(f"{e}{note}")
        return JobError(f"{e}{replaced_by_flag(str(e), flags)}")

    try:
        Job.from_dict({k: v for k, v in recorded.items() if k in TRUSTED_ONLY}, where=where)
    except JobError as e:
        raise newer(e) from None
    result = recorded_result(from_image)
    local = result.get("local") if isinstance(result.get("local"), list) else []
    # Before the size (it reads an input); not the add-ons a flag's 'none' drops (job_from_levels).
    missing = missing_relative(without(recorded, switched_off(flags)[1]), flags, local,
                               images)
    if missing:
        # The record keeps paths as they were typed: relative to the folder hires ran in.
        what, path, key = missing
        flag = ("" if key == "image" else
                # --lora replaces the recorded list: every LoRA, each with its scale
                ", or give every LoRA from here with its scale (--lora PATH:SCALE each)"
                if key == "lora" else
                f", or give its path from here (--{key.replace('_', '-')} PATH)")
        # The record keeps no folder (it would show the maker's paths to whoever gets the
        # image), so this one may be it, the file since gone: said so, not only "go there".
        raise JobError(f"{from_image} was made {what} {path}, a path relative to the folder "
                       f"hires ran in, and there is none here; run this command in that folder "
                       f"(if this is it, the file is gone){flag}")
    if recorded.get("model") and "model" not in flags:
        model = recorded["model"]
        if recorded_record(from_image) is None and (why := unfound_checkpoint(model)):
            raise JobError(f"{from_image}: {why}")
        # The record names a model, maybe a local file: say which, never load it unseen.
        say(f"--from {from_image}: model {model} (as recorded; --model picks another)")
    if recorded.get("vae") and "vae" not in flags:
        say(f"--from {from_image}: VAE {recorded['vae']} (as recorded; --vae picks another)")
    linfusion = recorded.get("linfusion")
    if isinstance(linfusion, str) and linfusion.strip() and linfusion not in ("auto", "none") \
            and "linfusion" not in flags:  # a checkpoint (as the loader reads it: "None" too)
        say(f"--from {from_image}: LinFusion {linfusion} (as recorded; --linfusion picks "
            "another)")
    if "vae_tile" not in flags and (old := old_tile(recorded)):
        raise JobError(f"{from_image} {old}")
    levels += [(recorded, where, True), (flags, OPTIONS, False)]
    try:
        job = files_given_in(job_from_levels(levels, size_of=size_of, images=images,
                                             scale="image" in flags), levels)
    except JobError as e:  # a key or value a newer hires records: said so
        raise newer(e) from None
    if preset is not None and (hidden := hidden_by_record(chosen.values, recorded, flags)):
        warn(f"--preset {chosen.name}: its {', '.join(hidden)} give way to --from "
             f"{from_image}'s recorded ones (a recorded job comes after a preset, flags after "
             "both): give the ones to change as flags")
    from hires.record import dtype_note, vae_dtype_ran

    if (note := dtype_note(job, result, set(flags))) is not None:
        say(f"--from {from_image}: {note}")
    ran = vae_dtype_ran(job, result, set(flags))
    if ran is not None:  # auto here would pick another: the precision the image was made in
        say(f"--from {from_image}: the VAE in {ran}, as it ran (--vae-dtype auto picks "
            "this machine's)")
        job = job.merged({"vae_dtype": ran})
    from hires.addons import check_unchanged

    addons = result.get("addons")
    check_unchanged(job, addons if isinstance(addons, dict) else {}, given=set(flags))
    return check_scale_flags(job, flags, images)


def files_given_in(job, levels: list[tuple[dict[str, Any], str, bool]]):
    """`job` noting which preset or record gave each file it names and no flag did, so that
    a file's error names that key where it is (`batch.said_where_given`), not a flag never typed."""
    from dataclasses import replace

    from hires.batch import FLAG_KEYS
    from hires.sizes import OPTIONS, giver

    # and the settings the CPU's notes name (hires.cli_runs.check_steps_and_notes), and the
    # budget's (a plan's header)
    given = {key: where for key in (*FLAG_KEYS.values(), "dtype", "offload", "vram", "ram")
             if (where := giver(levels, key)) not in (None, OPTIONS)}
    return replace(job, extra={**job.extra, "given_in": given})


def check_plan_job(job: Job, flags: dict[str, Any], *, format_given: bool) -> None:
    """What `hires plan` checks of a job before planning it, as `gen --dry-run` does: its
    paths and add-ons' files (a preset's named as its key), and the format at its size."""
    from dataclasses import replace

    from hires.addons import check_inputs
    from hires.batch import said_where_given
    from hires.cli_runs import check_job_paths
    from hires.job import JobError
    from hires.model_refs import ModelError
    from hires.output import format_problem

    check_job_paths(job, loads=False)  # a checkpoint that is not there
    try:
        check_inputs(job, loads=False, images=False)  # the add-ons' files
        # and the images the flags name (a typo), not a record's or preset's that is gone:
        # an image does not change the plan (plan_hints says gen needs it)
        check_inputs(replace(job, **{key: None for key in ("control", "ip_image")
                                     if key not in flags}), loads=False)
    except (JobError, ModelError) as e:  # a preset's LoRA, say: named as its key
        raise said_where_given(e, job) from None
    # as gen refuses it before any work: a WebP plan over 16383 px books a GPU for nothing
    if job.width and job.height and \
            (problem := format_problem(job.format, job.width, job.height, job.depth)):
        named = "--format" if format_given else "the format"  # else a preset's or a record's
        raise JobError(f"{named} {job.format}: {problem}")


# A job's keys that no flag of gen or up sets (the method's own settings, the prompt's place)
_NOT_FLAGS = {"prompt", "image", "image_sha256", "extra", "cosine_scale_1", "cosine_scale_2",
              "cosine_scale_3", "sigma", "dilate_downsamplers", "global_floor"}


def replaced_by_flag(message: str, flags: dict[str, Any]) -> str:
    """'; give --steps to replace the recorded value' for an error about a recorded setting
    ("steps must be ..., got -5 (in metadata of a.png)") that a flag replaces; else ''."""
    from dataclasses import fields

    from hires.job import Job

    found = re.match(r"'?([a-z][a-z0-9_]*)'? ", message)
    key = found[1] if found else None
    if key not in {f.name for f in fields(Job)} - _NOT_FLAGS or key in flags:
        return ""
    return f"; give --{key.replace('_', '-')} to replace the recorded value"


def hidden_by_record(preset: dict[str, Any], recorded: dict[str, Any],
                     flags: dict[str, Any]) -> list[str]:
    """The preset's keys that a recorded job (--from) replaces and no flag does: with a
    record of every key, the whole preset changed nothing, without a word."""
    from hires.sizes import SIZE_KEYS

    # The size is the most specific level's; one that gives only `size` takes the shape from
    # below, one that gives only `aspect` the long side: there, from the record.
    sized = {k for k in SIZE_KEYS if k in flags}
    if sized in ({"size"}, {"aspect"}):
        size_hidden = set(SIZE_KEYS) - sized
    else:  # no size flag: the record's size; a whole size from flags: none of it
        size_hidden = set() if sized else set(SIZE_KEYS)
    if not any(k in recorded for k in SIZE_KEYS):
        size_hidden = set()
    return [k for k in preset if (k in size_hidden if k in SIZE_KEYS
                                  else k not in flags and k in recorded)]


def check_scale_flags(job, flags: dict[str, Any], images: bool = True):
    """A strength flag for an add-on the job does not run, or --ip-adapter without
    --ip-image, is a usage error: it would be ignored without a word. A preset's or record's
    value alone is a default, and passes (`hires.job.idle_setting`). Without `images` (a
    plan), an add-on's model stands for its image."""
    from dataclasses import replace

    from hires.addons import named_ip_adapter
    from hires.job import NAMED_IP_ADAPTER, idle_setting

    if not images and flags.get("ip_adapter") not in (None, "none"):
        # `plan --ip-adapter h94/IP-Adapter`: the default adapter, named, is planned too
        job = replace(job, extra={**job.extra, NAMED_IP_ADAPTER: True})
    seen = job if images else replace(
        job, control=job.control or (job.control_model and "IMAGE") or None,
        ip_image=job.ip_image or (named_ip_adapter(job) and "IMAGE") or None)
    # '--ip-adapter none' drops a preset's or record's IP-Adapter: it asks for none
    idle = idle_setting(seen, {k for k, v in flags.items() if v != "none"})
    if idle:
        flag, lacks, needs = idle
        add = " ".join(f"--{key.replace('_', '-')} {'MODEL' if key.endswith('model') else 'IMAGE'}"
                       for key in needs)
        raise typer.BadParameter(f"--{flag.replace('_', '-')} {lacks}: add {add}, or leave it "
                                 "out")
    return job


def missing_relative(recorded: dict[str, Any], flags: dict[str, Any], local: list[str],
                     images: bool = True) -> tuple[str, str, str] | None:
    """(how it was used, path, its key) of the first local file or folder a record names by a
    relative path that is not here, among those no flag replaces; Hub ids are not paths.
    `local`: the keys the record says were local (`hires.record.local_refs`); without
    `images`, the add-ons' images are not asked for (a plan does not read them)."""
    from hires.lora import LoraError, hub_parts, parse_lora
    from hires.model_refs import PICKLE_SUFFIXES

    def missing(path: object) -> bool:
        if not isinstance(path, str) or path in ("", "-", "tiny"):
            return False
        local = Path(path).expanduser()
        return not local.is_absolute() and not local.exists()

    for key, what in (("image", "from"), ("control", "with the control image"),
                      ("ip_image", "with the image prompt")):
        if key not in flags and missing(recorded.get(key)) and (images or key == "image"):
            return what, recorded[key], key
    loras = recorded.get("lora")
    if "lora" not in flags and isinstance(loras, list):
        for spec in loras:
            try:
                ref = parse_lora(spec)[0] if isinstance(spec, str) else None
            except LoraError:
                continue  # the job's own check says what is wrong with it
            if missing(ref) and (hub_parts(ref) is None or "lora" in local):
                return "with the LoRA", ref, "lora"
    # A model's Hub id reads like a relative path (owner/name): only a weights file, or a
    # path that starts with '.', is surely local.
    # An add-on the record ran at scale 0 was neither loaded nor run: not needed here either
    unused = {key for key, scale in (("control_model", "control_scale"),
                                     ("ip_adapter", "ip_scale"))
              if flags.get(scale, recorded.get(scale)) == 0}
    for key, what in (("model", "with the model"), ("vae", "with the VAE"),
                      ("linfusion", "with the LinFusion weights"),
                      ("control_model", "with the ControlNet"),
                      ("ip_adapter", "with the IP-Adapter")):
        value = recorded.get(key)
        if key not in flags and key not in unused and missing(value) and (
                key in local or value.startswith(".")
                or value.lower().endswith((".safetensors", *PICKLE_SUFFIXES))):
            return what, value, key
    return None


def recorded_result(path: Path) -> dict[str, Any]:
    """The result part of an image's hires record (add-ons and their sha256, which references
    were local), if any."""
    from hires.output import read_metadata

    record = read_metadata(path)["hires"]
    result = record.get("result") if isinstance(record, dict) else None
    return result if isinstance(result, dict) else {}


def open_stdin(instead: str):
    """sys.stdin, or a usage error if the shell closed it (`<&-`: Python's sys.stdin is None);
    `instead`: what to give instead, said in the error."""
    if sys.stdin is None:
        raise typer.BadParameter(f"stdin is closed: {instead}")
    return sys.stdin


def stdin_lines(what: str, head: bytes = b"", text: bool = False) -> list[str]:
    """The lines on stdin, stripped, without blank and `#` comment lines (or its entries each
    ended by a NUL: a path as it is, a prompt stripped; blank ones left out); on a terminal,
    first a word on how to end them (nothing else would say why hires waits). `head`: its
    first bytes, read already from `sys.stdin.buffer`; `text`: prompts, not file names."""
    if sys.stdin.isatty():
        say(f"reading {what} from stdin, one a line; end with Ctrl-D")
    from hires.text_bytes import binary_kind, marked, problem, unmarked, unmarked_problem

    raw = getattr(sys.stdin, "buffer", None)
    try:
        if raw is None:  # a text stream only (a caller's StringIO): decoded already
            lines = (head.decode("utf-8") + sys.stdin.read()).splitlines()
        else:
            data = head + raw.read()
            # an image piped as prompts was told to convert it from Latin-1 (NULs: find
            # -print0), a BMP's NULs read as UTF-32
            if text and (kind := binary_kind(data, nuls=False)):
                raise typer.BadParameter(f"the {what} on stdin: {kind}, not text; give them "
                                         "as text, one a line")
            if name := unmarked(data):  # else a NUL every other character
                raise typer.BadParameter(unmarked_problem(name, f"the {what} on stdin"))
            # each ended by a NUL (find -print0, xargs -0's input): taken whole, newlines too
            if b"\0" in data and not marked(data):
                if not data.endswith(b"\0"):  # a last entry ended by echo's newline instead
                    data = data.removesuffix(b"\n").removesuffix(b"\r")
                entries = [_stdin_text(e) if text else _stdin_paths(e)
                           for e in data.split(b"\0")]
                return [e.strip() if text else e for e in entries if e.strip()]
            lines = (_stdin_text(data) if text else _stdin_paths(data)).splitlines()
    except UnicodeDecodeError as e:
        raise typer.BadParameter(problem(e, f"the {what} on stdin", "give them as UTF-8")
                                 ) from None
    # A byte-order mark (Windows editors write one) is no part of a line: of the first, or of
    # any where files were joined (`cat a.txt b.txt`); str.strip() keeps it
    lines = [line.strip().lstrip("\ufeff").strip() for line in lines]
    return [line for line in lines if line and not line.startswith("#")]


def _stdin_text(data: bytes) -> str:
    """Text on stdin: UTF-8 (whatever the locale says: a C locale's is ASCII, and prompt files
    are UTF-8), else the locale's own encoding (a Latin-1 terminal's); UTF-16 or UTF-32 where
    a byte-order mark says so (Windows' "Unicode" text files, PowerShell's pipes)."""
    from hires.text_bytes import marked

    if encoding := marked(data):  # UTF-16 or UTF-32, as its byte-order mark says
        return data.decode(encoding)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode(sys.stdin.encoding or "utf-8")  # if neither, the caller says so


def _stdin_paths(data: bytes) -> str:
    """File names on stdin, decoded as sys.stdin would have (its errors: surrogateescape in a
    C locale), so that they name the files the shell's bytes name."""
    return data.decode(sys.stdin.encoding or "utf-8", sys.stdin.errors or "strict")


def read_prompts(prompt: str) -> list[str]:
    """'-' reads one prompt per line from stdin; blank lines and `#` comment lines are skipped."""
    if prompt != "-":
        return [prompt]
    open_stdin("give the prompt as an argument, or the prompts on stdin")
    prompts = stdin_lines("prompts", text=True)
    if not prompts:
        raise typer.BadParameter("prompt '-' read no prompts from stdin (one per line)")
    return prompts


@contextmanager
def up_inputs(images: list[str]) -> Iterator[list[str]]:
    """`up`'s inputs as its jobs name them. '-' alone reads stdin: an image's bytes (named
    "-", kept in a temporary file until the block ends: `hires.piped`), else one path a line
    (blank and `#` lines skipped); './-' is a file of that name. A file given twice is
    upscaled once (warned)."""
    from hires import piped

    if "" in images:  # `hires up "$IMG"` with the variable unset: not the folder '.'
        raise typer.BadParameter("an empty path was given; name an image file")
    given = dash_head(images, "hires up - < photo.png")
    if given is None:
        yield distinct(images)
        return
    stream, head = given
    if piped.looks_binary(head):
        with piped.held(stream, head):
            yield [piped.STDIN]
        return
    yield distinct(stdin_paths(head))


def stdin_paths(head: bytes, what: str = "paths") -> list[str]:
    """Image paths read from stdin, one a line (after `head`, read already); none, or '-'
    among them, is a usage error."""
    paths = stdin_lines(what, head)
    if not paths:
        raise typer.BadParameter("'-' read no image paths from stdin (one per line)")
    if "-" in paths:  # not "pipe the same image in again" (up) or "no such image" (info)
        raise typer.BadParameter("a path read from stdin is '-', but stdin holds the paths; "
                                 "list image files, one a line (./- for a file named '-')")
    return paths


def dash_head(names: list[str], example: str) -> tuple[Any, bytes] | None:
    """For a command's inputs that are '-' alone (`up -`, `info -`): stdin's byte stream (None
    on a terminal) and its first bytes, an image's or the first lines of paths; None when no
    '-' is given. '-' twice, beside paths, or on an empty stdin is a usage error (`example`
    shows the pipe)."""
    from hires import piped

    if "-" not in names:
        return None
    if names.count("-") > 1:
        raise typer.BadParameter("'-' is given more than once; stdin is read once: give it once")
    if names != ["-"]:
        raise typer.BadParameter("give image paths or '-' (an image, or paths, on stdin), not "
                                 "both")
    stdin = open_stdin("give the image paths as arguments, or an image (or paths) on stdin")
    stream = None if stdin.isatty() else getattr(stdin, "buffer", None)
    head = piped.read_head(stream) if stream is not None else b""
    if stream is not None and not head:
        raise typer.BadParameter(f"'-' read nothing from stdin: pipe an image in ({example}), "
                                 "or image paths, one a line")
    return stream, head


def distinct(paths: list[str]) -> list[str]:
    """`paths` without the repeats of a file (`in.png ./in.png`, a link to it), each warned:
    the same seed would make the same image again, under a name that lost the input's."""

    seen: dict[object, str] = {}
    kept = []
    for path in paths:
        try:
            info = os.stat(path)
            key: object = (info.st_dev, info.st_ino)
        except OSError:  # not there: loading it says so
            key = path
        if key in seen:
            same = "" if seen[key] == path else f" (as {seen[key]})"
            warn(f"{path} is given again{same}; it is upscaled once")
            continue
        seen[key] = path
        kept.append(path)
    return kept


def plan_key(job: Any, source: tuple[int, int] | None = None) -> str:
    """What a job's plan depends on, as text: jobs that differ only in prompt and seed (--n's
    images, a batch's prompts) share one plan."""
    import json

    return json.dumps([{k: v for k, v in job.to_dict().items()
                        if k not in ("prompt", "negative", "seed")}, source],
                      sort_keys=True, default=str)


@contextmanager
def about_input(image: str | Path, several: bool) -> Iterator[None]:
    """A usage error in the block about one of `several` inputs names it: "--scale 2 makes
    16x16 px" or "696x696 fits" hold for that input, not the others."""
    from hires.job import JobError

    try:
        yield
    except JobError as e:
        if not several:
            raise
        raise JobError(f"{image}: {e}") from None


@contextmanager
def recorded_stdin(from_image: Path | None, command: str,
                   busy: str = "") -> Iterator[InputImage | None]:
    """For `--from` an image upscaled from stdin (its record's image is "-"): that image,
    piped again and checked against the recorded sha256, kept for the block (as
    `piped.held`); None for any other `from_image`, or none. `busy`: what else of the
    command reads stdin, if anything (then such a record is refused)."""
    from hires import piped
    from hires.job import JobError
    from hires.output import OutputError, job_values_from_image

    try:
        recorded = job_values_from_image(from_image) if from_image is not None else {}
    except OutputError:  # build_job says what is wrong with it
        recorded = {}
    if recorded.get("image") != piped.STDIN:
        yield None
        return
    again = (f"{from_image} was upscaled from an image on stdin; give the same image again: "
             f"hires {command} --from {from_image} < IMAGE")
    if busy:
        raise JobError(f"{from_image} was upscaled from an image on stdin, which {busy} reads "
                       "too; give the prompt as an argument")
    closed = sys.stdin is None  # `<&-`
    stream = None if closed or sys.stdin.isatty() else getattr(sys.stdin, "buffer", None)
    if stream is None:
        raise JobError(again)
    sha = recorded.get("image_sha256")
    with piped.held(stream, expect_sha256=sha if isinstance(sha, str) else None,
                    again=f"; {again}") as image:
        yield image


def upscale_source(job, piped: InputImage | None = None) -> tuple[int, int] | None:
    """The input size an upscale job's plan starts from (None: not an upscale): `piped`'s, the
    image on stdin, or its file's (read from its header). A file changed since the job
    recorded it is refused, as the run refuses it."""
    from hires.piped import STDIN, image_size

    if not job.image:
        return None
    if piped is not None:
        return piped.size
    size = image_size(job.image)
    if job.image_sha256 and job.image != STDIN:
        from hires.images import sha256_once
        from hires.upscale import check_unchanged

        check_unchanged(job, sha256_once(job.image))
    return size


def check_preview(preview: bool, save_stages: bool) -> None:
    """--preview makes the first stage only: no other stage has an image to save."""
    if preview and save_stages:
        raise typer.BadParameter("--preview makes only the first stage; drop --save-stages")


def check_gpu(gpu: str | None) -> None:
    """A --gpu that names no card and no rate is a usage error, found before any planning."""
    from hires.gpus import rate_for

    if gpu is not None:
        try:
            rate_for(gpu)
        except ValueError as e:
            raise typer.BadParameter(str(e)) from None


def check_device(device: str, dry_run: bool = False, given: bool = True) -> None:
    """A device this machine's torch cannot use is a usage error, found before any loading
    (in a `dry_run` too, which says how to plan for a card instead). `given`: by --device,
    not a preset or a record, whose device the error names as theirs."""
    from hires.job import JobError

    try:
        _check_device(device)
    except JobError as e:
        said = str(e) if given else str(e).replace(
            f"--device {device}:", f"the device {device} (a preset's or a record's):", 1)
        if dry_run:
            said += "; or plan the run for a card with --gpu NAME"
        raise JobError(said) from None


def _check_device(device: str) -> None:
    import torch

    from hires.job import JobError

    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise JobError(f"--device {device}: torch sees no CUDA GPU here; use --device cpu "
                           "(slow) or install a CUDA build of torch")
        index, count = int(device.partition(":")[2] or 0), torch.cuda.device_count()
        if index >= count:
            raise JobError(f"--device {device}: torch sees {count} CUDA GPU(s), cuda:0 to "
                           f"cuda:{count - 1}; pick one of those (`hires info` lists them)")
    elif device == "mps" and not torch.backends.mps.is_available():
        raise JobError("--device mps: this machine's torch has no Apple GPU (MPS) support; use "
                       "--device auto or cpu")


def old_tile(recorded: dict[str, Any]) -> str | None:
    """What to say of a record of an older hires whose VAE tile is refused now ("was made
    with VAE tiles of 64 px, ..."), and of the flag that helps; None for any other."""
    from hires.job import MIN_VAE_TILE

    tile = recorded.get("vae_tile")
    if not (isinstance(tile, int) and 0 < tile < MIN_VAE_TILE):
        return None
    return (f"was made with VAE tiles of {tile} px, which hires no longer takes (seams show "
            f"under {MIN_VAE_TILE}); pass --vae-tile auto to make it again with the planner's "
            "tiles (not quite the same pixels)")


def fitted_plan(make, job):
    """`make()`'s plan; a plan that cannot fit becomes a usage error that says what would."""
    from hires.job import JobError
    from hires.plan import PlanError, cpu_budget_flag, fitting_print, fitting_size, whole_job_need

    try:
        return make()
    except PlanError as e:
        hint, need = "", whole_job_need(e)
        model = (e.plan_kwargs or {}).get("model")
        if e.host:
            hint = "; try --ram with what is free" if job.ram is None else "; try a larger --ram"
        elif model is not None and not model.on_gpu:  # a CPU run's memory: the flag setting it
            flag = cpu_budget_flag(job.vram, job.ram)
            hint = f"; try a larger --{flag}" if flag else ""
        elif job.vram is not None or job.offload != "auto":
            # --offload auto only where it was not: the plan already had every offload to try
            hint = "; try a larger --vram" + (" or --offload auto" if job.offload != "auto"
                                               else "")
        fits = fitting_size(e)
        # A print's maker lowers the dpi, not the pixels: a job sized by a print size is
        # told the dpi at which that print fits.
        printed = job.extra.get("print_size")
        found = fitting_print(job, e) if fits and printed else None
        if found:
            dpi, (w, h) = found
            hint = f"; {printed} fits at --dpi {dpi} ({w}x{h})" + hint
        elif fits and printed:
            hint = (f"; {printed} fits at no whole dpi: a smaller print ({fits[0]}x{fits[1]} px "
                    "fits)") + hint
        elif fits:
            source = (e.plan_kwargs or {}).get("source")
            hint = f"; {fits[0]}x{fits[1]} fits ({size_flags(*fits, source, e.size)})" + hint
        raise JobError(f"{e}{need}{hint}") from None


def size_flags(width: int, height: int, source: Any = None, asked: Any = None) -> str:
    """The flags that ask for a size: --size for a square, or an upscale that keeps its
    input's shape as the size `asked` did; else both sides (an --aspect's rounding, a print's
    shape or an upscale's other shape would make other sides of --size)."""
    from hires.plan import on_input_shape

    keeps = source is not None and asked is not None and on_input_shape(source, *asked)
    if (width == height and source is None) or keeps:
        return f"--size {max(width, height)}"
    return f"--width {width} --height {height}"
