"""The `hires` command line: parses options, calls the library, prints results.

stdout carries only results (one path, or one JSON object, per image); everything else goes to
stderr. Exit codes: 0 success, 1 runtime failure, 2 usage error, 130 interrupted (Ctrl-C),
143 terminated (SIGTERM). A reader that closes stdout early (`| head -1`) is normal: hires stops
printing and exits quietly.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from typer.core import TyperCommand, TyperGroup

from hires import __version__

# transformers and diffusers log notices (e.g. a missing torchvision) that say nothing to a user
# of hires; real failures reach the user through our own one-line errors.
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

class OneLineErrors(TyperGroup):
    """click's own usage errors (an unknown option, a bad number) as one line, like hires'
    errors: `error: no such option: --sise (...) (see 'hires gen -h')`, exit 2. click prints
    four lines, its usage and a hint around the message."""

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        # typer's click classes, found through a public one: typer >= 0.2x carries its own
        # copy of click, older ones use click itself.
        found = {c.__name__: c for c in typer.BadParameter.__mro__}
        try:
            code = super().main(*args, standalone_mode=False, **kwargs)
        except found["ClickException"] as e:
            if type(e).__name__ == "NoArgsIsHelpError":  # `hires` alone: the help
                e.show()
                sys.exit(e.exit_code)
            text = e.format_message().rstrip(".")
            text = text[:1].lower() + text[1:]
            ctx = getattr(e, "ctx", None)
            if isinstance(e, found["UsageError"]):
                text += f" (see '{ctx.command_path if ctx else 'hires'} -h')"
            err.print(f"error: {text}", markup=False)
            sys.exit(e.exit_code)
        except typer.Abort:  # Ctrl-D or Ctrl-C outside a command's own handling
            err.print("interrupted", markup=False)
            sys.exit(EXIT_INTERRUPTED)
        sys.exit(code if isinstance(code, int) else 0)


# `hires gen -h` lists 50 options: grouped under these headings, by parameter name, in this
# order (anything not named goes under "Other options", and -h last).
HELP_SECTIONS = {
    "Size": ("size", "scale", "aspect", "width", "height"),
    "Prompt and sampling": ("prompt", "negative", "seed", "steps", "guidance", "strength",
                            "sampler", "karras", "n"),
    "Output": ("output", "fmt", "dpi", "save_stages", "overwrite", "resume_runs", "as_json",
               "quiet", "progress"),
    "Model": ("model", "linfusion", "vae", "lora", "dtype", "allow_pickle"),
    "ControlNet and IP-Adapter": ("control", "control_model", "control_scale", "ip_image",
                                  "ip_adapter", "ip_scale"),
    "Memory and speed": ("device", "vram", "ram", "disk", "offload", "upsample", "vae_tile",
                         "vae_stats", "vae_dtype"),
    "Plans, presets and re-runs": ("dry_run", "gpu", "preset", "from_image"),
}


class Sections(TyperCommand):
    """A command whose options `-h` lists under HELP_SECTIONS' headings (click has no panels
    without rich's help, which we leave off: plain help reads the same in a pipe)."""

    def format_options(self, ctx: Any, formatter: Any) -> None:  # typer's own click types
        groups: dict[str, list[tuple[str, str]]] = {"Arguments": []}
        groups.update((name, []) for name in HELP_SECTIONS)
        groups["Other options"] = []
        order = {p: (title, i) for title, names in HELP_SECTIONS.items()
                 for i, p in enumerate(names)}
        params = [p for p in self.get_params(ctx) if p.get_help_record(ctx) is not None]
        # In each section in HELP_SECTIONS' order; the rest as declared, -h last.
        params.sort(key=lambda p: (p.name == "help", order.get(p.name, ("", 0))[1]))
        for param in params:
            title = ("Arguments" if param.param_type_name == "argument"
                     else order.get(param.name, ("Other options", 0))[0])
            groups[title].append(param.get_help_record(ctx))
        for title, records in groups.items():
            if records:
                with formatter.section(title):
                    formatter.write_dl(records)


app = typer.Typer(
    name="hires", no_args_is_help=True, pretty_exceptions_enable=False,
    rich_markup_mode=None, cls=OneLineErrors,
    help="Text to ultra-high-resolution image (1K to 16K px) with SDXL + LinFusion on one GPU.",
    context_settings={"help_option_names": ["-h", "--help"]},
)
presets_app = typer.Typer(help="List and show presets.", invoke_without_command=True)
app.add_typer(presets_app, name="presets")
err = Console(stderr=True, highlight=False, soft_wrap=True)

EXIT_RUNTIME, EXIT_USAGE, EXIT_INTERRUPTED, EXIT_TERMINATED = 1, 2, 130, 143


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so every cleanup (temp files) runs on the way out."""


def _on_sigterm(signum, frame) -> None:
    raise Terminated()


def out_line(text: str) -> None:
    """One line of results on stdout; a reader that went away (`| head -1`) is not an error."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        # Point stdout at /dev/null so neither later prints nor the flush at exit complain.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


class Quiet:
    """Whether to keep stderr free of anything but errors."""

    on = False
    bars_off = False  # whether library_bars() turned the libraries' progress bars off
    progress = "auto"  # --progress: auto, bars, plain or json


def say(message: str) -> None:
    """A log line on stderr (not with -q)."""
    if not Quiet.on:
        err.print(message, markup=False)


def fail(message: str, code: int) -> typer.Exit:
    err.print(f"error: {message}", markup=False)
    return typer.Exit(code)


@contextmanager
def exit_codes() -> Iterator[None]:
    """Turn our exceptions into one-line errors and the documented exit codes."""
    from hires.job import JobError
    from hires.output import OutputError

    try:
        yield
    except typer.Exit:
        raise
    except Terminated:
        err.print("terminated", markup=False)
        raise typer.Exit(EXIT_TERMINATED) from None
    except KeyboardInterrupt:
        err.print("interrupted", markup=False)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except (JobError, typer.BadParameter) as e:
        raise fail(str(e), EXIT_USAGE) from None
    except OutputError as e:
        raise fail(str(e), EXIT_USAGE if e.usage else EXIT_RUNTIME) from None
    except Exception as e:
        from hires.images import ImageInputError

        if isinstance(e, ImageInputError):  # the user's input file: theirs to fix
            raise fail(str(e), EXIT_USAGE) from None
        if os.environ.get("HIRES_DEBUG"):
            raise
        from hires.models import ModelError

        text = str(e) if isinstance(e, ModelError) else f"{type(e).__name__}: {e}"
        first = text.strip().splitlines()[0] if text.strip() else type(e).__name__
        if not isinstance(e, ModelError):
            raise fail(f"{first} (set HIRES_DEBUG=1 for the traceback)", EXIT_RUNTIME) from None
        raise fail(first, EXIT_USAGE if e.usage else EXIT_RUNTIME) from None


# Options shared by gen, plan and batch; None means "not given", so presets can fill it.
Size = Annotated[int | None, typer.Option("--size", help="Long side in pixels (e.g. 16384).")]
Aspect = Annotated[str | None, typer.Option(help="Aspect ratio with --size, e.g. 16:9 or 2:3.")]
Width = Annotated[int | None, typer.Option(help="Exact width in pixels (with --height).")]
Height = Annotated[int | None, typer.Option(help="Exact height in pixels (with --width).")]
Negative = Annotated[str | None, typer.Option(help="Negative prompt.")]
Seed = Annotated[int | None, typer.Option(help="Random seed (random when absent; recorded).")]
Steps = Annotated[int | None, typer.Option(help="Base-stage steps (default 50).")]
Guidance = Annotated[float | None, typer.Option(help="CFG scale (default 7.5).")]
Strength = Annotated[float | None, typer.Option(
    help="SDEdit strength of the first x2 stage; later ones taper to 0 (default 0.32).")]
Model = Annotated[str | None, typer.Option(
    help="Hub id, local diffusers folder, .safetensors file, or 'tiny' (offline test model).")]
