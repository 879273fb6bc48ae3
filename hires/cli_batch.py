"""Running a batch file from the command line: every job's paths and outputs checked before
any work, one model in memory at a time, each job's outcome said, and the count at the end."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from hires.cli_jobs import check_device, check_gpu, open_stdin
from hires.cli_output import EXIT_RUNTIME, debug_on, debug_traceback, emit, fail, say, tell
from hires.cli_runs import (
    check_job_paths,
    check_steps_and_notes,
    load_model,
    make_image,
    remove_leftovers,
    say_left,
    warn_ram,
    warn_space,
    warn_tmpdir,
)

if TYPE_CHECKING:
    from hires.batch import BatchItem, Outcome


def run_batch_jobs(items: list, paths: dict[int, Path], name: str, output: Path,
                   manifest: Path | None, as_json: bool, quiet: bool, overwrite: bool,
                   resume_runs: bool, gpu: str | None = None, preview: bool = False,
                   every: list | None = None) -> None:
    """`batch`: each job's image unless it is made already; one model in memory at a time; a
    failed job is said and recorded in the manifest, and the others go on (exit 1 at the
    end). `name`: the job file's, for messages; `every`: the file's jobs, where `items` are
    a shard's."""
    from hires import batch as b

    check_gpu(gpu)
    stage = 0 if preview else None  # the image each job's file holds: its first stage's alone
    manifest = check_batch_outputs(items, paths, name, output, manifest, overwrite, every,
                                   stage)
    todo = jobs_to_make(items, paths, overwrite, stage)
    from hires.eta import RunPace

    pace = RunPace(len(todo))  # the jobs to make: their number, and the pace of those made
    make_one = image_maker(todo, pace, gpu=gpu, quiet=quiet, overwrite=overwrite,
                           resume_runs=resume_runs, preview=preview, name=name)
    seen: list[b.Outcome] = []  # for the count when the batch is stopped
    report = outcome_reporter(todo, pace, seen, as_json, stage)
    prepare_folders(output, manifest, paths)
    try:
        outcomes = b.run_batch(items, lambda item: paths[item.index], make_one, manifest,
                               overwrite, report, stage=stage)
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: what is made is kept; say how far it got
        say_stopped(seen, len(items))
        raise
    say_batch_count(outcomes, manifest)


def refuse_image_output(output: str) -> None:
    """JobError for a batch -o that reads as an image's name, not a folder's: a template
    ('{prompt}_{seed}.png') or a name ending in an image suffix made a folder of that name
    for every job, each image inside it."""
    import string

    from hires.job import JobError
    from hires.output import OTHER_IMAGE_SUFFIXES, SUFFIX_FORMATS, names_folder

    there = Path(output)
    if there.exists():  # a folder is taken as it is named (a file is refused as one)
        return
    new = []  # the folders to make: only they can be a template misread
    while not there.exists() and there != there.parent:
        new.insert(0, there.name)
        there = there.parent
    try:
        fields = any(name is not None
                     for _, name, _, _ in string.Formatter().parse("/".join(new)))
    except ValueError:  # a lone brace: a name, not a template
        fields = False
    # A trailing '/' says a folder, whatever its name (the Path the run takes drops it).
    suffix = "" if names_folder(output) else Path(output).suffix.lower()
    if fields or suffix in SUFFIX_FORMATS or suffix in OTHER_IMAGE_SUFFIXES:
        what = "a template" if fields else f"a {suffix} file's name"
        raise JobError(f"batch -o {output} reads as {what}, but it names the folder for the "
                       "images; give a folder, and name each image with `output` in the job "
                       "file (a template such as \"{prompt}_{seed}.png\", in [defaults] for "
                       "all)")


