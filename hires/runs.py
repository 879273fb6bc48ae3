"""The images one `hires gen` or `hires up` makes: a job per image (its prompt and seed), where
each goes, and every check that can fail, all before a model loads."""

from __future__ import annotations

import glob
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hires import output as out
from hires import resume
from hires.job import LOSSY_FORMATS, SEEDS, Job, JobError
from hires.record import stage_path, stage_paths


@dataclass
class Run:
    """One image to make: its job (prompt, seed and format set) and its file."""

    job: Job
    path: Path
    made: dict[str, Any] | None = None  # the file holds this job's image already: its record


def _templated(output: str, field: str) -> str:
    """`output` (a plain name) with `field` before its suffix: what -o could be (x.png ->
    x_{index}.png); a '}' of the name doubled, as a template writes one ('a}}_{index}.png')."""
    path = Path(output.replace("}", "}}"))
    return str(path.with_name(f"{path.stem}_{field}{path.suffix}"))


def plan_runs(jobs: list[Job], output: str | None, *, n: int = 1,
              fmt_flag: str | None = None, overwrite: bool = False,
              resume_runs: bool = True, preview: bool = False,
              stage_images: bool = False, alpha: frozenset[str] = frozenset(),
              quality_flag: bool = False) -> list[Run]:
    """Each job (a prompt of `hires gen`, an input image of `hires up`) `n` times, seeds
    counting up from the jobs' seed for each (one drawn at random if they have none: the
    stopped run's, when `resume_runs` finds one); each image's path from `output` (a file,
    folder or template). Raises on any name, format or input that cannot work. An image
    already at its path, made by the same settings, is not made again (`Run.made`) unless
    `overwrite`. A `preview` is each image's first stage, at NAME.stage0.png; `stage_images`
    (--save-stages): the stage images' names must be free too, or this job's. `alpha`: the
    upscale inputs (as their jobs name them) that keep an alpha channel, which the output
    carries too. A job's quality is dropped for a PNG or TIFF (a preset's or a record's is
    for the lossy formats); `quality_flag` (--quality given) makes that a JobError."""
    todo = [(job, k) for job in jobs for k in range(n)]
    many = len(todo) > 1
    check_output_for_many(jobs, output, many)
    path_of = path_namer(jobs, output, many)
    image = image_namer(path_of, preview=preview, fmt_flag=fmt_flag, quality_flag=quality_flag)
    stage = 0 if preview else None  # the image each file holds: its first stage's alone
    base = first_seed(jobs[0].seed, todo, image, path_of, resume_runs=resume_runs,
                      many=many, overwrite=overwrite, stage=stage)
    runs: list[Run] = []
    inputs = read_files(jobs)
    for i, (job, k) in enumerate(todo):
        one, path = image(i, job, base + k)
        runs.append(checked_run(one, path, runs, output, alpha=alpha, overwrite=overwrite,
                                stage_images=stage_images, inputs=inputs, stage=stage))
    return runs


def check_output_for_many(jobs: list[Job], output: str | None, many: bool) -> None:
    """JobError when `many` images would all go to the one file `output` names (a stream's
    name, /dev/stdout, is refused first: a template of it would write in /dev)."""
    if output is not None and output != "-":
        from hires.output import refuse_stream

        refuse_stream(output)
    # a folder as output_path reads one: `out/.` and `~/pics` too
    if many and output and "{" not in output and not Path(output).expanduser().is_dir() \
            and not out.names_folder(output):
        # Only fields that differ between these images can tell them apart: {name} is the
        # same for --n's images of one prompt, {seed} for several prompts (they share it).
        fields = ("{name} or {index}" if all(j.image for j in jobs) else
                  "{index} or {seed}" if len(jobs) == 1 else "{index}")
        raise JobError(f"several images need -o to be a folder or a template with {fields} "
                       f"(-o '{_templated(output, fields[:fields.index('}') + 1])}')")


def path_namer(jobs: list[Job], output: str | None,
               many: bool) -> Callable[[int, Job, int], Path]:
    """What gives image i's path, for its job (seed and format set) and a seed, from
    `output`; `many` images get names that tell them apart."""
    # Several inputs are told apart by their names; several prompts (or --n) by their place.
    by_name = len({job.image for job in jobs}) == len(jobs) > 1 and all(j.image for j in jobs)
    # Inputs of one name (a/photo.png, b/photo.jpg) under hires' names: their number added,
    # as the user named none of them and wants every one made.
    parts = [out.stem_part(input_name(job.image)) for job in jobs] if by_name else []
    shared = {part for part in parts if parts.count(part) > 1}

    def path_of(i: int, one: Job, seed: int) -> Path:
        name = input_name(one.image) if one.image else ""  # an upscale's end in its input's
        path = out.output_path(output, width=one.width, height=one.height, seed=seed,
                               fmt=one.format, index=i, prompt=one.prompt, name=name)
        # hires' own names (no template, or one of a folder: `out_{width}/`) numbered
        if many and (output is None or "{" not in output or out.names_folder(output)):
            part = out.stem_part(name) if by_name else ""
            end = f"{part}_{i:03d}" if part in shared else part or f"{i:03d}"
            return path.with_name(f"{path.stem}_{end}{path.suffix}")
        return out.named_for_input(path, output, name, width=one.width, height=one.height,
                                   seed=seed, fmt=one.format)

    return path_of


