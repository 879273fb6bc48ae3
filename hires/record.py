"""What hires records about an image it made (the `--json` line, the manifest line, the file's
metadata), and saving a result with that record (`save`: the CLI's, and `Result.save`'s)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hires import __version__

if TYPE_CHECKING:
    from PIL import Image

    from hires.job import Job
    from hires.pipeline import Result


def newer_note(made_by: object) -> str:
    """'; it was made by hires X, newer than this Y: ...' where a record's version (`made_by`)
    is newer than this hires (its keys may be ones this one lacks), else ''."""
    import re

    def parts(text: object) -> re.Match[str] | None:
        return re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", str(text))

    made, this = parts(made_by), parts(__version__)
    if made is None or this is None or [int(n or 0) for n in made.groups()] <= [
            int(n or 0) for n in this.groups()]:
        return ""
    # its number alone: the record's text is anyone's (a line break would split the message)
    return (f"; it was made by hires {made.group(0)}, newer than this {__version__}: upgrade "
            "hires")


def record_for(result: Result, path: Path) -> dict[str, Any]:
    """The JSON object printed with --json and kept in manifests and metadata."""
    from hires.batch import settings_hash

    job = result.job
    return {
        "path": str(path), "seed": result.seed, "width": result.image.width,
        "height": result.image.height, "prompt": job.prompt,
        "model": job.model, "linfusion": result.linfusion,
        # The UNet's precision as it ran (`dtype` auto's pick here); the job keeps the word asked.
        "dtype": dtype_ran(result),
        **({"vae": job.vae} if job.vae else {}),
        # The VAE's precision as it ran (`vae_dtype` auto's pick here): `--from` keeps it.
        **({"vae_dtype": result.vae_dtype} if result.vae_dtype else {}),
        **({"dpi": job.dpi} if job.dpi else {}),  # for print: the file records it too
        **({"depth": 16} if result.pixels16 is not None else {}),
        "seconds": round(result.seconds, 3), "peak_memory": result.peak_memory,
        "stages": [{"index": s.index, "width": s.width, "height": s.height,
                    "strength": round(s.strength, 4), "steps": s.steps,
                    "unet_evaluations": s.unet_evaluations, "seconds": round(s.seconds, 3),
                    "peak_memory": s.peak_memory, "strategy": s.strategy,
                    "estimated_peak": s.estimated_peak, "retried_with": s.retried_with,
                    # identical images score inf, which JSON cannot hold: null
                    **({"psnr": round(s.psnr, 2) if math.isfinite(s.psnr) else None}
                       if s.psnr is not None else {})}
                   for s in result.stages],
        **({"image": job.image, "image_sha256": job.image_sha256} if job.image else {}),
        "sampler": job.sampler + (" karras" if job.karras else ""),
        "addons": result.addons,
        "warnings": list(result.warnings),  # its own: a save adds what its file lost
        **({"resumed_after_stage": result.resumed} if result.resumed is not None else {}),
        "settings": settings_hash(job),
        **({"local": result.local} if result.local else {}),
    }


def dtype_ran(result: Result) -> str:
    """The precision the result's UNet ran in ('fp16', 'bf16', 'fp32'): the result's own where
    it says it, else its job's dtype as `hires.load` resolves it here, as its components were
    loaded (the library's components of another dtype agree with any but auto)."""
    from hires.resume import resolved_dtype

    return getattr(result, "dtype", None) or resolved_dtype(result.job)


def vae_dtype_ran(job: Job, result: dict[str, Any], given: set[str]) -> str | None:
    """For `--from`: the VAE precision the image's record says ran ('bf16', 'fp32', 'fp16'),
    where `job` (the record's, with the flags `given`) would run its VAE in another here (auto
    is bf16 only where bf16 runs natively; a machine without it would decode in fp32, a few
    8-bit steps off); None where it runs as recorded, or a flag picks the VAE or its precision
    (`--vae-dtype`, `--vae`, `--model`: another VAE's precision is its own)."""
    from hires.resume import resolved_vae_dtype

    ran = result.get("vae_dtype")
    if ran not in ("bf16", "fp32", "fp16") or given & {"vae_dtype", "vae", "model"}:
        return None
    return ran if resolved_vae_dtype(job) != ran else None


def dtype_note(job: Job, result: dict[str, Any], given: set[str]) -> str | None:
    """For `--from`: a note where the image's UNet ran in another precision than `job` runs
    in here (a GPU's fp16 image on a CPU, whose auto is fp32): not pinned as the VAE's is (fp16
    on a CPU is very slow), only said; None where they agree or a flag chose."""
    from hires.resume import resolved_dtype

    ran = result.get("dtype")
    if ran not in ("bf16", "fp32", "fp16") or given & {"dtype", "model"}:
        return None
    here = resolved_dtype(job)
    if here == ran:
        return None
    return (f"made with the UNet in {ran}, which runs in {here} here, so the image may differ "
            f"a little (--dtype {ran} runs it as made)")


def local_refs(job: Job) -> list[str]:
    """The job's keys whose references were local files or folders by a relative path: read
    from another folder, `sub/model` would be taken for a Hub id (`gen --from` says so)."""
    refs = {key: getattr(job, key) for key in ("model", "vae", "control_model")}
    if job.linfusion not in ("auto", "none"):
        refs["linfusion"] = job.linfusion
    if job.ip_image:
        refs["ip_adapter"] = job.ip_adapter

    def local(ref: str | None) -> bool:
        return bool(ref) and ref != "tiny" and not Path(ref).expanduser().is_absolute() \
            and Path(ref).expanduser().exists()

    from hires.lora import LoraError, parse_lora

    def lora_ref(spec: str) -> str | None:
        try:
            return parse_lora(spec)[0]
        except LoraError:
            return None

    # a LoRA at loras/sdxl/x.safetensors reads as a Hub file elsewhere: "lora" if any is so
    loras = ["lora"] if any(local(lora_ref(spec)) for spec in job.lora) else []
    return [key for key, ref in refs.items() if local(ref)] + loras


def save_stage(image: Image.Image, path: str | Path, job: Job, index: int, *,
               fmt: str | None = None, overwrite: bool = False,
               linfusion: str | None = None, vae_dtype: str | None = None,
               dtype: str | None = None, addons: dict[str, Any] | None = None) -> Path:
    """Write stage `index`'s image of `job` (every stage but the last), atomically; its
    metadata names the job and the stage, so `hires info` reads it and `--from` runs the job.
    `linfusion`: the checkpoint that ran (`auto` resolved), as the image's record has it;
    `vae_dtype` and `dtype`: the VAE's and UNet's precisions as they ran ('bf16', 'fp32',
    'fp16'), likewise (`dtype` by default: the job's as `hires.load` resolves it here);
    `addons`: what ran, with their files' sha256 (`Result.addons`), for --from to compare."""
    from hires import output
    from hires.batch import settings_hash
    from hires.resume import resolved_dtype

    record = {"path": output.name_text(path), "stage": index, "seed": job.seed,
              "width": image.width, "height": image.height, "prompt": job.prompt,
              "model": job.model, "linfusion": linfusion, "dtype": dtype or resolved_dtype(job),
              **({"vae_dtype": vae_dtype} if vae_dtype else {}),
              **({"image": job.image, "image_sha256": job.image_sha256} if job.image else {}),
              "addons": addons or {}, "settings": settings_hash(job)}
    metadata = {"hires": __version__, "job": job.to_dict(), "result": record}
    return output.save_image(image, path, fmt=fmt, metadata=metadata, overwrite=overwrite,
                             dpi=job.dpi, quality=job_quality(job, path, fmt))


def job_quality(job: Job, path: Path | str, fmt: str | None) -> int | None:
    """The job's quality where its file is a JPEG or WebP; None (no quality) for PNG and TIFF,
    which are lossless: a preset's or a recorded job's quality is for the lossy formats."""
    from hires import output
    from hires.job import LOSSY_FORMATS

    return job.quality if output.format_for(Path(path), fmt) in LOSSY_FORMATS else None


def stage_path(path: Path, index: int) -> Path:
    """Where stage `index`'s image of the image at `path` goes (NAME.stage0.png)."""
    return path.with_name(f"{path.stem}.stage{index}{path.suffix}")


def stage_paths(path: Path, stages: int) -> list[Path]:
    """Where `save_stages` puts every stage but the last (which is the image itself)."""
    return [stage_path(path, i) for i in range(stages - 1)]


def save(result: Result, path: str | Path, *, fmt: str | None = None, overwrite: bool = False,
         save_stages: bool = False, settings: str | None = None,
         warn: Callable[[str], None] | None = None, stage: int | None = None,
         recorded_as: str | None = None, quality: int | None = None) -> dict[str, Any]:
    """Write the image (and with `save_stages` the earlier stages' images) with hires'
    metadata, atomically; return the record. The format is `fmt`, else the path's suffix's.

    The metadata is what `hires info IMAGE` shows and `hires gen --from IMAGE` runs again.
    `settings` replaces the record's settings hash (a batch records its job file's); `stage`
    records that the result is that stage of its job (a preview), not the whole job;
    `recorded_as` replaces the path in the record (`-`: the file is bound for stdout).
    `quality` (1-100) replaces the job's for a JPEG or WebP (for PNG or TIFF: OutputUsage).
    """
    from hires import output

    path = Path(path)
    if quality is not None:  # before any file, stages' included, is written
        output.check_quality(quality, output.format_for(path, fmt))
    record = record_for(result, path)
    if recorded_as is not None:
        record["path"] = recorded_as
    if settings:
        record["settings"] = settings
    if stage is not None:
        record["stage"] = stage
    # The quality the file has: none for a PNG or TIFF, and so none recorded.
    quality = job_quality(replace(result.job, quality=quality or result.job.quality), path, fmt)
    # The format it has too (a.jpg from a PNG job is a JPEG): as the CLI's -o a.jpg records
    # it, so that --from writes a JPEG and the settings hash is the CLI's.
    written = output.format_for(path, fmt)
    job = result.job
    if quality != job.quality or written != job.format:
        job = replace(job, quality=quality, format=written)
    if job is not result.job and not settings:  # the job the file holds: its fingerprint
        from hires.batch import settings_hash

        record["settings"] = settings_hash(job)
    # the file's name as its bytes read (UTF-8), as JSON lines give it, in any locale
    metadata = {"hires": __version__, "job": job.to_dict(),
                "result": {**record, "path": output.name_text(record["path"])}}
    if save_stages:
        if len(result.stage_images) < len(result.stages):
            raise output.OutputUsage("this result kept no stage images; make it with "
                                     "save_stages=True")
        # The image's refusals before its stages are written: a refused save writes nothing.
        # Its format's limits too (a 16-bit JPEG, a WebP over 16383 px), the stages' included.
        output.check_format(result.image, path, fmt, result.pixels16)
        for stage_image, taken in zip(result.stage_images[:-1],
                                      stage_paths(path, len(result.stage_images))):
            output.check_format(stage_image, taken, fmt)
        for taken in (path, *stage_paths(path, len(result.stage_images))):
            output.check_writable(Path(taken), overwrite)
    made: list[Path] = []  # stage images this save added: gone again if a later write fails
    try:
        if save_stages:
            for index, (stage_image, stage_path) in enumerate(zip(
                    result.stage_images[:-1], stage_paths(path, len(result.stage_images)))):
                new = not stage_path.exists()
                try:
                    save_stage(stage_image, stage_path, job, index, fmt=fmt, overwrite=overwrite,
                               linfusion=result.linfusion, vae_dtype=result.vae_dtype,
                               dtype=record["dtype"], addons=result.addons)
                except output.DiskRefused as e:  # an extra file: say what to do about it
                    raise output.DiskRefused(f"{e} (a stage image); {output.disk_fix(e.errno)}, "
                                             "or save without "
                                             "save_stages", e.folder, e.errno) from None
                if new:
                    made.append(stage_path)
        return _save_image(result, path, record, metadata, fmt=fmt, overwrite=overwrite,
                           quality=quality, recorded_as=recorded_as, warn=warn)
    except BaseException:  # nothing half-written: not some stage images without their image
        for stage_path in made:
            stage_path.unlink(missing_ok=True)
        raise


def _save_image(result: Result, path: Path, record: dict[str, Any], metadata: dict[str, Any], *,
                fmt: str | None, overwrite: bool, quality: int | None, recorded_as: str | None,
                warn: Callable[[str], None] | None) -> dict[str, Any]:
    """`save`'s image itself, with what its format cannot keep in its record and `warn`ed."""
    from hires import output

    def saving(text: str) -> None:
        """What the file's format cannot keep (a JPEG's transparency), in this save's record
        (--json, a manifest) and, said before its metadata is encoded, the file's too."""
        if recorded_as == "-":  # -o -: its temporary file's name means nothing
            text = text.replace(f"{path.name} ", f"{output.STDOUT_NAME} ", 1)
        if text not in record["warnings"]:
            record["warnings"].append(text)
        if warn:
            warn(text)

    output.save_image(result.image, path, fmt=fmt, metadata=metadata, overwrite=overwrite,
                      dpi=result.job.dpi, warn=saving, pixels16=result.pixels16,
                      quality=quality)
    return record