def batch_jobs(file: Path, output: Path, manifest: Path | None, shard: str | None,
               preset: str | None, flags: dict[str, str], overrides: dict[str, Any],
               preview: bool) -> tuple[list, dict[int, Path], str, tuple[int, int]]:
    """A batch's jobs (the file's over --preset's and `flags`, `overrides` over all), the
    image each writes (its first stage's with `preview`), the job file's name for messages,
    and the shard: (rank, world)."""
    from hires import batch as b
    from hires.job import LOSSY_FORMATS, JobError, all_of
    from hires.model_refs import ModelError
    from hires.output import QUALITY_LOSSLESS, breaks_lines
    from hires.presets import load_preset
    from hires.record import stage_path
    from hires.sizes import OPTIONS

    levels = [(load_preset(preset).values, f"preset '{preset}'", True)] \
        if preset is not None else []
    if str(file) == "-" and open_stdin("give the job file's path, or its jobs on stdin"
                                       ).isatty():  # else nothing says why hires waits
        say("reading the jobs from stdin (JSONL, or TOML); end with Ctrl-D")
    try:
        read, bad = b.read_batch(file, levels=[*levels, (flags, OPTIONS, False)]), None
    except JobError as e:
        if not hasattr(e, "items"):  # not the jobs' own: the file's
            raise
        read, bad = e.items, e  # said with the others' output errors, below
    items = [dataclasses.replace(i, job=i.job.merged(overrides, where="options").validate())
             for i in read]
    shard_of = b.parse_shard(shard)
    if output.exists() and not output.is_dir():
        raise JobError(f"batch -o {output} is a file; -o names the folder for the images")
    if str(output) == "-":
        raise JobError("batch -o names the folder for the images; '-' (stdout) takes one "
                       "image, from gen or up")
    if breaks_lines(str(output)):  # else each job's output is blamed
        raise JobError(f"batch -o {str(output)!r} holds a line break, and hires lists each "
                       "image it writes as one line: choose another -o")
    name = "stdin" if str(file) == "-" else file.name
    check_manifest_apart(file, manifest, output)
    try:
        items, paths = b.name_outputs(items, output, name)
    except (JobError, ModelError) as e:
        if bad is None:
            raise
        # every bad job at once; a Hub add-on not cached comes after the settings to fix
        raise (all_of([bad, e]) if isinstance(e, JobError) else bad) from None
    if bad is not None:
        raise bad
    lossless = next((i for i in items if i.job.format not in LOSSY_FORMATS), None)
    if "quality" in overrides and lossless is not None:
        raise JobError(f"{lossless.where(name)} writes {paths[lossless.index]}: "
                       f"{QUALITY_LOSSLESS}; set `quality` in the jpg and webp jobs")
    if preview:
        paths = {index: stage_path(path, 0) for index, path in paths.items()}
    return items, paths, name, shard_of


def check_batch_devices(items: list, name: str, flags: dict[str, str],
                        torchrun: str | None = None, dry_run: bool = False) -> None:
    """Each device the jobs name can be used, in the order the jobs first name it (exit 2,
    naming that job, the flag when the command's `flags` gave it, or LOCAL_RANK when it is
    `torchrun`'s pick)."""
    from hires.job import JobError

    first_on = {item.job.device: item for item in reversed(items)}
    for device, item in sorted(first_on.items(), key=lambda kv: kv[1].index):
        try:  # before any work, as for gen: not a failure per job
            check_device(device, dry_run)
        except JobError as e:
            if "device" in item.file_keys or device not in (flags.get("device"), torchrun):
                said = str(e).replace(f"--device {device}: ", f"{device}: ", 1)
                raise JobError(f"'device' in {item.where(name)}: "
                               f"{said.replace('--device ', 'device = ')}") from None
            if device == torchrun:  # LOCAL_RANK gave it
                raise JobError(str(e).replace(f"--device {device}:", f"{device} (picked by "
                                              "torchrun's LOCAL_RANK):", 1)) from None
            raise  # --device's


def jobs_to_make(items: list, paths: dict[int, Path], overwrite: bool,
                 stage: int | None = None) -> list:
    """The jobs whose images (`stage`'s alone for a preview) are not made yet (all with
    `overwrite`), after warning of too little disk, temp space or memory for them."""
    from hires import batch as b

    # For the time left: the jobs whose images are not there yet, and those made so far.
    todo = [item for item in items if overwrite or
            not b.made_already(paths[item.index], item.job, stage)]
    warn_space([(paths[item.index], item.job) for item in todo])
    warn_tmpdir()
    warn_ram([item.job for item in todo], batch=[item.index for item in todo])
    return todo