def image_namer(path_of: Callable[[int, Job, int], Path], *, preview: bool,
                fmt_flag: str | None,
                quality_flag: bool) -> Callable[[int, Job, int], tuple[Job, Path]]:
    """What gives image i's job (seed and format set) and path, for its job and seed."""

    def image(i: int, job: Job, seed: int) -> tuple[Job, Path]:
        """Image i's job (seed and format set) and path."""
        # stdin's prompts checked too; --n counts on past the last seed to 0, as it made them
        one = job.merged({"seed": 0 if seed == SEED_MARK else seed % SEEDS}).validate()
        path = path_of(i, one, seed if seed == SEED_MARK else one.seed)
        if preview:
            path = stage_path(path, 0)
        fmt = out.format_of(path, job.format, fmt_flag)
        if fmt not in LOSSY_FORMATS and one.quality is not None:
            if quality_flag:
                # the file, where its name holds no seed (one not drawn yet said "s0"), as
                # it will be written (in its folder: "r.tif" was zz/r.tif)
                if path_of(i, one, SEED_MARK) == path_of(i, one, 0):
                    raise JobError(f"{path}: {out.QUALITY_LOSSLESS}")
                raise JobError(f"{out.QUALITY_LOSSLESS} (this output is {fmt})")
            one = one.merged({"quality": None})
        return one.merged({"format": fmt}), path

    return image


def first_seed(seed: int | None, todo: list[tuple[Job, int]],
               image: Callable[[int, Job, int], tuple[Job, Path]],
               path_of: Callable[[int, Job, int], Path], *, resume_runs: bool, many: bool,
               overwrite: bool, stage: int | None = None) -> int:
    """The first image's seed: the jobs' `seed`, else a stopped run's (its checkpoint's, or
    that of the images it made: `stage`'s alone for a preview), else one drawn at random."""
    base = seed
    if base is None and resume_runs:
        base = checkpoint_base(todo, image, path_of)
    if base is None and many and not overwrite:
        # Stopped between images, it kept no checkpoint: the images it made say its seeds.
        base = made_base(todo, image, stage)
    if base is None:
        base = secrets.randbelow(2**32)
    return base


def checkpoint_base(todo: list[tuple[Job, int]],
                    image: Callable[[int, Job, int], tuple[Job, Path]],
                    path_of: Callable[[int, Job, int], Path]) -> int | None:
    """The first seed of a stopped run of these images, as its checkpoint says; None if
    no checkpoint says one."""
    # A stopped run of this command drew its seeds at random: its checkpoint says which.
    # Folders without any checkpoint are listed once, not once per image.
    kept_in: dict[Path, bool] = {}
    for i, (job, k) in enumerate(todo):
        one, path = image(i, job, 0)
        if path.parent not in kept_in:
            kept_in[path.parent] = any(path.parent.glob("*" + resume.SUFFIX))
        if not kept_in[path.parent]:
            continue
        seed = resume.stopped_seed(path.parent, one,
                                   lambda s, i=i, one=one: path_of(i, one, s))
        if seed is not None:
            return seed - k
    return None


def checked_run(one: Job, path: Path, runs: list[Run], output: str | None, *,
                alpha: frozenset[str], overwrite: bool, stage_images: bool,
                inputs: dict[str, str], stage: int | None = None) -> Run:
    """The Run of image `one` at `path`, after every check that can fail: its path is its
    own (not another of `runs`', nor an input: `inputs`, `read_files`'), its format fits,
    and its files are free."""
    from hires.addons import check_inputs
    from hires.batch import said_where_given
    from hires.model_refs import ModelError

    if any(path == other.path for other in runs):
        # Only a template can: hires' own names are told apart (path_namer).
        raise JobError(f"two images would both write {path}; number them: -o "
                       f"{numbered(output)}")
    # --save-stages: NAME.stage0.png is the input; another job's input is one too, where
    # this image is written (one made already is kept: a re-run may upscale it)
    made = None if overwrite else made_by(path, one, stage)
    written = [path, *(stage_paths(path, stage_count(one)) if stage_images else [])]
    for file in written:
        check_not_input(file, one.image)
        for ref, what in {} if made is not None else inputs.items():
            check_not_input(file, ref, what=what)
    problem = out.format_problem(one.format, one.width, one.height, one.depth,
                                 4 if one.image in alpha else 3)
    if problem:
        raise JobError(f"{path.name}: {problem}")
    if made is None:
        check_free(path, one, overwrite, stage)
        if stage_images:
            check_stages_free(path, one, overwrite)
    try:
        check_inputs(one)
    except (JobError, ModelError) as e:  # a preset's LoRA, say: named as its key
        raise said_where_given(e, one) from None
    return Run(one, path, made)


