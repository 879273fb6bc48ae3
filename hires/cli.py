"""The `hires` command line: its commands and their options. They parse, call the library
and print; how is in `cli_output` (what goes where, exit codes), `cli_options` (shared options,
-h headings), `cli_jobs` (options to jobs), `cli_runs` (making images), `cli_batch` (batch
runs), `cli_resume` (what stopped runs keep), `cli_show` (plans, records).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from hires import __version__, stops
from hires.cli_batch import (
    batch_jobs,
    check_batch_devices,
    check_batch_outputs,
    check_batch_paths,
    refuse_image_output,
    run_batch_jobs,
)
from hires.cli_jobs import (
    about_input,
    argv_as_typed,
    argv_text,
    build_job,
    check_device,
    check_gpu,
    check_plan_job,
    check_preview,
    job_flags,
    read_prompts,
    recorded_stdin,
    refuse_empty,
    up_inputs,
    upscale_source,
)
from hires.cli_options import (
    AllowPickle,
    Aspect,
    Control,
    ControlModel,
    ControlScale,
    Depth,
    Device,
    Disk,
    Dpi,
    DryRun,
    Dtype,
    Fmt,
    Gpu,
    Guidance,
    Height,
    InfoJson,
    IpAdapter,
    IpImage,
    IpScale,
    JsonOut,
    Karras,
    LinFusionRef,
    Lora,
    Model,
    Negative,
    Offload,
    Overwrite,
    PlanGpu,
    PlanJson,
    Preset,
    PrintSize,
    ProgressOpt,
    Quality,
    QuietOpt,
    Ram,
    Resume,
    Sampler,
    SaveStages,
    Sections,
    Seed,
    Size,
    Steps,
    Strength,
    Upsample,
    UpSize,
    UpSteps,
    VaeDtype,
    VaeRef,
    VaeStats,
    VaeTile,
    Vram,
    Width,
    completes,
    preset_names,
    whole_in,
)
from hires.cli_output import (
    OneLineErrors,
    Quiet,
    exit_codes,
    json_line,
    on_sigterm,
    out_line,
    quiet_stdout,
    say,
    stopped,
    warn,
)
from hires.cli_resume import stopped_beside
from hires.cli_runs import check_outputs, read_notes, run_jobs, say_read
from hires.cli_show import (
    crop_notes,
    machine_info,
    machine_lines,
    show_all_made,
    show_batch_plan,
    show_plan,
)

# transformers and diffusers log notices (e.g. a missing torchvision) that say nothing to a user
# of hires; real failures reach the user through our own one-line errors.
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

app = typer.Typer(
    name="hires", no_args_is_help=True, pretty_exceptions_enable=False,
    rich_markup_mode=None, cls=OneLineErrors,
    help="Text to ultra-high-resolution image (1K to 16K px; 64 to 32768 accepted) with SDXL "
    "+ LinFusion on one GPU.",
    context_settings={"help_option_names": ["-h", "--help"]},
)
presets_app = typer.Typer(help="List and show presets.", invoke_without_command=True)
app.add_typer(presets_app, name="presets")


# The most images one `gen` (prompts times --n) or `up` makes: a slip (10,000 prompts at
# --n 10000) took minutes and GBs of memory to name and plan its images before anything was
# refused.
MAX_IMAGES = 10_000


@app.command(cls=Sections)
def gen(
    prompt: Annotated[str, typer.Argument(help="The prompt; '-' reads one prompt a line from "
                                          "stdin.")] = "",
    size: Size = None, aspect: Aspect = None, width: Width = None, height: Height = None,
    print_size: PrintSize = None,
    negative: Negative = None, seed: Seed = None, steps: Steps = None,
    guidance: Guidance = None, strength: Strength = None, model: Model = None,
    linfusion: LinFusionRef = None, preset: Preset = None,
    output: Annotated[str | None, typer.Option(
        "-o", "--output", help="File, folder, or template with {prompt} (its words, or "
        "{name}) {seed} {width} {height} {index} {format} ({index:03} pads); '-': the image "
        "to stdout.")] = None,
    fmt: Fmt = None, quality: Quality = None, dpi: Dpi = None, depth: Depth = None,
    save_stages: SaveStages = False,
    vram: Vram = None, ram: Ram = None, disk: Disk = None, offload: Offload = None,
    device: Device = None,
    dtype: Dtype = None,
    upsample: Upsample = None, vae_tile: VaeTile = None, vae_stats: VaeStats = None,
    vae_dtype: VaeDtype = None, vae: VaeRef = None,
    allow_pickle: AllowPickle = False,
    sampler: Sampler = None, karras: Karras = None, lora: Lora = None,
    control: Control = None, control_model: ControlModel = None,
    control_scale: ControlScale = None, ip_image: IpImage = None, ip_adapter: IpAdapter = None,
    ip_scale: IpScale = None,
    from_image: Annotated[str | None, typer.Option(
        "--from", help="Re-run the job recorded in an image made by hires.")] = None,
    as_json: JsonOut = False, quiet: QuietOpt = False, progress: ProgressOpt = "auto",
    overwrite: Overwrite = False,
    dry_run: DryRun = False, gpu: Gpu = None,
    n: Annotated[int, typer.Option("--n", "-n", metavar="<int>",
                                   show_default=False, parser=whole_in(1, MAX_IMAGES),
                                   help="Images per prompt, with consecutive seeds (default 1)."
                                   )] = 1,
    resume_runs: Resume = True,
    preview: Annotated[bool, typer.Option(
        "--preview", help="Make only each image's first stage, its composition, in a fraction "
        "of the time (NAME.stage0.png); `hires gen --from` one makes it whole.")] = False,
) -> None:
    """Make an image from a prompt, 1K to 16K px a side (64 to 32768 accepted)."""
    options = dict(locals())  # every option, by name: job_flags picks the job's
    Quiet.on, Quiet.progress = quiet, progress
    busy = "prompt '-'" if prompt == "-" else ""  # stdin holds the prompts
    with exit_codes(), recorded_stdin(from_image := from_path(from_image), "gen", busy) as piped:
        refuse_empty("-o", output, "a file, folder or template")
        check_from(from_image)
        flags = job_flags(options)
        if prompt and prompt != "-":
            flags["prompt"] = argv_text(prompt)
        job = build_job(preset, from_image, flags, source=piped.size if piped else None)
        prompts = read_prompts(prompt) if prompt == "-" else [job.prompt]
        if len(prompts) * n > MAX_IMAGES:  # before each image's name and plan is worked out
            raise typer.BadParameter(
                f"{len(prompts):,} prompts times --n {n} is {len(prompts) * n:,} images, more "
                f"than the {MAX_IMAGES:,} one command makes; split the prompts or lower --n")
        if prompt == "-":
            check_stdin_prompts(prompts)
        jobs = [job.merged({"prompt": text}) for text in prompts]
        check_preview(preview, save_stages)
        if from_image is not None and output is None and resume_runs and not preview and \
                len(prompts) * n == 1 and (beside := stopped_beside(from_image, job)):
            say(beside)
        if not prompts[0].strip() and from_image is None:  # in a dry run too, as it starts
            raise typer.BadParameter("give a prompt (or '-' to read prompts from stdin)")
        if not dry_run or gpu is None:  # a dry run with --gpu plans that card, not this one
            check_device(job.device, dry_run, given=device is not None)
        if dry_run:
            images = check_outputs(jobs, output, fmt, n, overwrite, save_stages, preview,
                                   quality_flag=quality is not None, as_json=as_json,
                                   resume_runs=resume_runs)
            # one plan: the prompts' and seeds' images differ in neither size nor work
            show_plan(job, gpu, as_json, source=upscale_source(job, piped),
                      stage_images=save_stages, preview=preview, here=True, images=images,
                      prompts=jobs)
            return
        run_jobs(jobs, output, save_stages, as_json, quiet, overwrite, gpu, fmt_flag=fmt, n=n,
                 resume_runs=resume_runs, preview=preview, quality_flag=quality is not None)


def check_stdin_prompts(prompts: list[str]) -> None:
    """A control character in a prompt on stdin, said with the prompt's number (of many)."""
    from hires.job import JobError, KeyedError, check_controls

    for i, text in enumerate(prompts, start=1):
        try:
            check_controls("prompt", text)
        except KeyedError as e:
            raise JobError(f"prompt {i} on stdin{e.rest}") from None