LinFusionRef = Annotated[str | None, typer.Option(
    "--linfusion", help="LinFusion checkpoint: Hub id, folder, 'auto' or 'none'.")]
def completes(values: Callable[[], Iterable[str]]) -> Callable[[str], list[str]]:
    """Tab completion (`hires --install-completion`) from `values`, computed when asked."""
    return lambda incomplete: [v for v in values() if v.startswith(incomplete)]


def one_of(*values: str) -> Callable[[str], list[str]]:
    return completes(lambda: values)


def preset_names() -> list[str]:
    from hires.presets import available

    return sorted(available())


def gpu_names() -> list[str]:
    from hires.gpus import GPUS

    return sorted(GPUS)


Preset = Annotated[str | None, typer.Option(help="Preset name or .toml path; flags override.",
                                            autocompletion=completes(preset_names))]
Fmt = Annotated[str | None, typer.Option("--format", help="png, jpg, webp or tiff.",
                                         autocompletion=one_of("png", "jpg", "webp", "tiff"))]
Vram = Annotated[float | None, typer.Option(help="GPU memory budget in GB for planning.")]
Ram = Annotated[float | None, typer.Option(
    help="CPU memory budget in GB for parked maps and offloaded weights (default: what is free).")]
Disk = Annotated[float | None, typer.Option(
    help="Scratch disk in GB (in TMPDIR) for parked maps the RAM cannot hold (default: what is "
    "free there; 0: never).")]
Offload = Annotated[str | None, typer.Option(
    help="auto, none, model or sequential.",
    autocompletion=one_of("auto", "none", "model", "sequential"))]
Device = Annotated[str | None, typer.Option(help="auto, cuda, cuda:N, mps or cpu.",
                                            autocompletion=one_of("auto", "cuda", "cpu", "mps"))]
Dtype = Annotated[str | None, typer.Option(
    help="auto (fp16 on GPUs, fp32 on the CPU), fp16, bf16 (about 3x faster than fp32 on CPUs"
         " with AVX512-BF16) or fp32.", autocompletion=one_of("auto", "fp16", "bf16", "fp32"))]
Upsample = Annotated[str | None, typer.Option(
    help="Between stages: pixel (default: decode, resize, encode) or latent (the latents "
         "resized: no VAE between stages, faster).", autocompletion=one_of("pixel", "latent"))]
VaeTile = Annotated[int | None, typer.Option(
    help="VAE tile size in pixels, a multiple of 8 (default: the planner's pick, the largest of"
         " 2048-512 that fits the memory).")]
VaeStats = Annotated[str | None, typer.Option(
    help="How tiles share GroupNorm statistics: fast (default) or exact (slower, scratch disk).",
    autocompletion=one_of("fast", "exact"))]
VaeDtype = Annotated[str | None, typer.Option(
    help="VAE precision: auto (bf16 on CUDA and bf16-capable CPUs, else fp32; fp16 on GPUs "
         "without bf16 for a VAE made for it), bf16, fp32 or fp16 (such a VAE only).",
    autocompletion=one_of("auto", "bf16", "fp32", "fp16"))]
VaeRef = Annotated[str | None, typer.Option(
    "--vae", help="A VAE instead of the model's: Hub id, diffusers folder or .safetensors file "
    "(e.g. madebyollin/sdxl-vae-fp16-fix, which runs in fp16 where bf16 is slow).")]
AllowPickle = Annotated[bool, typer.Option(
    "--allow-pickle", help="Allow loading pickle (.ckpt/.bin) weights you trust.")]
Sampler = Annotated[str | None, typer.Option(
    help="euler (default) or dpmpp-2m (DPM++ 2M: as good in about half the steps).",
    autocompletion=one_of("euler", "dpmpp-2m"))]
Karras = Annotated[bool | None, typer.Option(
    "--karras/--no-karras", help="Karras sigma spacing (more steps near the clean end).")]
Lora = Annotated[list[str] | None, typer.Option(
    "--lora", help="A LoRA: PATH or HUB_ID, optionally :SCALE (e.g. style.safetensors:0.8); "
    "repeat for more.")]
Control = Annotated[str | None, typer.Option(
    help="ControlNet conditioning image (edges, depth, pose...), resized to every stage.")]
ControlModel = Annotated[str | None, typer.Option(
    help="An SDXL ControlNet: Hub id, diffusers folder or .safetensors file.")]
ControlScale = Annotated[float | None, typer.Option(help="ControlNet strength (default 1.0).")]
IpImage = Annotated[str | None, typer.Option(help="IP-Adapter image prompt.")]
IpAdapter = Annotated[str | None, typer.Option(
    help="IP-Adapter weights: Hub id (default h94/IP-Adapter), folder or .safetensors file.")]
IpScale = Annotated[float | None, typer.Option(help="IP-Adapter strength (default 0.6).")]
JsonOut = Annotated[bool, typer.Option("--json", help="One JSON object per image on stdout.")]
Gpu = Annotated[str | None, typer.Option(
    help="For time estimates: h100, h200, a100, l40s, 4090, ... or a measured TFLOP/s figure.",
    autocompletion=completes(gpu_names))]
DryRun = Annotated[bool, typer.Option("--dry-run", help="Check the outputs and inputs, print "
                                      "the plan (as `hires plan`) and exit without loading "
                                      "weights.")]
Dpi = Annotated[float | None, typer.Option(
    help="Resolution the file records, for print (PNG, TIFF, JPEG): at 300 a 16384 px side "
    "prints 138.7 cm wide.")]
QuietOpt = Annotated[bool, typer.Option("-q", "--quiet", help="No progress or logs on stderr.")]
PROGRESS_MODES = ("auto", "bars", "plain", "json")


def _progress_mode(value: str) -> str:
    if value not in PROGRESS_MODES:
        raise typer.BadParameter(f"'{value}' is not one of {', '.join(PROGRESS_MODES)}")
    return value


ProgressOpt = Annotated[str, typer.Option(
    "--progress", help="How progress shows on stderr: auto (bars on a terminal, else plain "
    "lines), bars, plain, or json (an object a line, for programs).",
    callback=_progress_mode, autocompletion=one_of(*PROGRESS_MODES))]
Overwrite = Annotated[bool, typer.Option(help="Replace existing output files.")]
SaveStages = Annotated[bool, typer.Option(help="Also save each stage's image as it is done "
                                         "(NAME.stage0.png, ...): see a long job early.")]
Resume = Annotated[bool, typer.Option(
    "--resume/--no-resume", help="Go on from the stages a stopped run of the same job kept "
    "beside the output (NAME.resume.safetensors); --no-resume starts over.")]


def job_flags(options: dict[str, Any]) -> dict[str, Any]:
    """The job keys the user actually gave, from a command's `locals()` (its options), the size
    keys (--size, --aspect, --scale, --width, --height) among them. `prompt` and `image` are the
    commands' own to handle."""
    from hires.job import JOB_KEYS
    from hires.sizes import SIZE_KEYS

    values = {("format" if k == "fmt" else k): v for k, v in options.items()}
    # False means "not given" for plain flags; --no-karras is a real False.
    return {k: v for k, v in values.items()
            if (k in JOB_KEYS or k in SIZE_KEYS) and k not in ("prompt", "image")
            and v is not None and (v is not False or k == "karras")
            and not (isinstance(v, list) and not v)}


