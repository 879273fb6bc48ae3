"""The options the commands share, their tab completion, and the headings `-h` lists them
under."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Annotated, Any

import typer
from typer.core import TyperCommand

# `hires gen -h` lists 50 options: grouped under these headings, by parameter name, in this
# order (anything not named goes under "Other options", and -h last).
HELP_SECTIONS = {
    "Size": ("size", "scale", "aspect", "width", "height", "print_size"),
    "Prompt and sampling": ("prompt", "negative", "seed", "steps", "guidance", "strength",
                            "sampler", "karras", "n"),
    "Output": ("output", "fmt", "quality", "dpi", "depth", "save_stages", "overwrite",
               "resume_runs", "as_json", "quiet", "progress"),
    "Model": ("model", "linfusion", "vae", "lora", "dtype", "allow_pickle"),
    "ControlNet and IP-Adapter": ("control", "control_model", "control_scale", "ip_image",
                                  "ip_adapter", "ip_scale"),
    "Memory and speed": ("device", "vram", "ram", "disk", "offload", "upsample", "vae_tile",
                         "vae_stats", "vae_dtype"),
    "Plans, presets and re-runs": ("dry_run", "gpu", "preview", "preset", "from_image"),
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


def completes(values: Callable[[], Iterable[str]]) -> Callable[[str], list[str]]:
    """Tab completion (`hires --install-completion`) from `values`, computed when asked."""
    return lambda incomplete: [v for v in values() if v.startswith(incomplete)]


def one_of(*values: str) -> Callable[[str], list[str]]:
    return completes(lambda: values)


def preset_names() -> list[str]:
    from hires.presets import available

    # A broken preset of the user's is left out, as `hires presets` does: a traceback at
    # every TAB would hide the rest.
    return sorted(available(broken=[]))


def paper_names() -> list[str]:
    from hires.sizes import PAPER_MM

    papers = [p.upper() if p.startswith("a") else p for p in PAPER_MM]
    return [*papers, *(f"{p}-landscape" for p in papers)]


def gpu_names() -> list[str]:
    from hires.gpus import GPUS

    return sorted(GPUS)


def whole(text: str) -> int:
    """A whole-number option as typed: 4096, not 4096.0 (as job files refuse it) or 4k. The
    conversion's own error is pydantic's ('Input should be a valid integer'), in no flag's
    words: hence this parser."""
    if isinstance(text, int):  # a default, or a value parsed already
        return text
    number = text.strip()
    if re.fullmatch(r"[+-]?\d+", number):
        return int(number)
    if kilo := re.fullmatch(r"(\d+)\s*[kK]", number):
        raise typer.BadParameter(f"'{text}' is not a whole number; give the pixels, e.g. "
                                 f"{int(kilo.group(1)) * 1024}")
    decimal = re.fullmatch(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?", number)
    raise typer.BadParameter(f"'{text}' is not a whole number"
                             + (" (write it without a decimal point or exponent)"
                                if decimal else ""))


def whole_in(low: int, high: int) -> Callable[[str], int]:
    """`whole`, from `low` to `high` (click's min and max do not apply to a parser's value)."""
    def parse(text: str) -> int:
        number = whole(text)
        if not low <= number <= high:
            raise typer.BadParameter(f"{number} is not in the range {low} to {high}")
        return number
    return parse


# Options shared by gen, plan and batch; None means "not given", so presets can fill it.
Size = Annotated[int | None, typer.Option(
    "--size", help="Long side in pixels (e.g. 16384; gen and plan make 1024x1024 without a "
    "size).", parser=whole, metavar="<int>")]
Aspect = Annotated[str | None, typer.Option(
    help="Aspect ratio with --size, e.g. 16:9 or 2:3.",
    autocompletion=one_of("1:1", "4:3", "3:4", "3:2", "2:3", "16:9", "9:16", "21:9", "4:5"))]
Width = Annotated[int | None, typer.Option(help="Exact width in pixels (with --height).",
                                           parser=whole, metavar="<int>")]
Height = Annotated[int | None, typer.Option(help="Exact height in pixels (with --width).",
                                            parser=whole, metavar="<int>")]
PrintSize = Annotated[str | None, typer.Option(
    help="A print's width x height, e.g. 60x90cm, 600x900mm, 24x36in, or a paper: A0-A6, letter,"
    " legal, tabloid (A2-landscape turns it); +3mm adds bleed on every side (A2+3mm); the pixels"
    " at --dpi (default 300), recorded in the file.", autocompletion=completes(paper_names))]
Negative = Annotated[str | None, typer.Option(help="Negative prompt.")]
Seed = Annotated[int | None, typer.Option(
    help="Random seed, 0 to 4294967295 (random when absent; recorded).", parser=whole,
    metavar="<int>")]
UpSize = Annotated[int | None, typer.Option(
    "--size", help="The output's long side in pixels (e.g. 16384).", parser=whole,
    metavar="<int>")]
Steps = Annotated[int | None, typer.Option(help="Base-stage steps (default 50).", parser=whole,
                                           metavar="<int>")]
UpSteps = Annotated[int | None, typer.Option(
    "--steps", help="Steps of a full schedule (default 50): each stage runs its strength's "
    "share of them.", parser=whole, metavar="<int>")]
Guidance = Annotated[float | None, typer.Option(
    help="CFG scale (default 7.5); 1 or less runs without CFG: one UNet pass a step, and "
    "--negative unused.")]
Strength = Annotated[float | None, typer.Option(
    help="SDEdit strength of the first x2 stage; later ones taper to 0 (default 0.32).")]
# Only names that cannot be a path: where none matches, the shell completes file names.
Model = Annotated[str | None, typer.Option(
    help="Hub id, local diffusers folder, .safetensors file, or 'tiny' (offline test model).",
    autocompletion=one_of("tiny"))]
LinFusionRef = Annotated[str | None, typer.Option(
    "--linfusion", help="LinFusion checkpoint: Hub id, folder, 'auto' or 'none'.",
    autocompletion=one_of("auto", "none"))]

Preset = Annotated[str | None, typer.Option(help="Preset name or .toml path; flags override.",
                                            autocompletion=completes(preset_names))]
Fmt = Annotated[str | None, typer.Option("--format", help="png, jpg, webp or tiff.",
                                         autocompletion=one_of("png", "jpg", "webp", "tiff"))]
def gigabytes(text: str) -> float:
    """A size in GB as typed: `24`, `24.5`, `24GB`, `24 GiB` or `24G` (hires counts GB as GiB,
    as card makers' 24 GB are)."""
    return _size(text)[0]


def disk_gigabytes(text: str) -> float:
    """A disk size in GB of 10^9 bytes, as disks are sold; `GiB` typed counts as GiB."""
    number, unit = _size(text)
    return number * 2**30 / 1e9 if unit == "gib" else number


def _size(text: str) -> tuple[float, str]:
    number, unit = text.strip(), ""
    for unit in ("gib", "gb", "g", ""):
        if number.lower().endswith(unit):
            number = number[: len(number) - len(unit)].strip()
            break
    try:
        return float(number), unit
    except ValueError:
        raise typer.BadParameter(f"'{text}' is not a size; give a number like 24 or "
                                 "24GB") from None


Vram = Annotated[float | None, typer.Option(
    help="GPU memory budget in GiB for planning (24 for a 24 GB card).", parser=gigabytes,
    metavar="<GiB>")]
Ram = Annotated[float | None, typer.Option(
    help="Free CPU memory in GiB to plan with (default: what is free as the run starts; a "
    "GPU's plan or dry run takes 80 % of this machine's RAM): on "
    "a GPU, room for parked maps and offloaded weights, less 10 % + 2 GiB kept back; on the "
    "CPU, the memory budget.", parser=gigabytes, metavar="<GiB>")]
Disk = Annotated[float | None, typer.Option(
    help="Scratch disk in GB (in TMPDIR) for parked maps the RAM cannot hold and --vae-stats "
    "exact's files (default: what is free there; 0: never).", parser=disk_gigabytes,
    metavar="<GB>")]
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
         "resized: no VAE between stages; faster, but each stage starts from a less faithful "
         "image).", autocompletion=one_of("pixel", "latent"))]
