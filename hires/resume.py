"""Stage checkpoints: a job that stops (killed, out of memory, a crash) goes on after its last
finished stage when it is run again with the same settings.

After each stage, its latents and the anchor statistics go to NAME.resume.safetensors beside
the output (megabytes: 17 MB after an 8K stage, 67 MB after a 16K one), with the job's
settings, the stages' sizes and timesteps and the reports so far. A run of the same job finds it
and skips the stages it holds (after the last one, it only decodes): every stage draws its noise
from its own stream of the seed, so the image is the one an unbroken run makes. The file goes
once the image is saved.
"""

from __future__ import annotations

import errno
import glob
import hashlib
import json
import os
import re
import secrets
import stat
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor

from hires.job import Job

if TYPE_CHECKING:
    from hires.plan import Plan

SUFFIX = ".resume.safetensors"
FORMAT = "hires-resume-1"


@dataclass
class Checkpoint:
    """What a run had done: stages up to `stage` (index), and what the next one starts from."""

    stage: int
    latents: Tensor
    anchor: tuple[Tensor, Tensor]
    reports: list[dict[str, Any]]


def path_for(output: str | Path) -> Path:
    """Where the checkpoints of the job writing `output` go."""
    output = Path(output)
    return output.with_name(output.name + SUFFIX)


def siblings(output: str | Path) -> list[Path]:
    """The checkpoints there of `output`'s name with another image suffix (any case): `-o
    out.jpg` after a stop of `-o out.png` is the same job in another format (README: the
    format may change). Not one whose image another run is making now: it is not stopped."""
    from hires.busy import Busy, check_free
    from hires.output import SUFFIX_FORMATS

    output = Path(output)
    if output.suffix.lower() not in SUFFIX_FORMATS:
        return []
    found = []
    for kept in sorted(output.parent.glob(f"{glob.escape(output.stem)}.*{SUFFIX}")):
        image = kept.with_name(kept.name[:-len(SUFFIX)])
        if image.stem != output.stem or image.suffix.lower() not in SUFFIX_FORMATS or \
                image.suffix == output.suffix or not kept.is_file():
            continue
        try:
            check_free(image)
        except Busy:
            continue
        found.append(kept)
    return found


def kept_elsewhere(output: str | Path, job: Job, plan: Plan) -> Path | None:
    """A checkpoint of this job (and plan) kept for `output` in another format, to go on from:
    a stop of `-o out.png` run again as `-o out.jpg`. None when there is none."""
    return next((kept for kept in siblings(output) if why_not(kept, job, plan) is None), None)


def check_path(path: Path) -> None:
    """A library caller's `checkpoint`, before any work: a file hires can write (one of its
    checkpoints, or no file yet). Else an unwritable one failed after the first stage's work,
    a folder ('.') ran with none, unsaid, and another file (the image's own path) was written
    over. `hires.output.OutputError`s, in the keyword's words."""
    from hires.output import NAME_MAX, OutputError, OutputUnwritable, OutputUsage, check_writable
    from hires.output import is_folder as folder_at

    said, example = f"checkpoint={str(path)!r}", "e.g. hires.resume.path_for('out.png')"
    if folder_at(path):
        raise OutputUnwritable(f"{said} is a folder: give a file's path, {example}")
    if len(os.fsencode(path.name)) > NAME_MAX:  # else the first stage's write fails
        raise OutputUsage(f"{said[:60]}... has a name of {len(os.fsencode(path.name))} bytes; "
                          f"file names hold {NAME_MAX}: give a shorter one")
    if path.exists() and not path.is_file():
        raise OutputUsage(f"{said} is a device or pipe, not a file: give a file's path, "
                          f"{example}")
    if path.is_file() and not is_checkpoint(path):
        raise OutputUsage(f"{said} is a file but not a hires checkpoint, which the run "
                          f"would write over: give another path, {example}")
    try:
        check_writable(path, overwrite=True)
    except OutputError as e:  # its words are -o's
        raise type(e)(f"{said}: {str(e).replace('choose another -o', 'give another path')}"
                      ) from None


def _stages(plan: Plan) -> str:
    return json.dumps([[s.width, s.height, list(s.timesteps)] for s in plan.stages])


