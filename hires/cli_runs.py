"""Making images from the command line (`gen`, `up`): the checks before a run, the model loaded
once, each image planned, resumed, shown in progress and saved (`make_image`, `batch`'s too)."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, nullcontext
from functools import partial
from pathlib import Path
from typing import Any

from hires import stops
from hires.cli_jobs import about_input, check_gpu, fitted_plan, plan_key
from hires.cli_output import (
    EXIT_RUNTIME,
    Quiet,
    debug_on,
    debug_traceback,
    emit,
    error_text,
    fail,
    library_bars,
    progress_renderer,
    say,
    warn,
    warn_once,
)
from hires.cli_resume import (
    kept_job,
    kept_words,
    say_resume,
    saying_what_is_kept,
    stages_upto,
)


def check_outputs(jobs: list, output: str | None, fmt: str | None, n: int, overwrite: bool,
                  stage_images: bool = False, preview: bool = False,
                  alpha: frozenset[str] = frozenset(), quality_flag: bool = False,
                  as_json: bool = False, resume_runs: bool = True) -> list[dict[str, Any]]:
    """What a run checks of its outputs before it loads anything (names, formats, files in
    the way), for --dry-run: a plan that shows should be a command that starts. `alpha`,
    `resume_runs`: as for `plan_runs`; `as_json`: the run's --json (a dry run's prints the
    plan). The images the run would write: each one's path, seed, prompt and whether it is
    made already (kept), for the dry run's JSON."""
    from hires import cli_stdout
    from hires.runs import plan_runs

    check_job_paths(jobs[0])
    warn_tmpdir()  # as the run says it
    if output == cli_stdout.STDOUT:  # a dry run prints its plan there: no terminal check
        cli_stdout.check(len(jobs) * n, stage_images, as_json, preview, terminal=False,
                         upscale=bool(jobs[0].image))
        # and the image's format checks, as the run makes it (in a scratch folder)
        with cli_stdout.scratch() as place, cli_stdout.named_as_stdout():
            runs = plan_runs(jobs, str(place / cli_stdout.NAME), fmt_flag=fmt,
                             overwrite=True, resume_runs=False, alpha=alpha,
                             quality_flag=quality_flag)
        from hires.output import STDOUT_NAME

        said = _say_losses(runs, alpha, STDOUT_NAME)
        return [{"path": cli_stdout.STDOUT, "format": r.job.format, "seed": r.job.seed,
                 "seed_drawn": jobs[0].seed is None, "prompt": r.job.prompt, "made": False,
                 "warnings": losses} for r, losses in zip(runs, said)]
    runs = plan_runs(jobs, output, n=n, fmt_flag=fmt, overwrite=overwrite,
                     resume_runs=resume_runs, preview=preview, stage_images=stage_images,
                     alpha=alpha, quality_flag=quality_flag)
    warn_space([(r.path, r.job) for r in runs if r.made is None], stage_images)
    said = _say_losses(runs, alpha)
    from hires import busy

    for run in runs:  # as the run stops (exit 2) while another run makes one of its images
        if run.made is None:
            busy.check_free(run.path)
    for run in runs if not preview and resume_runs else []:  # a preview is kept by none
        if run.made is None and (note := checkpoint_note(run.path, run.job,
                                                         stage_images=stage_images)):
            # as the run says it: a warning where the stages kept are lost to it
            (warn if note.endswith("the run starts over") or "not on disk" in note else say)(
                f"{run.path}: {note}")
    for run in runs if not preview and not resume_runs else []:
        if run.made is None and (note := unkept_note(run.path, run.job)):
            say(f"{run.path}: {note}")
    from hires import resume

    def stopped_runs(run) -> bool:
        """Whether `run`'s seed is a stopped run's: its checkpoint's (in any format), of this
        job with that seed, and taken up (not with --no-resume)."""
        kept = [resume.path_for(run.path), *resume.siblings(run.path)]
        return resume_runs and any(k.is_file() and resume.seed_of(k, run.job) == run.job.seed
                                   for k in kept)

    # No seed given and no stopped run's to go on with: this dry run drew one, and the run
    # draws its own (and its names, where they hold the seed). A checkpoint of another job
    # (or with --no-resume) is not gone on from: its seed is drawn too.
    drawn = jobs[0].seed is None and not any(r.made is not None or stopped_runs(r)
                                             for r in runs)
    from hires.output import name_text

    return [{"path": name_text(r.path), "format": r.job.format, "seed": r.job.seed,
             "seed_drawn": drawn, "prompt": r.job.prompt, "made": r.made is not None,
             "warnings": losses} for r, losses in zip(runs, said)]