def from_path(given: str | Path | None) -> Path | None:
    """--from's image: '' (an unset variable) is refused, not read as the folder '.'."""
    if given is None:
        return None
    refuse_empty("--from", str(given), "an image made by hires")
    return Path(given)


def check_from(from_image: Path | None) -> None:
    """--from reads the job an image records; a stopped run's checkpoint is no image yet."""
    from hires import resume
    from hires.job import JobError

    if from_image is not None and str(from_image) == "-":  # was "no such image: -"
        raise JobError("--from takes the image's path, not '-' (stdin gives a recorded upscale "
                       "its input: hires gen --from out.png < photo.png); save the image and "
                       "give its path")
    if from_image is not None and resume.is_checkpoint(from_image):
        raise JobError(f"{from_image} is the checkpoint of a stopped run, not an image: run the "
                       f"command that made it again to go on (`hires info {from_image}` shows "
                       "its job)")


@app.command(cls=Sections)
def up(
    images: Annotated[list[str], typer.Argument(  # str: a Path makes './-' '-', stdin
        help="The images to upscale: PNG, JPEG, WebP or TIFF; '-' reads stdin: one image's "
        "bytes (cat photo.png | hires up - ...), or one path a line. The model loads once for "
        "all of them.", metavar="IMAGE")],
    size: UpSize = None,
    scale: Annotated[float | None, typer.Option(
        help="Output size as a multiple of the input's, e.g. 4.")] = None,
    width: Width = None, height: Height = None, print_size: PrintSize = None,
    strength: Annotated[float | None, typer.Option(
        help="SDEdit strength of the first stage, later ones taper to 0; lower stays closer "
        "to the input (default 0.3).")] = None,
    prompt: Annotated[str | None, typer.Option(
        help="What the image shows (optional; guides the new detail).")] = None,
    negative: Negative = None, seed: Seed = None, steps: UpSteps = None,
    guidance: Guidance = None, model: Model = None, linfusion: LinFusionRef = None,
    preset: Preset = None,
    output: Annotated[str | None, typer.Option(
        "-o", "--output", help="File, folder, or template with {name} (the input's file name; "
        "'stdin' for piped bytes) {prompt} {seed} {width} {height} {index} {format} "
        "({index:03} pads); '-': the image to stdout.")] = None,
    fmt: Fmt = None, quality: Quality = None, dpi: Dpi = None, depth: Depth = None,
    save_stages: SaveStages = False,
    vram: Vram = None, ram: Ram = None, disk: Disk = None, offload: Offload = None,
    device: Device = None,
    dtype: Dtype = None, upsample: Upsample = None,
    vae_tile: VaeTile = None, vae_stats: VaeStats = None, vae_dtype: VaeDtype = None,
    vae: VaeRef = None, allow_pickle: AllowPickle = False,
    sampler: Sampler = None, karras: Karras = None, lora: Lora = None,
    control: Control = None, control_model: ControlModel = None,
    control_scale: ControlScale = None, ip_image: IpImage = None, ip_adapter: IpAdapter = None,
    ip_scale: IpScale = None,
    as_json: JsonOut = False, quiet: QuietOpt = False, progress: ProgressOpt = "auto",
    overwrite: Overwrite = False,
    dry_run: DryRun = False, gpu: Gpu = None, resume_runs: Resume = True,
    preview: Annotated[bool, typer.Option(
        "--preview", help="Make only each image's first stage (NAME.stage0.png), to judge "
        "--strength and the prompt before the long run; `hires gen --from` one makes it "
        "whole.")] = False,
) -> None:
    """Upscale existing images with new, coherent detail (e.g. --scale 4 or --size 16384)."""
    options = dict(locals())  # every option, by name: job_flags picks the job's
    Quiet.on, Quiet.progress = quiet, progress
    with exit_codes(), up_inputs(images) as names:
        if len(names) > MAX_IMAGES:  # before each is opened, named and planned
            raise typer.BadParameter(f"{len(names):,} inputs, more than the {MAX_IMAGES:,} "
                                     "images one command makes; split them")
        refuse_empty("-o", output, "a file, folder or template")
        from hires import piped
        from hires.images import PIPE_ADVICE, ImageInputError

        flags = job_flags(options)  # no --strength: up's own default (hires.sizes)
        flags.update(prompt=argv_text(prompt or ""))
        jobs, sizes, alpha, noted = [], [], set(), []
        for image in names:
            # Every input is decoded here, so that a broken one stops the command before any
            # work; none is kept (each is loaded again in its turn), so memory stays flat.
            try:
                source = piped.load(image)
            except ImageInputError as e:  # a pipe given by its path: up reads '-'
                said = str(e).replace(PIPE_ADVICE, f"{PIPE_ADVICE} (or pipe it to `hires up -`)")
                raise ImageInputError(said) from None
            sizes.append(source.rgb.size)
            if source.alpha is not None:  # the output keeps it: a 4th channel to store
                alpha.add(image)
            with about_input(image, len(names) > 1):
                jobs.append(build_job(preset, None, {**flags, "image": image,
                                                     "image_sha256": source.sha256},
                                      source=source.rgb.size))
            if dry_run:  # what reading it leaves out, as the run says it (its crop: the plan)
                noted.append(read_notes(source, jobs[-1].depth))
        check_preview(preview, save_stages)
        if not dry_run or gpu is None:  # a dry run with --gpu plans that card, not this one
            check_device(jobs[0].device, dry_run, given=device is not None)
        if dry_run:
            images = check_outputs(jobs, output, fmt, 1, overwrite, save_stages, preview,
                                   alpha=frozenset(alpha), quality_flag=quality is not None,
                                   as_json=as_json, resume_runs=resume_runs)
            for job, size, image, said in zip(jobs, sizes, images, noted):
                # an input's plan, and its image's warnings as the run's record has them
                image["warnings"] = [*crop_notes(job, size), *say_read(said),
                                     *image["warnings"]]
                with about_input(job.image, len(jobs) > 1):
                    show_plan(job, gpu, as_json, source=size, stage_images=save_stages,
                              preview=preview, here=True, images=[image])
            return
        run_jobs(jobs, output, save_stages, as_json, quiet, overwrite, gpu, fmt_flag=fmt,
                 resume_runs=resume_runs, preview=preview, alpha=frozenset(alpha),
                 quality_flag=quality is not None)