def image_maker(todo: list, pace: Any, *, gpu: str | None, quiet: bool, overwrite: bool,
                resume_runs: bool, preview: bool, name: str = ""
                ) -> Callable[[BatchItem, Path], dict]:
    """What makes one job's image at its path and returns its record, keeping one model in
    memory at a time and timing each image with `pace`; its warnings name the key of the job
    file `name` that gave what they are about, not the flag."""
    from hires import batch as b
    from hires.full_disk import FullDisks
    from hires.output import DiskRefused, disk_need

    loaded: dict[tuple, Any] = {}
    disks = FullDisks()  # a disk that refused a job's image is given no more work while so

    def worded(said: str, item: BatchItem) -> str:
        """A job's warning on the terminal: by the key that gave it, else naming the job (as
        its dry run says them: 'job 2: WebP files record no resolution ...')."""
        return b.warning_by_giver(said, item, name) if b.flag_key(said) else \
            f"job {item.index}: {said}"

    def make_one(item: BatchItem, path: Path) -> dict:
        from hires.pipeline import load_args

        job = item.job
        disks.check(path, disk_need(job.width, job.height, job.format, depth=job.depth))
        key = load_args(item.job)
        fresh = key not in loaded
        if fresh:
            loaded.clear()  # one model in memory at a time
            loaded[key] = load_model(item.job, quiet)
        check_steps_and_notes(item.job, loaded[key], notes=fresh,
                              place=lambda setting: b.key_place(item, setting, name))
        number = todo.index(item) if item in todo else len(todo) - 1
        pace.start(number, item.job.width * item.job.height,
                   [i.job.width * i.job.height for i in todo[number + 1:]])
        started = time.monotonic()  # a model's load is not an image's pace
        # run_batch holds the image's lock (hires.busy) while this makes it
        try:
            record = make_image(item.job, path, loaded[key], heading=f"job {item.index} -> {path}",
                                gpu=gpu, quiet=quiet, overwrite=overwrite,
                                resume_runs=resume_runs, settings=b.settings_hash(item.job),
                                preview=preview, run=pace, worded=lambda said: worded(said, item))
        except DiskRefused as e:
            disks.saw(e, f"job {item.index}'s image")
            raise
        # its line and the manifest's say them as the terminal did (the file's record, saved
        # already, keeps the flags' words)
        record = {**record, "warnings": [b.warning_by_giver(said, item, name)
                                         for said in record.get("warnings", [])]}
        pace.end(time.monotonic() - started)
        return record

    return make_one


def job_line(o: Outcome, record: dict, as_json: bool) -> None:
    """A job's line on stdout; with --json it says which job and how it went, as the
    manifest's lines do, so a script needs no manifest to tell the failed ones (they have a
    line only with --json)."""
    from hires import batch as b

    # the manifest's keys on every line (a done job's error null, a failed one's settings, an
    # interrupted one's checkpoint)
    head = b.manifest_line(o, b.settings_hash(o.item.job))
    emit({**head, **record} if as_json else record, as_json)


def outcome_reporter(todo: list, pace: Any, seen: list, as_json: bool,
                     stage: int | None = None) -> Callable[[Outcome], None]:
    """What says each job's outcome as it comes (and adds it to `seen`): a failure, a job left
    to another run or skipped, an old image moved aside, its line, and the time left."""
    from hires.runs import made_by

    def report(o: Outcome) -> None:
        if o.status == "interrupted":  # its line for a script; the stop is said as it ends
            if as_json:
                job_line(o, {"path": str(o.path), "error": o.error}, as_json)
            return
        seen.append(o)
        if o.status == "failed":
            if o.raised is not None and debug_on():
                debug_traceback(o.raised)
            fail(f"job {o.item.index} failed: {o.error}", EXIT_RUNTIME)  # the batch goes on
            if as_json:
                job_line(o, {"path": str(o.path), "error": str(o.error)}, as_json)
        elif o.status == "busy":  # another run is making it
            say(f"job {o.item.index}: {o.error} ({o.path}), skipped")
            if as_json:  # not a made image: stdout lists only those, as for a failed job
                job_line(o, {"path": str(o.path), "error": o.error}, as_json)
        elif o.status == "skipped":
            say(f"job {o.item.index}: {o.path} exists with the same settings, skipped")
            # stdout lists every image of the batch, as gen's does those it keeps
            job_line(o, o.record or made_by(o.path, o.item.job, stage) or {"path": str(o.path)},
                     as_json)
        if o.moved_to:
            say(f"job {o.item.index}: {o.path.name} was {o.why}; it is kept as "
                f"{o.moved_to.name}" if o.cut else
                f"job {o.item.index}: {o.why} since {o.path.name} was made; the old image "
                f"is kept as {o.moved_to.name}")
        if o.record and o.status == "done":
            job_line(o, o.record, as_json)
        if o.status not in ("skipped", "busy") and o.item in todo:
            later = todo[todo.index(o.item) + 1:]
            say_left(pace.made, [i.job.width * i.job.height for i in later])

    return report