def checkpoint_note(path: Path, job, plan=None, stage_images: bool = False) -> str | None:
    """For a dry run: whether the run writing `path` goes on from a stopped run's checkpoint
    ('goes on from NAME: stages 0-1 kept') or starts over, and why; None if there is none.
    `plan`: the job's, planned without weights if not given; `stage_images` (--save-stages):
    the run goes on only where the kept stages' images are this job's, as `say_resume`."""
    from hires import resume
    from hires.dry_run import dry_run
    from hires.images import ImageInputError
    from hires.job import JobError
    from hires.model_refs import ModelError

    kept, asked = resume.path_for(path), job
    if not kept.is_file() and not resume.siblings(path):
        return None
    if plan is None:
        from hires.piped import image_size

        try:
            plan = dry_run(job, None, image_size(job.image) if job.image else None).plan
        except (JobError, ModelError, ImageInputError, OSError):
            return None  # the plan shown after says what is wrong
    if not kept.is_file():  # one of this job in another format: taken up (say_resume)
        kept = resume.kept_elsewhere(path, job, plan)
        if kept is None:
            return None
    if job.image and job.image_sha256 is None:
        # as the run sees it (`kept_job`): an upscale's checkpoint records its input's sha256,
        # and a batch job's was said to start over where the run went on from it
        from dataclasses import replace

        from hires.images import sha256_once
        from hires.piped import local_path

        try:
            job = replace(job, image_sha256=sha256_once(local_path(job.image)))
        except (OSError, ImageInputError, JobError):
            pass  # the run says what is wrong with its input
    why = resume.why_not(kept, job, plan)
    if why is not None:
        return f"{kept.name} {why}: the run starts over"
    stage = resume.stage_of(kept, job, plan)
    if stage_images and stage is not None:
        from hires.cli_resume import lost_stage_image, missing_stage_images
        from hires.record import stage_paths

        files = stage_paths(path, len(plan.stages))
        lost = lost_stage_image(files, stage, asked)
        if lost:
            return (f"{kept.name} holds {stages_upto(stage)} of this job, but {lost} "
                    "(--save-stages): the run starts over")
        missing = missing_stage_images(files, stage)
        if missing:
            return (f"the run goes on from {kept.name}: {stages_upto(stage)} kept, {missing}")
    if stage == len(plan.stages) - 1:
        return f"the run goes on from {kept.name}: every stage kept, only the decode left"
    return f"the run goes on from {kept.name}: {stages_upto(stage)} kept"


def unkept_note(path: Path, job) -> str | None:
    """For a dry run with --no-resume: the stages of this job a stopped run's checkpoint
    keeps, which the run removes; None if none."""
    from hires import resume
    from hires.dry_run import dry_run
    from hires.job import JobError
    from hires.model_refs import ModelError
    from hires.piped import image_size

    kept = resume.path_for(path)
    if not kept.is_file():
        return None
    try:
        plan = dry_run(job, None, image_size(job.image) if job.image else None).plan
        what = kept_words(kept, job, plan)
    except (JobError, ModelError, OSError, ValueError):
        return None
    if what is None:
        return None
    return f"--no-resume: the run removes {kept.name}, which keeps {what}, and starts over"


def take_up_elsewhere(path: Path, job, plan) -> None:
    """A stopped run of this job kept for the image in another format (`-o out.png`, now
    `-o out.jpg`): its checkpoint renamed to this image's, to go on from (it was left behind)."""
    from hires import resume

    found = resume.kept_elsewhere(path, job, plan)
    if found is not None:
        os.replace(found, resume.path_for(path))
        say(f"  {found.name} holds a stopped run of this job for {found.name[:-len(resume.SUFFIX)]}"
            f": going on from it as {path.name}'s")


def _say_losses(runs: list, alpha: frozenset[str], name: str | None = None) -> list[list[str]]:
    """What each image to make will not keep in its format (a JPEG's transparency, a WebP's
    dpi), said as the save says it, and returned for each run ([] for one made already);
    `alpha`: the inputs with one; `name`: the image's, for all (STDOUT_NAME)."""
    from hires.output import format_losses

    said: list[list[str]] = [
        [] if run.made is not None else
        format_losses(run.job.format, name or run.path.name, run.job.dpi, run.job.image in alpha)
        for run in runs]
    for loss in (loss for losses in said for loss in losses):
        warn(loss)
    return said


def check_job_paths(job, loads: bool = True) -> None:
    """The model, VAE and LinFusion checkpoint `job` names by paths are there (exit 2), and,
    for a command that `loads` them, none is a pickle file unless the job allows it."""
    from hires.batch import said_where_given
    from hires.job import JobError
    from hires.model_refs import ModelError, check_paths

    try:
        check_paths(job.model, job.vae, job.linfusion, job.allow_pickle or not loads)
    except (JobError, ModelError) as e:  # a preset's model: said as its key
        raise said_where_given(e, job) from None