def build_job(preset: str | None, from_image: Path | None, flags: dict[str, Any],
              source: tuple[int, int] | None = None):
    """Defaults, then the preset, then a recorded job (--from), then explicit flags; the size
    from all of them (`hires.sizes`). `source`: an upscale's input size, when it is loaded."""
    from hires.images import input_size
    from hires.job import JobError
    from hires.output import OutputError, job_values_from_image
    from hires.presets import load_preset
    from hires.sizes import OPTIONS, job_from_levels

    def size_of(path: str) -> tuple[int, int]:
        return source or input_size(path)

    levels: list[tuple[dict[str, Any], str, bool]] = []
    if preset:
        levels.append((load_preset(preset).values, f"preset '{preset}'", True))
    if from_image is None:
        return job_from_levels([*levels, (flags, OPTIONS, False)], size_of=size_of)
    try:
        recorded = job_values_from_image(from_image)
    except OutputError as e:  # a missing or unreadable input is the user's to fix
        raise JobError(str(e)) from None
    if recorded.get("allow_pickle") in (False, None):
        recorded.pop("allow_pickle", None)  # hires 0.1 recorded the (harmless) default
    where = f"metadata of {from_image}"
    if recorded.get("model") and "model" not in flags:
        # The record names a model, maybe a local file: say which, never load it unseen.
        say(f"--from {from_image}: model {recorded['model']} (as recorded; --model picks "
            "another)")
    if recorded.get("vae") and "vae" not in flags:
        say(f"--from {from_image}: VAE {recorded['vae']} (as recorded; --vae picks another)")
    job = job_from_levels([*levels, (recorded, where, True), (flags, OPTIONS, False)],
                          size_of=size_of)
    from hires.addons import check_unchanged

    check_unchanged(job, recorded_addons(from_image))
    return job


def recorded_addons(path: Path) -> dict[str, Any]:
    """The add-ons record (files and their sha256) of an image made by hires, if any."""
    from hires.output import read_metadata

    record = read_metadata(path)["hires"]
    result = record.get("result") if isinstance(record, dict) else None
    addons = result.get("addons") if isinstance(result, dict) else None
    return addons if isinstance(addons, dict) else {}


def read_prompts(prompt: str) -> list[str]:
    """'-' reads one prompt per line from stdin; blank lines and `#` comment lines are skipped."""
    if prompt != "-":
        return [prompt]
    try:
        lines = sys.stdin.read().splitlines()
    except UnicodeDecodeError:
        raise typer.BadParameter("the prompts on stdin are not UTF-8 text") from None
    prompts = [line.strip() for line in lines if line.strip() and
               not line.lstrip().startswith("#")]
    if not prompts:
        raise typer.BadParameter("prompt '-' read no prompts from stdin (one per line)")
    return prompts


def library_bars(quiet: bool) -> None:
    """diffusers, transformers and the Hub draw their own tqdm bars (loading a local folder
    shows two): off with -q, on otherwise (the setting is per process; tests run many)."""
    from diffusers.utils import logging as diffusers_logging
    from huggingface_hub.utils import disable_progress_bars, enable_progress_bars
    from transformers.utils import logging as transformers_logging

    if quiet == Quiet.bars_off:
        return  # only undo what we did: a user's HF_HUB_DISABLE_PROGRESS_BARS stays in force
    for module in (diffusers_logging, transformers_logging):
        (module.disable_progress_bar if quiet else module.enable_progress_bar)()
    (disable_progress_bars if quiet else enable_progress_bars)()
    Quiet.bars_off = quiet


def progress_renderer(quiet: bool, plan=None, image: str | None = None):
    """As --progress says (auto: rich bars on a terminal, plain lines otherwise), nothing with
    -q; with `plan`, they say how long the rest of the job takes too."""
    from contextlib import nullcontext

    from hires.progress import JsonProgress, PlainProgress, RichProgress

    mode = Quiet.progress
    if quiet:
        return nullcontext(None)
    if mode == "json":
        return nullcontext(JsonProgress(sys.stderr, plan=plan, image=image))
    if mode == "bars" or (mode == "auto" and sys.stderr.isatty()):
        return RichProgress(err, plan=plan)
    return nullcontext(PlainProgress(sys.stderr, plan=plan))


def warn(message: str) -> None:
    """A warning on stderr (shown with -q too: it is about the result)."""
    err.print(f"warning: {message}", markup=False)


def warn_ram(jobs: list) -> None:
    """Before a GPU run: a --ram above this machine's RAM plans parking that cannot happen
    here (it is meant for `hires plan` of another machine)."""
    import torch

    from hires.memory import GIB, ram_bytes

    total = ram_bytes()[0]
    for ram in sorted({j.ram for j in jobs if j.ram is not None and j.device != "cpu"
                       and (j.device != "auto" or torch.cuda.is_available())}):
        if total and ram * GIB > total:
            warn(f"--ram {ram:g} is more than this machine's {total / GIB:.1f} GiB of RAM: a "
                 "plan that fills it fails here (--ram plans another machine's, with `hires "
                 "plan`)")


def warn_space(todo: list[tuple[Path, Any]], stage_images: bool = False) -> None:
    """Before any work: warn when the images to make, (path, job), may not fit their disks."""
    from hires.output import disk_need, short_of_space

    note = short_of_space([(path, disk_need(j.width, j.height, j.format, stage_images),
                            j.width * j.height) for path, j in todo])
    if note:
        warn(note)


def emit(record: dict[str, Any], as_json: bool) -> None:
    """A result on stdout: its path, or its JSON object."""
    out_line(json.dumps(record) if as_json else record["path"])


@app.command(cls=Sections)
def gen(
    prompt: Annotated[str, typer.Argument(help="The prompt; '-' reads one prompt a line from "
                                          "stdin.")] = "",
    size: Size = None, aspect: Aspect = None, width: Width = None, height: Height = None,
    negative: Negative = None, seed: Seed = None, steps: Steps = None,
    guidance: Guidance = None, strength: Strength = None, model: Model = None,
    linfusion: LinFusionRef = None, preset: Preset = None,
    output: Annotated[str | None, typer.Option(
        "-o", "--output", help="File, folder, or template with {seed} {width} {height} {index} "
        "{prompt}.")] = None,
    fmt: Fmt = None, dpi: Dpi = None,
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
    from_image: Annotated[Path | None, typer.Option(
        "--from", help="Re-run the job recorded in an image made by hires.")] = None,
    as_json: JsonOut = False, quiet: QuietOpt = False, progress: ProgressOpt = "auto",
    overwrite: Overwrite = False,
    dry_run: DryRun = False, gpu: Gpu = None,
    n: Annotated[int, typer.Option("--n", min=1, max=10000, help="Images per prompt, with "
                                   "consecutive seeds (default 1).")] = 1,
    resume_runs: Resume = True,
) -> None:
    """Make an image from a prompt, 1K to 16K."""
    options = dict(locals())  # every option, by name: job_flags picks the job's
    Quiet.on, Quiet.progress = quiet, progress
    with exit_codes():
        flags = job_flags(options)
        if prompt and prompt != "-":
            flags["prompt"] = prompt
        job = build_job(preset, from_image, flags)
        prompts = read_prompts(prompt) if prompt == "-" else [job.prompt]
        jobs = [job.merged({"prompt": text}) for text in prompts]
        if dry_run:
            check_outputs(jobs, output, fmt, n, overwrite, save_stages)
            show_plan(job, gpu, as_json, stage_images=save_stages)
            return
        check_device(job.device)
        if not prompts[0] and from_image is None:
            raise typer.BadParameter("give a prompt (or '-' to read prompts from stdin)")
        run_jobs(jobs, output, save_stages, as_json, quiet, overwrite, gpu, fmt_flag=fmt, n=n,
                 resume_runs=resume_runs)