def check_stages_free(path: Path, job: Job, overwrite: bool) -> None:
    """--save-stages: each stage image's name is free, or holds this job's image of that
    stage (whole or not)."""
    for i, stage_file in enumerate(stage_paths(path, stage_count(job))):
        if not stage_of_this_job(stage_file, job, i):
            out.check_writable(stage_file, overwrite)


def stage_of_this_job(path: Path, job: Job, stage: int) -> bool:
    """Whether the file at `path` is `job`'s image of `stage` (whole or not), which a run of
    the job may write over and one going on from a checkpoint keeps: not its whole image, nor
    another stage's. A run may go on with another dpi, depth or VAE tiling (README), so a
    stopped run's stage images made with the ones before are this job's too."""
    from hires.batch import changed_input, of_this_job, recorded, recorded_stage
    from hires.resume import same_latents

    if recorded_stage(path) != stage:
        return False
    return of_this_job(path, job) or (same_latents((recorded(path) or {}).get("job"), job)
                                      and changed_input(path, job) is None)


def check_free(path: Path, job: Job, overwrite: bool, stage: int | None = None) -> None:
    """OutputExists when `path` is taken, unless `overwrite`: by another image, or by this
    job's made with an input or add-on file as it was before an edit (its sha256 recorded), or
    cut short, or another stage's image of it than `stage`'s (None: the whole job's)."""
    from hires.batch import changed_input, older_plan, recorded_hash, recorded_stage, settings_hash
    from hires.cut_short import cut_short

    # this job's file (its metadata read once): cut short, or of inputs edited since
    ours = not overwrite and path.is_file() and recorded_hash(path) == settings_hash(job)
    cut = cut_short(path) if ours else None
    changed = changed_input(path, job) if ours else None
    held = recorded_stage(path) if ours else stage
    if held != stage and not cut and not changed:  # a --preview's where the whole one goes
        what = (f"stage {held} image alone (--preview, --save-stages), not the whole image"
                if held is not None else f"whole image, not the stage {stage} image alone")
        raise out.OutputExists(f"{path} holds this job's {what} this run makes; pass "
                               "--overwrite to replace it, or choose another -o")
    if cut:
        raise out.OutputExists(f"{path} holds this job's image, {cut} (a copy cut short?); "
                               "pass --overwrite to make it again, or choose another -o")
    if ours and stage is not None and not changed and (older := older_plan(path, job, stage)):
        raise out.OutputExists(f"{path} holds this job's stage {stage} image at {older} (an "
                               "older hires'); pass --overwrite to make it again, or choose "
                               "another -o")
    if changed:
        from hires.addons import elsewhere_hint

        raise out.OutputExists(f"{path} was made with {changed} as it was before an edit (its "
                               f"sha256 differs){elsewhere_hint(changed)}; pass --overwrite to "
                               "make it again, or choose another -o")
    out.check_writable(path, overwrite)


def check_not_input(path: Path, image: str | None, change: str = "-o",
                    what: str = "the input image") -> None:
    """JobError when `path` is the upscale input `image` itself (by another name or a link
    too), --overwrite or not: the input would be gone, and the record's sha256 of it (what
    `gen --from` checks) would no longer match. `change`: what the user is to change; `what`:
    the input, as said."""
    from hires.piped import STDIN

    if image and image != STDIN and os.path.exists(path) and os.path.exists(image) \
            and os.path.samefile(path, image):
        raise JobError(f"{path} is {what}; hires does not write over its inputs: "
                       f"choose another {change}")


def read_files(jobs: list[Job]) -> dict[str, str]:
    """Every file the jobs of one command read, each with what it is: an image written over
    one would lose it, for a later job too (`hires up a.png b.png -o '{name}2.png'`)."""
    from hires.piped import STDIN

    found: dict[str, str] = {}
    for job in jobs:
        for key, what in (("image", "an input image"), ("control", "a control image"),
                          ("ip_image", "an IP-Adapter image")):
            ref = getattr(job, key)
            if ref and ref != STDIN:
                found.setdefault(ref, f"{what} ({ref})" if what != "an input image" else what)
    return found