def warn_tmpdir() -> None:
    """A TMPDIR that cannot be used is said: the scratch files and checkpoints' temporary
    files would go elsewhere without a word."""
    from hires.memory import tmpdir_problem

    problem = tmpdir_problem()
    if problem:
        warn(problem)


def warn_ram(jobs: list, batch: list[int] | None = None) -> None:
    """Before a run: a --ram above this machine's RAM plans parking that cannot happen here
    (it is meant for `hires plan` of another machine); on a CPU, whose memory is the RAM, a
    --vram or --ram above it plans a run that fails here. `batch`: the jobs' numbers in a
    batch, which has no such flags: their keys are named, and the jobs that gave them."""
    import torch

    from hires.memory import GIB, ram_bytes
    from hires.plan import cpu_budget_flag

    total = ram_bytes()[0]
    if not total:
        return
    numbered = list(zip(batch or [0] * len(jobs), jobs))
    gpu_runs = [(n, j) for n, j in numbered if j.device != "cpu" and (
        j.device != "auto" or torch.cuda.is_available())]
    cpu_runs = [(n, j) for n, j in numbered if (n, j) not in gpu_runs]

    def whose(runs: list, given: Callable[[Any], bool]) -> str:
        """'jobs 2-4: ' in a batch: the numbers of the `runs` whose job is `given`."""
        return "" if batch is None else f"{job_numbers([n for n, j in runs if given(j)])}: "

    for ram in sorted({j.ram for _, j in gpu_runs if j.ram is not None}):
        if ram * GIB > total:
            given = f"a ram of {ram:g} GiB" if batch is not None else f"--ram {ram:g}"
            given = whose(gpu_runs, lambda j: j.ram == ram) + given  # noqa: B023 (used at once)
            warn(f"{given} is more than this machine's {total / GIB:.1f} GiB of RAM: a plan "
                 "that fills it fails here (--ram plans another machine's, with `hires plan`)")
    # named as a key: it may be a flag's, a preset's or a job file's; the one that holds,
    # the smaller where both are given (plan.budget_bytes)
    for vram, ram in sorted({(j.vram, j.ram) for _, j in cpu_runs},
                            key=lambda pair: [-1 if v is None else v for v in pair]):
        key = cpu_budget_flag(vram, ram)
        if key is None:
            continue
        gib = vram if key == "vram" else ram
        if gib * GIB > total:
            keys = [k for k, v in (("vram", vram), ("ram", ram)) if v is not None]
            flags = "" if batch is not None else " and ".join(f"--{k}" for k in keys) + ", or "
            given = whose(cpu_runs, lambda j: (j.vram, j.ram) == (vram, ram))  # noqa: B023
            warn(f"{given}a {key} of {gib:g} GiB is the CPU run's memory budget, more than this "
                 f"machine's {total / GIB:.1f} GiB of RAM: a plan that fills it fails here "
                 f"(drop {flags}the preset's or job's {' and '.join(keys)}, to plan in the "
                 "free RAM)")


def job_numbers(numbers: list[int]) -> str:
    """'job 3', 'jobs 1-4 and 7': a batch's jobs, runs of numbers shortened."""
    runs: list[list[int]] = []
    for n in sorted(set(numbers)):
        if runs and n == runs[-1][-1] + 1:
            runs[-1].append(n)
        else:
            runs.append([n])
    words = [str(r[0]) if len(r) == 1 else f"{r[0]}-{r[-1]}" for r in runs]
    said = words[0] if len(words) == 1 else ", ".join(words[:-1]) + f" and {words[-1]}"
    return f"job {said}" if len(numbers) == 1 or len(set(numbers)) == 1 else f"jobs {said}"


def warn_space(todo: list[tuple[Path, Any]], stage_images: bool = False) -> None:
    """Before any work: warn when the images to make, (path, job), may not fit their disks."""
    from hires.output import disk_need, short_of_space

    note = short_of_space([(path, disk_need(j.width, j.height, j.format, stage_images, j.depth),
                            j.width * j.height) for path, j in todo])
    if note:
        warn(note)


