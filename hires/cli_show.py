"""What `hires plan`, `batch --dry-run` and `hires info` print: plans, the machine, and how
an image or a checkpoint was made."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import typer

from hires import __version__, stops
from hires.addons import named_ip_adapter, planned_ip_adapter
from hires.cli_jobs import check_gpu, fitted_plan, plan_key
from hires.cli_output import (
    EXIT_RUNTIME,
    EXIT_USAGE,
    error_line,
    exit_codes,
    json_line,
    out_line,
    say,
    warn,
    warn_once,
)
from hires.cli_resume import stages_upto
from hires.cli_runs import (
    checkpoint_note,
    cpu_setting_warnings,
    emulated_bf16_warning,
    fp16_vae_hint,
    unkept_note,
    warn_ram,
    warn_space,
)
from hires.job import JobError
from hires.strips import cores


def show_plan(job, gpu: str | None, as_json: bool, source: tuple[int, int] | None = None,
              stage_images: bool = False, preview: bool = False, here: bool = False,
              images: list[dict[str, Any]] | None = None, prompts: list | None = None) -> None:
    """Print the plan of `job` without loading weights (`hires plan`, `gen --dry-run`); with
    `preview`, of its first stage alone; `here`: as it would run on this machine (a dry run).
    `images`: a dry run's images of this plan (`check_outputs`), in its JSON; `prompts`: the
    jobs of prompts read from stdin, whose length is said as the run says it."""
    from hires.dry_run import as_run_here, dry_run
    from hires.gpus import card, card_budget_gib
    from hires.plan import preview_of

    check_gpu(gpu)
    seeds = [image.get("seed") for image in images or []]
    if job.seed is None and seeds and None not in seeds and not any(
            image.get("seed_drawn") for image in images or []):
        # A stopped run's seed, which the run goes on with (or a made image's): not "a
        # random seed" (found by QA)
        job = replace(job, seed=seeds[0])
    if here:
        job = as_run_here(job, gpu)
        if gpu is None:  # --gpu plans that card and another machine's RAM, not this one's
            warn_ram([job])  # as the run warns: a budget over this machine's RAM
            _would_stop([job])
    run = fitted_plan(lambda: dry_run(job, gpu, source, stage_images, preview), job)
    several = prompts is not None and len(prompts) > 1
    for i, one in enumerate(prompts or [job], start=1):  # `up` plans each input: said once
        for warning in run_warnings(one, run.plan):
            if several and warning.startswith("the prompt is "):  # which, of the stdin's
                warning = f"prompt {i} on stdin: {warning}"
            warn_once(warning)
    for cropped in crop_notes(job, source):  # as the run says it, before its work
        warn(cropped)
    if job.device.startswith("cpu"):  # its settings' notes, as the run warns them
        for warning in cpu_setting_warnings(job):
            warn(warning)
    named = card(run.gpu)
    if named and not named.bf16 and job.dtype in ("bf16", "bfloat16"):
        warn(emulated_bf16_warning(job, f"the {run.gpu}"))  # timed at its fp16 rate
    if run.budget_from == "vram" and named and job.vram > named.memory_gib:
        # planned as asked (a card of that size at this one's speed), but likely a preset's
        # budget for another card
        # no flag drops a preset's vram: the card's own budget is given as a number
        warn(f"the plan's {job.vram:g} GiB budget is more than the {run.gpu}'s "
             f"{named.memory_gib:.1f} GiB; --vram {card_budget_gib(run.gpu):g} plans the card "
             "(or --vram left out, where no preset gives one)")
    p = preview_of(run.plan) if preview else run.plan
    replan = lambda j: dry_run(j, run.gpu, source, stage_images, preview).plan  # noqa: E731
    stops.check()  # a Ctrl-C a library swallowed while the plan was made (its tokenizer)
    if as_json:
        formats = {image["format"] for image in images or []}
        if len(formats) == 1:  # the format the run records: -o's suffix over a preset's
            job = replace(job, format=formats.pop())
        # The hints too: a script reads what more RAM or `fast` would take there (stderr too)
        hints = list(plan_hints(run, job, p, preview, replan))
        out_line(json.dumps({**plan_json(run, job, p), "preview": preview, "hints": hints,
                             **({"images": images} if images is not None else {})}))
    else:
        out_line("\n".join(plan_lines(run, job, p, preview)))
        hints = plan_hints(run, job, p, preview, replan)
    for hint in hints:
        say(hint)


def crop_notes(job, source: tuple[int, int] | None) -> list[str]:
    """What an upscale `job` of an input of size `source` cuts off it, as its run warns."""
    from hires.images import crop_note
    from hires.piped import STDIN

    if source is None or not job.image:
        return []
    label = "stdin" if job.image == STDIN else Path(job.image).name
    cropped = crop_note(label, source, job.width, job.height)
    return [cropped] if cropped else []


def _would_stop(jobs: list) -> None:
    """Warn, once each, of what a run here would stop on that a dry run plans past (hires'
    default model or its LinFusion not in the cache while the Hub is off)."""
    from hires.model_refs import defaults_uncached

    for job in jobs:
        for why in defaults_uncached(job.model, job.linfusion):
            warn_once(f"a run here would stop: {why}")  # `up`: once, not an input each


def plan_json(run, job, p) -> dict[str, Any]:
    """What `plan --json` prints: the plan `p` (`run`'s, or its preview) and each stage."""
    rate, spill = run.rate, p.vae_spill_bytes
    timed = rate is not None  # a CPU plan is not timed (its rate is not known)
    return {
        "width": p.width, "height": p.height, "dpi": job.dpi, "gpu": run.gpu,
        "job": job.to_dict(),  # as preset, --from and flags made it
        "tflops": rate / 1e12 if timed else None,
        "fp32": [part.lower() for part in p.fp32],
        "fp32_tflops": round(rate * p.fp32_share / 1e12, 3) if timed else None,
        "budget_bytes": p.budget, "budget_from": run.budget_from,
        **planned_ram(job),
        "vae_spill_bytes": int(spill), "vae_spill_budget_bytes": int(p.spill),
        "stages": [{"index": s.index, "width": s.width, "height": s.height,
                    "steps": s.steps, "global_steps": s.global_steps,
                    "strength": round(s.strength, 4), "ratio": s.ratio,
                    "upsample": "latent" if s.latent_upsample else "pixel",
                    "decodes_previous": s.decodes_previous,
                    "strategy": s.strategy.label_for(p.guided), "levers": s.strategy.to_dict(),
                    "peak_bytes": s.cost.peak_bytes,
                    "used_bytes": max(s.cost.used_bytes, s.cost.peak_bytes),
                    "tflop": round(s.cost.tflop, 3),
                    "unet_tflop": round(s.cost.unet_tflop, 3),
                    "scratch_bytes": s.cost.scratch_bytes,
                    # null where the stage runs no VAE, as its text line names none
                    "vae_tile": s.cost.vae_tile if s.cost.tflop > s.cost.unet_tflop else None,
                    # the CPU's memory and disk the stage's parked maps and offloaded
                    # weights take together; ram_bytes its RAM alone, as the text says it
                    "host_bytes": s.cost.host_bytes,
                    "ram_bytes": s.cost.host_bytes - s.cost.disk_bytes,
                    "parked_bytes": s.cost.parked_bytes,
                    "disk_bytes": s.cost.disk_bytes, "vae_spill": s.cost.vae_spill,
                    "vae_spill_bytes": int(s.cost.vae_spill_bytes),
                    "seconds": rounded(s.cost.seconds),
                    "vae_seconds": rounded(s.cost.vae_seconds),
                    "host_seconds": rounded(s.cost.host_seconds)} for s in p.stages],
        "peak_bytes": p.peak_bytes, "used_bytes": p.used_bytes,
        "seconds": rounded(p.seconds),
        "vae_seconds": rounded(p.vae_seconds), "host_seconds": rounded(p.host_seconds)}


def rounded(x: float | None) -> float | None:
    """Seconds in the JSON plan: to the millisecond."""
    return None if x is None else round(x, 3)


def plan_lines(run, job, p, preview: bool = False) -> list[str]:
    """The text plan: a header (size, stages, budget, what the times are for), each stage's
    line, and the total."""
    from hires.plan import describe

    printed = ""
    if job.dpi:  # for print: the size on paper
        w, h = p.width / job.dpi, p.height / job.dpi
        printed = (f" ({w * 2.54:.1f} x {h * 2.54:.1f} cm, {w:.1f} x {h:.1f} in at "
                   f"{job.dpi:g} dpi)")
    stages = (f"stage 0 of {len(run.plan.stages)} (--preview)" if preview else
              f"{len(p.stages)} stage(s)")
    header = (f"{p.width}x{p.height}{printed}: {stages}, {budget_phrase(run, job, p)}, "
              f"{times_phrase(run, p)}")
    return [header, settings_line(job), *describe(p), total_line(p, timed=run.rate is not None)]


def settings_line(job) -> str:
    """What the stage lines leave out of the job as preset, --from and flags made it."""
    seed = f"seed {job.seed}" if job.seed is not None else "a random seed (--seed fixes it)"
    sampler = job.sampler + (" (karras)" if job.karras else "")
    parts = [seed, f"{sampler} sampler", f"guidance {job.guidance:g}", f"model {job.model}"]
    if job.vae:
        parts.append(f"vae {job.vae}")
    if job.lora:
        parts.append(f"lora {', '.join(job.lora)}")
    if job.control_model:  # at scale 0 kept in the record, but neither loaded nor run
        parts.append(f"controlnet {job.control_model}" + (
            " at scale 0 (not run)" if job.control_scale == 0 else ""))
    if job.ip_image or named_ip_adapter(job):
        parts.append(f"ip-adapter {job.ip_adapter}" + (
            " at scale 0 (not run)" if job.ip_scale == 0 else ""))
    if job.negative:
        parts.append(f"negative {job.negative!r}")
    return "settings: " + ", ".join(parts)


def budget_phrase(run, job, p) -> str:
    """The header's words on memory: the budget, where it comes from, the RAM the VAE's
    outputs take."""
    from hires.gpus import CUDA_CONTEXT_GIB, card
    from hires.memory import GIB

    gpu = run.gpu
    budget = f"{p.budget / 1024**3:.1f} GiB budget" if p.budget else "no memory budget"
    if not p.budget and not job.device.startswith(("cpu", "mps")):
        budget += " (--gpu NAME or --vram GiB sets one)"
    if run.budget_from == "gpu":
        budget += (f" (the {gpu}'s {card(gpu).memory_gib:.1f} GiB less {CUDA_CONTEXT_GIB} for "
                   "CUDA; --vram sets it)")
    elif run.budget_from == "vram" and card(gpu) and job.vram > card(gpu).memory_gib:
        budget += (f" (more than the {gpu}'s {card(gpu).memory_gib:.1f} GiB: from --vram or a "
                   "preset)")
    elif job.device.startswith("cpu") and run.budget_from == "device":
        budget += " (the free RAM)"
    elif run.budget_from in ("ram", "vram"):  # a flag's, or a preset's or record's
        where = job.extra.get("given_in", {}).get(run.budget_from)
        budget += f" ({run.budget_from} in {where})" if where else f" (--{run.budget_from})"
    if p.vae_spill_bytes:
        budget += f", +{p.vae_spill_bytes / GIB:.1f} GiB of RAM for VAE outputs"
    on_host = p.vae_spill_bytes or any(s.cost and s.cost.host_bytes for s in p.stages)
    if on_host and job.ram is None and not job.device.startswith(("cpu", "mps")):
        # what the RAM allows shapes the plan: the figure it took, so that two machines'
        # plans are told apart
        budget += (f", {planned_ram(job)['ram_bytes'] / GIB:.1f} GiB of RAM taken as free (--ram "
                   "sets it)")
    return budget


def planned_ram(job) -> dict[str, Any]:
    """The free RAM a GPU plan took (--ram's, else DRY_RUN_FREE_RAM of this machine's) and
    where it came from, as --json gives them; null for a CPU's or a Mac's, whose RAM is the
    budget (`budget_bytes`): the keys are there for a script either way."""
    from hires.dry_run import dry_run_free_ram

    if job.device.startswith(("cpu", "mps")):
        return {"ram_bytes": None, "ram_from": None}
    return {"ram_bytes": int(dry_run_free_ram(job)),
            "ram_from": "ram" if job.ram is not None else "machine"}


def times_phrase(run, p) -> str:
    """The header's words on time: the card and rate the times are for, or why there are
    none."""
    from hires.gpus import card

    gpu, rate = run.gpu, run.rate
    if rate is None:
        if gpu == "mps":
            return ("no times: a Mac GPU's rate is not known (--gpu with a TFLOP/s figure "
                    "times it)")
        return ("no times: a CPU's rate is not known (expect minutes per megapixel; --gpu "
                "with a TFLOP/s figure times it)")
    # Without a budget the plan may take more memory than the card has: its rate only.
    if not card(gpu):  # a measured figure ("times at 12's rate" read as a card's)
        where = f"times at {rate / 1e12:.3g} TFLOP/s (--gpu {gpu}"
    else:
        where = (f"times on {gpu}" if p.budget else f"times at {gpu}'s rate, its memory aside"
                 ) + f" ({rate / 1e12:.3g} TFLOP/s achieved"
    if p.fp32:
        fp32 = rate * p.fp32_share / 1e12
        where += f", {fp32:.{0 if fp32 >= 10 else 1}f} in the fp32 {' and '.join(p.fp32)}"
    if card(gpu):
        where += ", at the share of its peak an H200 reached"
    return where + f"; host work on {cores()} cores)"


def total_line(p, timed: bool) -> str:
    """The plan's last line: its peak memory, its work and, when `timed`, its time."""
    from hires.eta import duration

    tflop = sum(s.cost.tflop for s in p.stages)
    work = f"{tflop / 1000:.1f} PFLOP" if tflop >= 100 else f"{tflop:.2g} TFLOP"
    total = f"total: peak {p.peak_bytes / 1024**3:.1f} GiB"
    if p.used_bytes > p.peak_bytes:
        total += f" ({p.used_bytes / 1024**3:.1f} with the VAE's kept outputs)"
    total += f", {work}"
    if timed:
        notes = [duration(p.seconds)] if p.seconds >= 90 else []  # a person reads minutes
        notes += [f"VAE ~{p.vae_seconds:.0f} s"] if p.vae_seconds >= 0.5 else []
        notes += [f"host ~{p.host_seconds:.0f} s"] if (p.host_seconds or 0) >= 0.5 else []
        notes_text = f" ({', '.join(notes)})" if notes else ""
        total += f", ~{p.seconds:.0f} s{notes_text}"
    return total


def plan_hints(run, job, p, preview: bool, replan: Callable[[Any], Any],
               batch: bool = False) -> Iterator[str]:
    """What is said on stderr after a text plan, each as it is found: a faster VAE, --preview
    for a long job, a ControlNet's image to give, more RAM, `--vae-stats fast`, where each
    applies. `batch`: a job of a batch's, whose faster VAE is said once for its jobs."""
    from hires.eta import duration

    if p.fp32 == ("VAE",) and job.vae_dtype == "auto":  # only a GPU without bf16 does that
        seconds = f" (~{p.vae_seconds:.0f} of the ~{p.seconds:.0f} s)"
        yield fp16_vae_hint(f"the {run.gpu}", "" if batch else seconds)
    first = p.stages[0].cost.seconds if p.stages[0].cost else None
    # a preview of one stage is the whole job: no quicker look to offer
    if not preview and run.rate is not None and first is not None and p.seconds >= LONG_JOB_S \
            and p.stages[0].kind == "base" and len(p.stages) > 1:
        yield (f"a long job: --preview added to the gen command makes its composition first, "
               f"in {duration(first)}")
    if job.control_model and not (job.control or job.image):  # planned as if it were given
        yield "the ControlNet's image does not change the plan; gen needs it (--control IMAGE)"
    if planned_ip_adapter(job) and not job.ip_image:
        yield ("the IP-Adapter's image does not change the plan; gen needs it (--ip-image "
               "IMAGE)")
    for given, what, flag in ((job.control, "ControlNet's", "--control"),
                              (job.ip_image, "IP-Adapter's", "--ip-image")):
        if given and given != "-" and not Path(given).expanduser().exists():  # a record's
            yield (f"the {what} image {given} is not here: it does not change the plan; gen "
                   f"needs it ({flag} IMAGE)")
    for hint in ([] if preview else [more_ram_hint, exact_hint, near_stage_hint]):
        said = hint(job, p, replan)
        if said:
            yield said


ROOMY_RAM_GB = 64  # what `more_ram_hint` plans with
LONG_JOB_S = 600  # a planned job this long gets a word on --preview


def more_ram_hint(job, p, replan: Callable[[Any], Any]) -> str | None:
    """Where the RAM limits a GPU plan (the VAE keeps all it may there, or parked maps wait
    on a disk): how long the job takes with ROOMY_RAM_GB free, if that saves a tenth."""
    from hires.dry_run import dry_run_free_ram
    from hires.eta import duration
    from hires.memory import GIB
    from hires.plan import PlanError

    if job.device.startswith(("cpu", "mps")) or p.seconds is None:
        return None
    free = dry_run_free_ram(job)
    bound = any(s.cost.disk_bytes for s in p.stages) or (
        p.spill and p.vae_spill_bytes >= 0.99 * p.spill)
    if not bound or free >= ROOMY_RAM_GB * GIB:
        return None
    try:
        roomy = replan(job.merged({"ram": ROOMY_RAM_GB}))
    except PlanError:
        return None
    if roomy.seconds > 0.9 * p.seconds:
        return None
    faster, now = duration(roomy.seconds), duration(p.seconds)
    if faster == now:  # a tenth that rounds away in minutes ("~6 min instead of ~6 min")
        faster, now = f"~{roomy.seconds:.0f} s", f"~{p.seconds:.0f} s"
    return (f"the RAM limits this plan: with {ROOMY_RAM_GB} GiB of RAM free, "
            f"{faster} instead of {now} (hires plans with what "
            f"is free as it starts; --ram {ROOMY_RAM_GB} plans that)")


NEAR_STAGE = 1.1  # a last stage this close to the one before it (a side's scale) is said


def near_stage_hint(job, p, replan: Callable[[Any], Any]) -> str | None:
    """A size a little past a stage's (16392 against 16384) runs a whole stage more for a few
    pixels: what the stage's own size would take, where that saves a quarter."""
    from hires.cli_jobs import size_flags
    from hires.eta import duration
    from hires.plan import PlanError

    if p.seconds is None or len(p.stages) < 2 or job.extra.get("print_size"):
        return None  # a print's maker changes the dpi, not the pixels
    last, before = p.stages[-1], p.stages[-2]
    scale = max(last.width / before.width, last.height / before.height)
    if scale > NEAR_STAGE:
        return None
    try:
        smaller = replan(job.merged({"width": before.width, "height": before.height}))
    except PlanError:
        return None
    if smaller.seconds is None or smaller.seconds > 0.75 * p.seconds:
        return None
    return (f"{last.width}x{last.height} is {(scale - 1) * 100:.2g} % larger a side than stage "
            f"{before.index}'s {before.width}x{before.height}, and runs a stage of its own: "
            f"{before.width}x{before.height} ({size_flags(before.width, before.height)}) "
            f"takes {duration(smaller.seconds)} instead of {duration(p.seconds)}")


def exact_hint(job, p, replan: Callable[[Any], Any]) -> str | None:
    """`--vae-stats exact` gives the pixels `fast` gives: what `fast` plans at, where that
    saves a tenth of the time."""
    from hires.eta import duration

    if job.vae_stats != "exact" or p.seconds is None:
        return None
    fast = replan(job.merged({"vae_stats": "fast"}))
    if fast.seconds > 0.9 * p.seconds or duration(fast.seconds) == duration(p.seconds):
        return None  # nor where the saving rounds away ("~6 s instead of ~6 s"; QA 187)
    costs = [s.cost for s in p.stages if s.cost]
    if any(c.scratch_bytes for c in costs):
        why = "keeps the tiles' outputs in scratch files and recomputes what they cannot hold"
    elif any(not c.vae_files for c in costs):  # the plan's choice: files would be slower
        why = ("runs each tile again for every statistics pass (here faster than keeping its "
               "outputs in scratch files)")
    else:  # --disk 0, a full TMPDIR or one in RAM
        why = ("runs each tile again for every statistics pass: there is no scratch room for "
               "its files (--disk, TMPDIR)")
    return (f"--vae-stats exact gives the same pixels as fast (the default), which plans at "
            f"{duration(fast.seconds)} instead of {duration(p.seconds)} here: exact {why}")


def run_warnings(job: Any, plan: Any) -> list[str]:
    """What a run of `job` will warn of its inputs, said by a dry run: a prompt too long for
    the text encoders, and what fitting the add-on images leaves out of them (their cached
    facts, read by the add-ons' check already) at the planned size (`up`'s is its input's
    times --scale)."""
    from hires.addons import input_warnings
    from hires.prompts import cached_tokenizer, too_long

    tokenizer = cached_tokenizer(job)
    said = too_long(tokenizer, job) if tokenizer is not None else []
    if job.control or job.ip_image:
        said += input_warnings(replace(job, width=plan.width, height=plan.height))
    return said


def show_batch_plan(items: list, paths: dict[int, Path], gpu: str | None, as_json: bool,
                    overwrite: bool, preview: bool = False, resume_runs: bool = True,
                    name: str = "the batch file") -> None:
    """`batch --dry-run`: each job's size, file and planned time on `gpu`, or that its image is
    made already, and the total; jobs that cannot run are said, and exit 2 at the end for a
    setting to fix in the file (1 when each is a model not here; the run itself makes the
    others and exits 1). `resume_runs` (not --no-resume): say which jobs go on from a
    checkpoint. `name`: the job file's, which its warnings name."""
    from hires.batch import flag_key, warning_by_giver
    from hires.cli_runs import warn_tmpdir

    check_gpu(gpu)
    warn_tmpdir()  # as the run says it
    plans: dict[str, Any] = {}  # jobs that differ only in prompt and seed share a plan
    tally = BatchPlanTally()
    hinted: dict[str, list[int]] = {}  # each hint, and the jobs it is about
    for item in items:
        path = paths[item.index]
        row, text = batch_job_row(item, path, gpu, plans, tally, overwrite=overwrite,
                                  preview=preview, resume_runs=resume_runs, name=name)
        tally.counts[row["status"]] += 1
        if row["status"] == "to make":
            tally.to_make.append((path, item.job))
            tally.numbers.append(item.index)
            for hint in row["hints"]:
                hinted.setdefault(hint, []).append(item.index)
            # what the run will say of its inputs, and the save of its file
            # named by the job file's key that gave what they are about, as the run says them
            losses = row.pop("notes") + _batch_losses(item.job, path)
            row["warnings"] = [warning_by_giver(loss, item, name) for loss in losses]
            for loss, said in zip(losses, row["warnings"], strict=True):
                warn(said if flag_key(loss) else f"job {item.index}: {said}")
            # a CPU job's settings, named where they were given (the job too): once each
            settings = row.pop("settings")
            row["warnings"] += settings
            for said in settings:
                warn_once(said)
        stops.check()  # one a library swallowed while this job was planned
        if row["status"] == "cannot run":  # on stderr, as the run says a failed job
            error_line(f"job {item.index} cannot run: {row['error']}")
            if not as_json:  # its text line is that error: not said twice
                continue
        out_line(json_line(row) if as_json else text)
    warn_space(tally.to_make)
    if gpu is None:  # --gpu plans that card, on another machine
        # as the run warns: a budget over the RAM
        warn_ram([job for _, job in tally.to_make], batch=tally.numbers)
        _would_stop([job for _, job in tally.to_make])
    if not as_json:
        out_line(batch_total_line(tally))
    for hint, jobs in hinted.items():  # once each, not once a job: a batch's jobs share them
        say(f"job{'s' if len(jobs) > 1 else ''} {', '.join(map(str, jobs))}: {hint}")
    if tally.counts["cannot run"]:
        raise typer.Exit(EXIT_USAGE if tally.usage else EXIT_RUNTIME)


def _batch_losses(job: Any, path: Path) -> list[str]:
    """What a batch job's file will not keep (`output.format_losses`): a JPEG's input is read
    for its transparency, which the run flattens."""
    from hires.output import format_losses

    alpha = False
    if job.image and job.format == "jpg":
        from hires.images import ImageInputError, load_input

        try:
            alpha = load_input(job.image).alpha is not None
        except ImageInputError:  # the run says what is wrong with it
            pass
    return format_losses(job.format, path.name, job.dpi, alpha)


@dataclass
class BatchPlanTally:
    """What `batch --dry-run` has counted so far: its jobs by status, the planned time of
    those to make, and the jobs to make (for the disk space they need)."""

    counts: dict[str, int] = field(default_factory=lambda: {
        "to make": 0, "made": 0, "busy": 0, "cannot run": 0})
    total: float = 0.0  # the planned seconds of the timed jobs to make
    planned_on: str | None = None  # the GPU they are planned on
    usage: bool = False  # some job cannot run for a setting to fix (else: for a model not here)
    to_make: list[tuple[Path, Any]] = field(default_factory=list)
    numbers: list[int] = field(default_factory=list)  # the batch's numbers of those to make


def batch_job_row(item: Any, path: Path, gpu: str | None, plans: dict[str, Any],
                  tally: BatchPlanTally, *, overwrite: bool, preview: bool,
                  resume_runs: bool, name: str = "the batch file") -> tuple[dict[str, Any], str]:
    """A `batch --dry-run` job's JSON row and line: left to another run, made already, cannot
    run, or to make (its planned time and why it cannot run added to `tally`). `name`: the
    job file's, where its settings' warnings say they were given."""
    from hires import batch as b
    from hires.images import input_size
    from hires.job import JobError
    from hires.model_refs import ModelError

    job = item.job
    row: dict[str, Any] = {"index": item.index, "path": str(path), "width": job.width,
                           "height": job.height, **({"preview": True} if preview else {})}
    held = busy_holder(path)
    if held:
        row.update(status="busy", error=f"{held} is making it")
        return row, f"job {item.index}: {held} is making {path}; the run leaves it to that one"
    if not overwrite and b.made_already(path, job, 0 if preview else None):
        row.update(status="made", warnings=[])  # the keys of gen's dry run for one made
        return row, f"job {item.index}: {path} is made already"
    source = input_size(job.image) if job.image else None
    try:
        run = shared_plan(job, source, gpu, plans, preview)
    except (JobError, ModelError) as e:
        said = b.in_job_words(str(e), item.file_keys)  # in the job file's keys, not flags
        row.update(status="cannot run", error=said)
        # A setting to fix in the file exits 2, a model not here 1 (the run, which makes
        # the other jobs, exits 1 for either).
        tally.usage = tally.usage or not isinstance(e, ModelError) or e.usage
        return row, f"job {item.index}: cannot run: {said}"
    row["notes"] = run_warnings(job, run.plan) + crop_notes(job, source)
    # as the run warns them, by the key's place (hires.cli_runs.check_steps_and_notes)
    row["settings"] = cpu_setting_warnings(job, lambda key: b.key_place(item, key, name)) \
        if run.gpu == "cpu" else []
    row["hints"] = batch_hints(item, run, source, plans, preview)
    seconds = run.plan.seconds  # None: a CPU job, not timed
    if seconds is not None:
        tally.total, tally.planned_on = tally.total + seconds, run.gpu
    return row, to_make_line(item, path, run, row, preview=preview, resume_runs=resume_runs)


def batch_hints(item: Any, run: Any, source: tuple[int, int] | None, plans: dict[str, Any],
                preview: bool) -> list[str]:
    """What `gen --dry-run` hints of a job's plan (a stage's size, more RAM, `fast`), in the job
    file's keys; made once for the jobs that share the plan (kept in `plans`)."""
    from hires.batch import in_job_words
    from hires.dry_run import as_run_here, dry_run

    key = "hints " + _shared_key(item.job, source)
    if key not in plans:
        job = as_run_here(item.job, run.gpu)
        replan = lambda j: dry_run(j, run.gpu, source, preview=preview).plan  # noqa: E731
        hints = plan_hints(run, job, run.plan, preview, replan, batch=True)
        plans[key] = [in_job_words(hint) for hint in hints]
    return plans[key]


def busy_holder(path: Path) -> str | None:
    """Who else is making the image at `path`; None when no other run is."""
    from hires import busy

    try:  # as the run finds it: another run is making it (status busy, left to that run)
        busy.check_free(path)
        held = None
    except busy.Busy as e:
        held = e.who
    return held


def _shared_key(job: Any, source: tuple[int, int] | None) -> str:
    """What a batch job's plan (and its hints) depend on: `plan_key` and how its size was asked
    for (a print size is told a dpi)."""
    return plan_key(job, source) + repr(sorted(job.extra.items()))


def shared_plan(job: Any, source: tuple[int, int] | None, gpu: str | None,
                plans: dict[str, Any], preview: bool) -> Any:
    """`job`'s fitted plan on `gpu` (its first stage's with `preview`), made once for the jobs
    that differ only in prompt and seed and kept in `plans`."""
    from hires.dry_run import as_run_here, dry_run
    from hires.job import JobError
    from hires.plan import preview_of

    # A refusal is kept too: its search of a size that fits takes seconds. Its words depend
    # on how the job was asked for (a print size is told a dpi): that is in the key.
    key = _shared_key(job, source)
    if key not in plans:
        here = as_run_here(job, gpu)
        try:
            plans[key] = fitted_plan(lambda j=here, s=source: dry_run(j, gpu, s,
                                                                      preview=preview), here)
        except JobError as e:
            plans[key] = e
    if isinstance(plans[key], JobError):
        raise plans[key]
    run = plans[key]
    if preview:
        run = replace(run, plan=preview_of(run.plan))
    return run


def to_make_line(item: Any, path: Path, run: Any, row: dict[str, Any], *, preview: bool,
                 resume_runs: bool) -> str:
    """A job to make: its size, file, planned time and peak memory, put in `row` and
    returned as its line; a checkpoint it goes on from said."""
    from hires.eta import duration

    job, seconds = item.job, run.plan.seconds
    row.update(status="to make", peak_bytes=run.plan.peak_bytes,
               seconds=None if seconds is None else round(seconds, 3))
    when = "" if seconds is None else f"{duration(seconds)}, "
    size = f"{job.width}x{job.height}"
    if preview:  # the image it makes is the first stage's ("width" and "height" stay the
        first = run.plan.stages[0]  # job's, as in gen's dry run)
        size = f"preview {first.width}x{first.height} of a {size} job"
    text = (f"job {item.index}: {size} -> {path}, "
            f"{when}peak {run.plan.peak_bytes / 1024**3:.1f} GiB")
    if not preview and resume_runs and (note := checkpoint_note(path, job, run.plan)):
        row["checkpoint"] = note
        text += f"; {note}"
        if note.endswith("the run starts over"):  # as gen's dry run and the run warn of it
            warn(f"job {item.index}: {note}")
    elif not preview and not resume_runs and (note := unkept_note(path, job)):
        row["checkpoint"] = note  # the stages --no-resume throws away, as the run says
        text += f"; {note}"
    return text


def batch_total_line(tally: BatchPlanTally) -> str:
    """`batch --dry-run`'s closing line: how many jobs are to make (and in what time), made
    already, left to another run and cannot run."""
    from hires.eta import duration

    counts = tally.counts
    parts = [f"{counts['to make']} to make" + (
        f", {duration(tally.total)} on {tally.planned_on} (assumed rates)"
        if tally.planned_on else ""),
        f"{counts['made']} made already"]
    if counts["busy"]:
        parts.append(f"{counts['busy']} left to another run")
    if counts["cannot run"]:
        parts.append(f"{counts['cannot run']} cannot run")
    return "total: " + "; ".join(parts)


def show_all_made(paths: list[str], as_json: bool) -> None:
    """`hires info` on each image; one that cannot be read is said on stderr (and, with
    --json, as a {"file", "error"} line) and the others are still shown (as `ls` and `head`
    do), then the exit code is the first failure's."""
    with exit_codes(), info_inputs(paths) as named:
        failed = _show_each(named, as_json)
    if failed:
        raise typer.Exit(failed)


class NoRecord(JobError):
    """An image `hires info` can read that carries no record: its file facts, for --json."""

    def __init__(self, message: str, image: dict[str, Any]):
        super().__init__(message)
        self.image = image


def _show_each(named: list[tuple[str, str]], as_json: bool) -> int:
    """`show_all_made`'s loop over (file to read, name to say): the first failure's exit code."""
    failed = 0
    for number, (path, name) in enumerate(named):
        if len(named) > 1 and not as_json:
            out_line(("\n" if number else "") + f"file {name}")
        try:
            with exit_codes():
                try:
                    show_made(path, as_json, name=name)
                except Exception as e:
                    if as_json:  # a script reads which file failed from stdout, in order
                        # an image without a record: its file facts, as for one with
                        facts = {"image": e.image} if isinstance(e, NoRecord) else {}
                        out_line(json_line({"file": name,
                                             "error": str(e) or type(e).__name__, **facts}))
                    raise
        except typer.Exit as e:
            failed = failed or e.exit_code
    return failed


@contextmanager
def info_inputs(paths: list[str]) -> Iterator[list[tuple[str, str]]]:
    """`info`'s images as (file to read, name to say). '-' alone reads stdin, as `hires up -`
    does: an image's bytes (kept in a temporary file for the block, said as "-"), else
    image paths, one a line."""
    from hires import piped
    from hires.cli_jobs import dash_head, stdin_paths

    given = dash_head(paths, "hires info - < image.png")
    if given is None:
        yield [(path, path) for path in paths]
        return
    stream, head = given
    if piped.looks_binary(head):
        with piped.spooled(stream, head) as held:  # read as a file: its metadata, not pixels
            yield [(str(held), "-")]
        return
    yield [(path, path) for path in stdin_paths(head, "image paths")]


def _safetensors_metadata(path: Path) -> dict[str, Any] | None:
    """The `__metadata__` of a safetensors file ({} if it has none), from its header alone;
    None if `path` is not one (a checkpoint is recognised by content, whatever its name)."""
    from hires.safetensors_header import read_header

    header = read_header(path, whole=False)  # a truncated file's metadata is still its
    if header is None:
        return None
    meta = header.get("__metadata__")
    return meta if isinstance(meta, dict) else {}


def show_checkpoint(path: Path, as_json: bool) -> None:
    """What a stopped run's checkpoint (NAME.resume.safetensors) keeps, and for which job."""
    from hires import resume
    from hires.job import JobError

    if not path.exists():
        raise JobError(f"no such file: {path}")
    if path.is_dir():
        raise JobError(f"{path} is a folder, not a checkpoint; give the "
                       "NAME.resume.safetensors file itself")
    kept = resume.describe(path)
    if kept is None or not isinstance(kept.get("job"), dict):
        from hires.safetensors_header import truncated

        meta = _safetensors_metadata(path)
        if meta is not None and meta.get("format") == resume.FORMAT and (cut := truncated(path)):
            # A copy cut short, not a run's own: the run writes it whole, then renames it.
            raise JobError(f"{path} is a hires checkpoint {cut.split(';')[0]}: a copy cut "
                           "short; copy it again, or delete it and a run of its job starts over")
        if meta is not None and meta.get("format") != resume.FORMAT:
            raise JobError(f"{path} is a safetensors file but not a hires checkpoint (model "
                           "weights?); `hires info` reads images and hires' checkpoints")
        raise JobError(f"{path} is not a checkpoint hires can read (from another version, or "
                       "cut short); delete it, and a run of its job starts over")
    if as_json:
        out_line(json_line({"file": str(path), "checkpoint": True, **kept}))
        return
    job, stage, sizes = kept["job"], kept["stage"], kept["stages"]
    if path.name.endswith(resume.SUFFIX):
        of = f"checkpoint of {path.with_name(path.name[:-len(resume.SUFFIX)])}"
    else:  # renamed: a run looks for it only as IMAGE.resume.safetensors
        of = f"checkpoint (renamed: a run finds it only as IMAGE{resume.SUFFIX})"
    then = ("the same command only decodes it" if stage == len(sizes) - 1 else
            f"the same command goes on with stage {stage + 1}")
    if kept.get("hires") != __version__:  # resume.stage_of takes only this version's
        then = f"hires {__version__} cannot go on from it (it starts over)"
    out_line("\n".join([
        f"{of}, kept by hires {kept.get('hires', '?')} for a run that stopped",
        *_prompt_lines(job),
        f"size {job.get('width')}x{job.get('height')}, seed {job.get('seed')}, "
        f"steps {job.get('steps')}",
        f"model {job.get('model')}, linfusion {job.get('linfusion')}"
        + (f", vae {job['vae']}" if job.get("vae") else ""),
        *([f"upscaled from {job['image']} (strength {job.get('strength')})"]
          if job.get("image") else []),
        *_addon_lines(_job_addons(job)),
        f"keeps {stages_upto(stage)} of the job's {len(sizes)}, up to {sizes[stage][0]}x"
        f"{sizes[stage][1]}: {then}; deleting it starts that run over"]))


def _precision(result: dict[str, Any]) -> str:
    """', UNet fp16, VAE bf16': the precisions the record says ran (older records: not all)."""
    ran = [f"{part} {result[key]}" for part, key in (("UNet", "dtype"), ("VAE", "vae_dtype"))
           if isinstance(result.get(key), str)]
    return "".join(f", {r}" for r in ran)


def _addon_lines(addons: dict[str, Any]) -> list[str]:
    """'lora REF at SCALE', 'controlnet ...', 'ip-adapter ...' of a record's add-ons, or
    'add-ons none'."""
    lines = [f"lora {lora.get('ref')} at {lora.get('scale')}" for lora in addons.get("lora") or []]
    if addons.get("controlnet"):
        c = addons["controlnet"]
        lines.append(f"controlnet {c.get('model')} at {c.get('scale')}, image {c.get('image')}")
    if addons.get("ip_adapter"):
        ip = addons["ip_adapter"]
        lines.append(f"ip-adapter {ip.get('ref')} at {ip.get('scale')}, image {ip.get('image')}")
    return lines or ["add-ons none"]


def _job_addons(job: dict[str, Any]) -> dict[str, Any]:
    """The add-ons a recorded job names, shaped as an image's record has them (a checkpoint
    keeps the job alone)."""
    from hires.lora import LoraError, parse_lora

    addons: dict[str, Any] = {}
    loras = []
    for spec in job.get("lora") or []:
        try:
            ref, scale = parse_lora(spec)
        except LoraError:  # shown as written
            ref, scale = spec, "?"
        loras.append({"ref": ref, "scale": scale})
    if loras:
        addons["lora"] = loras
    if job.get("control_model"):
        addons["controlnet"] = {"model": job["control_model"], "scale": job.get("control_scale"),
                                "image": job.get("control") or job.get("image")}
    if job.get("ip_image"):
        addons["ip_adapter"] = {"ref": job.get("ip_adapter"), "scale": job.get("ip_scale"),
                                "image": job["ip_image"]}
    return addons


def _prompt_lines(job: dict[str, Any]) -> list[str]:
    """'prompt ...' ('no prompt' for an upscale without one) and, when set, 'negative ...'."""
    lines = [f"prompt {job['prompt']!r}" if job.get("prompt") else "no prompt"]
    if job.get("negative"):
        lines.append(f"negative {job['negative']!r}")
    return lines


_TEXT_KEYS = ("prompt", "negative", "model", "sampler", "image", "linfusion")
_NUMBER_KEYS = ("width", "height", "seed", "steps", "guidance", "strength", "dpi", "depth",
                "stage", "quality")
_WHOLE_KEYS = ("width", "height", "seed", "steps", "depth", "stage", "quality")


def _not_a_number(value: Any, whole: bool) -> str | None:
    """What a record's number at `value` should be, where it is not one (None: it is, or is
    absent). JSON has no NaN or Infinity (info --json would write them); a whole number
    written 2.0 is refused by --from."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (
            isinstance(value, float) and not math.isfinite(value)):
        return "a number"
    return "a whole number" if whole and isinstance(value, float) else None


def _recorded_flag(job: dict[str, Any], key: str) -> bool:
    """A record's switch as `--from` reads it (a hand-edited "false" is off, not truthy text);
    False where it is none (the refusal says so)."""
    from hires.job import Job, JobError

    try:
        return job.get(key) is not None and bool(getattr(Job.from_dict({key: job[key]}), key))
    except (JobError, ValueError, TypeError):
        return False


def _record_problem(record: Any) -> str | None:
    """What in a `hires` record is not of the shape `show_made` reads, or None."""
    def wrong(name: str, value: Any, kind: str) -> str:
        return f"{name} is {json.dumps(value)[:40]}, not {kind}"

    if not isinstance(record, dict):
        return wrong("the record", record, "an object")
    job, result = record.get("job"), record.get("result") or {}
    if not isinstance(job, dict):
        return wrong("job", job, "an object")
    if not isinstance(result, dict):
        return wrong("result", result, "an object")
    for name, part in (("job", job), ("result", result)):
        for key in _TEXT_KEYS:
            if part.get(key) is not None and not isinstance(part[key], str):
                return wrong(f"{name}.{key}", part[key], "text")
        for key in _NUMBER_KEYS:
            if kind := _not_a_number(part.get(key), key in _WHOLE_KEYS):
                return wrong(f"{name}.{key}", part[key], kind)
    stages = result.get("stages") or []
    if not isinstance(stages, list) or not all(isinstance(s, dict) for s in stages):
        return wrong("result.stages", stages, "a list of objects")
    for i, stage in enumerate(stages):  # each shown as a line of numbers
        for key in ("index", "width", "height", "steps", "seconds", "psnr"):
            if kind := _not_a_number(stage.get(key), key not in ("seconds", "psnr")):
                return wrong(f"result.stages[{i}].{key}", stage[key], kind)
    addons = result.get("addons") or {}
    if not isinstance(addons, dict):
        return wrong("result.addons", addons, "an object")
    loras = addons.get("lora") or []
    if not isinstance(loras, list) or not all(isinstance(x, dict) for x in loras):
        return wrong("result.addons.lora", loras, "a list of objects")
    for key in ("controlnet", "ip_adapter"):
        if addons.get(key) is not None and not isinstance(addons[key], dict):
            return wrong(f"result.addons.{key}", addons[key], "an object")
    return None


def _rerun_problem(job: dict[str, Any]) -> str | None:
    """Why `hires gen --from` would refuse a recorded job (hires' or A1111's), whole in shape
    but a value out of range (steps -5, a width of 10^9), as --from reads it; or None. What
    depends on this machine (paths, devices) is --from's to say."""
    import re

    from hires.cli_jobs import old_tile
    from hires.job import Job, JobError
    from hires.sizes import SIZE_KEYS

    if old := old_tile(job):
        return f"it {old}"
    # As hires.output.job_values_from_image and cli_jobs.build_job read it: no floor is 0.0,
    # a recorded allow_pickle false is dropped (true is refused).
    values = {"global_floor": 0.0, **job}
    if values.get("allow_pickle") in (False, None):
        values.pop("allow_pickle", None)
    # Size keys besides the sides are --from's to combine (hires.sizes), not a Job's fields.
    values = {k: v for k, v in values.items()
              if k in ("width", "height") or str(k).replace("-", "_") not in SIZE_KEYS}
    try:
        Job.from_dict(values, where="the record").validate()
    except JobError as e:  # a shared check's flags ("--model is empty") as the record's keys
        return re.sub(r"--([a-z][a-z0-9-]*)(?![a-z0-9-])(?! flag)",
                      lambda m: f"'{m.group(1).replace('-', '_')}'", str(e))
    return None


def _dpi_lines(job: dict[str, Any], record_size: tuple[Any, Any], file_size: tuple[int, int],
              held: tuple[float, float] | None) -> list[str]:
    """The print size at the dpi the file holds (JPEG keeps whole numbers, PNG pixels per
    metre), or at the dpi asked for where the file holds none (a WebP has no field for it)."""
    asked = job.get("dpi")
    if not isinstance(asked, (int, float)) or asked <= 0:
        return []
    w, h = record_size
    if not isinstance(w, int) or not isinstance(h, int):
        w, h = file_size
    across = down = asked
    note = f" (asked for; the file records no dpi: set {asked:g} dpi when printing)"
    said = f"{asked:g}"
    if held and held[0] > 0:
        across, down = held[0], held[1] if len(held) > 1 and held[1] > 0 else held[0]
        # PNG's pixels per metre round 72.5 to 72.49: the same to a printer
        if abs(across - asked) < 0.05 and abs(down - asked) < 0.05:
            across, down, note = asked, asked, ""
        else:  # as the file holds it, each side's own (a 300x150 dpi file)
            said = _shown_dpis(across, down)
            note = f" (as the file holds it; {asked:g} dpi was asked for)"
    lines = [f"print size {_on_paper(w / across, h / down)} at {said} dpi{note}"]
    if (w, h) != tuple(file_size):  # resized since: the recorded size is not what prints
        lines.append(f"this file ({file_size[0]}x{file_size[1]}) prints at "
                     f"{_on_paper(file_size[0] / across, file_size[1] / down)}")
    return lines


def _on_paper(width_in: float, height_in: float) -> str:
    """A print's size in both units, as the plan says it: a print asked in inches was said
    in centimetres alone."""
    return (f"{width_in * 2.54:.1f} x {height_in * 2.54:.1f} cm, {width_in:.1f} x "
            f"{height_in:.1f} in")


def _file_facts(meta: dict[str, Any]) -> dict[str, Any]:
    """The file's own format, size and dpi, as --json's "image" gives them for any image."""
    width, height = meta["size"]
    dpi = [d for d in (meta["dpi"] or ())[:2] if d > 0]  # (0, 72): 72, as the text says
    # a file whose sides differ (300x150) gives the vertical one apart, as keys that do not
    # apply are left out elsewhere
    down = {"dpi_vertical": _dpi_value(dpi[1])} if len(dpi) == 2 and _shown_dpi(dpi[0]) != \
        _shown_dpi(dpi[1]) else {}
    return {"format": meta["format"], "width": width, "height": height,
            "dpi": _dpi_value(dpi[0]) if dpi else None, **down}


def _dpi_value(d: float) -> float:
    """A dpi for --json: to a hundredth (a PNG's pixels per metre read back as
    300.05019999999996), below 1 to two digits (0.004 is no 0.0)."""
    return round(d, 2) if d >= 1 else float(f"{d:.2g}")


def _shown_dpi(d: float) -> str:
    """A dpi to a tenth: a BMP's pixels per metre read back as 96.0119."""
    return f"{round(d, 1):g}" if d >= 1 else f"{d:.2g}"


def _shown_dpis(across: float, down: float) -> str:
    """A file's dpi, as '300', or '300x150' where its sides' differ."""
    shown = _shown_dpi(across)
    return shown if shown == _shown_dpi(down) else f"{shown}x{_shown_dpi(down)}"


def _facts_line(meta: dict[str, Any]) -> str:
    """The file's format, size and dpi in words, with its print size where it holds a dpi."""
    (width, height), dpi = meta["size"], [d for d in (meta["dpi"] or ())[:2] if d > 0]
    if not dpi:
        return f"{meta['format']} {width}x{height}, no dpi"
    across, down = dpi[0], dpi[-1]  # one side's alone: both (as --json's "dpi")
    said = _shown_dpis(across, down)
    return (f"{meta['format']} {width}x{height}, {said} dpi: {width / across * 2.54:.1f} x "
            f"{height / down * 2.54:.1f} cm")


def _show_a1111(said: str, name: str, meta: dict[str, Any], as_json: bool) -> None:
    """An image with only A1111 'parameters': the values `hires gen --from` would take (`said`
    in messages, `name` in --json: as `show_made`'s)."""
    text, size = meta["parameters"], meta["size"]
    from hires.job import JobError
    from hires.output import a1111_notes, parse_parameters

    try:
        values = parse_parameters(text)
    except (ValueError, TypeError) as e:
        raise JobError(f"{said}: its A1111 parameters are malformed ({e}); `hires gen --from` "
                       "cannot use them either") from None
    from hires.output import unfound_checkpoint

    if problem := _rerun_problem(values) or unfound_checkpoint(values.get("model")):
        warn(f"{said}: `hires gen --from` refuses its parameters: {problem}")
    notes = a1111_notes(text)  # a sampler hires has not: --from says it, and so does this
    for note in notes:
        warn(f"{said}: {note}")
    if as_json:
        out_line(json_line({"file": name, "a1111": values, "parameters": text,
                            "notes": notes, "image": _file_facts(meta)}))
        return
    lines = ["not made by hires: A1111 parameters, as `hires gen --from` takes them",
             *_prompt_lines(values)]
    rest = {k: v for k, v in values.items() if k not in ("prompt", "negative")}
    if rest:
        lines.append(", ".join(f"{k} {v}" for k, v in rest.items()))
    if "width" in values:
        lines.append(f"size {size[0]}x{size[1]} (the file's)")
    else:  # --from takes no size from the file's pixels (QA 187)
        lines.append(f"no size in them: --from makes hires' default size (the file is "
                     f"{size[0]}x{size[1]}; --size picks one)")
    out_line("\n".join(lines))


def show_made(path: str | Path, as_json: bool, name: str | None = None) -> None:
    """How an image was made, from its hires metadata (or A1111's): job, stages and
    add-ons; a checkpoint, named so or not, is shown as one. `name`: the file as said ("-"
    for `path` holding stdin's bytes)."""
    from hires import resume
    from hires.errors import path_said
    from hires.job import JobError
    from hires.output import OutputError, read_metadata

    if not str(path):  # `hires info "$IMG"` with the variable unset (a Path would be ".")
        raise JobError("an empty path was given; name an image file")
    said = "stdin" if name == "-" else name or str(path)  # in messages
    given, path = str(path), Path(path)  # `given` as typed: a Path makes './g/' 'g'
    if path.name.endswith(resume.SUFFIX) or (
            path.is_file() and _safetensors_metadata(path) is not None):
        if name == "-" and (_safetensors_metadata(path) or {}).get("format") == resume.FORMAT:
            # its job's image is named beside it: only its path says where
            raise JobError("a checkpoint on stdin: give its path (hires info "
                           "NAME.resume.safetensors)")
        try:
            show_checkpoint(path, as_json)
        except JobError as e:  # model weights, say: said of stdin, not a temporary file
            raise JobError(path_said(str(e), path, said)) from None
        return
    if name != "-" and path.is_dir():  # info reads many: the folder's images, as `up` says
        from hires.images import folder_hint

        raise JobError(f"{given} is a folder, not an image; {folder_hint(path)}")
    try:
        # Read by the name as typed, which its messages then say: a file named 'image' read
        # as './image' is not rewritten into their words afterwards ('as an ./image')
        meta = read_metadata(given)
    except OutputError as e:
        from hires.images import glob_hint

        text = path_said(str(e), given, said)
        if name != "-" and text.startswith("no such image"):
            text += glob_hint(path)
        elif text.endswith("give the image file itself"):  # or its bytes, as `up -` takes
            text += " (or pipe it to `hires info -`)"
        raise JobError(text) from None
    record, (width, height) = meta["hires"], meta["size"]
    if meta["hires_error"] or (record is not None and _record_problem(record)):
        why = meta["hires_error"] or _record_problem(record)
        # --from reads the job alone: a damaged result leaves it to repeat the job
        advice = ("`hires gen --from` still repeats the job, whose settings are whole"
                  if why.startswith("result") else
                  "give `hires gen` the settings as options, not --from")
        raise JobError(f"{said}: its hires metadata is malformed ({why}), changed or cut "
                       f"short since hires wrote it; {advice}")
    if record is None:
        if meta["parameters"] and meta["parameters"].strip():
            _show_a1111(said, name or str(path), meta, as_json)
            return
        if not as_json:  # what any image shows: a print maker checks its size and dpi
            out_line(_facts_line(meta))
        raise NoRecord(f"{said} carries no hires or A1111 metadata; `hires info` alone "
                       "shows this machine", _file_facts(meta))
    if problem := _rerun_problem(record["job"]):  # shown as written, and said before --from
        from hires.record import newer_note

        warn(f"{said}: `hires gen --from` refuses its recorded job: {problem}"
             f"{newer_note(record.get('hires'))}")
    from hires.cut_short import cut_short

    if cut := cut_short(path):  # its record is at the start: all of it is there
        warn(f"{said} is {cut}: its pixels are not all there (a copy cut short?); "
             "`hires gen --from` makes it again")
    if as_json:
        out_line(json_line({"file": name or str(path), **record, "image": _file_facts(meta)}))
        return
    job, result = record["job"], record.get("result") or {}
    sampler = (job.get("sampler") or "euler") + (" karras" if _recorded_flag(job, "karras")
                                                 else "")
    recorded = tuple(result.get(k, job.get(k)) for k in ("width", "height"))
    size = f"size {width}x{height}"
    if all(isinstance(n, int) for n in recorded) and recorded != (width, height):
        size += f" (recorded {recorded[0]}x{recorded[1]}: the file was changed since)"
    lines = [f"made by hires {record.get('hires', '?')}",
             *_prompt_lines(job),
             f"{size}, seed {job.get('seed')}, "
             f"steps {job.get('steps')}, {sampler}, guidance {job.get('guidance')}"
             + (", 16-bit" if result.get("depth") == 16 else "")
             + (f", quality {job['quality']}" if isinstance(job.get("quality"), int) else ""),
             f"model {job.get('model')}, linfusion "
             f"{result.get('linfusion', job.get('linfusion')) or 'none (plain attention)'}"
             + (f", vae {job['vae']}" if job.get("vae") else "") + _precision(result)]
    if isinstance(result.get("stage"), int):  # --save-stages: one stage of a bigger job
        lines.append(f"stage {result['stage']} of a job for {job.get('width')}x"
                     f"{job.get('height')} (`hires gen --from` runs the whole job)")
    if job.get("image"):
        # "-": its bytes were piped in (hires up -); `gen --from` takes them on stdin again
        source = "an image on stdin" if job["image"] == "-" else job["image"]
        lines.append(f"upscaled from {source} (strength {job.get('strength')})")
    lines += _dpi_lines(job, recorded, (width, height), meta["dpi"])
    lines += _addon_lines(result.get("addons") or {})
    for stage in result.get("stages") or []:
        lines.append(f"stage {stage.get('index')}: {stage.get('width')}x{stage.get('height')}, "
                     f"{stage.get('steps')} step{'' if stage.get('steps') == 1 else 's'}, "
                     f"{stage.get('seconds')} s"
                     # null: identical to the input (an infinite PSNR, which JSON cannot hold)
                     + (f", {stage['psnr']} dB PSNR against the input"
                        if stage.get("psnr") is not None else
                        ", identical to the input" if "psnr" in stage else ""))
    out_line("\n".join(lines))


def machine_info() -> dict[str, Any]:
    """`hires info` alone: versions, devices and their memory, RAM, the scratch disk, and
    whether the default model is cached (`--json` prints this)."""
    import os
    import platform
    import shutil
    import tempfile
    from importlib import metadata

    import torch
    from huggingface_hub import constants, try_to_load_from_cache

    from hires.gpus import key_in_name
    from hires.job import DEFAULT_MODEL
    from hires.memory import disk_room, ram_bytes, scratch_folder, tmpdir_problem

    # Versions from the installed metadata: importing diffusers and transformers to ask
    # them took most of `hires info`'s 17 s.
    packages: dict[str, str | None] = {"torch": torch.__version__}
    for name in ("diffusers", "transformers", "accelerate", "safetensors", "peft"):
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            packages[name] = None
    devices = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            # Before Ampere bf16 is emulated (hires.models.choose_vae_dtype).
            devices.append({"device": f"cuda:{i}", "name": p.name,
                            "memory_bytes": p.total_memory, "gpu": key_in_name(p.name),
                            "native_bf16": p.major >= 8})
    total, available = ram_bytes()
    scratch = scratch_folder()
    why = tmpdir_problem() or (("TMPDIR" if os.environ.get("TMPDIR") else
                                "the system's temp folder") if scratch == tempfile.gettempdir()
                               else f"{tempfile.gettempdir()} is in RAM; TMPDIR picks another")
    return {
        "hires": __version__, "python": platform.python_version(), "packages": packages,
        "devices": devices, "ram_bytes": total or None,
        "ram_available_bytes": available if total else None,
        "scratch": {"folder": scratch, "why": why,
                    "free_bytes": shutil.disk_usage(scratch).free,
                    "parked_room_bytes": int(disk_room(scratch))},
        "model_cache": str(constants.HF_HUB_CACHE),
        "cached": {repo: isinstance(try_to_load_from_cache(repo, file), str)
                   for repo, file in ((DEFAULT_MODEL, "model_index.json"),
                                      ("Yuanshi/LinFusion-XL", "config.json"))},
    }


def machine_lines(info: dict[str, Any]) -> list[str]:
    """`machine_info` as `hires info` prints it."""
    from hires.models import FP16_VAE

    lines = [f"hires {info['hires']}", f"python {info['python']}"]
    lines += [f"{name} {version or 'missing'}" for name, version in info["packages"].items()]
    for d in info["devices"]:
        timed = (f"estimates as --gpu {d['gpu']}" if d["gpu"] else "not in hires' GPU table "
                 "(--gpu with a measured TFLOP/s times its plans)")
        if not d["native_bf16"]:
            timed += ("; no native bf16, so the VAE runs in fp32 unless it is made for "
                      f"fp16 (--vae {FP16_VAE})")
        lines.append(f"device {d['device']} {d['name']}, {d['memory_bytes'] / 1024**3:.1f} GiB, "
                     f"{timed}")
    if not info["devices"]:
        lines.append("device cpu only (no CUDA GPU visible to torch)")
    if info["ram_bytes"]:
        lines.append(f"ram {info['ram_bytes'] / 1024**3:.1f} GiB, "
                     f"{info['ram_available_bytes'] / 1024**3:.1f} GiB available")
    scratch, room = info["scratch"], info["scratch"]["parked_room_bytes"]
    lines.append(f"scratch {scratch['folder']} ({scratch['why']}), "
                 f"{scratch['free_bytes'] / 1e9:.1f} GB free, "
                 + (f"room for {room / 1e9:.1f} GB of parked maps the RAM cannot hold" if room
                    else "in RAM or full: no room for parked maps (point TMPDIR at a disk)"))
    lines.append("a 16K image: 0.8 GB in RAM as 8-bit RGB, its PNG about as much on disk "
                 "(--depth 16: 2.4 GB in RAM, up to 1.6 GB on disk); no scratch with "
                 "--vae-stats fast (the default), up to 16 GB a level with exact (never over "
                 "half the free space; it recomputes past that)")
    lines.append(f"model cache {info['model_cache']}")
    from huggingface_hub import constants

    # offline, a run refuses to download: 'downloads on first use' promised what it will not do
    fetched = ("HF_HUB_OFFLINE is set: unset it to download" if constants.HF_HUB_OFFLINE
               else "downloads on first use")
    for repo, cached in info["cached"].items():
        lines.append(f"{repo} {'cached' if cached else f'not cached ({fetched})'}")
    return lines