@app.command(cls=Sections)
def plan(
    prompt: Annotated[str, typer.Argument(help="The prompt (does not change the plan).")] = "",
    size: Size = None, aspect: Aspect = None, width: Width = None, height: Height = None,
    print_size: PrintSize = None,
    negative: Negative = None, seed: Seed = None, steps: Steps = None,
    guidance: Guidance = None, strength: Strength = None, model: Model = None,
    linfusion: LinFusionRef = None, preset: Preset = None, fmt: Fmt = None, dpi: Dpi = None,
    depth: Depth = None, vram: Vram = None, ram: Ram = None, disk: Disk = None,
    offload: Offload = None, device: Device = None,
    dtype: Dtype = None,
    upsample: Upsample = None, vae_tile: VaeTile = None, vae_stats: VaeStats = None,
    vae_dtype: VaeDtype = None, vae: VaeRef = None,
    sampler: Sampler = None, karras: Karras = None, lora: Lora = None,
    control: Control = None, control_model: ControlModel = None,
    control_scale: ControlScale = None, ip_image: IpImage = None, ip_adapter: IpAdapter = None,
    ip_scale: IpScale = None,
    from_image: Annotated[str | None, typer.Option(
        "--from", help="Plan the job recorded in an image made by hires.")] = None,
    gpu: PlanGpu = None, as_json: PlanJson = False, quiet: QuietOpt = False,
) -> None:
    """A dry run: each stage's size, steps, strategy, peak memory, work and time; no weights."""
    options = dict(locals())  # every option, by name: job_flags picks the job's
    Quiet.on = quiet  # as every command takes it: a wrapper may add -q to each
    with exit_codes(), recorded_stdin(from_image := from_path(from_image), "plan") as piped:
        check_from(from_image)
        flags = job_flags(options)
        if prompt:
            flags["prompt"] = argv_text(prompt)
        # A ControlNet's image does not change the plan: "--preset canny" plans without one
        job = build_job(preset, from_image, flags, source=piped.size if piped else None,
                        images=False)
        check_plan_job(job, flags, format_given=fmt is not None)
        show_plan(job, gpu, as_json, source=upscale_source(job, piped))