@app.command(cls=Sections)
def up(
    images: Annotated[list[Path], typer.Argument(
        help="The images to upscale: PNG, JPEG, WebP or TIFF; '-' reads one path a line from "
        "stdin. The model loads once for all of them.", metavar="IMAGE")],
    size: Size = None,
    scale: Annotated[float | None, typer.Option(
        help="Output size as a multiple of the input's, e.g. 4.")] = None,
    width: Width = None, height: Height = None,
    strength: Annotated[float | None, typer.Option(
        help="SDEdit strength of the first stage, later ones taper to 0; lower stays closer "
        "to the input (default 0.3).")] = None,
    prompt: Annotated[str | None, typer.Option(
        help="What the image shows (optional; guides the new detail).")] = None,
    negative: Negative = None, seed: Seed = None, steps: Steps = None,
    guidance: Guidance = None, model: Model = None, linfusion: LinFusionRef = None,
    preset: Preset = None,
    output: Annotated[str | None, typer.Option(
        "-o", "--output", help="File, folder, or template with {name} (the input's file name) "
        "{seed} {width} {height} {index}.")] = None,
    fmt: Fmt = None, dpi: Dpi = None,
    save_stages: SaveStages = False,
    vram: Vram = None, ram: Ram = None, disk: Disk = None, offload: Offload = None,
    device: Device = None,
    dtype: Dtype = None,
    vae_tile: VaeTile = None, vae_stats: VaeStats = None, vae_dtype: VaeDtype = None,
    vae: VaeRef = None, allow_pickle: AllowPickle = False,
    sampler: Sampler = None, karras: Karras = None, lora: Lora = None,
    control: Control = None, control_model: ControlModel = None,
    control_scale: ControlScale = None, ip_image: IpImage = None, ip_adapter: IpAdapter = None,
    ip_scale: IpScale = None,
    as_json: JsonOut = False, quiet: QuietOpt = False, progress: ProgressOpt = "auto",
    overwrite: Overwrite = False,
    dry_run: DryRun = False, gpu: Gpu = None, resume_runs: Resume = True,
) -> None:
    """Upscale existing images with new, coherent detail (e.g. --scale 4 or --size 16384)."""
    options = dict(locals())  # every option, by name: job_flags picks the job's
    Quiet.on, Quiet.progress = quiet, progress
    with exit_codes():
        from hires.images import load_input
        from hires.upscale import DEFAULT_STRENGTH

        flags = job_flags(options)
        flags.update(prompt=prompt or "")
        if strength is None and not preset:
            flags["strength"] = DEFAULT_STRENGTH
        jobs, sizes = [], []
        for image in read_paths(images):
            # Every input is decoded here, so that a broken one stops the command before any
            # work; none is kept (each is loaded again in its turn), so memory stays flat.
            source = load_input(image)
            sizes.append(source.rgb.size)
            jobs.append(build_job(preset, None, {**flags, "image": str(image),
                                                 "image_sha256": source.sha256},
                                  source=source.rgb.size))
        if dry_run:
            check_outputs(jobs, output, fmt, 1, overwrite)
            for job, size in zip(jobs, sizes):
                show_plan(job, gpu, as_json, source=size, stage_images=save_stages)
            return
        check_device(jobs[0].device)
        run_jobs(jobs, output, save_stages, as_json, quiet, overwrite, gpu, fmt_flag=fmt,
                 resume_runs=resume_runs)


def check_outputs(jobs: list, output: str | None, fmt: str | None, n: int, overwrite: bool,
                  stage_images: bool = False) -> None:
    """What a run checks of its outputs before it loads anything (names, formats, files in
    the way), for --dry-run: a plan that shows should be a command that starts."""
    from hires.runs import plan_runs

    runs = plan_runs(jobs, output, n=n, fmt_flag=fmt, overwrite=overwrite, resume_runs=False)
    warn_space([(r.path, r.job) for r in runs if r.made is None], stage_images)


def read_paths(images: list[Path]) -> list[Path]:
    """The input paths; '-' reads one a line from stdin (blank and `#` lines skipped)."""
    if Path("-") not in images:
        return images
    if images != [Path("-")]:
        raise typer.BadParameter("give image paths or '-' (paths on stdin), not both")
    try:
        lines = sys.stdin.read().splitlines()
    except UnicodeDecodeError:
        raise typer.BadParameter("the paths on stdin are not UTF-8 text") from None
    paths = [Path(line.strip()) for line in lines
             if line.strip() and not line.lstrip().startswith("#")]
    if not paths:
        raise typer.BadParameter("'-' read no image paths from stdin (one per line)")
    return paths


def check_loaded(job, components, notes: bool = True) -> None:
    """Checks that need the loaded model: steps within its schedule; with `notes`, a word
    on slow settings (once per loaded model)."""
    import torch

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
    if components.device.type != "cpu":
        return
    say("running on the CPU: expect minutes per megapixel (a GPU takes seconds)")
    from hires.models import cpu_has_fast_bf16

    if job.dtype == "auto" and cpu_has_fast_bf16():
        # auto stays fp32 on the CPU: bf16's effect on SDXL's pictures is unmeasured here.
        say("this CPU has native bf16: --dtype bf16 runs the UNet about 3x faster than fp32 "
            "(BENCHMARKS.md, bf16)")
    if job.dtype == "fp16" or (job.dtype == "bf16" and not cpu_has_fast_bf16()):
        warn(f"--dtype {job.dtype} on the CPU is about 4x slower than fp32; drop --dtype there")
    if job.offload in ("model", "sequential"):
        warn(f"--offload {job.offload} does nothing on the CPU (the weights are in RAM already)")


def fp16_vae_hint(gpu: str, detail: str = "") -> str:
    """What to do when a GPU without native bf16 runs the VAE in fp32."""
    from hires.models import FP16_VAE

    return (f"{gpu} has no native bf16, so the VAE runs in fp32{detail}; a VAE made for fp16 "
            f"runs in fp16, several times faster there (--vae {FP16_VAE})")


def check_device(device: str) -> None:
    """A device this machine's torch cannot use is a usage error, found before any loading."""
    import torch

    from hires.job import JobError

    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise JobError("--device cuda: torch sees no CUDA GPU here; use --device cpu (slow) "
                           "or install a CUDA build of torch")
        index, count = int(device.partition(":")[2] or 0), torch.cuda.device_count()
        if index >= count:
            raise JobError(f"--device {device}: torch sees {count} CUDA GPU(s), cuda:0 to "
                           f"cuda:{count - 1}; pick one of those (`hires info` lists them)")
    elif device == "mps" and not torch.backends.mps.is_available():
        raise JobError("--device mps: this machine's torch has no Apple GPU (MPS) support; use "
                       "--device auto or cpu")