# What a job's file is (its format, bits, quality, print size) and how its VAE is tiled and
# gathers its statistics: none of them changes the latents a checkpoint keeps. The tile only
# moves the VAE's rounding at the seams, as auto's choice does already, which follows the memory
# free at each run. `vae_stats` does not even do that: "fast" and "exact" compute the same
# whole-image statistics with the same operations and differ only in where the step outputs
# wait between passes (memory or scratch files; fast's memo follows the free memory too), so
# the VAE's output, and every latent re-encoded from it between stages, is the same.
# `vae_dtype` is not one of them: the VAE runs between stages (`--upsample pixel`: decode,
# resize, encode; an upscale's first stage encodes the input), so the kept stages' latents went
# through the VAE in the stopped run's precision, and bf16 against fp32 is several 8-bit steps
# everywhere, not rounding at seams; a resume in another precision would be neither run's image.
# It counts as the precision it runs in (`resolved_vae_dtype`), as `dtype` does.
NOT_IN_LATENTS = ("format", "dpi", "depth", "quality", "vae_tile", "vae_stats")


def _dtype_here(job: Job) -> torch.dtype | None:
    """The UNet's dtype as `hires.models.load` resolves the job's here (auto: fp16 on a GPU,
    fp32 on a CPU); None where a run of it fails before any stage."""
    from hires.model_refs import ModelError
    from hires.models import resolve_device, resolve_dtype

    try:
        return resolve_dtype(job.dtype, resolve_device(job.device))
    except ModelError:
        return None


def _resolved_dtype(job: Job) -> str:
    """The job's dtype as it runs: an explicit one equal to what auto picks is the same run.
    In torch's words ('float32'): as the checkpoints of earlier runs keep it."""
    dtype = _dtype_here(job)
    return job.dtype if dtype is None else str(dtype).removeprefix("torch.")


def resolved_dtype(job: Job) -> str:
    """The precision the job's UNet runs in here ('fp16', 'bf16', 'fp32'), as the flags say
    it (`dtype` auto's pick); the job's own word where a run of it would fail."""
    from hires.errors import dtype_name

    dtype = _dtype_here(job)
    return job.dtype if dtype is None else dtype_name(dtype)


def resolved_vae_dtype(job: Job) -> str:
    """The precision the job's VAE runs in here ('bf16', 'fp32', 'fp16'), as
    `hires.models.choose_vae_dtype` picks it when the job loads: `auto` on a CPU with native
    bf16 is `bf16`. The job's own word where a run of it would fail before any stage."""
    import torch

    from hires.errors import dtype_name
    from hires.model_refs import ModelError
    from hires.models import choose_vae_dtype, resolve_device, resolve_dtype, vae_fp16_ok

    try:
        device = resolve_device(job.device)
        # Whether the VAE is made for fp16 only counts off a CPU, or for fp16 asked for (its
        # config is read: for `tiny`, a model built).
        fp16_ok = vae_fp16_ok(job.model, job.vae) \
            if device.type != "cpu" or job.vae_dtype == "fp16" else False
        dtype = choose_vae_dtype(device, resolve_dtype(job.dtype, device), job.vae_dtype,
                                 fp16_ok=fp16_ok)
    except (ModelError, RuntimeError, OSError, ValueError):  # fails before any stage
        return job.vae_dtype
    return dtype_name(dtype) if isinstance(dtype, torch.dtype) else job.vae_dtype


def _latent_settings(job: Job) -> dict[str, Any]:
    """The job's settings that shape the latents a checkpoint keeps; local files by their
    resolved paths and LoRAs with their scales, so that spellings of one run are one."""
    from hires.batch import PLACEMENT_KEYS

    values = {k: v for k, v in job.to_dict().items() if k not in NOT_IN_LATENTS + PLACEMENT_KEYS}
    paths = {key: _where(values[key]) for key in PATH_KEYS if key in values}
    return {**values, **paths, "lora": _loras(job.lora), "dtype": _resolved_dtype(job),
            "vae_dtype": resolved_vae_dtype(job)}


# The job's keys that may name a local file or folder; the words that are never one.
PATH_KEYS = ("model", "vae", "linfusion", "control_model", "ip_adapter", "control", "ip_image",
             "image")
NOT_PATHS = ("tiny", "auto", "none")


def _where(ref: Any) -> Any:
    """A local file's or folder's resolved path (`./s` and `/abs/s` are one file); a Hub id, a
    builtin name or None as it is."""
    if not isinstance(ref, str) or not ref or ref in NOT_PATHS:
        return ref
    path = Path(ref).expanduser()
    return str(path.resolve()) if path.exists() else ref