PresetsJson = Annotated[bool, typer.Option(
    "--json", help="One JSON object a preset a line: name, description, path, origin "
    "(shipped or yours), replaces_shipped, values.")]


@presets_app.callback()
def presets_default(ctx: typer.Context, as_json: PresetsJson = False,
                    quiet: QuietOpt = False) -> None:
    """List the presets (shipped and your own)."""
    # `hires presets --json show x`: its subcommand's --json (and -q)
    ctx.obj = {"json": as_json, "quiet": quiet}
    if ctx.invoked_subcommand is None:
        presets_list(ctx, as_json, quiet)


def _group_json(ctx: typer.Context, key: str = "json") -> bool:
    """Whether `hires presets --json` (or -q, `key` "quiet") was given before a subcommand."""
    parent = ctx.parent.obj if ctx.parent is not None else None
    return bool(parent.get(key)) if isinstance(parent, dict) else False


@presets_app.command("list")
def presets_list(ctx: typer.Context, as_json: PresetsJson = False,
                 quiet: QuietOpt = False) -> None:
    """List the presets (shipped and your own)."""
    as_json = as_json or _group_json(ctx)
    Quiet.on = quiet or _group_json(ctx, "quiet")
    with exit_codes():
        from hires.presets import available, shipped, user_folder

        broken: list[str] = []
        found, theirs = available(broken), shipped()

        def origin(name: str) -> str:  # a user's preset of a shipped name wins: say so
            if name not in theirs:
                return " (yours)"
            return "" if found[name].path == theirs[name].path else \
                " (yours; replaces the shipped one)"
        if as_json:
            for name, p in sorted(found.items()):
                ours = name in theirs and p.path == theirs[name].path
                out_line(json_line(
                    {"name": name, "description": p.description, "path": str(p.path),
                     "origin": "shipped" if ours else "yours",
                     "replaces_shipped": name in theirs and not ours,
                     "values": p.values}, names=("name", "path")))  # a name is a file's
        else:
            out_line("\n".join(f"{name:12s} {p.description}{origin(name)}"
                                for name, p in sorted(found.items())))
        for problem in broken:  # one bad file of the user's does not hide the others
            warn(problem if problem.startswith("your own presets:") else
                 f"skipped a broken preset: {problem}")
        say(f"(your own presets go in {user_folder()})")


