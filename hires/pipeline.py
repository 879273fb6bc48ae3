"""`generate()`, the library's one job from prompt to image, and `run_job`, the path it shares
with the CLI: a checked Job through its stages."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from warnings import warn as python_warn

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from hires import resume
from hires import vae as tiled_vae
from hires.addons import Addons, attached
from hires.controlnet import control_tensor
from hires.costs import model_shape
from hires.denoiser import Conditioning, Control, Denoiser
from hires.errors import NotFinite, dtype_name
from hires.gpus import fp32_share_for, local_gpu, rate_for
from hires.images import cover_size, resize_lanczos, to_8bit
from hires.job import Job, idle_strength
from hires.library import (
    check_arguments,
    check_callback,
    check_flags,
    check_known,
    in_keywords,
    keyword_notes,
    library_job,
    plan_arguments,
    with_prompt,
)
from hires.memory import GIB, current, free_memory, host_room, peak_memory, placed, reset_peak
from hires.models import Components, load, load_args, quiet_loading
from hires.plan import Plan, PlanError, Stage, budget_bytes, cheaper, make_plan
from hires.progress import Event, ProgressFn
from hires.sampling import (
    UpscaleKnobs,
    channel_stats,
    sample_base,
    sample_upscale,
    sigma_schedule,
)
from hires.strategy import applied
from hires.vae_memo import scratch_capped

__all__ = ["Result", "StageReport", "generate", "load", "plan_for"]


@dataclass
class StageReport:
    """What one stage did and cost."""

    index: int
    width: int
    height: int
    strength: float
    steps: int
    unet_evaluations: int
    seconds: float
    peak_memory: int | None
    strategy: str = "batched"
    estimated_peak: int | None = None
    retried_with: str | None = None  # the cheaper strategy after an out-of-memory error
    psnr: float | None = None  # upscales: the result, downscaled, against the input image (dB)


@dataclass
class Result:
    """The image, the job as run (seed filled in), its plan and per-stage timings."""

    image: Image.Image
    job: Job
    plan: Plan
    stages: list[StageReport]
    seconds: float
    peak_memory: int | None
    stage_images: list[Image.Image] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    linfusion: str | None = None  # the LinFusion checkpoint that ran; None: original attention
    source: dict[str, Any] | None = None  # upscales: the input's path, sha256 and size
    addons: dict[str, Any] = field(default_factory=dict)  # what ran: lora, controlnet, ip_adapter
    resumed: int | None = None  # the last stage a stopped run's checkpoint gave this one
    # A job of `depth` 16: the image's H x W x 3 (4 with an upscaled image's alpha) uint16
    # samples, which its file holds (`image` is them rounded to 8 bits); None for 8-bit jobs.
    pixels16: np.ndarray | None = None
    # The job's keys that named local files by a relative path (`hires.record.local_refs`),
    # found as the result is made: after an os.chdir, the paths would name other files.
    local: list[str] | None = None
    # The precision the VAE ran in ('bf16', 'fp32', 'fp16'): `vae_dtype` auto's pick here,
    # which another machine's auto may not make (the record keeps it for `--from`).
    vae_dtype: str | None = None
    dtype: str | None = None  # the UNet's, as it ran: the components', not the job's word

    def __post_init__(self) -> None:
        if self.local is None:
            from hires.record import local_refs

            self.local = local_refs(self.job)

    @property
    def seed(self) -> int:
        return self.job.seed  # type: ignore[return-value]

    def save(self, path: str | Path, **options: Any) -> dict[str, Any]:
        """Write the image with hires' metadata (what `hires info` shows, `--from` runs again),
        via a temp file; return the record. `path` is read as `-o`'s: a folder (one that
        exists, or a name ending in `/`) holds it under hires' default name, a name without a
        format's suffix gets the job's format's, `~` is the home folder, and a `{seed}`-style
        template is filled ({seed}, {width}, {height}, {prompt}, {name}, {format}, {index}).
        Options: `overwrite`, `save_stages`, `quality` and `fmt` (as `hires.record.save` takes them;
        `format` is `fmt`). What the save warns of (a JPEG loses transparency) is in the
        record it returns (and the file's) and given to Python's `warnings`. A preview's (a run of
        `hires.plan.preview_of`'s plan) records itself as its job's stage 0, as `--preview`'s."""
        from hires.job import plain_number
        from hires.output import DiskRefused, OutputError, OutputUsage, disk_fix, in_library_terms
        from hires.record import save

        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"save takes a file's path (str or Path), got {type(path).__name__}"
                            "; e.g. result.save('out.png')")
        if not str(path).strip():
            raise OutputUsage("save needs a file's path, e.g. result.save('out.png')")
        if str(path) == "-":  # the CLI's `-o -`; here it would be a file named '-'
            raise OutputUsage("save writes a file, not stdout: give a file's path; to send the "
                             "image elsewhere, save it and copy the file")
        if "format" in options:  # as generate(format=...) names it; `fmt` is its old name
            given, fmt = options.pop("format"), options.get("fmt")
            if None not in (given, fmt) and given != fmt:
                raise TypeError("save() takes format= or fmt= (one option, two names), not "
                                "both")
            options["fmt"] = fmt if given is None else given
        # record.save's others (settings, recorded_as, stage, warn) write what the CLI knows of
        # a run into the record: not a caller's to set
        unknown = sorted(set(options) - {"overwrite", "save_stages", "quality", "fmt"})
        if unknown:
            raise TypeError(f"save() takes overwrite=, save_stages=, quality= and format=, not "
                            f"{unknown[0]}=")
        options = {**options, **check_flags(**{k: options[k] for k in ("overwrite", "save_stages")
                                               if k in options})}
        if "quality" in options:  # numpy's 50 is 50, as generate(quality=...) takes it
            options = {**options, "quality": plain_number(options["quality"])}
        # A preview's record says so, as the CLI's --preview's does: else `hires info` and
        # `--from` take its first stage for the whole job.
        if self.plan is not None and is_preview(self.plan):
            options = {"stage": 0, **options}
        try:
            return save(self, self._path(path, options.get("fmt")),
                        **{"warn": self._warned, **options})
        except DiskRefused as e:  # the result is still here: said what to do, as the CLI does
            said = str(in_library_terms(e))
            if "(a stage image)" not in said:
                said += f"; {disk_fix(e.errno)}, or save it elsewhere: the result is kept"
            raise DiskRefused(said, e.folder, e.errno) from None
        except OutputError as e:  # its message names the CLI's flags: say the keywords
            raise in_library_terms(e) from None

    def _path(self, path: str | os.PathLike, fmt: str | None) -> Path:
        """Where `save(path)` writes, named as `hires gen -o PATH` and `hires up -o PATH` name
        one image (an upscale's default name ends in its input's)."""
        from hires.job import format_name
        from hires.output import EXTENSIONS, named_for_input, output_path
        from hires.runs import input_name

        fmt = format_name(str(fmt)) if fmt else self.job.format
        if fmt not in EXTENSIONS:  # refused by the save, with what to give
            fmt = self.job.format
        name = input_name(self.job.image) if self.job.image else ""
        size = {"width": self.image.width, "height": self.image.height, "seed": self.seed}
        where = output_path(os.fspath(path), **size, fmt=fmt, prompt=self.job.prompt, name=name)
        return named_for_input(where, os.fspath(path), name, **size, fmt=fmt)

    def _warned(self, message: str) -> None:
        """A save's warning (in that save's record and file, not the result's `warnings`: a
        later save to PNG lost nothing), said through Python's warnings, as a script may never
        read a record."""
        python_warn(message, stacklevel=_callers_level())  # at the script's save() line