def check_steps_and_notes(job, components, notes: bool = True,
                          place: Callable[[str], str] | None = None) -> None:
    """Checks that need the loaded model: steps within its schedule; with `notes`, a word
    on slow settings (once per loaded model). `place`: a batch job's, where a key of it was
    given ("jobs.toml [defaults]"), so that a note names that key there, not a flag."""
    import torch

    from hires.batch import in_job_words
    from hires.job import JobError

    config = components.pipe.scheduler.config
    train = config.get("num_train_timesteps", 1000)
    most = train - config.get("steps_offset", 0)  # the offset shifts the last step past the end
    if job.steps > most:
        raise JobError(f"steps must be at most {most} for this model (its schedule has {train} "
                       f"timesteps), got {job.steps}")
    if not notes:
        return
    if (components.device.type == "cuda" and components.vae_dtype == torch.float32
            and components.dtype != torch.float32 and job.vae_dtype == "auto"):
        say(fp16_vae_hint("this GPU"))
    if components.device.type == "cuda" and components.dtype == torch.bfloat16 and not \
            torch.cuda.is_bf16_supported(including_emulation=False):
        warn(emulated_bf16_warning(job, "this GPU", place))
    if components.device.type != "cpu":
        return
    say("running on the CPU: expect minutes per megapixel (a GPU takes seconds)")
    from hires.models import cpu_has_fast_bf16

    if job.dtype == "auto" and cpu_has_fast_bf16():
        # auto stays fp32 on the CPU: bf16's effect on SDXL's pictures is unmeasured here.
        note = ("this CPU has native bf16: --dtype bf16 runs the UNet about 3x faster than "
                "fp32 (BENCHMARKS.md, bf16)")
        say(in_job_words(note) if place else note)
    for warning in cpu_setting_warnings(job, place):
        warn(warning)


def cpu_setting_warnings(job, place: Callable[[str], str] | None = None) -> list[str]:
    """What a CPU run of `job` warns of its settings (a dry run too): a dtype slower than
    fp32 there, an offload that does nothing. `place` as `check_steps_and_notes`'s."""
    from hires.models import cpu_has_fast_bf16

    def given_in(key: str) -> str | None:
        """Where a preset, a record or a batch's job file gave `key`; None for a flag's."""
        return place(key) if place else job.extra.get("given_in", {}).get(key)

    said = []
    if job.dtype == "fp16" or (job.dtype == "bf16" and not cpu_has_fast_bf16()):
        fix = "leave it out for a CPU run" if place else "--dtype auto runs fp32"
        where = given_in("dtype")
        said.append(f'dtype = "{job.dtype}" in {where} is about 4x slower than fp32 on the '
                    f"CPU; {fix}" if where else f"--dtype {job.dtype} on the CPU is about 4x "
                    "slower than fp32; drop --dtype there")
    if job.offload in ("model", "sequential"):
        what = "does nothing on the CPU (the weights are in RAM already)"
        where = given_in("offload")
        said.append(f'offload = "{job.offload}" in {where} {what}' if where else
                    f"--offload {job.offload} {what}")
    return said


def emulated_bf16_warning(job, gpu: str, place: Callable[[str], str] | None = None) -> str:
    """A UNet asked for in bf16 on a GPU without native bf16 (T4, V100): torch emulates it."""
    where = place("dtype") if place else job.extra.get("given_in", {}).get("dtype")
    asked = f'dtype = "{job.dtype}" in {where}' if where else f"--dtype {job.dtype}"
    return (f"{gpu} has no native bf16: {asked} runs the UNet emulated, several times slower "
            "than fp16 (what --dtype auto runs there)")


def fp16_vae_hint(gpu: str, detail: str = "") -> str:
    """What to do when a GPU without native bf16 runs the VAE in fp32."""
    from hires.models import FP16_VAE

    return (f"{gpu} has no native bf16, so the VAE runs in fp32{detail}; a VAE made for fp16 "
            f"runs in fp16, several times faster there (--vae {FP16_VAE})")


def run_jobs(jobs: list, output: str | None, save_stages: bool, as_json: bool,
             quiet: bool, overwrite: bool, gpu: str | None = None,
             fmt_flag: str | None = None, n: int = 1, resume_runs: bool = True,
             preview: bool = False, alpha: frozenset[str] = frozenset(),
             quality_flag: bool = False) -> None:
    """`gen` and `up`: plan and check every output first, load the model once, then make each
    image (each job `n` times); `resume_runs`: go on from what stopped runs of a job kept;
    `preview`: only each image's first stage. `output` "-": the one image's bytes to stdout.
    `alpha`: `up`'s inputs that keep an alpha channel, and `quality_flag` (`plan_runs`)."""
    from hires import cli_stdout

    check_gpu(gpu)
    check_job_paths(jobs[0])  # the jobs of one gen or up load one model
    warn_tmpdir()
    if output != cli_stdout.STDOUT:
        _make_all(jobs, output, save_stages=save_stages, as_json=as_json, quiet=quiet,
                  overwrite=overwrite, gpu=gpu, fmt_flag=fmt_flag, n=n, resume_runs=resume_runs,
                  preview=preview, alpha=alpha, quality_flag=quality_flag)
        return
    cli_stdout.check(len(jobs) * n, save_stages, as_json, preview, upscale=bool(jobs[0].image))
    with cli_stdout.scratch() as place:
        with cli_stdout.on_stderr(), cli_stdout.named_as_stdout():
            path = _make_all(jobs, str(place / cli_stdout.NAME), quiet=quiet, overwrite=True,
                             gpu=gpu, fmt_flag=fmt_flag, resume_runs=False, piped=True,
                             alpha=alpha, quality_flag=quality_flag)
        sent, size = cli_stdout.send(path)
    kind = path.suffix[1:].upper()
    if sent < size:  # -q keeps it: the image is lost
        warn(f"stdout was closed after {sent:,} of the {size:,} bytes of {kind}: the reader "
             "has not the whole image, and -o - keeps no file")
    else:
        say(f"stdout: {size:,} bytes of {kind}")