@presets_app.command("show")
def presets_show(ctx: typer.Context, name: Annotated[str, typer.Argument(
        help="Preset name or path.", autocompletion=completes(preset_names))],
        as_json: Annotated[bool, typer.Option(
            "--json", help="One JSON object: name, description, path, origin, "
            "replaces_shipped, values.")] = False,
        quiet: QuietOpt = False,
) -> None:
    """Print one preset's TOML."""
    as_json = as_json or _group_json(ctx)
    Quiet.on = quiet or _group_json(ctx, "quiet")
    with exit_codes():
        from hires.presets import load_preset

        preset = load_preset(name)
        if as_json:
            from hires.presets import shipped

            theirs = shipped().get(preset.name)
            ours = theirs is not None and preset.path == theirs.path
            out_line(json_line({"name": preset.name, "description": preset.description,
                                "path": str(preset.path),
                                "origin": "shipped" if ours else "yours",
                                "replaces_shipped": theirs is not None and not ours,
                                "values": preset.values}, names=("name", "path")))
            return
        out_line(Path(preset.path).read_text(encoding="utf-8").rstrip("\n"))


@app.command()
def batch(
    file: Annotated[Path, typer.Argument(help="TOML ([defaults] + [[job]]) or JSONL job file; "
                                         "'-' reads one from stdin.")],
    output: Annotated[str, typer.Option(  # str: typer makes '' a Path('.')
        "-o", "--output", help="Folder for the images (default: this folder).")] = ".",
    manifest: Annotated[str | None, typer.Option(
        help="JSONL record of every result (default: OUTPUT/manifest.jsonl).")] = None,
    shard: Annotated[str | None, typer.Option(
        help="I/N: run every N-th job from I (else RANK/WORLD_SIZE from torchrun).")] = None,
    preset: Preset = None, model: Model = None, device: Device = None,
    quality: Annotated[int | None, typer.Option(
        parser=whole_in(1, 100), metavar="<int>",
        help="JPEG and WebP quality of every job, 1-100 (default: the jobs' `quality`, else "
        "95); 100: lossless WebP, JPEG with full colour. Refused where a job writes PNG or TIFF "
        "(lossless): set `quality` in the lossy jobs instead.")] = None,
    allow_pickle: AllowPickle = False,
    as_json: JsonOut = False, quiet: QuietOpt = False, progress: ProgressOpt = "auto",
    overwrite: Overwrite = False,
    resume_runs: Resume = True,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Check every job, print each one's size, file and time (on --gpu) "
        "and the total; load no weights, write nothing.")] = False,
    gpu: Gpu = None,
    preview: Annotated[bool, typer.Option(
        "--preview", help="Make only each job's first stage (NAME.stage0.png); the same "
        "command without it makes the whole images.")] = False,
) -> None:
    """Run many jobs from a file; models load once; finished images are skipped on a re-run,
    and a job that stopped goes on after its last finished stage.

    A job whose settings changed since its image was made is re-run; the old image is kept
    under a new name (NAME.<old settings>.png).
    """
    Quiet.on, Quiet.progress = quiet, progress
    with exit_codes():
        from hires import batch as b

        refuse_empty("-o", output, "the folder for the images")
        refuse_empty("--manifest", manifest, "a file")
        refuse_empty("--shard", shard, "I/N (e.g. 0/4)")
        refuse_empty("--model", model, "a Hub id, folder or .safetensors file")
        refuse_empty("--device", device, "auto, cpu, mps, cuda or cuda:N")
        refuse_image_output(output)  # as typed: a Path drops the '/' that says a folder
        output = Path(output)
        from hires.job import JobError
        from hires.output import names_folder, resolved

        if manifest is not None and names_folder(manifest):  # a Path drops the '/' that says so
            raise JobError(f"--manifest {Path(manifest)} is a folder; name a .jsonl file (the "
                           f"default is {output / 'manifest.jsonl'})")
        manifest = None if manifest is None else Path(manifest).expanduser()
        if manifest is not None and ".." in manifest.parts:  # new/../j.toml is the job file
            manifest = resolved(manifest)
        # --model and --device are every job's unless a job (its keys, [defaults] or its own
        # preset) names its own, as gen's flags beat a preset; --allow-pickle and --quality
        # are every job's.
        given = {k: v for k, v in {"model": model, "device": device}.items() if v}
        # LOCAL_RANK's GPU, where no --device
        torchrun = None if device else b.local_device(strict=not shard)
        flags = {**given, **({"device": torchrun} if torchrun else {})}
        overrides = {k: v for k, v in {"allow_pickle": allow_pickle,
                                       "quality": quality}.items() if v}
        items, paths, name, (rank, world) = batch_jobs(file, output, manifest, shard, preset,
                                                       flags, overrides, preview)
        mine = b.my_share(items, rank, world)
        say(f"batch {name if name == 'stdin' else file}: {len(items)} job(s), shard "
            f"{rank}/{world} runs {len(mine)}")
        if not mine:  # a launcher's WORLD_SIZE larger than it meant, or a wrong --shard
            warn(f"shard {rank}/{world} has no jobs: the file holds {len(items)}, so shards "
                 f"{len(items)} and up run none")
        check_gpu(gpu)
        if not dry_run or gpu is None:  # a dry run with --gpu plans that card, not this one
            check_batch_devices(mine, name, given, torchrun, dry_run)
        check_batch_paths(mine, name)
        if dry_run:
            check_batch_outputs(mine, paths, name, output, manifest, overwrite, every=items,
                                stage=0 if preview else None)
            show_batch_plan(mine, paths, gpu, as_json, overwrite, preview, resume_runs, name)
            return
        run_batch_jobs(mine, paths, name, output, manifest, as_json, quiet, overwrite,
                       resume_runs, gpu, preview, every=items)