def _callers_level() -> int:
    """The `stacklevel` that names the first frame outside hires (the caller's line, for its
    warning filters): the depth inside hires varies with the path a save takes."""
    package = Path(__file__).parent
    frame, level = sys._getframe(1), 1
    while frame is not None and Path(frame.f_code.co_filename).parent == package:
        frame, level = frame.f_back, level + 1
    return level


def budget_for(job: Job, components: Components) -> int | None:
    """Device bytes the plan may use (`plan.budget_bytes`): --vram, else on a CPU --ram, else
    the device's free memory."""
    return budget_bytes(job.vram, job.ram, components.device.type == "cpu",
                        lambda: free_memory(components.device, components.parts))


def plan_for(job: Job, components: Components, *, gpu: str | float | None = None,
             source: tuple[int, int] | None = None, stage_images: bool = False,
             preview: bool = False) -> Plan:
    """The job's stages for this model, each with the fastest strategy that fits the budget;
    with `source` (an input image's size), the stages of an upscale from it. Times are for
    `gpu` (a hires.gpus name or TFLOP/s), else for the local GPU where it is in that table.
    `stage_images`: every stage's image is wanted; `preview`: only the first stage runs (see
    `make_plan`)."""
    gpu = plan_arguments(job, components, gpu)
    if gpu is None and components.device.type == "cuda":
        gpu = local_gpu()
    try:
        return make_plan(
            job.width, job.height, **_schedule_args(job, components, source),
            model=replace(shape_for(job, components), fp32_share=fp32_share_for(gpu)),
            budget=budget_for(job, components), offload=components.offload,
            vae_tile=job.vae_tile, vae_stats=job.vae_stats,
            rate=rate_for(gpu) if gpu else None, stage_images=stage_images, preview=preview,
        )
    except PlanError as e:
        e.job = job  # a print's job is told the dpi that fits (hires.library.fitted)
        raise


def _schedule_args(job: Job, components: Components,
                   source: tuple[int, int] | None) -> dict[str, Any]:
    """`make_plan`'s settings that make the job's schedule (`plan_for`'s, and `check_plan`'s):
    its stages' sizes, timesteps and global passes (the rest choose and price strategies)."""
    cfg = components.pipe.scheduler.config
    return dict(
        steps=job.steps, strength=job.strength, native=components.native,
        spacing=cfg.get("timestep_spacing", "leading"), train_steps=cfg["num_train_timesteps"],
        offset=cfg.get("steps_offset", 0), source=source, cosine_scale_2=job.cosine_scale_2,
        global_floor=job.global_floor, karras=job.karras,
        alphas_cumprod=components.pipe.scheduler.alphas_cumprod, upsample=job.upsample)