def prepare_folders(output: Path, manifest: Path, paths: dict[int, Path]) -> None:
    """Create the images' and the manifest's folders (exit 2 if one cannot be), and clear
    the leftovers of stopped runs from the images' folders."""
    from hires.job import JobError

    for folder in (output, manifest.parent):
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise JobError(f"cannot create folder {folder}: {e.strerror}") from None
    for folder in {output, *(p.parent for p in paths.values() if p.parent.is_dir())}:
        remove_leftovers(folder)


def say_stopped(seen: list, jobs: int) -> None:
    """How far a stopped batch got: the outcomes `seen` of its `jobs`."""
    counts = tally(seen)
    tell(f"batch stopped after {len(seen)} of {jobs} jobs: {counts['done']} done, "
         f"{counts['skipped']} skipped,{busy_count(counts)} {counts['failed']} failed; the "
         "same command goes on from there")


def say_batch_count(outcomes: list, manifest: Path) -> None:
    """The batch's closing count, naming the failed jobs; exit 1 if any failed."""
    counts = tally(outcomes)
    failed = [o.item.index for o in outcomes if o.status == "failed"]
    tell(f"batch: {counts['done']} done, {counts['skipped']} skipped,{busy_count(counts)} "
         f"{counts['failed']} failed{failed_hint(failed, manifest)}")
    if counts["failed"]:
        raise typer.Exit(EXIT_RUNTIME)


def failed_hint(failed: list[int], manifest: Path) -> str:
    """' (jobs 2, 5; errors in MANIFEST; ...)' for the closing count; '' when none failed."""
    if not failed:
        return ""
    # their errors scrolled by long ago in a big batch
    listed = ", ".join(map(str, failed[:10])) + (", ..." if len(failed) > 10 else "")
    return (f" (job{'s' if len(failed) > 1 else ''} {listed}; errors in {manifest}; "
            "the same command runs them again)")


def check_manifest_apart(jobs: Path | str, manifest: Path | None, output: Path) -> None:
    """The manifest is not the job file: a line appended per image, the next run read those
    lines as jobs and refused the file."""
    import os

    from hires.job import JobError

    chosen = manifest or output / "manifest.jsonl"
    try:
        same = str(jobs) != "-" and chosen.exists() and os.path.samefile(chosen, jobs)
    except OSError:  # not there, or not to be read: the checks after say so
        return
    if same and manifest is not None:
        raise JobError(f"--manifest {manifest} is the job file: each image appends a line to "
                       "it; name another .jsonl file")
    if same:
        raise JobError(f"the job file {jobs} is also the manifest (by default -o's "
                       "manifest.jsonl), which each image appends a line to; give --manifest "
                       "another .jsonl file, or another -o")


def check_batch_outputs(items: list, paths: dict[int, Path], name: str, output: Path,
                        manifest: Path | None, overwrite: bool = False,
                        every: list | None = None, stage: int | None = None) -> Path:
    """Before any work (and in --dry-run): the manifest and every job's folder can be written,
    no file that is not hires' is in a job's way (unless `overwrite`), and none is an input
    of any of `every` job of the file (a shard's `items` write over another shard's inputs
    too), else exit 2 (not a failed job once the model is loaded). Creates nothing; returns
    the manifest."""
    import os

    from hires import output as out
    from hires.job import JobError, all_of
    from hires.runs import check_not_input, read_files

    given, manifest = manifest is not None, manifest or output / "manifest.jsonl"

    def same(path: Path) -> bool:
        return os.path.normcase(os.path.abspath(path)) == os.path.normcase(
            os.path.abspath(manifest))

    # A folder the run makes (-o, a job's own) is not one yet: the append would fail after
    # the first job was made.
    if manifest.is_dir() or same(output) or any(same(p.parent) for p in paths.values()):
        raise JobError(f"--manifest {manifest} is a folder; name a .jsonl file (the default "
                       f"is {output / 'manifest.jsonl'})")
    taken = next((i for i in items if same(paths[i.index])), None)
    if taken is not None:
        raise JobError(f"--manifest {manifest} is where {taken.where(name)} writes its "
                       "image; name another .jsonl file")
    inputs = read_files([item.job for item in every or items])
    for ref, what in inputs.items():  # each image appends a line to it
        try:
            check_not_input(manifest, ref, "--manifest (a .jsonl file)", what)
        except JobError as e:
            raise JobError(f"--manifest: {e}") from None
    if manifest.is_file() and _not_jsonl(manifest):
        raise JobError(f"--manifest {manifest} is not a JSON lines file (its first line is no "
                       "JSON object), and each image appends a line to it; name a .jsonl file")
    if manifest.exists() and not os.access(manifest, os.W_OK):
        raise JobError(f"cannot append to the manifest {manifest}; make it writable or choose "
                       "another --manifest")
    try:
        out.check_writable(manifest, overwrite=True)  # appended to: a file there is fine
    except out.OutputError as e:  # its hint names -o: right only where -o placed it
        raise JobError(str(e) if not given else f"--manifest {manifest}: "
                       + str(e).replace("choose another -o", "choose another --manifest")
                       ) from None
    seen: set[Path] = set()
    errors: list[JobError] = []  # every job's said at once, as the file's are
    for item in items:
        try:
            _check_output(item, paths[item.index], inputs, overwrite, seen, stage)
        except (JobError, out.OutputError) as e:
            errors.append(JobError(f"{item.where(name)}: {e}"))
    if errors:
        raise all_of(errors)
    return manifest