def run_jobs(jobs: list, output: str | None, save_stages: bool, as_json: bool,
             quiet: bool, overwrite: bool, gpu: str | None = None,
             fmt_flag: str | None = None, n: int = 1, resume_runs: bool = True) -> None:
    """Plan and check every output first, load the model once, then make each image (each
    job `n` times); `resume_runs`: go on from what stopped runs of a job kept
    (`hires.resume`)."""
    from hires import output as out
    from hires import resume
    from hires.runs import plan_runs

    runs = plan_runs(jobs, output, n=n, fmt_flag=fmt_flag, overwrite=overwrite,
                     resume_runs=resume_runs)
    if jobs[0].seed is None and len(runs) > 1:
        base = runs[0].job.seed
        say(f"seeds from {base} (--seed {base} makes these images again)")
    for folder in {run.path.parent for run in runs}:
        if folder.is_dir():  # temp files of a gen that was killed while saving here
            for part in out.remove_stale_parts(folder):
                say(f"removed {part.name}, left by a run that died while saving")
    warn_space([(r.path, r.job) for r in runs if r.made is None], save_stages)
    warn_ram([r.job for r in runs])
    from hires.pipeline import load, load_args, plan_for
    from hires.plan import describe
    from hires.record import save_stage, stage_paths
    from hires.runs import made_by
    from hires.upscale import load_source, make

    components = None
    made: list[tuple[int, float]] = []  # (pixels, seconds) of each image made so far
    for number, run in enumerate(runs, 1):
        one, path = run.job, run.path
        of = f" (image {number} of {len(runs)})" if len(runs) > 1 else ""
        if run.made is not None:
            say(f"{path}{of}: made already by these settings, kept (--overwrite makes it again)")
            emit(run.made, as_json)
            continue
        if components is None:  # once, and only when some image is to be made
            library_bars(quiet)
            components = load(*load_args(one))
            for warning in components.warnings:
                err.print(f"warning: {warning}", markup=False)
            check_loaded(one, components)
        started = time.monotonic()  # the model's load is not an image's pace
        source = load_source(one) if one.image else None
        say_colour(source)
        size = source.rgb.size if source else None
        plan = fitted_plan(lambda j=one, s=size, c=components: plan_for(
            j, c, gpu=gpu, source=s, stage_images=save_stages), one)
        # Stage images are written as each stage is done. Checked before the first step, not
        # after the compute is spent; a stopped run's own stage images are this run's to write.
        stage_files = stage_paths(path, len(plan.stages)) if save_stages else []
        for stage_path in stage_files:
            if not made_by(stage_path, one):
                out.check_writable(stage_path, overwrite)
        say(f"{path}{of}: seed {one.seed}, {len(plan.stages)} stage(s), "
            f"{plan.width}x{plan.height}")
        for line in describe(plan):
            say(f"  {line}")
        kept = resume.path_for(path)
        if not resume_runs:
            resume.remove(kept)
        say_resume(kept, one, plan, source, stage_files)

        def stage_image(index: int, image, one=one, files=stage_files) -> None:
            save_stage(image, files[index], one, index, fmt=one.format, overwrite=True)
            say(f"  stage {index}: {files[index]}")

        with saying_what_is_kept(kept, one, plan, source):  # the save too: a full disk
            with progress_renderer(quiet, plan, str(path)) as progress:
                result = make(one, source=source, components=components, progress=progress,
                              plan=plan, checkpoint=kept,
                              on_stage_image=stage_image if save_stages else None)
            for warning in result.warnings[len(components.warnings):]:
                err.print(f"warning: {warning}", markup=False)
            for s in result.stages:
                if s.psnr is not None:
                    say(f"  stage {s.index} ({s.width}x{s.height}): {s.psnr:.1f} dB PSNR "
                        "against the input")
            emit(result.save(path, fmt=one.format, overwrite=overwrite, warn=warn), as_json)
        resume.remove(kept)
        made.append((one.width * one.height, time.monotonic() - started))
        say_left(made, [r.job.width * r.job.height for r in runs[number:] if r.made is None])


def say_colour(source) -> None:
    """That an input's pixels were converted to sRGB from its own colour profile."""
    if source is not None and source.converted_from:
        say(f"  {source.path.name}: colour profile '{source.converted_from}' converted to sRGB")


def say_left(made: list[tuple[int, float]], todo: list[int]) -> None:
    """After an image of several: how long the ones still to make take at this run's pace."""
    from hires.eta import duration, left_after

    left = left_after(made, todo)
    if todo and left is not None:
        say(f"{len(todo)} more to make: {duration(left)} at this run's pace")


def stages_upto(stage: int) -> str:
    """'stage 0', 'stages 0-2'."""
    return "stage 0" if stage == 0 else f"stages 0-{stage}"


def kept_stage(kept: Path, job, plan, source=None) -> int | None:
    """The last stage of this job that the checkpoint `kept` holds, if any (an upscale's job
    records its `source` image's sha256)."""
    from dataclasses import replace

    from hires import resume

    if source is not None:
        job = replace(job, image_sha256=source.sha256)
    return resume.stage_of(kept, job, plan) if kept.exists() else None


def say_resume(kept: Path, job, plan, source=None, stage_files: list[Path] | None = None
               ) -> None:
    """Say whether a run goes on from a stopped one's checkpoint. With --save-stages
    (`stage_files`) it does only if the images of the stages it holds are this job's, on disk
    (all but its last, which the next stage decodes again); else it starts over."""
    from hires import resume
    from hires.runs import made_by

    stage = kept_stage(kept, job, plan, source)
    if stage is None:
        return
    lost = [p for p in (stage_files or [])[:stage] if not made_by(p, job)]
    if lost:
        say(f"  {kept.name} holds {stages_upto(stage)} of this job, but {lost[0].name} is not "
            "its stage image (--save-stages): starting over")
        resume.remove(kept)
    elif stage == len(plan.stages) - 1:
        say(f"  resuming: every stage was kept in {kept.name}; only the decode is left")
    else:
        say(f"  resuming: {stages_upto(stage)} {'was' if stage == 0 else 'were'} kept in "
            f"{kept.name}")


@contextmanager
def saying_what_is_kept(kept: Path, job, plan, source=None) -> Iterator[None]:
    """A run that stops (an error, Ctrl-C) says what its checkpoint keeps for the next one
    (with -q too: it is about the result)."""
    try:
        yield
    except BaseException:
        stage = kept_stage(kept, job, plan, source)
        if stage == len(plan.stages) - 1:
            err.print(f"{kept} keeps every stage: the same command only decodes it",
                      markup=False)
        elif stage is not None:
            err.print(f"{kept} keeps {stages_upto(stage)}: the same command goes on from there",
                      markup=False)
        raise


@app.command(cls=Sections)
def plan(
    prompt: Annotated[str, typer.Argument(help="The prompt (does not change the plan).")] = "",
    size: Size = None, aspect: Aspect = None, width: Width = None, height: Height = None,
    negative: Negative = None, seed: Seed = None, steps: Steps = None,
    guidance: Guidance = None, strength: Strength = None, model: Model = None,
    linfusion: LinFusionRef = None, preset: Preset = None, fmt: Fmt = None, dpi: Dpi = None,
    vram: Vram = None, ram: Ram = None, disk: Disk = None, offload: Offload = None,
    device: Device = None,
    dtype: Dtype = None,
    upsample: Upsample = None, vae_tile: VaeTile = None, vae_stats: VaeStats = None,
    vae_dtype: VaeDtype = None, vae: VaeRef = None,
    sampler: Sampler = None, karras: Karras = None, lora: Lora = None,
    control: Control = None, control_model: ControlModel = None,
    control_scale: ControlScale = None, ip_image: IpImage = None, ip_adapter: IpAdapter = None,
    ip_scale: IpScale = None,
    from_image: Annotated[Path | None, typer.Option(
        "--from", help="Plan the job recorded in an image made by hires.")] = None,
    gpu: Gpu = None, as_json: JsonOut = False,
) -> None:
    """A dry run: each stage's size, steps, strategy, peak memory, work and time; no weights."""
    options = dict(locals())  # every option, by name: job_flags picks the job's
    with exit_codes():
        flags = job_flags(options)
        if prompt:
            flags["prompt"] = prompt
        show_plan(build_job(preset, from_image, flags), gpu, as_json)


def fitted_plan(make, job):
    """`make()`'s plan; a plan that cannot fit becomes a usage error that says what would."""
    from hires.job import JobError
    from hires.plan import PlanError, largest_fitting

    try:
        return make()
    except PlanError as e:
        hint = ""
        if e.host:
            hint = "; try --ram with what is free" if job.ram is None else "; try a larger --ram"
        elif job.vram is not None or job.offload != "auto":
            hint = "; try a larger --vram or --offload auto"
        kwargs = getattr(e, "plan_kwargs", None)
        if kwargs:
            fits = largest_fitting(job.width, job.height, **kwargs)
            if fits:
                hint = f"; {fits[0]}x{fits[1]} fits" + hint
        raise JobError(f"{e}{hint}") from None