VaeTile = Annotated[str | None, typer.Option(
    metavar="<int|auto>",
    help="VAE tile size in pixels, a multiple of 8 from 256 (default auto: the planner's pick"
         " of 2048-512, the fastest that fits the memory; auto also over a tile a preset"
         " or gen --from gives).")]
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
    "repeat for more; 'none' drops what a preset or --from (gen, plan) gives.")]
Control = Annotated[str | None, typer.Option(
    help="ControlNet conditioning image (edges, depth, pose...), resized to every stage; "
    "'none' drops the ControlNet a preset or --from (gen, plan) gives.")]
ControlModel = Annotated[str | None, typer.Option(
    help="An SDXL ControlNet: Hub id, diffusers folder or .safetensors file; 'none' drops what "
    "a preset or --from (gen, plan) gives.")]
ControlScale = Annotated[float | None, typer.Option(help="ControlNet strength (default 1.0).")]
IpImage = Annotated[str | None, typer.Option(
    help="IP-Adapter image prompt; 'none' drops what a preset or --from (gen, plan) gives.")]
IpAdapter = Annotated[str | None, typer.Option(
    help="IP-Adapter weights: Hub id (default h94/IP-Adapter), folder or .safetensors file; "
    "'none' drops what a preset or --from (gen, plan) gives.")]
