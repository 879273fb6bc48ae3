"""A dry run: a job's plan for a device, made from the model's shapes alone, no weights.

`hires plan`, `gen --dry-run` and the planner tables call `dry_run`; `plan_without_weights`
builds the model's shape (`hires.costs`) the way a run would see it and asks
`hires.plan.make_plan`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING

from hires.gpus import FP32_SHARE, Card
from hires.memory import GIB, scratch_folder
from hires.plan import Plan, budget_bytes, cpu_budget_flag, make_plan

if TYPE_CHECKING:
    import torch

    from hires.costs import ModelShape


def _vae_dtype_bytes(requested: str, dtype_bytes: int, device: str, bf16: bool = True,
                     fp16_ok: bool = False) -> int:
    """Bytes per VAE value in the planned run: what `hires.models.choose_vae_dtype` will pick
    there (a planned GPU may not be this machine's: `bf16` says whether it has native bf16;
    `fp16_ok` whether the VAE is made for fp16)."""
    import torch

    from hires.models import DTYPES, choose_vae_dtype

    if device.startswith(("cpu", "mps")):  # this machine: ask the rule itself
        model = torch.float32 if dtype_bytes == 4 else torch.float16  # MPS: fp16 goes with it
        return choose_vae_dtype(torch.device(device), model, requested, fp16_ok).itemsize
    if requested == "fp16":
        choose_vae_dtype(torch.device("cpu"), torch.float16, requested, fp16_ok)  # or refuse
    wanted = requested if requested != "auto" else "fp32" if dtype_bytes == 4 else "bf16"
    if wanted == "bf16" and not bf16:
        return 2 if fp16_ok else 4
    return DTYPES[wanted].itemsize


DRY_RUN_FREE_RAM = 0.8  # the share of this machine's RAM a dry run takes to be free


def dry_run_free_ram(job) -> float:
    """The RAM a dry run plans with: --ram GB, else DRY_RUN_FREE_RAM of this machine's (a run
    looks at what is free then)."""
    from hires.memory import ram_bytes

    return job.ram * GIB if job.ram is not None else DRY_RUN_FREE_RAM * ram_bytes()[0]


@dataclass(frozen=True)
class DryRun:
    """A plan made without weights, and what its budget and times are for."""

    plan: Plan
    gpu: str  # the card (or TFLOP/s figure) its times are for; "cpu", "mps": not timed
    rate: float | None  # FLOP/s; None: no times
    budget_from: str | None  # 'vram', 'gpu' (the named card's memory), 'ram' (a CPU's, from
    # --ram), 'device' or None


def dry_run(job, gpu: str | None = None, source: tuple[int, int] | None = None,
            stage_images: bool = False, preview: bool = False) -> DryRun:
    """`hires plan`: the job planned for the card `gpu` names (its memory unless `--vram`
    says, its rate), else for the local GPU, else at an H100's rate without a budget. A job
    for the CPU (`--device cpu`) is planned as a run plans it, in the free RAM, and timed only
    at a rate `gpu` gives (a CPU's is not known: `gpu` is then "cpu", the rate None); a job
    for a Mac's GPU (`--device mps`) likewise ("mps").

    Raises ValueError for a `gpu` that is neither a known card nor a TFLOP/s figure.
    """
    from hires.gpus import card, card_budget_gib, local_gpu, rate_for
    from hires.job import JobError

    if gpu is not None and card(gpu) and job.device.startswith(("cpu", "mps")):
        # the card's memory went unused ("its memory aside"), or a CPU's RAM was said as it
        here = "this CPU" if job.device.startswith("cpu") else "this Mac's GPU"
        raise JobError(f"--gpu {gpu} plans that CUDA card, and --device {job.device} a run on "
                       f"{here}: give one (a TFLOP/s figure, --gpu 0.5, times a run here)")
    if job.device.startswith(("cpu", "mps")) and gpu is None:
        # not at a CUDA card's rate: a CPU's or a Mac's is not known
        plan = plan_without_weights(job, None, source=source, stage_images=stage_images,
                                    preview=preview)
        if job.device.startswith("mps"):
            return DryRun(plan, "mps", None, "vram" if job.vram is not None else None)
        return DryRun(plan, "cpu", None, cpu_budget_flag(job.vram, job.ram) or "device")
    card_vram = card_budget_gib(gpu) if gpu is not None and job.vram is None else None
    gpu = gpu or local_gpu() or "h100"
    rate = rate_for(gpu)
    plan = plan_without_weights(job, rate, source=source, vram=card_vram, gpu=card(gpu),
                                stage_images=stage_images, preview=preview)
    budget_from = None
    if plan.budget:
        budget_from = "vram" if job.vram is not None else "gpu" if card_vram else "device"
    return DryRun(plan, gpu, rate, budget_from)


def as_run_here(job, gpu: str | None):
    """The job a dry run (`gen`, `up`, `batch --dry-run`) plans: as the run would go on this
    machine, so `--device auto` without a CUDA GPU is a CPU run (a TFLOP/s `gpu` times it);
    a `gpu` that names a card plans for that card instead, as `hires plan` does. A Hub id the
    run could not load here (offline, not in the cache; hires' defaults aside) is the ModelError
    the run's load would raise."""
    import torch

    from hires.gpus import card
    from hires.model_refs import check_cached, go_offline_if_unreachable

    # A Hub id a run here cannot load (offline, or a Hub that does not answer, as the run asks
    # it once; not cached): the ModelError the run's load raises (exit 1, as the run's), not a
    # usage error.
    go_offline_if_unreachable(job)
    check_cached(job.model, job.vae, job.linfusion, known=False)
    if job.device == "auto" and not (gpu and card(gpu)) and not torch.cuda.is_available():
        return job.merged({"device": "cpu"})
    return job


# A local model whose weights take at most this many bytes is loaded (on the CPU, as `tiny`
# is) for a dry run to see its shapes as a run does; a bigger one is taken as SDXL-shaped,
# at the native size its configs say.
SMALL_MODEL_BYTES = 256 << 20


def native_size(model: str) -> int | None:
    """A model's native image size in pixels from its UNet's sample_size and its VAE's scale
    (as `Components.native`), read from a local folder's configs or the Hub cache's; None
    where they cannot be read here (single files, Hub ids not cached: SDXL's 1024 then)."""
    from hires.model_refs import model_config

    unet = model_config(model, "unet/config.json")
    size = unet.get("sample_size") if unet else None
    if isinstance(size, list | tuple) and size:
        size = size[0]
    if not isinstance(size, int) or size <= 0:
        return None
    vae = model_config(model, "vae/config.json") or {}
    levels = vae.get("block_out_channels")
    return size * 2 ** (len(levels) - 1 if isinstance(levels, list) and levels else 3)


def _small_local_model(model: str) -> bool:
    """Whether `model` is a local diffusers folder whose weights are small enough to load
    for a dry run (SMALL_MODEL_BYTES), and safetensors: a plan runs no pickle's code."""
    from pathlib import Path

    from hires.model_refs import model_kind, pipeline_folder_refusal

    if model_kind(model) != "folder":
        return False
    folder = Path(model).expanduser()
    if pipeline_folder_refusal(folder, allow_pickle=False):
        return False
    total = sum(f.stat().st_size for sub in ("unet", "vae", "text_encoder", "text_encoder_2")
                for pattern in ("*.safetensors", "*.bin") for f in (folder / sub).glob(pattern))
    return 0 < total <= SMALL_MODEL_BYTES


def _small_model_shape(job, dtype: str = "fp32"
                       ) -> tuple[ModelShape, tuple[str, int, int], torch.Tensor]:
    """A small model's shapes (the tiny model's, or a local folder as small), loaded on the
    CPU in `dtype` (the run's: its weights' bytes), and its scheduler's (timestep spacing,
    training steps, offset) and alphas."""
    from hires.addons import runs_controlnet

    if job.model == "tiny":  # builtin, so the same in every plan of a process
        return _tiny_shape(job.linfusion, runs_controlnet(job), dtype)
    return _loaded_shape(job.model, job.linfusion, runs_controlnet(job), dtype)


@functools.lru_cache(maxsize=8)
def _tiny_shape(linfusion: str, controlnet: bool, dtype: str = "fp32"
                ) -> tuple[ModelShape, tuple[str, int, int], torch.Tensor]:
    """The tiny model's `_loaded_shape`, once a process: `hires up`'s dry run of 250 inputs
    built it 250 times (0.5 s each)."""
    return _loaded_shape("tiny", linfusion, controlnet, dtype)


def _loaded_shape(model: str, linfusion: str, controlnet: bool, dtype: str = "fp32"
                  ) -> tuple[ModelShape, tuple[str, int, int], torch.Tensor]:
    from hires.costs import model_shape
    from hires.models import load, quiet_loading

    # Its shapes, with tiny's own LinFusion or one made for its UNet: no checkpoint is read
    # (a Hub one named may be another machine's to fetch).
    own = model == "tiny" and linfusion in ("auto", "none")
    with quiet_loading():  # a check: its libraries' bars were left in the line of its error
        small = load(model, linfusion if own else "none", dtype, "cpu")
    if not own and linfusion != "none":
        from hires.linfusion import LinFusion

        LinFusion.from_unet(small.unet).mount(small.unet)
    net = None
    if controlnet:
        from hires.controlnet import controlnet_like

        net = controlnet_like(small.unet)
    cfg = small.pipe.scheduler.config
    schedule = (cfg.get("timestep_spacing", "leading"), cfg["num_train_timesteps"],
                cfg.get("steps_offset", 0))
    return model_shape(small, controlnet=net), schedule, small.pipe.scheduler.alphas_cumprod


def plan_without_weights(job, rate: float | None = None,
                         source: tuple[int, int] | None = None,
                         vram: float | None = None, gpu: Card | None = None,
                         stage_images: bool = False, preview: bool = False) -> Plan:
    """The plan of a Job for the device it names, from the model's shapes alone (a dry run).

    Without a CUDA GPU here the plan is still for one (that is what it is for), fitted to
    `--vram` if given, else to `vram` (GiB: a named card's), else to the local GPU's free
    memory; `gpu`: the card planned for (whether it has native bf16, else its VAE is planned
    in fp32, and its fp32 rate); `--device cpu` plans a CPU run.
    """
    from dataclasses import replace as copy

    import torch

    from hires.addons import planned_ip_adapter, runs_controlnet
    from hires.costs import sdxl_shape
    from hires.ip_adapter import projection_params
    from hires.memory import disk_room, free_memory, host_room
    from hires.models import resolve_dtype, vae_fp16_ok
    from hires.unet_costs import with_ip_adapter
    from hires.vae_stats import spill_from_free

    on_gpu = not job.device.startswith(("cpu", "mps"))
    # as the run resolves it: --dtype bf16 on the CPU runs (and is planned) in 2 bytes
    dtype_bytes = resolve_dtype(job.dtype, torch.device("cuda" if on_gpu else job.device)
                                ).itemsize
    vae_dtype_bytes = _vae_dtype_bytes(job.vae_dtype, dtype_bytes, job.device,
                                       gpu.bf16 if gpu else True, vae_fp16_ok(job.model, job.vae))

    def free() -> int | None:  # the local GPU's, or a CPU run's RAM; none on another device
        if on_gpu and torch.cuda.is_available():
            return free_memory(torch.device(job.device if job.device.startswith("cuda")
                                            else "cuda"))
        return free_memory(torch.device("cpu")) if job.device.startswith("cpu") else None

    vram = job.vram if job.vram is not None else vram if on_gpu else None
    budget = budget_bytes(vram, job.ram, job.device.startswith("cpu"), free)
    if job.model == "tiny" or _small_local_model(job.model):
        # The tiny model, or a local one as small (the tiny model saved as a folder, say):
        # loaded, as a run would, to see its shapes; SDXL's would be wrong for it.
        shape, (spacing, train, offset), alphas = _small_model_shape(
            job, "fp32" if dtype_bytes == 4 else "bf16")  # the run's weights' bytes
        shape = copy(shape, on_gpu=on_gpu, vae_dtype_bytes=vae_dtype_bytes)
    else:
        # An SDXL ControlNet's shape is fixed by SDXL's: its name is all a dry run needs.
        shape = sdxl_shape(linfusion=job.linfusion != "none", dtype_bytes=dtype_bytes,
                           on_gpu=on_gpu, controlnet=runs_controlnet(job),
                           vae_dtype_bytes=vae_dtype_bytes)
        native = native_size(job.model)
        if native and native != shape.native:  # SDXL-like at another size: as its configs say
            shape = copy(shape, native=native)
        spacing, train, offset = "leading", 1000, 1  # SDXL base's scheduler
        alphas = None  # make_plan's default: SDXL base's
    if planned_ip_adapter(job):  # its weights ride in the UNet's blocks
        shape = copy(shape, unet=with_ip_adapter(shape.unet, shape.dtype_bytes,
                                                 projection_params(job.ip_adapter,
                                                                   job.allow_pickle)))
    if on_gpu:
        # Parked maps, offloaded weights and the VAE's outputs that do not fit the GPU go to
        # the CPU's memory: --ram GB of it, else as if DRY_RUN_FREE_RAM of this machine's RAM
        # were free then (a run looks at what is free).
        free = dry_run_free_ram(job)
        shape = copy(shape, spill=spill_from_free(free), host=host_room(free) if free else None,
                     fp32_share=gpu.fp32_share if gpu else FP32_SHARE)
    # The scratch disk: parked maps' on a GPU, the exact VAE mode's files on any device.
    shape = copy(shape, disk=disk_room(scratch_folder()) if job.disk is None else job.disk * 1e9,
                 guided=job.guidance > 1)
    return make_plan(job.width, job.height, steps=job.steps, strength=job.strength,
                     native=shape.native, spacing=spacing, train_steps=train, offset=offset,
                     model=shape, budget=budget, offload=job.offload if on_gpu else "none",
                     vae_tile=job.vae_tile, vae_stats=job.vae_stats, rate=rate, source=source,
                     cosine_scale_2=job.cosine_scale_2, global_floor=job.global_floor,
                     karras=job.karras, alphas_cumprod=alphas, upsample=job.upsample,
                     stage_images=stage_images, preview=preview)