# A stage's schedule, each part with the words a mismatch is said in. Strategies and costs
# are not in it: a caller may replace them (the memory levers are why a plan is passed).
_SCHEDULE = (("size", "size"), ("kind", "start"), ("steps", "steps"),
             ("timesteps", "timesteps"), ("strength", "strength"), ("ratio", "dilation"),
             ("global_steps", "global passes"), ("upsample", "upsampling"))


def is_preview(plan: Plan) -> bool:
    """Whether `plan` is a job's preview (`preview_of`): one stage, smaller than the job."""
    return len(plan.stages) == 1 and (plan.stages[0].width, plan.stages[0].height) != (
        plan.width, plan.height)


def _schedule(stage: Stage) -> dict[str, Any]:
    return {"size": f"{stage.width}x{stage.height}", "kind": stage.kind, "steps": stage.steps,
            "timesteps": list(stage.timesteps), "strength": round(stage.strength, 6),
            "ratio": stage.ratio, "global_steps": stage.global_steps,
            "upsample": "latent" if stage.latent_upsample else "pixel"}


def check_plan(job: Job, components: Components, plan: Plan,
               source: tuple[int, int] | None = None) -> None:
    """JobError unless `plan` makes `job` (with `source`, an upscale from an image of that
    size): another job's plan made its image (another size, other steps) while the result
    and its record described this one. Its stages' strategies may differ; their schedule
    (sizes, timesteps, strength, global passes, upsampling) must be the job's own."""
    from hires.job import JobError

    want = make_plan(job.width, job.height, **_schedule_args(job, components, source))
    # The job's preview (`preview_of`): its first stage alone, which its save records as that
    # stage of the job (`is_preview`)
    stages = want.stages[:1] if len(plan.stages) == 1 else want.stages
    problem = None
    if (plan.width, plan.height) != (want.width, want.height):
        problem = f"it makes {plan.width}x{plan.height}, the job {want.width}x{want.height}"
    elif len(plan.stages) != len(stages):
        problem = f"it has {len(plan.stages)} stages, the job {len(stages)}"
    else:
        for got, wanted in zip(plan.stages, stages):
            have, need = _schedule(got), _schedule(wanted)
            key, words = next(((k, w) for k, w in _SCHEDULE if have[k] != need[k]),
                              ("", ""))
            if key:
                problem = (f"it has {words} {have[key]} at stage {got.index}, where the job "
                           f"has {need[key]}")
                break
    if problem is not None:
        raise JobError(f"plan is not this job's: {problem}; make it with "
                       "hires.pipeline.plan_for(job, components) for the job as called (only "
                       "its stages' strategies may be changed)")


def shape_for(job: Job, components: Components):
    """The model as the planner sees it, with the job's ControlNet (loaded, or one like it),
    its guidance (CFG or not) and the CPU memory it may fill (`--ram`, else what is free);
    an IP-Adapter's weights in its UNet."""
    from hires import ip_adapter
    from hires.addons import runs_controlnet, runs_ip_adapter
    from hires.unet_costs import with_ip_adapter

    net = None
    if runs_controlnet(job):
        from hires.controlnet import controlnet_like

        net = components.controlnets.get(job.control_model) or controlnet_like(components.unet)
    shape = replace(model_shape(components, controlnet=net), guided=job.guidance > 1)
    if runs_ip_adapter(job) and not ip_adapter.is_loaded(components.pipe):
        # attached after the plan: its weights, as they will sit in the UNet's blocks
        shape = replace(shape, unet=with_ip_adapter(shape.unet, shape.dtype_bytes,
                                                    ip_adapter.projection_params(
                                                        job.ip_adapter, job.allow_pickle)))
    if job.ram is not None and shape.on_gpu:
        shape = replace(shape, host=host_room(job.ram * GIB))
    if job.disk is not None:  # a cap: a run cannot use more than is free
        shape = replace(shape, disk=min(job.disk * 1e9, shape.disk))
    return shape


def vae_scratch_room(job: Job, stage: Stage | None = None) -> float:
    """The scratch disk the exact VAE mode's files may take, as the plan counts it
    (`shape_for`'s disk): --disk, at most what is free; 0 (none, and its passes recompute)
    where `stage`'s plan found recomputing faster than the files."""
    from hires.memory import disk_room, scratch_folder

    if stage is not None and stage.cost is not None and not stage.cost.vae_files:
        return 0.0
    room = disk_room(scratch_folder())
    return room if job.disk is None else min(job.disk * 1e9, room)