@app.command()
def info(
    images: Annotated[list[str] | None, typer.Argument(  # str: typer makes '' a Path('.')
        metavar="IMAGE",
        help="Images made by hires: how each was made (add-ons included).")] = None,
    as_json: InfoJson = False, quiet: QuietOpt = False,
) -> None:
    """Versions, devices and their memory, RAM, scratch disk, and the model cache (--json: one
    object); with IMAGEs, how each was made."""
    Quiet.on = quiet
    if images:
        show_all_made(images, as_json)
        return
    with exit_codes():
        machine = machine_info()
        out_line(json.dumps(machine) if as_json else "\n".join(machine_lines(machine)))


def version_callback(value: bool) -> None:
    if value:
        out_line(f"hires {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[bool, typer.Option("--version", callback=version_callback,
                                          is_eager=True, help="Print the version.")] = False,
) -> None:
    """hires: 1K to 16K images (64 to 32768 px) from a prompt, on one GPU."""
    # per invocation: tests and scripts may call the app many times
    Quiet.on, Quiet.progress = False, "auto"
    stops.forget()
    with stops_held():  # torch's first import, in every command (not -h)
        from hires import memory

    memory.CPU_PEAK_PER_STAGE = True  # the process is the command's: a stage's own CPU peak


@contextmanager
def stops_held() -> Iterator[None]:
    """Ctrl-C, SIGTERM and SIGHUP held back in the block, and raised as it ends: one that lands
    in torch's C++ import aborts the process (exit 134, 'terminate called after throwing
    pybind11::error_already_set') before any cleanup. Threads started in the block inherit
    the mask, so none of them takes the signal instead."""
    import signal

    if not hasattr(signal, "pthread_sigmask"):  # Windows
        yield
        return
    held = {signal.SIGINT, signal.SIGTERM, *([signal.SIGHUP] if hasattr(signal, "SIGHUP")
                                             else [])}
    before = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)  # a pending one is raised now