def _make_all(jobs: list, output: str | None, *, save_stages: bool = False,
              as_json: bool = False, quiet: bool, overwrite: bool, gpu: str | None,
              fmt_flag: str | None, n: int = 1, resume_runs: bool, preview: bool = False,
              piped: bool = False, alpha: frozenset[str] = frozenset(),
              quality_flag: bool = False) -> Path:
    """`run_jobs`' work; the last image's path. `piped`: the image goes to stdout after, so
    nothing is printed there now, and no checkpoint is kept (its folder goes too)."""
    from hires import busy
    from hires.runs import plan_runs

    runs = plan_runs(jobs, output, n=n, fmt_flag=fmt_flag, overwrite=overwrite,
                     resume_runs=resume_runs, preview=preview, stage_images=save_stages,
                     alpha=alpha, quality_flag=quality_flag)
    if jobs[0].seed is None and len(runs) > 1:
        base = runs[0].job.seed
        # Several prompts or inputs share a seed; only --n counts up from it
        said = "seeds from" if len({r.job.seed for r in runs}) > 1 else "seed"
        say(f"{said} {base} (--seed {base} makes these images again)")
    with ExitStack() as held:
        # Every image's lock, before the model loads, held to the end: a second run of this
        # command stops here (busy.Busy, exit 2), and one that waited finds them made.
        for run in runs:
            if run.made is None:
                held.enter_context(busy.making(run.path))
        runs = [made_meanwhile(run, overwrite, 0 if preview else None) for run in runs]
        return _make_runs(runs, save_stages=save_stages, as_json=as_json, quiet=quiet,
                          overwrite=overwrite, gpu=gpu, resume_runs=resume_runs,
                          preview=preview, piped=piped)


def made_meanwhile(run, overwrite: bool, stage: int | None = None):
    """`run`, or `run` marked made when another run made its image (`stage`'s alone for a
    preview) since `plan_runs` looked (before this one held its lock); a file of another
    image there is in the way (exit 2)."""
    from dataclasses import replace

    from hires import output as out
    from hires.runs import made_by

    if run.made is not None or overwrite or not run.path.exists():
        return run
    record = made_by(run.path, run.job, stage)
    if record is None:
        out.check_writable(run.path, overwrite)  # says it exists: --overwrite or another -o
    return replace(run, made=record)


def _make_runs(runs: list, *, save_stages: bool, as_json: bool, quiet: bool, overwrite: bool,
               gpu: str | None, resume_runs: bool, preview: bool, piped: bool) -> Path:
    """Make each of `runs` that is not made already, its lock held by the caller."""
    for folder in {run.path.parent for run in runs}:
        if folder.is_dir():  # temp files of a gen that was killed while saving here
            remove_leftovers(folder)
    warn_space([(r.path, r.job) for r in runs if r.made is None], save_stages)
    warn_ram([r.job for r in runs])
    from hires.eta import RunPace
    from hires.full_disk import FullDisks
    from hires.output import DiskRefused, disk_need

    components = None
    pace = RunPace(len(runs))  # the images made so far, by their pixels and seconds
    failed: list[Path] = []
    disks = FullDisks()  # a disk that refused an image is given no more work while it would
    for number, run in enumerate(runs, 1):
        of = f" (image {number} of {len(runs)})" if len(runs) > 1 else ""
        if run.made is not None:
            # stage images are written as an image is made: none for one kept (QA 204)
            stages = ", its stage images too" if save_stages else ""
            say(f"{run.path}{of}: made already by these settings, kept (--overwrite makes it "
                f"again{stages})")
            # its record as it was saved, its seconds then: 'status' tells it from a new one
            emit({"status": "skipped", **run.made}, as_json)
            continue
        if components is None:  # once, and only when some image is to be made
            with _said_if_stopped(run, as_json and len(runs) > 1):  # as a batch's first job
                components = load_model(run.job, quiet)
                check_steps_and_notes(run.job, components)
                _check_plans([r.job for r in runs[number - 1:] if r.made is None], components,
                             gpu, save_stages, preview, several=len(runs) > 1)
        todo = [r.job.width * r.job.height for r in runs[number:] if r.made is None]
        pace.start(number - 1, run.job.width * run.job.height, todo)
        started = time.monotonic()  # the model's load is not an image's pace
        try:
            job = run.job
            with _said_if_stopped(run, as_json and len(runs) > 1):
                disks.check(run.path, disk_need(job.width, job.height, job.format, save_stages,
                                                job.depth))
                record = make_image(run.job, run.path, components,
                                    heading="stdout" if piped else f"{run.path}{of}", gpu=gpu,
                                    quiet=quiet, overwrite=overwrite, resume_runs=resume_runs,
                                    save_stages=save_stages, preview=preview, piped=piped,
                                    run=pace)
        except Exception as e:  # one image of several: said, and the others go on (as batch)
            if len(runs) == 1:
                raise
            if isinstance(e, DiskRefused):
                disks.saw(e, f"image {number}")
            failed.append(run.path)
            _say_failed(run, e, of, as_json)
            continue
        if not piped:
            emit({"status": "done", **record}, as_json)  # as batch's lines say it
        pace.end(time.monotonic() - started)
        say_left(pace.made, todo)
    if failed:
        listed = ", ".join(map(str, failed[:5])) + (", ..." if len(failed) > 5 else "")
        said = (f"{len(failed)} of {len(runs)} images failed ({listed}); the others are made: "
                "once the cause is fixed, the same command makes the failed ones (made ones are "
                "kept)") if len(failed) < len(runs) else (
            f"all {len(runs)} images failed ({listed}): once the cause is fixed, the same "
            "command makes them")
        raise fail(said, EXIT_RUNTIME)
    if preview:
        say(f"previews: `hires gen --from {runs[-1].path}` (or another) makes that image whole, "
            "from the same first stage")
    return runs[-1].path