def generate(
    job: Job | str | None = None,
    *,
    components: Components | None = None,
    progress: ProgressFn | None = None,
    save_stages: bool | None = False,
    plan: Plan | None = None,
    checkpoint: str | Path | None = None,
    on_stage_image: StageImage | None = None,
    **overrides: Any,
) -> Result:
    """Make one image. Keyword overrides are Job fields: `generate(prompt="a fox", width=4096)`,
    or `size` (the long side) with `aspect`, or `print_size` ("60x90cm", "A2"; at `dpi`, 300
    unless given); `generate("a fox")` takes the prompt. An input `image` makes it an upscale:
    given as a keyword, it is `hires.upscale(image, ...)`, sized as that is.

    Returns a `Result` (the image, the job as run with its seed, each stage's report; `save`
    writes it). Raises TypeError for an argument of the wrong kind, `JobError` for a bad
    setting or an add-on that cannot load, `ModelError` for a model that cannot load or a Hub
    add-on not cached while the Hub is closed, `ImageInputError` for an input image that
    cannot be read, `PlanError` for a size that does not fit the device, `NotFinite` when the
    model or VAE overflows, `OutputError` for a `checkpoint` path that cannot be written
    (README: "From Python").

    `save_stages`: the result holds every stage's image (`Result.stage_images`).
    `on_stage_image(index, image)` is called as each stage but the last is decoded, so a
    caller can show or save it at once (it may come twice after an out-of-memory retry).
    `plan` (from `plan_for`, possibly with strategies replaced) overrides the planner; it
    must be this job's (its stages' sizes, timesteps and strength), or its `preview_of`:
    another job's is a JobError, before any work.
    `checkpoint` (`hires.resume.path_for(output)`): each finished stage is kept there, and a
    run of the same job that finds one goes on after its stage (without a seed, with the
    stopped run's; one it cannot go on from, or any with `save_stages`, is said in the
    result's warnings); remove it once the image is saved (`hires.resume.remove`).
    """
    given_image = overrides.get("image") is not None or (isinstance(job, Job) and job.image)
    if given_image:  # handed to hires.upscale: its keywords too
        from hires.upscale import upscale

        check_known(generate, overrides, upscale)
    else:
        check_known(generate, overrides)
    check_callback("on_stage_image", on_stage_image, "(index, image)")
    check_arguments(plan, checkpoint)
    save_stages = check_flags(save_stages=save_stages)["save_stages"]
    if (job is None or isinstance(job, (str, Job))) and given_image:
        # `hires up`'s sizes, not a Job's default 1024x1024 square (which squashed a wide
        # input, or shrank it): see hires.upscale. A Job's own size where it gives one.
        from hires.upscale import upscale

        if isinstance(job, str):
            overrides, job = with_prompt(job, overrides), None
        return upscale(overrides.pop("image", None), job=job, components=components,
                       progress=progress, save_stages=save_stages, plan=plan,
                       checkpoint=checkpoint, on_stage_image=on_stage_image, **overrides)
    with in_keywords():
        job = library_job(job, overrides, components, progress)
        result = run_job(job, components=components, progress=progress,
                         save_stages=save_stages, plan=plan, checkpoint=checkpoint,
                         on_stage_image=on_stage_image)
    result.warnings = keyword_notes(result.warnings)  # in the caller's words
    return result


def run_job(job: Job, *, components: Components | None = None,
            progress: ProgressFn | None = None, save_stages: bool = False,
            plan: Plan | None = None, checkpoint: str | Path | None = None,
            on_stage_image: StageImage | None = None, source: Any = None,
            on_score: Callable[[int, float], None] | None = None) -> Result:
    """One checked Job's image, as `generate` makes it, its errors in the CLI's words (the
    CLI's runs come here). A job with an input image is an upscale (`upscale_job`, with its
    `source`, loaded, and `on_score`: only an upscale has a score)."""
    if job.image:
        from hires.upscale import upscale_job

        return upscale_job(job, source=source, components=components, progress=progress,
                           save_stages=save_stages, plan=plan, checkpoint=checkpoint,
                           on_stage_image=on_stage_image, on_score=on_score)
    if job.seed is None:
        # A stopped run's (its checkpoint's), so that the run goes on from it
        job = replace(job, seed=resume.seed_for(job, checkpoint))
    comps = components or load(*load_args(job))
    if plan is not None:  # a caller's: the job's own schedule, before any work
        check_plan(job, comps, plan)
    plan = plan or plan_for(job, comps, stage_images=save_stages or on_stage_image is not None)
    with attached(comps, job) as addons, torch.inference_mode(), current(comps.device):
        return _run(job, comps, plan, progress, save_stages, addons=addons,
                    checkpoint=Path(checkpoint) if checkpoint else None,
                    on_stage_image=on_stage_image)


@dataclass
class _Carry:
    """What one stage hands the next: its latents and the anchor statistics (of the base
    stage's latents, or of the input image's); before the first stage of an upscale, the
    input image."""

    latents: torch.Tensor | None = None
    anchor: tuple[torch.Tensor, torch.Tensor] | None = None
    image: Image.Image | None = None