def stop_signals() -> list[int]:
    """The signals that end a run cleaned up as Ctrl-C does: SIGTERM, and SIGHUP (the terminal
    closed, an SSH session dropped) unless ignored already, as `nohup hires ...` asks."""
    import signal

    stops = [signal.SIGTERM]
    hangup = getattr(signal, "SIGHUP", None)  # none on Windows
    if hangup is not None and signal.getsignal(hangup) != signal.SIG_IGN:
        stops.append(hangup)
    return stops


def hold_closed_streams() -> None:
    """Hold each of stdin, stdout and stderr the shell closed (`>&-`) on /dev/null. Python
    keeps sys.stdout None for one (the `-o -` checks read that), but the descriptor is free:
    the next file hires opens (an image's temp file) would take its number, and a library's
    own write to stdout or stderr would land in that file."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:  # the lowest free number: this one, unless a lower was closed too
                os.dup2(null, fd)
                os.close(null)


def main() -> None:
    """The `hires` entry point: SIGTERM and SIGHUP clean up like Ctrl-C; a closed stdout is no
    error."""
    import signal

    hold_closed_streams()
    argv_as_typed()
    stops.install()  # a Ctrl-C a library swallows is raised again at the run's next step
    ends = stop_signals()
    for signum in ends:
        signal.signal(signum, on_sigterm)
    try:
        app()
    except BrokenPipeError:  # stdout closed outside our own prints (e.g. --help | head -1)
        quiet_stdout()
        sys.exit(0)
    except KeyboardInterrupt as e:  # before a command's own handling (typer builds the CLI)
        sys.exit(stopped(e))
    finally:
        # The outcome is out (the image saved, its path printed, the exit code chosen): a
        # Ctrl-C while Python shuts down (torch's and the Hub's exit hooks, about 0.7 s) came
        # too late to stop anything, and turned a success into 130 or an ignored traceback.
        for signum in (signal.SIGINT, *ends):
            signal.signal(signum, signal.SIG_IGN)