IpScale = Annotated[float | None, typer.Option(help="IP-Adapter strength (default 0.6).")]
JsonOut = Annotated[bool, typer.Option("--json", help="One JSON object per image on stdout "
                                       "(with --dry-run: the plan's).")]
PlanJson = Annotated[bool, typer.Option("--json", help="The plan as one JSON object on stdout.")]
InfoJson = Annotated[bool, typer.Option("--json", help="One JSON object per image on stdout; "
                                        "without an image, one for this machine.")]


def _gpu_option(default: str) -> Any:
    """--gpu, its help naming the command's `default` card."""
    return typer.Option(
        help=f"For time estimates: h100, h200, a100, l40s, 4090, ... or a measured TFLOP/s "
        f"figure (default: {default}).", autocompletion=completes(gpu_names),
        # "4090 " from a script's variable: the card, not "the 4090 's" in every line
        callback=lambda value: value.strip() if isinstance(value, str) and value.strip()
        else value)


Gpu = Annotated[str | None, _gpu_option("this machine's")]
PlanGpu = Annotated[str | None, _gpu_option("this machine's GPU where hires knows it, else "
                                            "h100")]
DryRun = Annotated[bool, typer.Option("--dry-run", help="Check the outputs and inputs, print "
                                      "the plan of the run on this machine (--gpu CARD: on "
                                      "that card, as `hires plan`) and exit without loading "
                                      "weights.")]
Dpi = Annotated[float | None, typer.Option(
    help="Resolution the file records, for print (PNG, TIFF, JPEG): at 300 a 16384 px side "
    "prints 138.7 cm wide.")]
Depth = Annotated[int | None, typer.Option(
    help="Bits per channel of the file: 8, or 16 (PNG and TIFF) to keep the decoder's fine "
    "gradations for print and editing; twice the file.", autocompletion=one_of("8", "16"),
    parser=whole, metavar="<int>")]
Quality = Annotated[int | None, typer.Option(
    parser=whole_in(1, 100), metavar="<int>",
    help="JPEG and WebP quality, 1-100 (default 95; 75: about half the bytes); 100: lossless "
    "WebP, JPEG with full colour (no chroma subsampling). PNG and TIFF are lossless: with them "
    "it is refused.")]
QuietOpt = Annotated[bool, typer.Option("-q", "--quiet", help="No progress or logs on stderr.")]

PROGRESS_MODES = ("auto", "bars", "plain", "json")


def _progress_mode(value: str) -> str:
    if value not in PROGRESS_MODES:
        raise typer.BadParameter(f"'{value}' is not one of {', '.join(PROGRESS_MODES)}")
    return value


ProgressOpt = Annotated[str, typer.Option(
    "--progress", help="How progress shows on stderr: auto (bars on a terminal, else plain "
    "lines, as with TERM=dumb), bars, plain, or json (an object a line, for programs).",
    callback=_progress_mode, autocompletion=one_of(*PROGRESS_MODES))]
Overwrite = Annotated[bool, typer.Option(help="Replace existing output files.")]
SaveStages = Annotated[bool, typer.Option(help="Also save each stage's image as it is done "
                                         "(NAME.stage0.png, ...): see a long job early.")]
Resume = Annotated[bool, typer.Option(
    "--resume/--no-resume", help="Go on from the stages a stopped run of the same job kept "
    "beside the output (out.png.resume.safetensors); --no-resume starts over.")]
