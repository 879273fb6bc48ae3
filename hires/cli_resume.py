"""What the CLI says of a stopped run's checkpoint: whether a run goes on from it, and, when a
run stops, what it keeps for the next one."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from hires.cli_output import say, tell, warn


def stages_upto(stage: int) -> str:
    """'stage 0', 'stages 0-2'."""
    return "stage 0" if stage == 0 else f"stages 0-{stage}"


def kept_job(job, source=None):
    """The job as its checkpoint records it: an upscale's records its `source` image's sha256."""
    from dataclasses import replace

    return replace(job, image_sha256=source.sha256) if source is not None else job


def kept_stage(kept: Path, job, plan, source=None) -> int | None:
    """The last stage of this job that the checkpoint `kept` holds, if any."""
    from hires import resume

    return resume.stage_of(kept, kept_job(job, source), plan) if kept.exists() else None


def lost_stage_image(stage_files: list[Path], stage: int, job) -> str | None:
    """--save-stages: '{NAME} is cut short' (or not its stage image) for the first image of
    the stages before `stage` that is there but not this job's of its stage; None when none
    is. A run goes on from a checkpoint only where none is (one there is to be made again;
    the last kept stage is decoded again). Those not there are `missing_stage_images`'."""
    from hires.cut_short import cut_short
    from hires.runs import stage_of_this_job

    lost = [p for i, p in enumerate(stage_files[:stage]) if p.exists()
            and not (stage_of_this_job(p, job, i) and cut_short(p) is None)]
    if not lost:
        return None
    cut = cut_short(lost[0])
    return f"{lost[0].name} {f'is {cut}' if cut else 'is not its stage image'}"


def missing_stage_images(stage_files: list[Path], stage: int) -> str | None:
    """--save-stages: the words for the images of the stages before `stage` that are not on
    disk (never saved: --save-stages added on resuming; or removed), which a run going on
    from its checkpoint does not make; None when all are there. The advice keeps the seed:
    --no-resume alone draws another, whose run the stage images there are in the way of (an
    image's own seed, named, is not the command's --seed of several images)."""
    missing = [p.name for p in stage_files[:stage] if not p.exists()]
    if not missing:
        return None
    return (f"without {', '.join(missing)}, not on disk (--save-stages; --no-resume, with "
            "--seed fixing the run's seed, makes every stage's image, starting over)")


def say_resume(kept: Path, job, plan, source=None, stage_files: list[Path] | None = None,
               worded=None) -> str | None:
    """Say whether a run goes on from a stopped one's checkpoint. With --save-stages
    (`stage_files`) it does only if the images of the stages it holds are this job's, on disk
    (all but its last, which the next stage decodes again); else it starts over. Returns
    the line said when the checkpoint is not this job's: the run's warnings say it again.
    `worded`: its warnings as said (a batch's name the job)."""
    worded = worded or (lambda said: said)
    from hires import resume

    if not kept.is_file():
        return None
    # Said before the work, as the run would otherwise say it only at the end: a flag changed
    # by mistake costs the stages kept.
    why = resume.why_not(kept, kept_job(job, source), plan)
    if why is not None:
        said = resume.starting_over(kept, why)
        warn(worded(said))  # the stages it kept are lost to this run: a script greps for it
        return said
    stage = kept_stage(kept, job, plan, source)
    if stage is None:
        return None
    lost = lost_stage_image(stage_files or [], stage, job)
    if lost:
        warn(worded(f"{kept.name} holds {stages_upto(stage)} of this job, but {lost} "
                    "(--save-stages): starting over"))
        resume.remove(kept)
        return None
    # hours of a 16K job's stages are not thrown away for their previews
    if missing := missing_stage_images(stage_files or [], stage):
        warn(worded(f"{kept.name} holds {stages_upto(stage)} of this job: going on from it, "
                    f"{missing}"))
    if stage == len(plan.stages) - 1:
        say(f"  resuming: every stage was kept in {kept.name}; only the decode is left")
    else:
        say(f"  resuming: {stages_upto(stage)} {'was' if stage == 0 else 'were'} kept in "
            f"{kept.name}")
    return None


@contextmanager
def saying_what_is_kept(kept: Path, job, plan, source=None) -> Iterator[None]:
    """A run that stops (an error, Ctrl-C) says what its checkpoint keeps for the next one
    (with -q too: it is about the result)."""
    from hires.output import OutputExists

    try:
        yield
    except BaseException as e:
        stage = kept_stage(kept, job, plan, source)
        # Another run saved there first: the same command would meet its file again.
        command = "the same command with --overwrite" if isinstance(e, OutputExists) \
            else "the same command"
        if stage == len(plan.stages) - 1:
            tell(f"{kept} keeps every stage: {command} only decodes it")
        elif stage is not None:
            tell(f"{kept} keeps {stages_upto(stage)}: {command} goes on from there")
        raise


def stopped_beside(image: Path, job) -> str | None:
    """For `--from` a stage image (NAME.stage1.png) with no -o: where a stopped run of this
    job kept its stages beside it, the -o that goes on from them (the run wrote a new image
    in the current folder, every stage again, without a word); None where none is."""
    import glob
    import re

    from hires import resume

    named = re.fullmatch(r"(.+)\.stage\d+", image.stem)
    if named is None:
        return None
    for kept in sorted(image.parent.glob(glob.escape(named[1]) + ".*" + resume.SUFFIX)):
        if resume.seed_of(kept, job) == job.seed:
            target = kept.with_name(kept.name[:-len(resume.SUFFIX)])
            return f"{kept} keeps a stopped run of this job: -o {target} goes on from it"
    return None


def kept_words(kept: Path, job, plan, source=None) -> str | None:
    """What a checkpoint of this job keeps, as --no-resume says it throws it away: 'stages
    0-1', or 'stages 0-1 of seed 7' for a stopped run that drew another seed (a run without
    --seed draws anew: its checkpoint at the image's name went without a word); None when it
    is of another job."""
    from hires import resume

    if not kept.is_file():
        return None
    stage = kept_stage(kept, job, plan, source)
    if stage is not None:
        return stages_upto(stage)
    seed = resume.seed_of(kept, kept_job(job, source))
    if seed is None:
        return None
    stage = kept_stage(kept, job.merged({"seed": seed}), plan, source)
    return f"{stages_upto(stage)} of seed {seed}" if stage is not None else None
