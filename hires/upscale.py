"""`upscale()`: an existing image made larger through the x2 stages (`hires up`).

The same stages as `generate()`, but the first starts from the user's image: resized to the
first stage's size, encoded by the tiled VAE, its latents' statistics the anchor every stage
returns to. Each stage is scored against the input: its result downscaled to the input's size,
PSNR in dB (higher is more faithful).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from hires import resume
from hires.addons import attached
from hires.job import UPSCALE_STRENGTH, Job, JobError, check_side
from hires.library import (
    check_arguments,
    check_callback,
    check_flags,
    check_known,
    given_only,
    in_keywords,
    keyword_notes,
    library_job,
    plain_numbers,
    print_size_overrides,
)
from hires.memory import current
from hires.models import Components, load, load_args
from hires.pipeline import Result, StageImage, _run, check_plan, plan_for
from hires.plan import Plan
from hires.progress import ProgressFn
from hires.sizes import sized_by_print, target_size


def upscale(
    image: str | os.PathLike | None = None,
    *,
    size: int | None = None,
    scale: float | None = None,
    width: int | None = None,
    height: int | None = None,
    print_size: str | None = None,
    strength: float | None = None,
    prompt: str | None = None,
    job: Job | None = None,
    components: Components | None = None,
    progress: ProgressFn | None = None,
    save_stages: bool | None = False,
    plan: Plan | None = None,
    checkpoint: str | Path | None = None,
    on_stage_image: StageImage | None = None,
    on_score: Callable[[int, float], None] | None = None,
    **overrides: Any,
) -> Result:
    """Upscale `image` (a file's path; without one, `job`'s image); keyword overrides are Job
    fields. The output size: `size` (long side), `scale`, `width` with `height`, or
    `print_size` ("60x90cm", "A2"; the largest the input fits at `dpi`, 300 unless given);
    the input's aspect is kept unless both sides are given. Without any, a `job`'s own size
    where it is an upscale's (it has an `image`; its size other than Job's default 1024x1024,
    or recorded by a run); `strength` and `prompt` a `job`'s, else 0.3 and none.

    Returns a Result whose stages carry `psnr` against the input (`on_score(index, psnr)` as
    each stage ends), and whose job records the input's path and sha256 (so the job can be
    repeated); transparency comes back resized. `checkpoint` and `on_stage_image` as for
    `hires.generate`; errors too.
    """
    from hires.images import ImageInputError, InputImage, load_input

    check_known(upscale, overrides)
    if job is not None and not isinstance(job, Job):  # a prompt is prompt=, not job= here
        where = ("; the image is the first argument: hires.upscale(PATH, ...)"
                 if image is None and isinstance(job, (str, os.PathLike)) else
                 "; a prompt is prompt=..." if isinstance(job, str) else "")
        raise TypeError(f"job must be a hires.Job, got {type(job).__name__}{where}")
    # The job's own image is read as a run of it reads it: one piped in ('-') is refused, and
    # one changed since the job recorded its sha256 (a result's job) too.
    # The same path given as `image` is the job's image too; another is not (nor its size).
    from_job = isinstance(job, Job) and bool(job.image) and (image is None or (
        isinstance(image, (str, os.PathLike)) and os.fspath(image) == str(job.image)))
    if from_job:
        image = job.image
    if isinstance(image, (str, os.PathLike)) and not os.fspath(image).strip():
        raise ImageInputError("image is empty: give an image file's path")  # not the folder '.'
    if not isinstance(image, (str, os.PathLike, InputImage)):
        raise TypeError(f"image must be an image file's path (str or Path), got "
                        f"{type(image).__name__}; save an in-memory image to a file first (its "
                        "path and sha256 are recorded, so the upscale can be repeated)")
    check_callback("on_stage_image", on_stage_image, "(index, image)")
    check_callback("on_score", on_score, "(index, psnr)")
    check_arguments(plan, checkpoint)
    save_stages = check_flags(save_stages=save_stages)["save_stages"]
    sizes = plain_numbers({"size": size, "scale": scale, "width": width, "height": height})
    size, scale, width, height = sizes.values()
    overrides = plain_numbers(given_only(overrides))
    if print_size is not None and not isinstance(print_size, str):
        raise TypeError(f"print_size must be text like '60x90cm' or 'A2', got "
                        f"{type(print_size).__name__}")
    with in_keywords():
        if "aspect" in overrides:  # as `hires up`, which has no --aspect
            raise JobError("an upscale keeps the input's aspect; drop aspect (or give width "
                           "and height)")
        check_size_args(size=size, scale=scale, width=width, height=height,
                        print_size=print_size)
        if all(v is None for v in (size, scale, width, height, print_size)):
            width, height = job_size(job) if from_job else (None, None)
            if width is None and isinstance(job, Job) and (job.width, job.height) != (
                    Job.width, Job.height):  # a size, but not this upscale's: said why not
                whose = "its own input's" if job.image else "a generated image's"
                raise JobError(f"give one of size, scale, width/height or print_size for the "
                               f"output size: the job's {job.width}x{job.height} is {whose}, "
                               f"not this input's (width={job.width}, height={job.height} "
                               "makes it)")
        source = (image if isinstance(image, InputImage) else load_source(job) if from_job
                  else load_input(Path(image)))
        if print_size is not None:
            printed = print_size_overrides({**overrides, "print_size": print_size, "size": size,
                                            "scale": scale, "width": width, "height": height},
                                           source.rgb.size)
            w, h = printed.pop("width"), printed.pop("height")
            overrides = {**overrides, **printed}
        else:
            w, h = target_size(source.rgb.size, size=size, scale=scale, width=width,
                               height=height)
        # The input image and the final size before the checks: a ControlNet without
        # `control` is fed the image, and a format's size limit is the output's.
        job = library_job(job, {**job_text(job, prompt, strength), **overrides,
                                "image": str(source.path), "width": w, "height": h},
                          components, progress)
        job = sized_by_print(job, print_size)
        result = upscale_job(job, source=source, components=components, progress=progress,
                             save_stages=save_stages, plan=plan, checkpoint=checkpoint,
                             on_stage_image=on_stage_image, on_score=on_score)
    # The input's notes name the CLI's flag, which the CLI's log says them by: here, the keyword.
    result.warnings = keyword_notes(result.warnings)
    return result


def job_size(job: Any) -> tuple[int | None, int | None]:
    """An upscale `job`'s width and height where it gives them: other than Job's default
    square (which would crop most inputs), or recorded by a run (its image_sha256); else
    (None, None). A job from noise gives none: its size is what it generated."""
    if not isinstance(job, Job) or job.image is None:  # a gen job's size is its own output's
        return None, None
    if (job.width, job.height) != (Job.width, Job.height) or job.image_sha256:
        return job.width, job.height
    return None, None


def job_text(job: Any, prompt: str | None, strength: float | None) -> dict[str, Any]:
    """The prompt and strength to set over `job`: the keywords given, else the job's own
    (a strength other than gen's default), else up's strength and no prompt."""
    values: dict[str, Any] = {} if prompt is None else {"prompt": prompt}
    if strength is not None:
        values["strength"] = strength
    elif not isinstance(job, Job) or job.strength == Job.strength:
        values["strength"] = UPSCALE_STRENGTH
    return values


def check_size_args(**sizes: Any) -> None:
    """`upscale`'s size, scale, width and height: numbers in range, as their flags are, and
    only one way of sizing (print_size's clash says what to drop)."""
    printed = sizes.pop("print_size", None)
    given = [name for name, on in (("size", sizes["size"] is not None),
                                   ("scale", sizes["scale"] is not None),
                                   ("width/height", sizes["width"] is not None
                                    or sizes["height"] is not None)) if on]
    if len(given) > 1 and printed is None:
        raise JobError("give only one of size, scale, width/height or print_size")
    for name, value in sizes.items():
        if value is None:
            continue
        if name == "scale":
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
                    math.isfinite(value) and value > 0):
                raise JobError(f"scale must be a positive number, got {value!r}")
        elif isinstance(value, bool) or not isinstance(value, int):
            raise JobError(f"{name} must be a whole number of pixels, got {value!r}")
        else:
            check_side(name, value)


def load_source(job: Job):
    """The job's input image, checked against the hash recorded when it first ran."""
    from hires.images import load_input

    if str(job.image) == "-":  # hires up's record of an image piped in: nothing to read
        raise JobError("this job's image came on stdin ('-'); give its file: "
                       "dataclasses.replace(job, image='photo.png')")
    source = load_input(Path(job.image))
    check_unchanged(job, source.sha256)
    return source


def check_unchanged(job: Job, sha256: str) -> None:
    """Refuse an input (of `sha256`) other than the one the job recorded when it ran."""
    if job.image_sha256 and job.image_sha256 != sha256:
        raise JobError(f"{job.image} has changed since this job ran (its sha256 differs); "
                       "restore the original, or upscale the new file with hires up")


def upscale_job(job: Job, *, source: Any = None, components: Components | None = None,
                progress: ProgressFn | None = None, save_stages: bool = False,
                plan: Plan | None = None, checkpoint: str | Path | None = None,
                on_stage_image: StageImage | None = None,
                on_score: Callable[[int, float], None] | None = None) -> Result:
    """A complete upscale Job (`job.image` set, width/height final) run as `upscale` does;
    `checkpoint` and `on_stage_image` as for `hires.generate`; `on_score(index, psnr)` as
    each stage's image is scored against the input."""
    from hires.images import (
        attach_alpha,
        attach_alpha16,
        fidelity,
        greyed,
        greyed16,
        input_notes,
    )

    source = source or load_source(job)
    job = replace(job, image_sha256=source.sha256)
    if job.seed is None:
        # A stopped run's (its checkpoint's), so that the run goes on from it
        job = replace(job, seed=resume.seed_for(job, checkpoint))
    comps = components or load(*load_args(job))
    if plan is not None:  # a caller's: the job's own schedule, before any work
        check_plan(job, comps, plan, source.rgb.size)
    plan = plan or plan_for(job, comps, source=source.rgb.size,
                            stage_images=save_stages or on_stage_image is not None)
    def on_decoded(index: int, result: Image.Image) -> float:
        score = fidelity(result, source)
        if on_score is not None:
            on_score(index, score)
        return score

    with attached(comps, job, source.rgb) as addons, torch.inference_mode(), \
            current(comps.device):
        result = _run(job, comps, plan, progress, save_stages, source=source.rgb,
                      on_decoded=on_decoded, addons=addons,
                      checkpoint=Path(checkpoint) if checkpoint else None,
                      on_stage_image=on_stage_image)
    result.image = attach_alpha(result.image, source.alpha)
    if result.pixels16 is not None:
        result.pixels16 = attach_alpha16(result.pixels16, source.alpha)
    if source.grey:  # grey in, grey out
        result.image = greyed(result.image)
        if result.pixels16 is not None:
            result.pixels16 = greyed16(result.pixels16)
    notes = input_notes(source, job.depth, (job.width, job.height))
    result.warnings += [n for n in notes if n not in result.warnings]
    result.source = {"path": str(source.path), "sha256": source.sha256,
                     "width": source.rgb.width, "height": source.rgb.height}
    return result