# (stage index, that stage's decoded image) -> a score for its report (`StageReport.psnr`)
Decoded = Callable[[int, Image.Image], "float | None"]
StageImage = Callable[[int, Image.Image], None]  # (stage index, its image), as it is decoded


def _run(job: Job, comps: Components, plan: Plan, progress: ProgressFn | None,
         save_stages: bool, source: Image.Image | None = None,
         on_decoded: Decoded | None = None, addons: Addons | None = None,
         checkpoint: Path | None = None, on_stage_image: StageImage | None = None) -> Result:
    """The stages of one job, in order (base or input, then x2 stages), then the final decode.

    With `source`, the plan is an upscale plan and its first stage starts from that image.
    `addons` are the job's add-ons, already on the model (see hires.addons.attached).
    `checkpoint`: where finished stages are kept, and a run of this job is resumed from.
    """
    emit = progress or (lambda e: None)
    started = time.perf_counter()
    addons = addons or Addons()
    first = plan.stages[0].strategy.weights
    with placed(comps, first, comps.pipe.text_encoder, comps.pipe.text_encoder_2):
        cond = encode_prompt(comps, job, plan)
    if addons.image_embeds is not None:
        cond.image_embeds = [e.to(comps.device, comps.dtype) for e in addons.image_embeds]
    reports: list[StageReport] = []
    stage_images: dict[int, Image.Image] = {}  # with save_stages
    warnings = list(comps.warnings) + prompt_warnings(comps, job) + idle_strength(job, plan)
    carry = _Carry(image=source)
    stages = list(plan.stages)
    scores: dict[int, float] = {}
    # Between stages a latent-upsampling job decodes only for someone who wants the images.
    wanted = save_stages or on_stage_image is not None

    def decoded(index: int, image: Image.Image) -> None:
        if save_stages:
            stage_images[index] = image
        if on_stage_image and index < len(stages) - 1:
            on_stage_image(index, image)
        score = on_decoded(index, image) if on_decoded else None
        if score is not None:
            scores[index] = score

    def scored(reports: list[StageReport]) -> list[StageReport]:
        for r in reports:
            r.psnr = scores.get(r.index, r.psnr)
        return reports

    saved = _kept(checkpoint, job, plan, comps.device, save_stages, warnings)
    if saved is not None:
        carry = _Carry(saved.latents, saved.anchor)
        reports = [StageReport(**r) for r in saved.reports]
    last = stages[-1]  # the last stage as it ran: a retry's leaner way decodes it too
    for stage in stages[len(reports):]:
        t0 = time.perf_counter()
        reset_peak(comps.device)
        fallback = None
        try:
            carry, report = _stage(job, comps, plan, stage, cond, carry, emit, wanted, decoded,
                                   addons)
        except torch.cuda.OutOfMemoryError:
            fallback = _leaner(job, comps, plan, stage, emit, warnings,
                               f"stage {stage.index}", "retried")
            if fallback is None:
                raise
        if fallback is not None:  # out of the except block: see _empty_cache
            _empty_cache(comps)
            carry, report = _stage(job, comps, plan, fallback, cond, carry, emit, wanted,
                                   decoded, addons)
            report.retried_with = fallback.strategy.label_for(plan.guided)
            last = fallback if stage is stages[-1] else last
        report.seconds = time.perf_counter() - t0
        report.peak_memory = peak_memory(comps.device)
        reports.append(report)
        # The last stage too: its decode and the save can still fail (out of memory, a full
        # disk, Ctrl-C in a 16K decode of many minutes), and a re-run then only decodes.
        if checkpoint is not None:
            try:
                resume.save(checkpoint, job, plan, stage.index, carry.latents, carry.anchor,
                            scored(reports))
            except OSError as e:  # the job goes on; only its resumability is lost
                warnings.append(f"could not keep stage {stage.index} in {checkpoint}: "
                                f"{e.strerror or e}")  # not Python's "[Errno 17] ..."
                checkpoint = None
    t0 = time.perf_counter()
    # Only the job's own image is 16-bit: a preview (its first stage alone) is 8-bit, as that
    # stage's image is in the whole job, which starts the next stage from it.
    bits = job.depth if (last.width, last.height) == (plan.width, plan.height) else 8
    pixels = _decode_last(job, comps, plan, last, carry.latents, emit, warnings, bits)
    image = Image.fromarray(pixels if pixels.dtype == np.uint8 else to_8bit(pixels))
    decoded(last.index, image)
    reports[-1].seconds += time.perf_counter() - t0
    peaks = [m for m in (reports[-1].peak_memory, peak_memory(comps.device)) if m is not None]
    reports[-1].peak_memory = max(peaks, default=None)
    return Result(image, job, plan, scored(reports), time.perf_counter() - started,
                  peak_memory(comps.device), [stage_images[i] for i in sorted(stage_images)],
                  warnings, comps.linfusion, addons=addons.record,
                  resumed=saved.stage if saved else None,
                  pixels16=None if pixels.dtype == np.uint8 else pixels,
                  vae_dtype=dtype_name(comps.vae_dtype), dtype=dtype_name(comps.dtype))


