"""Running a batch file from the command line: every job's paths and outputs checked before
any work, one model in memory at a time, each job's outcome said, and the count at the end."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import typer

from hires.cli_jobs import check_device, check_gpu
from hires.cli_output import EXIT_RUNTIME, emit, fail, say, tell
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


def run_batch_jobs(items: list, paths: dict[int, Path], name: str, output: Path,
                   manifest: Path | None, as_json: bool, quiet: bool, overwrite: bool,
                   resume_runs: bool, gpu: str | None = None, preview: bool = False) -> None:
    """`batch`: each job's image unless it is made already; one model in memory at a time; a
    failed job is said and recorded in the manifest, and the others go on (exit 1 at the
    end). `name`: the job file's, for messages."""
    from hires import batch as b
    from hires.job import JobError
    from hires.runs import made_by

    check_gpu(gpu)
    first_on = {item.job.device: item.index for item in reversed(items)}
    for device, index in sorted(first_on.items(), key=lambda kv: kv[1]):
        try:  # before any work, as for gen: not a failure per job
            check_device(device)
        except JobError as e:
            raise JobError(f"{name} job {index}: {e}") from None
    check_batch_paths(items, name)
    manifest = check_batch_outputs(items, paths, name, output, manifest, overwrite)
    # For the time left: the jobs whose images are not there yet, and those made so far.
    todo = [item for item in items if overwrite or
            not b.made_already(paths[item.index], item.job)]
    warn_space([(paths[item.index], item.job) for item in todo])
    warn_tmpdir()
    warn_ram([item.job for item in todo])
    from hires.eta import RunPace

    pace = RunPace(len(todo))  # the jobs to make: their number, and the pace of those made
    loaded: dict[tuple, Any] = {}

    def make_one(item: b.BatchItem, path: Path) -> dict:
        from hires.pipeline import load_args

        key = load_args(item.job)
        fresh = key not in loaded
        if fresh:
            loaded.clear()  # one model in memory at a time
            loaded[key] = load_model(item.job, quiet)
        check_steps_and_notes(item.job, loaded[key], notes=fresh)
        number = todo.index(item) if item in todo else len(todo) - 1
        pace.start(number, item.job.width * item.job.height,
                   [i.job.width * i.job.height for i in todo[number + 1:]])
        started = time.monotonic()  # a model's load is not an image's pace
        # run_batch holds the image's lock (hires.busy) while this makes it
        record = make_image(item.job, path, loaded[key], heading=f"job {item.index} -> {path}",
                            gpu=gpu, quiet=quiet, overwrite=overwrite, resume_runs=resume_runs,
                            settings=b.settings_hash(item.job), preview=preview, run=pace)
        pace.end(time.monotonic() - started)
        return record

    def line(o: b.Outcome, record: dict) -> None:
        """A job's line on stdout; with --json it says which job and how it went, as the
        manifest's lines do, so a script needs no manifest to tell the failed ones (they have a
        line only with --json)."""
        # the manifest's keys on every line (a done job's error null, a failed one's settings)
        head = {"index": o.item.index, "status": o.status, "path": str(o.path),
                "error": o.error, "settings": b.settings_hash(o.item.job)}
        emit({**head, **record} if as_json else record, as_json)

    seen: list[b.Outcome] = []  # for the count when the batch is stopped

    def report(o: b.Outcome) -> None:
        seen.append(o)
        if o.status == "failed":
            fail(f"job {o.item.index} failed: {o.error}", EXIT_RUNTIME)  # the batch goes on
            if as_json:
                line(o, {"path": str(o.path), "error": str(o.error)})
        elif o.status == "busy":  # another run is making it
            say(f"job {o.item.index}: {o.error} ({o.path}), skipped")
            if as_json:  # not a made image: stdout lists only those, as for a failed job
                line(o, {"path": str(o.path), "error": o.error})
        elif o.status == "skipped":
            say(f"job {o.item.index}: {o.path} exists with the same settings, skipped")
            # stdout lists every image of the batch, as gen's does those it keeps
            line(o, made_by(o.path, o.item.job) or {"path": str(o.path)})
        if o.moved_to:
            say(f"job {o.item.index}: {o.why} since {o.path.name} was made; the old image "
                f"is kept as {o.moved_to.name}")
        if o.record:
            line(o, o.record)
        if o.status not in ("skipped", "busy") and o.item in todo:
            later = todo[todo.index(o.item) + 1:]
            say_left(pace.made, [i.job.width * i.job.height for i in later])

    for folder in (output, manifest.parent):
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise JobError(f"cannot create folder {folder}: {e.strerror}") from None
    for folder in {output, *(p.parent for p in paths.values() if p.parent.is_dir())}:
        remove_leftovers(folder)
    try:
        outcomes = b.run_batch(items, lambda item: paths[item.index], make_one, manifest,
                               overwrite, report)
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: what is made is kept; say how far it got
        counts = tally(seen)
        tell(f"batch stopped after {len(seen)} of {len(items)} jobs: {counts['done']} done, "
             f"{counts['skipped']} skipped,{busy_count(counts)} {counts['failed']} failed; the "
             "same command goes on from there")
        raise
    counts = tally(outcomes)
    failed = [o.item.index for o in outcomes if o.status == "failed"]
    which = ""
    if failed:  # their errors scrolled by long ago in a big batch
        listed = ", ".join(map(str, failed[:10])) + (", ..." if len(failed) > 10 else "")
        which = (f" (job{'s' if len(failed) > 1 else ''} {listed}; errors in {manifest}; "
                 "the same command runs them again)")
    tell(f"batch: {counts['done']} done, {counts['skipped']} skipped,{busy_count(counts)} "
         f"{counts['failed']} failed{which}")
    if counts["failed"]:
        raise typer.Exit(EXIT_RUNTIME)


