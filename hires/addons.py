"""A job's add-ons (LoRAs, a ControlNet, an IP-Adapter) put on the loaded model for that job.

`attached(components, job)` loads what the job asks for, yields what the stages need (the
ControlNet and its image, the image prompt's embeddings) and takes it all off again, so one
loaded model serves a batch whose jobs differ in add-ons. What ran is recorded for metadata.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from PIL import Image

from hires.images import file_sha256
from hires.job import Job, JobError
from hires.models import (
    go_offline_if_unreachable,
    hub_id_refusal,
    model_kind,
    weights_refusal,
)


@dataclass
class Addons:
    """What the stages need from a job's add-ons, and the record of what ran."""

    controlnet: Any = None  # diffusers ControlNetModel
    control_image: Image.Image | None = None
    control_scale: float = 1.0
    image_embeds: list[Any] | None = None  # IP-Adapter: one 2 x ... tensor (uncond, cond)
    record: dict[str, Any] = field(default_factory=dict)


def check_inputs(job: Job) -> None:
    """Fail before any loading when a local add-on file the job names is missing, or an image
    it names cannot be read (else the model and the add-on load first, minutes with SDXL)."""
    local = [("--control", job.control), ("--ip-image", job.ip_image)]
    if job.lora:
        from hires.lora import hub_parts, parse_lora

        # owner/repo/file.safetensors is a Hub file, though model_kind reads a path in it
        local += [("--lora", ref) for ref in (parse_lora(spec)[0] for spec in job.lora)
                  if hub_parts(ref) is None]
        parsed = [parse_lora(spec) for spec in job.lora]
        refs = [ref for ref, _ in parsed]
        for ref in dict.fromkeys(r for r in refs if refs.count(r) > 1):
            scales = " and ".join(f"{s:g}" for r, s in parsed if r == ref)
            raise JobError(f"--lora {ref} is given twice (scales {scales}, which would add up); "
                           "give it once, with the scale you want")
    if job.control_model:
        local.append(("--control-model", job.control_model))
    if job.ip_image:
        local.append(("--ip-adapter", job.ip_adapter))
    for flag, ref in local:
        # The images are files whatever their names look like ("photo.png" is no Hub id).
        image = flag in ("--control", "--ip-image")
        kind = model_kind(ref) if ref else None
        if ref and (image or kind in ("file", "folder") or flag == "--lora") and \
                not Path(ref).expanduser().exists():
            raise JobError(f"{flag} {ref}: no such file" if image else
                           f"{flag} {ref}: no such file or folder")
        if image and ref:
            path = Path(ref).expanduser()
            stat = path.stat()
            problem = _unreadable(str(path), stat.st_mtime_ns, stat.st_size)
            if problem:
                raise JobError(f"{flag} {problem}")
        if flag == "--lora" and ref and Path(ref).expanduser().exists():
            from hires.lora import local_problem

            if problem := local_problem(ref, job.allow_pickle):
                raise JobError(problem)
        if kind == "hub" and not image and (refusal := hub_id_refusal(flag, ref)):
            raise JobError(refusal)
        what = {"--control-model": "a ControlNet", "--ip-adapter": "an IP-Adapter"}.get(flag)
        if what and ref and Path(ref).expanduser().is_file():  # an image given for one, say
            refusal = weights_refusal(Path(ref).expanduser(), what, job.allow_pickle)
            if refusal:
                raise JobError(f"{flag} {refusal}")


@lru_cache(maxsize=16)
def _unreadable(path: str, mtime_ns: int, size: int) -> str | None:
    """Why the image at `path` cannot be used (None: it can), decoded whole as `up` reads its
    input, so a truncated file fails too; once per file and version (`--n 50` checks 50 jobs)."""
    from hires.images import ImageInputError, load_input

    try:
        load_input(path)
    except ImageInputError as e:
        return str(e)
    return None