# A seed no name holds by chance: where an image's name shows its seed, this shows where.
SEED_MARK = 918273645546372819  # beyond the seeds (job.SEEDS): a placeholder for names


def made_base(todo: list[tuple[Job, int]],
              image: Callable[[int, Job, int], tuple[Job, Path]],
              stage: int | None = None) -> int | None:
    """The first seed of a stopped run of these images (`todo`: each job and its place among
    its `n`) that drew it at random and made some of them, not all: each image's file with
    its name and this job's settings at the seed it records gives one. The newest such run's;
    None if none (a run that made them all is done: the command makes new ones)."""
    found: dict[int, float] = {}  # first seed: when its newest image was made
    for i, (job, k) in enumerate(todo):
        _, named = image(i, job, SEED_MARK)
        pattern = glob.escape(named.name).replace(str(SEED_MARK), "*")
        for path in named.parent.glob(pattern) if named.parent.is_dir() else []:
            seed = recorded_seed(path)
            if seed is None or seed < k:
                continue
            one, at = image(i, job, seed)
            if at == path and made_by(path, one, stage):
                found[seed - k] = max(found.get(seed - k, 0.0), path.stat().st_mtime)
    made = {base: [path if made_by(path, one, stage) else None for one, path in
                   (image(i, job, base + k) for i, (job, k) in enumerate(todo))]
            for base in found}
    # Names without the image's number ('{seed}.png') are shared: a finished run's second
    # image, S+1.png, is also the first of a run from S+1. Images of a run that made them
    # all are no sign of another one stopped (each rerun resumed "S+1" and made one image).
    done = {base for base in found if all(made[base])}
    finished = {path for base in done for path in made[base]}

    def prefix(base: int) -> int:  # a run makes its images in order: a stopped one's lead
        return next((k for k, path in enumerate(made[base]) if path is None), len(todo))

    # The newest first; of those its newest image ties (S+1.png is also the first of a run
    # from S+1), the one made in order from its first: S, S+1 of a run stopped before S+2.
    for base in sorted(found, key=lambda b: (found[b], prefix(b)), reverse=True):
        if base not in done and {p for p in made[base] if p} - finished:
            return base
    return None


def recorded_seed(path: Path) -> int | None:
    """The seed the image at `path` records, if hires made it."""
    try:
        record = out.read_metadata(path)["hires"]
    except out.OutputError:
        return None
    job = record.get("job") if isinstance(record, dict) else None
    seed = job.get("seed") if isinstance(job, dict) else None
    return seed if isinstance(seed, int) and not isinstance(seed, bool) else None


def numbered(output: str | None) -> str:
    """`output` (a template) with the image's number first in its file name, quoted for a
    shell: what to give -o when its images would share names."""
    import shlex

    where = Path(output or "{name}")
    return shlex.quote(str(where.parent / f"{{index}}_{where.name}"))


def input_name(image: str) -> str:
    """An upscale input's name in its output's: its file's stem; "stdin" for piped bytes, as
    `batch -` names its jobs."""
    from hires.piped import STDIN

    return "stdin" if image == STDIN else Path(image).stem


def stage_count(job: Job) -> int:
    """How many stages `job` has, from its sizes alone (no weights): SDXL's native 1024 px, or
    the tiny model's. A run checks again with the loaded model's (hires.cli_runs.make_image)."""
    return len(_stage_sizes(job))


def stage_size(job: Job, stage: int) -> tuple[int, int]:
    """The size of `job`'s stage `stage`, as `stage_count` finds its stages."""
    return _stage_sizes(job)[stage]


def _stage_sizes(job: Job) -> list[tuple[int, int]]:
    """`job`'s stages' sizes, planned at its model's native size (no weights read)."""
    from hires.piped import image_size
    from hires.plan import stage_sizes, upscale_sizes
    from hires.tiny import TINY_SAMPLE_SIZE

    native = TINY_SAMPLE_SIZE * 8 if job.model == "tiny" else 1024
    if job.image:
        return upscale_sizes(job.width, job.height, image_size(job.image), native)
    return [(w, h) for w, h, _ in stage_sizes(job.width, job.height, native)]


def made_by(path: Path, job: Job, stage: int | None = None) -> dict[str, Any] | None:
    """The record of the image at `path` if `job` made it (it records the same settings, and
    its input and add-on files are the ones it records) and it is `stage`'s image (None: the
    whole job's); None for any other file, or none."""
    from hires.batch import made_already, recorded_result

    if not made_already(path, job, stage):
        return None
    return recorded_result(path) or {"path": str(path)}