def show_plan(job, gpu: str | None, as_json: bool,
              source: tuple[int, int] | None = None, stage_images: bool = False) -> None:
    """Print the plan of `job` without loading weights (`hires plan`, `gen --dry-run`)."""
    from hires.eta import duration
    from hires.gpus import CUDA_CONTEXT_GIB, card, rate_for
    from hires.plan import describe, dry_run

    try:
        rate_for(gpu or "h100")  # a usage error, before any planning
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
    run = fitted_plan(lambda: dry_run(job, gpu, source, stage_images), job)
    p, gpu, rate = run.plan, run.gpu, run.rate
    spill = p.vae_spill_bytes
    timed = rate is not None  # a CPU plan is not timed (its rate is not known)

    def rounded(x: float | None) -> float | None:
        return None if x is None else round(x, 3)

    if as_json:
        out_line(json.dumps({
            "width": p.width, "height": p.height, "gpu": gpu,
            "tflops": rate / 1e12 if timed else None,
            "fp32": [part.lower() for part in p.fp32],
            "fp32_tflops": round(rate * p.fp32_share / 1e12, 3) if timed else None,
            "budget_bytes": p.budget, "budget_from": run.budget_from,
            "vae_spill_bytes": int(spill), "vae_spill_budget_bytes": int(p.spill),
            "stages": [{"index": s.index, "width": s.width, "height": s.height,
                        "steps": s.steps, "global_steps": s.global_steps,
                        "strength": round(s.strength, 4), "ratio": s.ratio,
                        "upsample": "latent" if s.latent_upsample else "pixel",
                        "decodes_previous": s.decodes_previous,
                        "strategy": s.strategy.label, "levers": s.strategy.to_dict(),
                        "peak_bytes": s.cost.peak_bytes, "tflop": round(s.cost.tflop, 3),
                        "unet_tflop": round(s.cost.unet_tflop, 3),
                        "scratch_bytes": s.cost.scratch_bytes, "vae_tile": s.cost.vae_tile,
                        "host_bytes": s.cost.host_bytes,
                        "parked_bytes": s.cost.parked_bytes,
                        "disk_bytes": s.cost.disk_bytes, "vae_spill": s.cost.vae_spill,
                        "vae_spill_bytes": int(s.cost.vae_spill_bytes),
                        "seconds": rounded(s.cost.seconds),
                        "vae_seconds": rounded(s.cost.vae_seconds)} for s in p.stages],
            "peak_bytes": p.peak_bytes, "seconds": rounded(p.seconds),
            "vae_seconds": rounded(p.vae_seconds)}))
        return
    if timed:
        where = f"times on {gpu} ({rate / 1e12:.3g} TFLOP/s achieved"
        if p.fp32:
            fp32 = rate * p.fp32_share / 1e12
            where += f", {fp32:.{0 if fp32 >= 10 else 1}f} in the fp32 {' and '.join(p.fp32)}"
        where += ", assumed)" if card(gpu) else ")"
    else:
        where = ("no times: a CPU's rate is not known (expect minutes per megapixel; --gpu "
                 "with a TFLOP/s figure times it)")
    budget = f"{p.budget / 1024**3:.1f} GiB budget" if p.budget else "no memory budget"
    if not p.budget and not job.device.startswith(("cpu", "mps")):
        budget += " (--gpu NAME or --vram GiB sets one)"
    if run.budget_from == "gpu":
        budget += (f" (the {gpu}'s {card(gpu).memory_gib:.1f} GiB less {CUDA_CONTEXT_GIB} for "
                   "CUDA; --vram sets it)")
    elif job.device.startswith("cpu") and run.budget_from == "device":
        budget += " (the free RAM)"
    if spill:
        budget += f", +{spill / 1e9:.0f} GB of RAM for VAE outputs"
    lines = [f"{p.width}x{p.height}: {len(p.stages)} stage(s), {budget}, {where}"]
    lines += describe(p)
    tflop = sum(s.cost.tflop for s in p.stages)
    work = f"{tflop / 1000:.1f} PFLOP" if tflop >= 100 else f"{tflop:.2g} TFLOP"
    total = f"total: peak {p.peak_bytes / 1024**3:.1f} GiB, {work}"
    if timed:
        notes = [duration(p.seconds)] if p.seconds >= 90 else []  # a person reads minutes
        notes += [f"VAE ~{p.vae_seconds:.0f} s"] if p.vae_seconds >= 0.5 else []
        notes_text = f" ({', '.join(notes)})" if notes else ""
        total += f", ~{p.seconds:.0f} s{notes_text}"
    lines.append(total)
    out_line("\n".join(lines))
    if p.fp32 == ("VAE",) and job.vae_dtype == "auto":  # only a GPU without bf16 does that
        say(fp16_vae_hint(f"the {gpu}", f" (~{p.vae_seconds:.0f} of the ~{p.seconds:.0f} s)"))
    more = more_ram_hint(job, p, lambda j: dry_run(j, gpu, source, stage_images).plan)
    if more:
        say(more)


ROOMY_RAM_GB = 64  # what `more_ram_hint` plans with


def more_ram_hint(job, p, replan: Callable[[Any], Any]) -> str | None:
    """Where the RAM limits a GPU plan (the VAE keeps all it may there, or parked maps wait
    on a disk): how long the job takes with ROOMY_RAM_GB free, if that saves a tenth."""
    from hires.eta import duration
    from hires.memory import GIB
    from hires.plan import PlanError, dry_run_free_ram

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
    return (f"the RAM limits this plan: with {ROOMY_RAM_GB} GB of RAM free, "
            f"{duration(roomy.seconds)} instead of {duration(p.seconds)} (hires plans with what "
            f"is free as it starts; --ram {ROOMY_RAM_GB} plans that)")


@presets_app.callback()
def presets_default(ctx: typer.Context) -> None:
    """List the presets (shipped and your own)."""
    if ctx.invoked_subcommand is None:
        presets_list()


@presets_app.command("list")
def presets_list() -> None:
    """List the presets (shipped and your own)."""
    with exit_codes():
        from hires.presets import available, user_folder

        broken: list[str] = []
        found = available(broken)
        out_line("\n".join(f"{name:12s} {p.description}" for name, p in sorted(found.items())))
        for problem in broken:  # one bad file of the user's does not hide the others
            warn(f"skipped a broken preset: {problem}")
        say(f"(your own presets go in {user_folder()})")


@presets_app.command("show")
def presets_show(name: Annotated[str, typer.Argument(help="Preset name or path.")]) -> None:
    """Print one preset's TOML."""
    with exit_codes():
        from hires.presets import load_preset

        out_line(Path(load_preset(name).path).read_text(encoding="utf-8").rstrip("\n"))