def _loras(specs: list[str]) -> list[list[Any]]:
    """[weights, scale] of each LoRA: a local one's weights file resolved, the scale a number
    (`s` is `s:1.0`)."""
    from hires.lora import LoraError, parse_lora, resolve

    loras = []
    for spec in specs:
        try:
            ref, scale = parse_lora(spec)
            local = Path(ref).expanduser().exists()
            loras.append([str(resolve(ref, allow_pickle=True).resolve()) if local else ref, scale])
        except (LoraError, OSError):  # refused before a run: as it is written
            loras.append([spec, None])
    return loras


def _settings(job: Job) -> str:
    from hires.batch import settings_hash

    return settings_hash(_latent_settings(job))


# Add-on files up to this size are hashed whatever they are (configs); bigger ones only when
# they are what loads (a folder may hold other variants, gigabytes not worth reading).
SMALL = 1 << 20


def _inputs(job: Job) -> str:
    """The job's local files as they are now: a model's by size and time, the add-ons' that run
    by content (sha256, once per file version; the record hashes their weights anyway), so a
    file replaced under its name, its time kept (cp -p), is not the checkpoint's."""
    seen = {}
    # An upscale's input by its sha256, in the settings (`Job.image_sha256`): by its time too,
    # a copy of the same bytes (restored, cp without -p) threw hours of kept stages away.
    image = None if job.image_sha256 else job.image
    for ref in (job.model, job.vae, job.linfusion, image):
        path = Path(ref).expanduser() if ref and ref not in NOT_PATHS else None
        if path is not None and path.exists():
            seen[str(path.resolve())] = [[_name(f, path), f.stat().st_size, f.stat().st_mtime_ns]
                                         for f in _files(path)]
    for path, weights in _addon_inputs(job):
        seen[str(path.resolve())] = [
            [_name(f, path), _digest(f) if f in weights or f.stat().st_size <= SMALL
             else [f.stat().st_size, f.stat().st_mtime_ns]] for f in _files(path)]
    return json.dumps(seen, sort_keys=True)


def _files(path: Path) -> list[Path]:
    return [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())


def _name(file: Path, root: Path) -> str:
    return "" if file == root else str(file.relative_to(root))


def _digest(file: Path) -> str:
    from hires.images import sha256_once

    return sha256_once(file)


def _addon_inputs(job: Job) -> list[tuple[Path, set[Path]]]:
    """The local files and folders of the add-ons that run (at scale 0 one makes nothing), each
    with the big files of it that load: its weights."""
    from hires.addons import runs_controlnet, runs_ip_adapter
    from hires.lora import LoraError, parse_lora, resolve

    found: list[tuple[Path, set[Path]]] = []
    for spec in job.lora:
        ref, scale = parse_lora(spec)
        if scale and Path(ref).expanduser().exists():  # at scale 0 it adds nothing
            try:
                found.append((Path(ref).expanduser(), {resolve(ref, allow_pickle=True)}))
            except LoraError:  # refused before a run
                continue
    images = [job.control] if runs_controlnet(job) else []
    images += [job.ip_image] if runs_ip_adapter(job) else []
    found += [(Path(i).expanduser(), {Path(i).expanduser()}) for i in images
              if i and Path(i).expanduser().is_file()]
    if runs_controlnet(job) and Path(job.control_model).expanduser().exists():
        found.append(_controlnet_files(job))
    if runs_ip_adapter(job) and Path(job.ip_adapter).expanduser().exists():
        found += _ip_adapter_files(job)
    return found


def _controlnet_files(job: Job) -> tuple[Path, set[Path]]:
    from hires.controlnet import weight_files

    path = Path(job.control_model).expanduser()
    return path, {path} if path.is_file() else set(weight_files(path, job.allow_pickle))


def _ip_adapter_files(job: Job) -> list[tuple[Path, set[Path]]]:
    """The IP-Adapter's weights and its image encoder: a file's encoder is the image_encoder/
    folder beside it, which changes the image as much."""
    from hires import ip_adapter as ip

    path = Path(job.ip_adapter).expanduser()
    try:
        weight, encoder = ip.local_files(job.ip_adapter, job.allow_pickle)
    except ip.IPAdapterError:  # refused before a run
        return [(path, {path})]
    weights = {weight, *ip.encoder_files(encoder)}
    return [(path, weights)] + ([(encoder, weights)] if path.is_file() else [])