def _check_output(item: Any, path: Path, inputs: dict, overwrite: bool, seen: set[Path],
                  stage: int | None = None) -> None:
    """`check_batch_outputs` for one job's image at `path` (`stage`'s alone for a preview);
    `seen`: the folders checked."""
    from hires import batch as b
    from hires import output as out
    from hires.job import JobError
    from hires.runs import check_not_input

    # --overwrite or not, and in a dry run: the real run would replace the input
    check_not_input(path, item.job.image, "'output'")
    # or another job's, before that job reads it (one made already is skipped: a re-run of
    # a batch whose later job upscales an earlier one's image)
    kept = not overwrite and b.made_already(path, item.job, stage)
    for ref, what in {} if kept else inputs.items():
        check_not_input(path, ref, "'output'", what)
    why = b.in_the_way(path, overwrite)  # as the run would fail the job
    if why:
        raise JobError(why)
    if path.parent not in seen:  # an image there is the batch's to skip, move aside or replace
        seen.add(path.parent)
        out.check_writable(path, overwrite=True)


def _not_jsonl(path) -> bool:
    """Whether a file there is not empty and its first line is no JSON object (an image, a
    job file, notes): each image would append a line to it."""
    import json

    with open(path, "rb") as f:
        first = b""
        for _ in range(100):  # the first line with text (a blank one before a TOML's is none)
            line = f.readline(1 << 20)
            if not line or (first := line.strip()):
                break
    if not first:
        return False
    try:
        return not isinstance(json.loads(first), dict)
    except ValueError:  # UnicodeDecodeError too: an image's bytes
        return True


def check_batch_paths(items: list, name: str) -> None:
    """Every batch job's model, VAE and LinFusion paths are there, before any work and in
    --dry-run alike (exit 2, naming the job, or --model when no job file key gave the model);
    `name`: the job file's, for messages."""
    from hires.batch import by_giver, keyed_flags
    from hires.job import JobError, all_of
    from hires.model_refs import ModelError

    # Every job's at once, each missing file once, by the first job that names it (one a
    # [defaults] gives is every job's).
    said: dict[str, str] = {}
    for item in items:
        try:
            check_job_paths(item.job)
        except ModelError as e:
            flagged = "model" not in item.file_keys and "model" not in item.given_in and \
                str(e).startswith("--model ")  # --model's, not a preset's
            # --model's advice names job keys past its own flag: batch has no --vae or --lora
            said.setdefault(str(e), keyed_flags(str(e)) if flagged else
                            by_giver(str(e), item, name))
    if said:
        raise all_of([JobError(line) for line in said.values()])


def tally(outcomes: list) -> dict[str, int]:
    """How many of a batch's `outcomes` are done, skipped, busy and failed."""
    return {s: sum(o.status == s for o in outcomes)
            for s in ("done", "skipped", "busy", "failed")}


def busy_count(counts: dict[str, int]) -> str:
    """' N left to another run,' for the batch's closing count; '' when none were."""
    return f" {counts['busy']} left to another run," if counts["busy"] else ""