def _say_failed(run, error: Exception, of: str, as_json: bool) -> None:
    """An image of several that failed: its error line (not the run's last) and, with --json,
    its line on stdout, as a batch's failed job has."""
    if debug_on():
        debug_traceback(error)
    text = error_text(error)
    fail(f"{run.path}{of} failed: {text}", EXIT_RUNTIME)  # said; the others go on
    if as_json:
        _emit_unmade(run, "failed", text)


def _emit_unmade(run, status: str, error: str) -> None:
    """The --json line of an image of several not made ("failed", "interrupted"), as a batch
    job's: its facts and input, and the checkpoint the same command goes on from, if kept."""
    from hires.batch import job_facts, kept_checkpoint

    emit({"status": status, "path": str(run.path), "error": error, **job_facts(run.job),
          **({"image": run.job.image} if run.job.image else {}),
          **kept_checkpoint(run.path)}, True)


@contextmanager
def _said_if_stopped(run, said: bool) -> Iterator[None]:
    """A stop in the block ends the run; with `said` (--json, one image of several) the image
    it stopped has its line on stdout, with the checkpoint the same command goes on from, as a
    batch's interrupted job has."""
    try:
        yield
    except KeyboardInterrupt as stop:
        if said:
            _emit_unmade(run, "interrupted", getattr(stop, "word", "interrupted"))
        raise


def remove_leftovers(folder: Path) -> None:
    """Remove what runs killed in `folder` left: their images' temporary parts (each one said)
    and the lock files no live run holds."""
    from hires import busy
    from hires import output as out

    for part in out.remove_stale_parts(folder):
        say(f"removed an unfinished save of {out.saved_as(part)}, left by a run that died "
            "while saving")
    busy.remove_stale(folder)


def load_model(job, quiet: bool):
    """The model `job` names, with the libraries' own bars as -q says (never with --progress
    json: they are not JSON); its warnings said."""
    from hires.model_refs import go_offline_if_unreachable
    from hires.pipeline import load, load_args

    if go_offline_if_unreachable(job):
        say("the Hugging Face Hub cannot be reached: loading from the local cache")
    library_bars(quiet or Quiet.progress == "json")
    components = load(*load_args(job))
    stops.check()  # a Ctrl-C that the libraries' loading swallowed
    for warning in components.warnings:
        warn(warning)
    return components