@app.command()
def batch(
    file: Annotated[Path, typer.Argument(help="TOML ([defaults] + [[job]]) or JSONL job file.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Folder for the images.")] = Path(
        "."),
    manifest: Annotated[Path | None, typer.Option(
        help="JSONL record of every result (default: OUTPUT/manifest.jsonl).")] = None,
    shard: Annotated[str | None, typer.Option(
        help="I/N: run every N-th job from I (else RANK/WORLD_SIZE from torchrun).")] = None,
    preset: Preset = None, model: Model = None, device: Device = None,
    allow_pickle: AllowPickle = False,
    as_json: JsonOut = False, quiet: QuietOpt = False, progress: ProgressOpt = "auto",
    overwrite: Overwrite = False,
    resume_runs: Resume = True,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Check every job, print each one's size, file and time (on --gpu) "
        "and the total; load no weights, write nothing.")] = False,
    gpu: Gpu = None,
) -> None:
    """Run many jobs from a file; models load once; finished images are skipped on a re-run,
    and a job that stopped goes on after its last finished stage.

    A job whose settings changed since its image was made is re-run; the old image is kept
    under a new name (NAME.<old settings>.png).
    """
    Quiet.on, Quiet.progress = quiet, progress
    with exit_codes():
        from hires import batch as b
        from hires import output as out
        from hires.job import JobError
        from hires.presets import load_preset

        levels = [(load_preset(preset).values, f"preset '{preset}'", True)] if preset else []
        overrides = {k: v for k, v in {"model": model, "device": device or b.local_device(),
                                       "allow_pickle": allow_pickle}.items() if v}
        items = [b.BatchItem(i.index, i.job.merged(overrides, where="options").validate(),
                             i.output) for i in b.read_batch(file, levels=levels)]
        rank, world = b.parse_shard(shard)
        if output.exists() and not output.is_dir():
            raise JobError(f"batch -o {output} is a file; -o names the folder for the images")
        mine = b.my_share(items, rank, world)
        say(f"batch {file}: {len(items)} job(s), shard {rank}/{world} runs {len(mine)}")
        loaded: dict[tuple, Any] = {}

        items, paths = b.name_outputs(items, output, file.name)
        mine = b.my_share(items, rank, world)
        if dry_run:
            show_batch_plan(mine, paths, gpu, as_json, overwrite)
            return
        first_on = {item.job.device: item.index for item in reversed(mine)}
        for name, index in sorted(first_on.items(), key=lambda kv: kv[1]):
            try:  # before any work, as for gen: not a failure per job
                check_device(name)
            except JobError as e:
                raise JobError(f"{file.name} job {index}: {e}") from None

        def resolve(item: b.BatchItem) -> Path:
            return paths[item.index]

        def make_one(item: b.BatchItem, path: Path) -> dict:
            from hires import resume
            from hires.pipeline import load, load_args, plan_for
            from hires.upscale import load_source, make

            j = item.job
            key = load_args(j)
            fresh = key not in loaded
            if fresh:
                library_bars(quiet)
                loaded.clear()  # one model in memory at a time
                loaded[key] = load(*key)
            check_loaded(j, loaded[key], notes=fresh)
            started = time.monotonic()  # a model's load is not an image's pace
            say(f"job {item.index}: {j.width}x{j.height} seed {j.seed} -> {path}")
            comps = loaded[key]
            source = load_source(j) if j.image else None
            say_colour(source)
            plan = plan_for(j, comps, source=source.rgb.size if source else None)
            kept = resume.path_for(path)
            if not resume_runs:
                resume.remove(kept)
            say_resume(kept, j, plan, source)
            with saying_what_is_kept(kept, j, plan, source):  # the save too: a full disk
                with progress_renderer(quiet, plan, str(path)) as progress:
                    result = make(j, source=source, components=comps, progress=progress,
                                  plan=plan, checkpoint=kept)
                record = result.save(path, fmt=j.format, overwrite=overwrite,
                                     settings=b.settings_hash(j), warn=warn)
            resume.remove(kept)
            made.append((j.width * j.height, time.monotonic() - started))
            return record

        # For the time left: the jobs whose images are not there yet, and those made so far.
        todo = [item for item in mine if overwrite or
                not b.made_already(paths[item.index], item.job)]
        warn_space([(paths[item.index], item.job) for item in todo])
        warn_ram([item.job for item in todo])
        made: list[tuple[int, float]] = []

        def report(o: b.Outcome) -> None:
            if o.status == "failed":
                err.print(f"job {o.item.index} failed: {o.error}", markup=False)
            elif o.status == "skipped":
                say(f"job {o.item.index}: {o.path} exists with the same settings, skipped")
            if o.moved_to:
                say(f"job {o.item.index}: {o.why} since {o.path.name} was made; the old image "
                    f"is kept as {o.moved_to.name}")
            if o.record:
                emit(o.record, as_json)
            if o.status != "skipped" and o.item in todo:
                later = todo[todo.index(o.item) + 1:]
                say_left(made, [i.job.width * i.job.height for i in later])

        manifest = manifest or output / "manifest.jsonl"
        for folder in (output, manifest.parent):
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise JobError(f"cannot create folder {folder}: {e.strerror}") from None
        if manifest.is_dir():
            raise JobError(f"--manifest {manifest} is a folder; name a .jsonl file")
        for folder in {output, *(p.parent for p in paths.values() if p.parent.is_dir())}:
            for part in out.remove_stale_parts(folder):
                say(f"removed {part.name}, left by a run that died while saving")
        outcomes = b.run_batch(mine, resolve, make_one, manifest, overwrite, report)
        counts = {s: sum(o.status == s for o in outcomes) for s in ("done", "skipped", "failed")}
        failed = [o.item.index for o in outcomes if o.status == "failed"]
        which = ""
        if failed:  # their errors scrolled by long ago in a big batch
            listed = ", ".join(map(str, failed[:10])) + (", ..." if len(failed) > 10 else "")
            which = (f" (job{'s' if len(failed) > 1 else ''} {listed}; errors in {manifest}; "
                     "the same command runs them again)")
        err.print(f"batch: {counts['done']} done, {counts['skipped']} skipped, "
                  f"{counts['failed']} failed{which}", markup=False)
        if counts["failed"]:
            raise typer.Exit(EXIT_RUNTIME)


def show_batch_plan(items: list, paths: dict[int, Path], gpu: str | None, as_json: bool,
                    overwrite: bool) -> None:
    """`batch --dry-run`: each job's size, file and planned time on `gpu`, or that its image is
    made already, and the total; jobs that cannot run are said and exit 2 at the end."""
    from hires import batch as b
    from hires.eta import duration
    from hires.gpus import rate_for
    from hires.images import input_size
    from hires.job import JobError
    from hires.plan import dry_run

    try:
        rate_for(gpu or "h100")  # a usage error, before any planning
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
    plans: dict[str, Any] = {}  # jobs that differ only in prompt and seed share a plan
    total, counts, planned_on = 0.0, {"to make": 0, "made": 0, "cannot run": 0}, None
    to_make: list[tuple[Path, Any]] = []
    for item in items:
        job, path = item.job, paths[item.index]
        row: dict[str, Any] = {"index": item.index, "path": str(path), "width": job.width,
                               "height": job.height}
        if not overwrite and b.made_already(path, job):
            row["status"], text = "made", f"job {item.index}: {path} is made already"
        else:
            source = input_size(job.image) if job.image else None
            key = json.dumps([{k: v for k, v in job.to_dict().items()
                               if k not in ("prompt", "negative", "seed")}, source],
                             sort_keys=True, default=str)
            try:
                if key not in plans:
                    plans[key] = fitted_plan(lambda j=job, s=source: dry_run(j, gpu, s), job)
                run = plans[key]
            except JobError as e:
                row.update(status="cannot run", error=str(e))
                text = f"job {item.index}: cannot run: {e}"
            else:
                seconds = run.plan.seconds  # None: a CPU job, not timed
                if seconds is not None:
                    total, planned_on = total + seconds, run.gpu
                row.update(status="to make", peak_bytes=run.plan.peak_bytes,
                           seconds=None if seconds is None else round(seconds, 3))
                when = "" if seconds is None else f"{duration(seconds)}, "
                text = (f"job {item.index}: {job.width}x{job.height} -> {path}, "
                        f"{when}peak {run.plan.peak_bytes / 1024**3:.1f} GiB")
        counts[row["status"]] += 1
        if row["status"] == "to make":
            to_make.append((path, job))
        out_line(json.dumps(row) if as_json else text)
    warn_space(to_make)
    if not as_json:
        parts = [f"{counts['to make']} to make" + (
            f", {duration(total)} on {planned_on} (assumed rates)" if planned_on else ""),
            f"{counts['made']} made already"]
        if counts["cannot run"]:
            parts.append(f"{counts['cannot run']} cannot run")
        out_line("total: " + "; ".join(parts))
    if counts["cannot run"]:
        raise typer.Exit(EXIT_USAGE)