def check_batch_outputs(items: list, paths: dict[int, Path], name: str, output: Path,
                        manifest: Path | None, overwrite: bool = False) -> Path:
    """Before any work (and in --dry-run): the manifest and every job's folder can be written,
    and no file that is not hires' is in a job's way (unless `overwrite`), else exit 2 (not a
    failed job once the model is loaded). Creates nothing; returns the manifest."""
    import os

    from hires import batch as b
    from hires import output as out
    from hires.job import JobError
    from hires.runs import check_not_input

    manifest = manifest or output / "manifest.jsonl"

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
        raise JobError(f"--manifest {manifest} is where {name} job {taken.index} writes its "
                       "image; name another .jsonl file")
    if manifest.exists() and not os.access(manifest, os.W_OK):
        raise JobError(f"cannot append to the manifest {manifest}; make it writable or choose "
                       "another --manifest")
    try:
        out.check_writable(manifest, overwrite=True)  # appended to: a file there is fine
    except out.OutputError as e:  # its hint names -o, which is the images' folder
        raise JobError(f"--manifest {manifest}: "
                       + str(e).replace("choose another -o", "choose another --manifest")
                       ) from None
    seen: set[Path] = set()
    for item in items:
        try:  # --overwrite or not, and in a dry run: the real run would replace the input
            check_not_input(paths[item.index], item.job.image, "'output'")
        except JobError as e:
            raise JobError(f"{name} job {item.index}: {e}") from None
        why = b.in_the_way(paths[item.index], overwrite)  # as the run would fail the job
        if why:
            raise JobError(f"{name} job {item.index}: {why}")
        folder = paths[item.index].parent
        if folder not in seen:
            seen.add(folder)
            try:  # an image there is the batch's to skip, move aside or replace
                out.check_writable(paths[item.index], overwrite=True)
            except out.OutputError as e:
                raise JobError(f"{name} job {item.index}: {e}") from None
    return manifest


def check_batch_paths(items: list, name: str) -> None:
    """Every batch job's model, VAE and LinFusion paths are there, before any work and in
    --dry-run alike (exit 2, naming the job); `name`: the job file's, for messages."""
    from hires.batch import by_key
    from hires.job import JobError
    from hires.model_refs import ModelError

    for item in items:
        try:
            check_job_paths(item.job)
        except ModelError as e:
            raise JobError(by_key(str(e), f"{name} job {item.index}")) from None


def tally(outcomes: list) -> dict[str, int]:
    """How many of a batch's `outcomes` are done, skipped, busy and failed."""
    return {s: sum(o.status == s for o in outcomes)
            for s in ("done", "skipped", "busy", "failed")}


def busy_count(counts: dict[str, int]) -> str:
    """' N left to another run,' for the batch's closing count; '' when none were."""
    return f" {counts['busy']} left to another run," if counts["busy"] else ""