def make_image(job, path: Path, components, *, heading: str, gpu: str | None = None,
               quiet: bool = False, overwrite: bool = False, resume_runs: bool = True,
               save_stages: bool = False, settings: str | None = None,
               preview: bool = False, piped: bool = False, run=None,
               worded: Callable[[str], str] | None = None) -> dict[str, Any]:
    """One image from loaded `components`: planned, gone on from what a stopped run kept,
    shown in progress and saved at `path`; its record. `heading` names it in the log. A
    `preview` is the job's first stage alone (`hires.plan.preview_of`), kept by no checkpoint;
    nor is a `piped` one, whose file in a temporary folder goes to stdout (recorded as "-").
    `run`: the hires.eta.RunPace of the run it is one image of (its number, the pace of those
    made before it), for the progress. `worded`: its warnings as said (a batch's name keys)."""
    from hires import resume
    from hires.piped import load_job_input
    from hires.pipeline import half_vae_note, prompt_warnings, run_job
    from hires.plan import describe
    from hires.progress import Event
    from hires.record import save, save_stage

    source = load_job_input(job) if job.image else None
    noted = say_input(source, job.depth, (job.width, job.height))
    plan, whole = _image_plan(job, components, gpu, source.rgb.size if source else None,
                              save_stages, preview)
    stage_files = _writable_stage_files(job, path, len(plan.stages), overwrite) \
        if save_stages else []
    say(f"{heading}: seed {job.seed}, {whole}")
    for line in describe(plan):
        say(f"  {line}")
    early = prompt_warnings(components, job)  # before the work, not after it
    machine = half_vae_note(components, job)  # the machine's pick: once in a batch, unnamed
    # a preview is a stage image, 8 bits a channel: --depth 16's note is the whole job's
    unsaid = set(machine) if preview else set()
    early = [warning for warning in early if warning not in unsaid]
    for warning in early:  # each image's record keeps them; the terminal hears them once
        if worded and warning in machine:  # a batch's: in its jobs' keys
            from hires.batch import in_job_words

            warn_once(in_job_words(warning))
        else:
            warn_once(worded(warning) if worded else warning)
    # A preview is seconds: kept by none.
    kept = None if preview or piped else resume.path_for(path)
    if kept is not None:
        if not resume_runs:
            what = kept_words(kept, job, plan, source)
            resume.remove(kept)
            if what is not None:  # the stages it threw away, said (it was silent)
                say(f"  --no-resume: removed {kept.name}, which kept {what}; starting over")
        elif not kept.exists():
            take_up_elsewhere(path, kept_job(job, source), plan)
        said = say_resume(kept, job, plan, source, stage_files, worded)
        if said is not None:  # said before the work; the run's warnings repeat it
            noted.append(said)

    def stage_image(index: int, image) -> None:
        from hires.errors import dtype_name
        from hires.output import DiskRefused, disk_fix

        try:
            save_stage(image, stage_files[index], job, index, fmt=job.format, overwrite=True,
                       linfusion=components.linfusion,
                       vae_dtype=dtype_name(components.vae_dtype),
                       addons=components.addons_running)
        except DiskRefused as e:  # an extra file: what to do said (it stopped the job bare)
            raise DiskRefused(f"{e} (a --save-stages image); {disk_fix(e.errno)}, or drop "
                              "--save-stages, and run the same command again", e.folder,
                              e.errno) from None
        say(f"  stage {index}: {stage_files[index]}")

    scored: set[int] = set()
    # The stages a stopped run had scored: said in their place, before the stages after them.
    kept_scores = resume.kept_scores(kept, kept_job(job, source), plan) \
        if kept is not None and kept.is_file() else {}

    def score(index: int, psnr: float) -> None:  # as each stage ends, not after the last
        for earlier in sorted(i for i in kept_scores if i < index and i not in scored):
            score(earlier, kept_scores[earlier])
        stage = plan.stages[index]
        said = f"{psnr:.1f} dB PSNR against the input" if math.isfinite(psnr) else \
            "identical to the input"  # inf dB
        say(f"  stage {index} ({stage.width}x{stage.height}): {said}")
        scored.add(index)

    keeping = saying_what_is_kept(kept, job, plan, source) if kept else nullcontext()
    with _after_the_checks(), keeping:  # the save too: a full disk
        # A piped image's path is a temporary file's: its events name it as the record does.
        with progress_renderer(quiet, plan, "-" if piped else str(path)) as progress:
            if progress is not None:
                progress.attach(run, planned=planned_here(gpu, components))

            def watched(event: Event) -> None:  # with -q too: a swallowed Ctrl-C stops here
                stops.check()
                if progress is not None:
                    progress(event)

            result = run_job(job, source=source, components=components, progress=watched,
                             plan=plan, checkpoint=kept,
                             on_stage_image=stage_image if save_stages else None,
                             on_score=score)
            for warning in result.warnings[len(components.warnings):]:
                # said already, or not of this file
                if warning not in early and warning not in noted and warning not in unsaid:
                    warn(worded(warning) if worded else warning)
            for s in result.stages:  # stages a stopped run had scored, and none after them
                if s.psnr is not None and s.index not in scored:
                    score(s.index, s.psnr)
            # The save is a phase of its own (seconds at 16K): its end says the file is there.
            last = plan.stages[-1]
            saving = partial(Event, "save", last.index, len(plan.stages), last.width,
                             last.height)
            watched(saving())  # the last point to stop at: the image is not written yet
            # record.save, not Result.save: its errors keep the CLI's flags (--overwrite),
            # which Result.save words as the library's keywords.
            record = save(result, path, fmt=job.format, overwrite=overwrite, settings=settings,
                          warn=(lambda said: warn(worded(said))) if worded else warn,
                          stage=0 if preview else None,
                          recorded_as="-" if piped else None)
            if progress is not None:
                progress(saving(1, 1))
    if kept is not None:
        resume.remove(kept)
    return record