def check_unchanged(job: Job, recorded: dict[str, Any]) -> None:
    """JobError when a local file the job still uses differs from the one a recorded run used
    (its sha256): a re-run (--from) would silently make another image."""
    files: list[tuple[str, Any]] = []
    specs = set(job.lora)
    loras = recorded.get("lora")
    for lora in loras if isinstance(loras, list) else []:  # a tampered record: nothing to check
        if isinstance(lora, dict) and any(s.startswith(str(lora.get("ref"))) for s in specs):
            files.append((lora.get("ref"), lora.get("sha256")))
    control = recorded.get("controlnet") or {}
    if isinstance(control, dict) and control.get("image") in (job.control, job.image):
        files.append((control.get("image"), control.get("image_sha256")))
    ip = recorded.get("ip_adapter") or {}
    if isinstance(ip, dict) and ip.get("image") == job.ip_image:
        files.append((ip.get("image"), ip.get("image_sha256")))
    for ref, digest in files:
        if not (isinstance(ref, str) and isinstance(digest, str)):
            continue
        path = Path(ref).expanduser()
        if path.is_file() and file_sha256(path) != digest:
            raise JobError(f"{ref} has changed since this image was made (its sha256 differs); "
                           "restore the original, or give the add-on options yourself")


@contextmanager
def attached(components: Any, job: Job, source: Image.Image | None = None) -> Iterator[Addons]:
    """The job's add-ons on `components` for the duration; always taken off again.

    `source` is an upscale's input image: a ControlNet without --control is fed it (the tile
    ControlNet path). Add-on errors come out as JobError (exit code 2 in the CLI).
    """
    from hires import controlnet, ip_adapter, lora
    from hires.images import load_input

    theirs = (lora.LoraError, controlnet.ControlError, ip_adapter.IPAdapterError)
    go_offline_if_unreachable(job)  # once a process; the CLI's load has said it
    addons = Addons(control_scale=job.control_scale)
    pipe = components.pipe
    with ExitStack() as undo:
        try:
            # The ControlNet first: its attention is copied from the UNet's, without LoRAs.
            if job.control_model:
                model = _controlnet(components, job.control_model, job.allow_pickle)
                image = load_input(Path(job.control)) if job.control else None
                addons.controlnet = model
                addons.control_image = image.rgb if image else source
                addons.record["controlnet"] = {
                    "model": job.control_model, "scale": job.control_scale,
                    "image": job.control or job.image,
                    "image_sha256": image.sha256 if image else job.image_sha256}
            if job.lora:
                addons.record["lora"] = lora.load_loras(pipe, job.lora, job.allow_pickle)
                undo.callback(lora.unload_loras, pipe)
            if job.ip_image:
                info = ip_adapter.load_ip_adapter(pipe, job.ip_adapter, job.allow_pickle)
                undo.callback(ip_adapter.unload_ip_adapter, pipe)
                ip_adapter.set_scale(pipe, job.ip_scale)
                image = load_input(Path(job.ip_image))
                embeds = ip_adapter.image_embeds(pipe, image.rgb, components.device,
                                                 components.dtype)
                addons.image_embeds = [embeds]
                addons.record["ip_adapter"] = {**info, "scale": job.ip_scale,
                                               "image": job.ip_image, "image_sha256": image.sha256}
        except theirs as e:  # a file or model the user named: theirs to fix (exit code 2)
            raise JobError(str(e)) from None
        yield addons


def _controlnet(components: Any, ref: str, allow_pickle: bool) -> Any:
    """The ControlNet for `ref`, loaded once per components (batches reuse it)."""
    from hires import controlnet

    cache = components.controlnets
    if ref not in cache:
        cache.clear()  # one ControlNet at a time: each is 2.5 GB in fp16
        model = controlnet.load_controlnet(ref, components.dtype, components.device,
                                           allow_pickle)
        controlnet.check_fits(model, components.unet)
        # Its attention follows the UNet's: linear when LinFusion is mounted.
        controlnet.linearize(model, components.unet, components.attention_originals)
        cache[ref] = model
    return cache[ref]