def _header(path: Path) -> dict[str, str] | None:
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception:  # missing, cut short, not ours: no checkpoint
        return None
    return meta if meta.get("format") == FORMAT else None


def _kept_stage(meta: dict[str, str]) -> tuple[int, list]:
    """The last stage a checkpoint's metadata says it keeps, and its stages; ValueError if
    they do not make sense (a stage that is not one of them)."""
    stages, stage = json.loads(meta["stages"]), int(meta["stage"])
    if not isinstance(stages, list) or not 0 <= stage < len(stages):
        raise ValueError(f"stage {stage} of {len(stages)}")
    return stage, stages


def is_checkpoint(path: Path) -> bool:
    """Whether `path` is one of hires' checkpoints, or named as one."""
    return path.name.endswith(SUFFIX) or (path.is_file() and _header(path) is not None)


def describe(path: Path) -> dict[str, Any] | None:
    """What the checkpoint at `path` holds, for `hires info`: its job (a dict), the last stage
    it keeps and every stage's size; None if it is not one of hires' checkpoints."""
    meta = _header(path)
    if meta is None:
        return None
    try:
        stage, stages = _kept_stage(meta)
        return {"hires": meta.get("hires"), "job": json.loads(meta["job"]), "stage": stage,
                "stages": [[w, h] for w, h, _ in stages]}
    except (KeyError, TypeError, ValueError):
        return None


class NotOfThisJob(Exception):
    """Why a checkpoint cannot be gone on from, in a few words (after its name)."""


def _differences(meta: dict[str, str], job: Job) -> str:
    """'seed 1, not 2': the kept job's settings that differ from `job`'s, the first few."""
    try:
        # As the stopped run resolved them (its relative paths were read in its folder).
        kept = json.loads(meta["resolved"]) if "resolved" in meta else \
            _latent_settings(Job.from_dict(json.loads(meta["job"])))
    except Exception:  # a job this version cannot read: no details
        return ""
    now = _latent_settings(job)
    shown = {k: json.dumps(v, default=str) for k, v in now.items()}
    differ = [f"{k} {json.dumps(kept.get(k), default=str)}, not {shown[k]}" for k in now
              if json.dumps(kept.get(k), default=str) != shown[k]]
    return "; ".join(differ[:3])


def _elsewhere(meta: dict[str, str]) -> str:
    """'; its relative paths were read in DIR: run it in that folder' where the kept job named
    files by relative paths in another folder than this one ('' if not)."""
    from hires.lora import LoraError, parse_lora

    folder = meta.get("cwd")
    if not folder or folder == os.getcwd():
        return ""
    try:
        job = json.loads(meta["job"])
        refs = [job.get(k) for k in PATH_KEYS] + [parse_lora(s)[0] for s in job.get("lora") or []]
    except (KeyError, ValueError, TypeError, AttributeError, LoraError):
        return ""
    if any(isinstance(r, str) and r not in NOT_PATHS and not Path(r).expanduser().is_absolute()
           and Path(folder, r).expanduser().exists() for r in refs):
        return f"; its relative paths were read in {folder}: run it in that folder"
    return ""


def _kept_inputs(meta: dict[str, str], job: Job) -> dict | None:
    """The kept run's input files (`_inputs`), without its upscale input's size and time
    where a checkpoint kept before they were left out has them; None if unreadable."""
    try:
        kept = json.loads(meta["inputs"])
    except (KeyError, TypeError, ValueError):
        return None
    if job.image_sha256 and job.image and isinstance(kept, dict):
        kept.pop(str(Path(job.image).expanduser().resolve()), None)
    return kept


def _changed_input(meta: dict[str, str], job: Job) -> str:
    """Which of the job's input files differs from the kept run's: the first, by its path."""
    try:
        kept = {(root, name): rest for root, files in _kept_inputs(meta, job).items()
                for name, *rest in files}
    except (TypeError, ValueError, AttributeError):  # (None: unreadable)
        return "a model, LoRA or image"
    now = {(root, name): rest for root, files in json.loads(_inputs(job)).items()
           for name, *rest in files}
    changed = [k for k in sorted(set(kept) | set(now)) if kept.get(k) != now.get(k)]
    return str(Path(*changed[0]) if changed[0][1] else changed[0][0]) if changed \
        else "a model, LoRA or image"