def _check_plans(jobs: list, components, gpu: str | None, save_stages: bool,
                 preview: bool, several: bool) -> None:
    """Before the first of `several` images (`jobs`: those to make): each one's plan fits, so
    that one that cannot stops the command before any work, not after the images before it;
    named by its input, even where the others are made already."""
    from hires.images import input_size
    from hires.piped import STDIN

    if not several:  # one image: its plan is the first thing make_image does
        return
    planned = set()
    for job in jobs:
        key = plan_key(job)
        if key in planned or job.image == STDIN:  # piped bytes: planned as each is read
            continue
        planned.add(key)
        size = input_size(job.image) if job.image else None
        with about_input(job.image, bool(job.image)):
            _image_plan(job, components, gpu, size, save_stages, preview)


def _image_plan(job, components, gpu: str | None, size: tuple[int, int] | None,
                save_stages: bool, preview: bool) -> tuple[Any, str]:
    """The image's plan, fitted to the memory, and its one-line summary for the log: the
    whole job's, or its first stage alone for a `preview`; `size`: an upscale's input's."""
    from hires.pipeline import plan_for
    from hires.plan import preview_of

    plan = fitted_plan(lambda: plan_for(job, components, gpu=gpu, source=size,
                                        stage_images=save_stages, preview=preview), job)
    whole = f"{len(plan.stages)} stage(s), {plan.width}x{plan.height}"
    if not preview:
        return plan, whole
    plan = preview_of(plan)
    first = plan.stages[0]
    return plan, f"preview: stage 0, {first.width}x{first.height}, of a {whole} job"


def _writable_stage_files(job, path: Path, stages: int, overwrite: bool) -> list[Path]:
    """The stage images' paths. They are written as each stage is done, so checked before
    the first step, not after the compute is spent; a stopped run's own stage images are
    this run's to write."""
    from hires import output as out
    from hires.record import stage_paths
    from hires.runs import stage_of_this_job

    files = stage_paths(path, stages)
    for i, stage_path in enumerate(files):
        if not stage_of_this_job(stage_path, job, i):  # a stopped run's, cut short or not
            out.check_writable(stage_path, overwrite)
    return files


@contextmanager
def _after_the_checks() -> Iterator[None]:
    """A folder that cannot be written once the work began (made read-only meanwhile) is the
    machine's doing, not the command's: exit 1, not 2 (README: 2 is for what is found before
    the first step; a file another run saved there first stays 2, as documented)."""
    from hires.output import OutputError, OutputUnwritable

    try:
        yield
    except OutputUnwritable as e:
        raise OutputError(str(e)) from None


def say_input(source, depth: int = 8, size: tuple[int, int] | None = None) -> list[str]:
    """What reading an input changed: its colour profile converted to sRGB (said); what it
    lost, 16 bits a channel, all frames but the first, or its sides where a result of `size`
    is another shape (warned, and returned: the result's warnings hold them too)."""
    if source is None:
        return []
    return say_read(read_notes(source, depth, size))


def read_notes(source, depth: int = 8, size: tuple[int, int] | None = None
               ) -> tuple[str | None, list[str]]:
    """`say_input`'s line on a converted profile (or None) and its warnings, to say later."""
    from hires.images import input_label, input_notes

    converted = (f"  {input_label(source)}: colour profile '{source.converted_from}' converted "
                 "to sRGB") if source.converted_from else None
    return converted, input_notes(source, depth, size)


def say_read(notes: tuple[str | None, list[str]]) -> list[str]:
    """Say `read_notes`' line and warnings; the warnings."""
    converted, warnings = notes
    if converted:
        say(converted)
    for note in warnings:
        warn(note)
    return warnings


def say_left(made: list[tuple[int, float]], todo: list[int]) -> None:
    """After an image of several: how long the ones still to make take at this run's pace."""
    from hires.eta import duration, left_after

    left = left_after(made, todo)
    if todo and left is not None:
        say(f"{len(todo)} more to make: {duration(left)} at this run's pace")


def planned_here(gpu: str | None, components) -> bool:
    """Whether the plan's times are this run's to show: not when --gpu names another machine
    than the one it runs on (a CPU run's `--gpu h100` would time it at an H100's rate), which
    is said once; its estimates then come from this run's own pace."""
    from hires.cli_output import Quiet
    from hires.gpus import card, card_key, local_gpu

    if gpu is None:
        return True
    if components.device.type == "cuda" and (card(gpu) is None or
                                             local_gpu() == card_key(gpu)):
        return True  # this card, or a rate measured for the one it runs on
    where = "the CPU" if components.device.type == "cpu" else str(components.device)
    note = (f"--gpu {gpu} plans another machine: this run is on {where}, and its time "
            "estimates come from its own pace")
    if note not in Quiet.warned:  # once a command
        Quiet.warned.add(note)
        say(note)
    return False