def _kept(checkpoint: Path | None, job: Job, plan: Plan, device: torch.device,
          save_stages: bool, warnings: list[str]) -> resume.Checkpoint | None:
    """What a stopped run of this job kept at `checkpoint`, to go on from; a file there that
    cannot be gone on from is said in `warnings` (else a caller learns it only from
    `Result.resumed`). Stage images are not kept, so a run that saves them starts over."""
    if checkpoint is None:
        return None
    saved = None if save_stages else resume.load(checkpoint, job, plan, device)
    if saved is None and checkpoint.is_file():
        why = ("keeps no stage images, which save_stages returns" if save_stages
               else resume.why_not(checkpoint, job, plan))
        if why is not None:
            warnings.append(resume.starting_over(checkpoint, why))
    return saved


def _stage(job: Job, comps: Components, plan: Plan, stage: Stage, cond: Conditioning,
           carry: _Carry, emit: ProgressFn, wanted: bool, decoded: Decoded,
           addons: Addons) -> tuple[_Carry, StageReport]:
    """One stage from the previous stage's latents (or from noise, or from the input image),
    to its latents (the last one's are decoded by `_decode_last`). Each earlier stage's image
    goes to `decoded`; with `wanted`, latent upsampling decodes them too.

    Nothing in `carry` is changed, so a stage can be run again after an out-of-memory error.
    """
    n = len(plan.stages)
    strategy = stage.strategy
    # Each stage draws its noise from its own stream of the job's seed: same seed, same image,
    # and a retried stage draws the same noise again.
    generator = torch.Generator("cpu").manual_seed((job.seed + 7919 * stage.index) % 2**63)
    alphas = comps.pipe.scheduler.alphas_cumprod
    knobs = UpscaleKnobs(job.cosine_scale_1, job.cosine_scale_2, job.cosine_scale_3, job.sigma,
                         job.dilate_downsamplers, job.global_floor)

    def on_step(done: int, total: int) -> None:
        emit(Event("denoise", stage.index, n, stage.width, stage.height, done, total))

    net = addons.controlnet
    control = None
    if net is not None:  # the control image at this stage's size
        control = Control(net, control_tensor(addons.control_image, stage.width, stage.height,
                                              comps.device, comps.dtype), addons.control_scale)
    denoiser = Denoiser(comps.unet, cond, job.guidance, split_cfg=strategy.split_cfg,
                        control=control)
    nets = (comps.unet,) if net is None else (comps.unet, net)
    sigmas, timesteps = sigma_schedule(alphas, stage.timesteps, job.karras)
    shape = (1, 4, stage.height // 8, stage.width // 8)
    unet = comps.unet
    # Parked maps past this many bytes wait on the scratch disk (the RAM cannot hold them).
    disk_after = (stage.cost.parked_bytes - stage.cost.disk_bytes
                  if stage.cost and stage.cost.disk_bytes else None)
    if stage.kind == "base":
        noise = torch.randn(shape, generator=generator).to(comps.device)
        with placed(comps, strategy.weights, *nets), \
                applied(unet, strategy, comps.device, controlnet=net, disk_after=disk_after):
            on_step(0, stage.steps)
            latents = sample_base(denoiser, noise, sigmas, timesteps, on_step,
                                  sampler=job.sampler)
        anchor = channel_stats(latents)
    else:
        x0, anchor = _start(job, comps, plan, stage, carry, emit, wanted, decoded, shape[2:])
        noise = torch.randn(shape, generator=generator).to(comps.device)
        with placed(comps, strategy.weights, *nets), \
                applied(unet, strategy, comps.device, controlnet=net, disk_after=disk_after):
            on_step(0, stage.steps)
            latents = sample_upscale(denoiser, x0, noise, sigmas, timesteps, stage.ratio,
                                     anchor, knobs, on_step, sampler=job.sampler)
        del x0, noise
    if not bool(latents.isfinite().all()):  # one host sync a stage
        raise NotFinite(f"stage {stage.index}'s denoising gave NaN or inf (the model ran in "
                        f"{dtype_name(comps.dtype)}): not saved, the image would be black; "
                        + _precision_advice(comps.dtype, "--dtype", "the model"))
    report = StageReport(stage.index, stage.width, stage.height, stage.strength, stage.steps,
                         denoiser.evaluations, 0.0, None, strategy.label_for(plan.guided),
                         stage.cost.peak_bytes if stage.cost else None)
    return _Carry(latents, anchor), report


def _start(job: Job, comps: Components, plan: Plan, stage: Stage, carry: _Carry,
           emit: ProgressFn, wanted: bool, decoded: Decoded,
           size: tuple[int, ...]) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """An upscale stage's clean latents (`size` of them) to re-noise, and its anchor
    statistics: the input image encoded, or the previous stage's latents upsampled (decoded,
    resized and encoded again, or upsampled as latents, as the plan says)."""
    n = len(plan.stages)
    tile = vae_tile(job, stage)
    # RAM the VAE may keep outputs in: what the plan found worth its copies.
    spill = stage.cost.vae_spill_bytes if stage.cost else 0.0
    room = vae_scratch_room(job, stage)  # for the previous stage's decode, priced in this one
    weights, vae = stage.strategy.weights, comps.vae
    if stage.kind == "input":
        with placed(comps, weights, vae):
            x0 = encode(comps, _resized(carry.image, stage, emit, n), tile, emit, stage, n,
                        job, spill)
        return x0, channel_stats(x0)
    if stage.latent_upsample:  # as planned (and priced): no VAE before this stage
        if wanted:  # a decode only for the image
            with placed(comps, weights, vae):
                image = Image.fromarray(decode(comps, carry.latents, tile, emit,
                                               stage.index - 1, n, job, spill, room=room))
            decoded(stage.index - 1, image)
        return fit_latents(carry.latents, *size), carry.anchor
    with placed(comps, weights, vae):
        image = Image.fromarray(decode(comps, carry.latents, tile, emit, stage.index - 1, n,
                                       job, spill, room=room))
        decoded(stage.index - 1, image)
        image = _resized(image, stage, emit, n)
        x0 = encode(comps, image, tile, emit, stage, n, job, spill)
        del image  # before the stage's denoising
    return x0, carry.anchor


def _resized(image: Image.Image, stage: Stage, emit: ProgressFn, n: int) -> Image.Image:
    """`image` fitted to `stage`'s size, its start and end said as a resize event."""
    emit(Event("resize", stage.index, n, stage.width, stage.height))
    image = fit(image, stage.width, stage.height)
    emit(Event("resize", stage.index, n, stage.width, stage.height, 1, 1))
    return image


def _decode_last(job: Job, comps: Components, plan: Plan, stage: Stage, latents: torch.Tensor,
                 emit: ProgressFn, warnings: list[str], bits: int = 8) -> np.ndarray:
    """The last stage's latents to the image's pixels, of `bits` a sample. Out of GPU memory,
    it decodes again in a leaner way; the stage's denoising is not run again."""
    n = len(plan.stages)

    def run(s: Stage) -> np.ndarray:
        spill = s.cost.vae_spill_bytes if s.cost else 0.0
        with placed(comps, s.strategy.weights, comps.vae):
            return decode(comps, latents, vae_tile(job, s), emit, s.index, n, job, spill, bits,
                          room=vae_scratch_room(job, s))

    try:
        return run(stage)
    except torch.cuda.OutOfMemoryError:
        fallback = _leaner(job, comps, plan, stage, emit, warnings,
                           f"stage {stage.index}'s decode", "decoded again")
        if fallback is None:
            raise
    _empty_cache(comps)
    return run(fallback)


def _leaner(job: Job, comps: Components, plan: Plan, stage: Stage, emit: ProgressFn,
            warnings: list[str], what: str, again: str) -> Stage | None:
    """After `what` of `stage` ran out of GPU memory: the leaner way to run it `again`, said
    in `warnings` and as a retry event; None if there is none."""
    model = replace(shape_for(job, comps), fp32_share=plan.fp32_share)  # as plan_for's
    fallback = cheaper(stage, list(plan.stages), model, comps.offload, job.vae_tile,
                       job.vae_stats, plan.rate, plan.budget) if stage.cost else None
    if fallback is not None:
        was, now = (s.strategy.label_for(plan.guided) for s in (stage, fallback))
        warnings.append(f"{what} ran out of GPU memory with {was}; {again} with {now}")
        emit(Event("retry", stage.index, len(plan.stages), stage.width, stage.height))
    return fallback


def _empty_cache(comps: Components) -> None:
    """Hand the failed attempt's GPU memory back before a leaner retry. Called after the except
    block, not in it: until the block ends, the error's traceback keeps the failed frames, and
    with them their tensors (a UNet call's activations, the stage's x0 and noise), alive."""
    if comps.device.type == "cuda":
        torch.cuda.empty_cache()


DEFAULT_VAE_TILE = 1024  # px, when no plan chose one


def vae_tile(job: Job, stage: Stage) -> int:
    """The tile a stage's VAE passes run in: the job's, else the plan's, else the default."""
    return job.vae_tile or (stage.cost.vae_tile if stage.cost else DEFAULT_VAE_TILE)


def prompt_warnings(comps: Components, job: Job) -> list[str]:
    """What SDXL's text encoders will not read of the prompts (`hires.prompts.too_long`; their
    libraries' own notices are off in the CLI, as are their logs), what fitting the add-on
    images leaves out of them (`hires.addons.input_warnings`), and what a 16-bit file will not
    hold (`half_vae_note`): what the run's record warns of before any work."""
    from hires.addons import input_warnings
    from hires.prompts import too_long

    return ([] if comps.pipe.tokenizer is None else too_long(comps.pipe.tokenizer, job)
            ) + input_warnings(job) + half_vae_note(comps, job)


def half_vae_note(comps: Components, job: Job) -> list[str]:
    """`--depth 16` with auto's half-precision VAE: 16 bits hold what the decode computed, and
    a bf16 or fp16 one rounds (BENCHMARKS.md)."""
    if job.depth != 16 or job.vae_dtype != "auto" or comps.vae_dtype == torch.float32:
        return []
    return [f"--depth 16 with the VAE in {dtype_name(comps.vae_dtype)} (auto's pick here): its "
            "decode is off by 0.2-0.3 of an 8-bit step; --vae-dtype fp32 keeps what 16 bits "
            "hold (slower)"]


def encode_prompt(comps: Components, job: Job, plan: Plan) -> Conditioning:
    """Both text encoders, once per job; micro-conditioning uses the final size at every stage."""
    pipe = comps.pipe
    # quiet_loading: transformers' and diffusers' own notes on a long prompt (the result's
    # warnings say it, in the user's words) stay off a library caller's stderr
    with torch.inference_mode(), quiet_loading():
        embeds, neg, pooled, neg_pooled = pipe.encode_prompt(
            prompt=job.prompt, device=comps.device, num_images_per_prompt=1,
            do_classifier_free_guidance=True, negative_prompt=job.negative or None)
    h, w = plan.height, plan.width
    time_ids = torch.tensor([[h, w, 0, 0, h, w]] * 2, dtype=comps.dtype, device=comps.device)
    return Conditioning(
        torch.cat([neg, embeds]).to(comps.dtype).clone(),
        torch.cat([neg_pooled, pooled]).to(comps.dtype).clone(), time_ids)


def decode(comps: Components, latents, tile: int, emit: ProgressFn, stage_index: int, n: int,
           job: Job, spill: float = 0.0, bits: int = 8, room: float | None = None) -> np.ndarray:
    """Latents to H x W x 3 pixels (uint8, or uint16 with `bits=16`) through the tiled VAE;
    exact mode's files take at most `room` bytes (default: `vae_scratch_room(job)`)."""
    h, w = latents.shape[2] * 8, latents.shape[3] * 8

    def on_tile(done: int, total: int) -> None:
        emit(Event("vae-decode", stage_index, n, w, h, done, total))

    on_tile(0, 0)  # the phase starts now (its tile count comes with the first tile)
    room = vae_scratch_room(job) if room is None else room
    with torch.inference_mode(), _vae_advice(comps), scratch_capped(room):
        return tiled_vae.decode(comps.vae, latents, tile=tile, progress=on_tile, spill=spill,
                                bits=bits, stats=job.vae_stats)


@contextmanager
def _vae_advice(comps: Components) -> Iterator[None]:
    """The VAE's NaN said with what to do: fp16 is the usual cause (SDXL's VAE overflows)."""
    try:
        yield
    except NotFinite as e:
        fix = _precision_advice(comps.vae_dtype, "--vae-dtype", "the VAE")
        raise NotFinite(f"{e}: not saved, the image would be black; {fix}") from None


def _precision_advice(dtype: torch.dtype, flag: str, what: str) -> str:
    """What to change after NaN from `what` run in `dtype`: a wider type; in fp32, which does
    not overflow so, its weights."""
    if dtype == torch.float32:
        return f"fp32 does not overflow so: {what}'s weights are likely broken; check its file"
    return f"load {what} with {flag} {'bf16 or fp32' if dtype == torch.float16 else 'fp32'}"


def encode(comps: Components, image: Image.Image, tile: int, emit: ProgressFn, stage: Stage,
           n: int, job: Job, spill: float = 0.0):
    """A PIL image to UNet-space latents through the tiled VAE (exact mode's files take
    `vae_scratch_room`'s room)."""

    def on_tile(done: int, total: int) -> None:
        emit(Event("vae-encode", stage.index, n, stage.width, stage.height, done, total))

    on_tile(0, 0)
    with torch.inference_mode(), _vae_advice(comps), scratch_capped(vae_scratch_room(job, stage)):
        latents = tiled_vae.encode(comps.vae, np.asarray(image), tile=tile, progress=on_tile,
                                   spill=spill, stats=job.vae_stats)
    return latents.to(comps.device, torch.float32)


def fit_latents(latents: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """`fit` for latents (bicubic): scaled to cover `height` x `width`, the centre cropped, so
    a last stage whose aspect the base's 64 px rounding changed is not stretched."""
    cw, ch = cover_size((latents.shape[-1], latents.shape[-2]), width, height)
    x = F.interpolate(latents, size=(ch, cw), mode="bicubic", align_corners=False)
    top, left = (ch - height) // 2, (cw - width) // 2
    return x[..., top:top + height, left:left + width]


def fit(image: Image.Image, width: int, height: int) -> Image.Image:
    """Scale to cover `width` x `height` (Lanczos), then crop the centre: no distortion."""
    size = cover_size(image.size, width, height)
    if size != image.size:  # in bands on threads: single-threaded, 8K -> 16K took 8.5 s
        image = resize_lanczos(image, size)
    left, top = (image.width - width) // 2, (image.height - height) // 2
    return image.crop((left, top, left + width, top + height))