def _unreadable(path: Path) -> str:
    """'is truncated (N of M bytes), a copy cut short' (the run writes it whole, then renames
    it), else 'cannot be read'."""
    from hires.safetensors_header import truncated

    cut = truncated(path)
    return f"is {cut.split(';')[0]}, a copy cut short" if cut else "cannot be read"


def _check(path: Path, job: Job, plan: Plan) -> int:
    """The last stage the checkpoint at `path` keeps, from its header (no tensor read);
    raises NotOfThisJob if it is not this job's and plan's, or cannot be read."""
    from hires import __version__

    meta = _header(path)
    if meta is None:
        raise NotOfThisJob(_unreadable(path))
    try:
        stage, _ = _kept_stage(meta)
    except (KeyError, TypeError, ValueError):
        raise NotOfThisJob("cannot be read") from None
    if meta.get("hires") != __version__:
        raise NotOfThisJob(f"was kept by hires {meta.get('hires')}, not {__version__}")
    if meta.get("settings") != _settings(job):
        differ = _differences(meta, job)
        raise NotOfThisJob(f"is of another job{f' ({differ})' if differ else ''}"
                           f"{_elsewhere(meta)}")
    if meta.get("stages") != _stages(plan):
        raise NotOfThisJob("is of another plan (other stage sizes or steps)")
    if _kept_inputs(meta, job) != json.loads(_inputs(job)):
        raise NotOfThisJob(f"is of other input files ({_changed_input(meta, job)} changed "
                           "since)")
    _check_shapes(path, plan.stages[stage])
    return stage