@app.command()
def info(
    images: Annotated[list[Path] | None, typer.Argument(
        metavar="IMAGE",
        help="Images made by hires: how each was made (add-ons included).")] = None,
    as_json: JsonOut = False,
) -> None:
    """Versions, devices and their memory, RAM, scratch disk, and the model cache; with
    IMAGEs, how each was made."""
    if images:
        show_all_made(images, as_json)
        return
    with exit_codes():
        import platform
        import shutil
        import tempfile
        from importlib import metadata

        import torch
        from huggingface_hub import constants, try_to_load_from_cache

        from hires.gpus import key_in_name
        from hires.job import DEFAULT_MODEL
        from hires.models import FP16_VAE

        lines = [f"hires {__version__}", f"python {platform.python_version()}",
                 f"torch {torch.__version__}"]
        # Versions from the installed metadata: importing diffusers and transformers to ask
        # them took most of `hires info`'s 17 s.
        for name in ("diffusers", "transformers", "accelerate", "safetensors", "peft"):
            try:
                lines.append(f"{name} {metadata.version(name)}")
            except metadata.PackageNotFoundError:
                lines.append(f"{name} missing")
        if torch.cuda.is_available():
            for i in range(torch.cuda.device_count()):
                p = torch.cuda.get_device_properties(i)
                key = key_in_name(p.name)
                timed = (f"estimates as --gpu {key}" if key else "not in hires' GPU table "
                         "(--gpu with a measured TFLOP/s times its plans)")
                if p.major < 8:  # before Ampere: bf16 emulated (hires.models.choose_vae_dtype)
                    timed += ("; no native bf16, so the VAE runs in fp32 unless it is made for "
                              f"fp16 (--vae {FP16_VAE})")
                lines.append(f"device cuda:{i} {p.name}, {p.total_memory / 1024**3:.1f} GiB, "
                             f"{timed}")
        else:
            lines.append("device cpu only (no CUDA GPU visible to torch)")
        from hires.memory import disk_room, ram_bytes, scratch_folder

        total, available = ram_bytes()
        if total:
            lines.append(f"ram {total / 1024**3:.1f} GiB, {available / 1024**3:.1f} GiB available")
        scratch = scratch_folder()
        room = disk_room(scratch)
        why = ("TMPDIR" if scratch == tempfile.gettempdir() else
               f"{tempfile.gettempdir()} is in RAM; TMPDIR picks another")
        lines.append(f"scratch {scratch} ({why}), "
                     f"{shutil.disk_usage(scratch).free / 1e9:.1f} GB free, "
                     + (f"room for {room / 1e9:.1f} GB of parked maps the RAM cannot hold" if room
                        else "in RAM or full: no room for parked maps (point TMPDIR at a disk)"))
        lines.append("a 16K image: 0.8 GB in RAM as 8-bit RGB, its PNG about as much on disk; "
                     "no scratch with --vae-stats fast (the default), up to 16 GB a level "
                     "with exact (never over half the free space; it recomputes past that)")
        lines.append(f"model cache {constants.HF_HUB_CACHE}")
        for repo, file in ((DEFAULT_MODEL, "model_index.json"),
                           ("Yuanshi/LinFusion-XL", "config.json")):
            cached = isinstance(try_to_load_from_cache(repo, file), str)
            lines.append(f"{repo} {'cached' if cached else 'not cached (downloads on first use)'}")
        out_line("\n".join(lines))


def show_all_made(paths: list[Path], as_json: bool) -> None:
    """`hires info` on each image; one that cannot be read is said on stderr and the others
    are still shown (as `ls` and `head` do), then the exit code is the first failure's."""
    failed = 0
    for number, path in enumerate(paths):
        if len(paths) > 1 and not as_json:
            out_line(("\n" if number else "") + f"file {path}")
        try:
            with exit_codes():
                show_made(path, as_json)
        except typer.Exit as e:
            failed = failed or e.exit_code
    if failed:
        raise typer.Exit(failed)


def show_checkpoint(path: Path, as_json: bool) -> None:
    """What a stopped run's checkpoint (NAME.resume.safetensors) keeps, and for which job."""
    from hires import resume
    from hires.job import JobError

    kept = resume.describe(path)
    if kept is None:
        raise JobError(f"{path} is not a checkpoint hires can read (from another version, or "
                       "cut short); delete it, and a run of its job starts over")
    if as_json:
        out_line(json.dumps({"file": str(path), "checkpoint": True, **kept}))
        return
    job, stage, sizes = kept["job"], kept["stage"], kept["stages"]
    image = path.with_name(path.name[:-len(resume.SUFFIX)])
    then = ("the same command only decodes it" if stage == len(sizes) - 1 else
            f"the same command goes on with stage {stage + 1}")
    if kept.get("hires") != __version__:  # resume.stage_of takes only this version's
        then = f"hires {__version__} cannot go on from it (it starts over)"
    out_line("\n".join([
        f"checkpoint of {image}, kept by hires {kept.get('hires', '?')} for a run that stopped",
        f"prompt {job.get('prompt', '')!r}",
        f"size {job.get('width')}x{job.get('height')}, seed {job.get('seed')}, "
        f"steps {job.get('steps')}",
        f"keeps {stages_upto(stage)} of the job's {len(sizes)}, up to {sizes[stage][0]}x"
        f"{sizes[stage][1]}: {then}; deleting it starts that run over"]))


def show_made(path: Path, as_json: bool) -> None:
    """How an image was made, from its hires metadata: job, stages and add-ons."""
    from hires import resume
    from hires.job import JobError
    from hires.output import OutputError, read_metadata

    if path.name.endswith(resume.SUFFIX):
        show_checkpoint(path, as_json)
        return

    try:
        record = read_metadata(path)["hires"]
    except OutputError as e:
        raise JobError(str(e)) from None
    if not isinstance(record, dict) or not isinstance(record.get("job"), dict):
        raise JobError(f"{path} carries no hires metadata; `hires info` alone shows this "
                       "machine")
    if as_json:
        out_line(json.dumps({"file": str(path), **record}))
        return
    job, result = record["job"], record.get("result") or {}
    sampler = job.get("sampler", "euler") + (" karras" if job.get("karras") else "")
    lines = [f"made by hires {record.get('hires', '?')}",
             f"prompt {job.get('prompt', '')!r}",
             f"size {result.get('width', job.get('width'))}x"
             f"{result.get('height', job.get('height'))}, seed {job.get('seed')}, "
             f"steps {job.get('steps')}, {sampler}, guidance {job.get('guidance')}",
             f"model {job.get('model')}, linfusion {result.get('linfusion', job.get('linfusion'))}"]
    if isinstance(result.get("stage"), int):  # --save-stages: one stage of a bigger job
        lines.append(f"stage {result['stage']} of a job for {job.get('width')}x"
                     f"{job.get('height')} (`hires gen --from` runs the whole job)")
    if job.get("image"):
        lines.append(f"upscaled from {job['image']} (strength {job.get('strength')})")
    if isinstance(job.get("dpi"), (int, float)) and job["dpi"] > 0:
        w, h = (result.get(k, job.get(k)) for k in ("width", "height"))
        if isinstance(w, int) and isinstance(h, int):
            lines.append(f"print size {w / job['dpi'] * 2.54:.1f} x {h / job['dpi'] * 2.54:.1f}"
                         f" cm at {job['dpi']:g} dpi")
    addons = result.get("addons") or {}
    for lora in addons.get("lora", []):
        lines.append(f"lora {lora.get('ref')} at {lora.get('scale')}")
    if addons.get("controlnet"):
        c = addons["controlnet"]
        lines.append(f"controlnet {c.get('model')} at {c.get('scale')}, image {c.get('image')}")
    if addons.get("ip_adapter"):
        ip = addons["ip_adapter"]
        lines.append(f"ip-adapter {ip.get('ref')} at {ip.get('scale')}, image {ip.get('image')}")
    if not addons:
        lines.append("add-ons none")
    for stage in result.get("stages", []):
        lines.append(f"stage {stage.get('index')}: {stage.get('width')}x{stage.get('height')}, "
                     f"{stage.get('steps')} steps, {stage.get('seconds')} s"
                     + (f", {stage['psnr']} dB PSNR against the input" if "psnr" in stage
                        else ""))
    out_line("\n".join(lines))


def version_callback(value: bool) -> None:
    if value:
        print(f"hires {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[bool, typer.Option("--version", callback=version_callback,
                                          is_eager=True, help="Print the version.")] = False,
) -> None:
    """hires: 1K to 16K images from a prompt, on one GPU."""
    Quiet.on = False  # per invocation: tests and scripts may call the app many times


def main() -> None:
    """The `hires` entry point: SIGTERM cleans up like Ctrl-C; a closed stdout is no error."""
    import signal

    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        app()
    except BrokenPipeError:  # stdout closed outside our own prints (e.g. --help | head -1)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        sys.exit(0)