def _check_shapes(path: Path, stage) -> None:
    """Its latents are one image of `stage`'s size (read from the header): a file written
    wrong would otherwise go on to a wrong image, recorded as the job's."""
    try:
        with safe_open(str(path), framework="pt") as f:
            shape = list(f.get_slice("latents").get_shape())
    except Exception:  # no latents in it
        raise NotOfThisJob("cannot be read") from None
    if len(shape) != 4 or shape[0] != 1 or shape[2:] != [stage.height // 8, stage.width // 8]:
        raise NotOfThisJob("cannot be read")


def _tensors(path: Path, device: torch.device) -> tuple[Tensor, Tensor, Tensor, list]:
    """Its latents, anchor mean and std on `device`, and its reports; NotOfThisJob if a
    tensor holds NaN or infinity (a file damaged, or a stage that went wrong)."""
    names = ("latents", "mean", "std")
    try:
        with safe_open(str(path), framework="pt") as f:
            reports = json.loads(f.metadata()["reports"])
            written = f.metadata().get("sha256")  # None in a checkpoint kept before it was
            tensors = [f.get_tensor(k) for k in names]
    except Exception:  # cut short after its header
        raise NotOfThisJob("cannot be read") from None
    # The checksum first: bytes flipped into a NaN are damage too, said as such (QA 184).
    if written is not None and written != _checksum(dict(zip(names, tensors))):
        raise NotOfThisJob("is damaged (its numbers are not those the run wrote: a bad copy "
                           "or disk)")
    if not all(torch.isfinite(t).all() for t in tensors) or not isinstance(reports, list):
        raise NotOfThisJob("cannot be read")
    latents, mean, std = (t.to(device) for t in tensors)
    return latents, mean, std, reports


def _checksum(tensors: dict[str, Tensor]) -> str:
    """The sha256 of the tensors' bytes, by name: damage that leaves the numbers finite (bytes
    flipped on a disk or in a copy) went on to another image, recorded as the job's."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        digest.update(name.encode())
        digest.update(tensors[name].contiguous().view(torch.uint8).numpy())
    return digest.hexdigest()


def stage_of(path: Path, job: Job, plan: Plan) -> int | None:
    """The last stage the checkpoint at `path` holds, if it is of this job, else None."""
    try:
        return _check(path, job, plan)
    except NotOfThisJob:
        return None


def same_latents(recorded: Any, job: Job) -> bool:
    """Whether the job a file records (`recorded`, its keys) makes the latents `job` makes:
    the same settings but those a run may change when it goes on (NOT_IN_LATENTS: the file's
    format, dpi and depth, the VAE's tiling), as a checkpoint is taken up."""
    from hires.job import JobError

    try:
        other = Job.from_dict(recorded)
        return _settings(other) == _settings(job)
    except (JobError, TypeError, ValueError):  # a record of an older hires, or damaged
        return False


def why_not(path: Path, job: Job, plan: Plan) -> str | None:
    """Why the checkpoint at `path` cannot be gone on from ("cannot be read", "is of another
    job (seed 1, not 2)"); None if it can. Reads its tensors, as `load` does."""
    try:
        _check(path, job, plan)
        _tensors(path, torch.device("cpu"))
    except NotOfThisJob as e:
        return str(e)
    return None


def starting_over(path: Path, why: str) -> str:
    """What a run says of a checkpoint it cannot go on from (`why`, from `why_not`)."""
    return f"{path.name} {why}: starting over"


def kept_scores(path: Path, job: Job, plan: Plan) -> dict[int, float]:
    """The PSNR of each stage the checkpoint at `path` keeps (an upscale's), by stage, if it
    is of this job; from its header, so said before the stages after them."""
    if stage_of(path, job, plan) is None:
        return {}
    try:
        reports = json.loads(_header(path)["reports"])
        return {int(r["index"]): float(r["psnr"]) for r in reports
                if isinstance(r, dict) and r.get("psnr") is not None}
    except (KeyError, TypeError, ValueError):  # no scores to say: the result has them
        return {}


def seed_of(path: Path, job: Job) -> int | None:
    """The seed of the checkpoint at `path` if it is of `job` with another seed (a run that
    drew its seed at random): the seed to run again with."""
    meta = _header(path)
    if meta is None:
        return None
    try:
        seed = int(json.loads(meta["job"])["seed"])
    except (KeyError, TypeError, ValueError):
        return None
    return seed if meta.get("settings") == _settings(job.merged({"seed": seed})) else None


def seed_for(job: Job, checkpoint: str | Path | None) -> int:
    """The seed of a job that gives none: a stopped run's, when `checkpoint` is of this job
    with the seed that run drew and stages left to run, else a new one drawn at random. One
    that keeps every stage is an image made (left after its save): a new call wants another."""
    path = Path(checkpoint) if checkpoint else None
    kept = seed_of(path, job) if path and path.is_file() else None
    try:
        stage, stages = _kept_stage(_header(path)) if kept is not None else (0, [])
    except (KeyError, TypeError, ValueError):
        stage, stages = 0, []
    return kept if stage < len(stages) - 1 else secrets.randbelow(2**32)


def stopped_seed(folder: Path, job: Job, output_for: Callable[[int], Path]) -> int | None:
    """The seed of a stopped run of `job` that drew its seed at random: the seed of a
    checkpoint in `folder` of this job with that seed, beside the output that seed names."""
    for kept in sorted(folder.glob("*" + SUFFIX)):
        seed = seed_of(kept, job)
        output = output_for(seed) if seed is not None else None
        if output is not None and kept in (path_for(output), *siblings(output)):
            return seed
    return None


def load(path: Path, job: Job, plan: Plan, device: torch.device) -> Checkpoint | None:
    """The checkpoint at `path` on `device`, if it is of this job and plan and whole (its
    latents the size of its stage's, all finite)."""
    try:
        stage = _check(path, job, plan)
        latents, mean, std, reports = _tensors(path, device)
    except NotOfThisJob:
        return None
    return Checkpoint(stage, latents, (mean, std), reports)


def save(path: Path, job: Job, plan: Plan, stage: int, latents: Tensor,
         anchor: tuple[Tensor, Tensor], reports: list) -> None:
    """Write the checkpoint after `stage` whole or not at all (a temp file, then renamed)."""
    from hires import __version__

    tensors = {"latents": latents, "mean": anchor[0], "std": anchor[1]}
    tensors = {k: v.detach().float().cpu().contiguous() for k, v in tensors.items()}
    meta = {"format": FORMAT, "hires": __version__, "settings": _settings(job),
            "job": json.dumps(job.to_dict(), default=str), "stages": _stages(plan),
            "stage": str(stage), "reports": json.dumps([asdict(r) for r in reports]),
            "inputs": _inputs(job), "cwd": os.getcwd(),
            "resolved": json.dumps(_latent_settings(job), default=str),
            "sha256": _checksum(tensors)}
    from hires.output import file_mode, part_file, sync_folder

    # The output's folder may not be there yet: the image is saved at the end, into a folder
    # made then, but its checkpoints come before.
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # a file where a folder goes is FileExistsError's "[Errno 17] ..."
        why = _WHY[errno.ENOTDIR] if isinstance(e, FileExistsError) else _why_unwritable(e)
        raise CheckpointUnwritable(f"{why}; {_if_stopped(path)}") from None
    # Named as hires' other temp files, so that the next run removes it if this one dies here.
    from hires.output import OutputUnwritable

    try:
        fd, tmp = part_file(path.parent, path.name)
    except OutputUnwritable as e:  # a full or read-only disk refuses even the file's making
        code = getattr(e, "errno", None)
        why = ("its folder takes no new files" if code == errno.ENOENT else
               _why_unwritable(OSError(code, str(e))) if code else "it could not be written")
        raise CheckpointUnwritable(f"{why}; {_if_stopped(path)}") from None
    os.close(fd)
    try:
        try:
            save_file(tensors, tmp, metadata=meta)
        except SafetensorError as e:  # its I/O errors (a full disk) are not OSErrors
            raise OSError(_os_errno(str(e)), str(e)) from None
        _sync_file(tmp)  # on disk before the rename: a power cut must not leave it cut
        os.chmod(tmp, file_mode())  # safetensors writes the file anew, as 0600
        os.replace(tmp, path)
        sync_folder(path.parent)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise CheckpointUnwritable(f"{_why_unwritable(e)}; {_if_stopped(path)}") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _sync_file(path: str) -> None:
    """fsync the file at `path` (safetensors writes by name, and syncs nothing)."""
    fd = os.open(path, os.O_RDWR)  # writable: Windows' fsync needs it; Linux takes either
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class CheckpointUnwritable(OSError):
    """A checkpoint that could not be written; its str() says why and what it means, in a
    user's words (the run's warning shows it as it is)."""


# Why a write failed, as a user reads it: the OS's words name no cause a user can act on.
_WHY = {errno.EISDIR: "a folder of that name is in the way",
        errno.ENOTDIR: "a file is in the way of its folder",
        errno.EFBIG: "the file size limit (ulimit -f) was reached",
        # "No space left" as the OS says it too: the words people search for
        errno.ENOSPC: "the disk is full (No space left on device)",
        errno.EDQUOT: "the disk quota is used up",
        errno.EROFS: "the disk is read-only",
        errno.EACCES: "permission denied", errno.EPERM: "permission denied",
        errno.EIO: "the disk reported an input/output error"}


def _os_errno(message: str) -> int | None:
    """The errno in a safetensors I/O error's text ('... (os error 28)'), else None."""
    found = re.search(r"\(os error (\d+)\)", message)
    return int(found.group(1)) if found else None


def _why_unwritable(error: OSError) -> str:
    """Why `error` kept a file from being written, in plain words (no temp file's name)."""
    if error.errno in _WHY:
        return _WHY[error.errno]
    if error.errno:
        return os.strerror(error.errno).lower()
    return "it could not be written"


def _if_stopped(path: Path) -> str:
    """What the lost checkpoint means: where a stop from now on would go on from."""
    meta = _header(path) if path.is_file() else None
    try:
        kept = f"stage {_kept_stage(meta)[0]}" if meta else None
    except (KeyError, TypeError, ValueError):
        kept = None
    where = f"go on from {kept}, kept before" if kept else "start the job over"
    return f"the run goes on, but if it stops, running it again would {where}"


def remove(path: str | Path) -> None:
    """The checkpoint at `path`, if any; a folder of that name is not one (nor hires' to delete).

    Any other file is refused (ValueError), not deleted: given the image's own path by mistake,
    this deleted the image."""
    path = Path(path)
    try:
        mode = path.lstat().st_mode
    except (FileNotFoundError, NotADirectoryError):
        return  # none there
    if stat.S_ISDIR(mode):
        return
    # Only a regular file: a pipe, a device (/dev/null, as root) or a link is no checkpoint
    if not stat.S_ISREG(mode) or not is_checkpoint(path):
        raise ValueError(f"{str(path)!r} is not a hires checkpoint (those end in {SUFFIX}: "
                         "hires.resume.path_for(output)); not removed")
    path.unlink(missing_ok=True)
