"""A job's add-ons (LoRAs, a ControlNet, an IP-Adapter) put on the loaded model for that job.

`attached(components, job)` loads what the job asks for, yields what the stages need (the
ControlNet and its image, the image prompt's embeddings) and takes it all off again, so one
loaded model serves a batch whose jobs differ in add-ons. What ran is recorded for metadata.
"""

from __future__ import annotations

import shlex
import threading
from collections.abc import Callable, Collection, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, NamedTuple

from PIL import Image

from hires.images import sha256_once
from hires.job import DEFAULT_IP_ADAPTER, NAMED_IP_ADAPTER, Job, JobError
from hires.model_refs import (
    ModelError,
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


def check_inputs(job: Job, loads: bool = True, images: bool = True) -> None:
    """Fail before any loading when a local add-on file the job names is missing or cannot be
    what it is given as (a folder as an image, a LoRA as a ControlNet, an IP-Adapter folder
    without its image encoder), or an image it names cannot be read (else the model and the
    add-on load first, minutes with SDXL). For a command that `loads` them (not `hires plan`,
    which may plan another machine's run): pickle files need --allow-pickle, and with
    HF_HUB_OFFLINE set, a Hub add-on must be in the local cache (ModelError, exit 1, as a
    load says). Without `images`, the add-ons' images are not looked at (`hires plan`)."""
    from hires import controlnet, ip_adapter

    allow_pickle = job.allow_pickle or not loads
    local = [("--control", job.control), ("--ip-image", job.ip_image)] if images else []
    if job.lora:
        from hires.lora import hub_parts, parse_lora

        # owner/repo/file.safetensors is a Hub file, though model_kind reads a path in it
        local += [("--lora", ref) for ref in (parse_lora(spec)[0] for spec in job.lora)
                  if hub_parts(ref) is None]
        parsed = [parse_lora(spec) for spec in job.lora]
        refs = [ref for ref, _ in parsed]
        _refuse_repeated_loras(parsed)
        if loads:
            from hires.lora import cached_problem, hub_problem

            for ref in refs:
                if problem := hub_problem(ref, allow_pickle):
                    raise ModelError(problem)
                if problem := cached_problem(ref, allow_pickle, job.model):  # as a local one
                    raise JobError(problem)
    if job.control_model:
        local.append(("--control-model", job.control_model))
    if planned_ip_adapter(job) or job.ip_image:
        local.append(("--ip-adapter", job.ip_adapter))
    for flag, ref in local:
        # The images are files whatever their names look like ("photo.png" is no Hub id).
        image = flag in ("--control", "--ip-image")
        kind = model_kind(ref) if ref else None
        # At scale 0 it is not loaded (runs_*): a record's re-runs with its files gone since,
        # and whether the cache holds it does not matter.
        # (an IP-Adapter named without its image: `hires plan` counts it, as gen will run it)
        runs = runs_controlnet(job) if flag == "--control-model" else planned_ip_adapter(job)
        unused = flag in ("--control-model", "--ip-adapter") and not runs
        if unused and ref and not Path(ref).expanduser().exists():
            continue
        if ref and (image or kind in ("file", "folder") or flag == "--lora") and \
                not Path(ref).expanduser().exists():
            raise JobError(f"{flag} {ref}: no such file" if image else
                           f"{flag} {ref}: no such file or folder")
        if image and ref:
            path = Path(ref).expanduser()
            if path.is_dir():  # not `up`'s inputs: DIR/* would give it several
                raise JobError(f"{flag} {ref} is a folder; {flag} takes one image file")
            stat = path.stat()
            problem = _facts(str(path), stat.st_mtime_ns, stat.st_size).problem
            if problem:
                raise JobError(f"{flag} {problem}")
        if flag == "--lora" and ref and Path(ref).expanduser().exists():
            from hires.lora import local_problem

            if problem := local_problem(ref, allow_pickle, job.model):
                raise JobError(problem)
        if kind == "tiny" and flag in ("--control-model", "--ip-adapter"):
            refusal = (controlnet.TINY_REFUSAL if flag == "--control-model"
                       else ip_adapter.TINY_REFUSAL)
            raise JobError(f"{flag} tiny: {refusal}")
        if kind == "hub" and not image and (refusal := hub_id_refusal(flag, ref)):
            raise JobError(refusal)
        what = {"--control-model": "a ControlNet", "--ip-adapter": "an IP-Adapter"}.get(flag)
        if what and ref and Path(ref).expanduser().is_file():  # an image given for one, say
            refusal = weights_refusal(Path(ref).expanduser(), what, allow_pickle)
            if refusal:
                raise JobError(f"{flag} {refusal}")
        if what and ref and Path(ref).expanduser().exists():
            if flag == "--control-model" and (
                    problem := controlnet.local_problem(ref, allow_pickle)):
                raise JobError(f"{flag} {problem}")
            if flag == "--ip-adapter" and (problem := ip_adapter.local_problem(ref, allow_pickle)):
                raise JobError(problem)  # (it names the IP-Adapter)
        # Made for another model: said before the model loads (minutes with SDXL), not after
        if what and ref and runs and Path(ref).expanduser().exists():
            if flag == "--control-model" and (
                    problem := controlnet.fit_problem(ref, job.model)):
                raise JobError(f"{flag} {problem}")
            if flag == "--ip-adapter" and (problem := ip_adapter.fit_problem(ref, job.model)):
                raise JobError(problem)
        if flag == "--control-model" and kind == "file" and loads and runs and (
                problem := controlnet.single_file_problem(ref)):
            raise ModelError(problem)
        if what and kind == "hub" and loads and runs:
            problem = (controlnet.hub_problem(ref, allow_pickle) if flag == "--control-model"
                       else ip_adapter.hub_problem(ref))
            if problem:
                raise ModelError(problem)


def _refuse_repeated_loras(parsed: list[tuple[str, float]]) -> None:
    """JobError when one LoRA is named twice, however spelled (`a.safetensors` and
    `./a.safetensors:0.5`): it would be applied twice, its scales added."""
    keys = [_lora_identity(ref) for ref, _ in parsed]
    for key in dict.fromkeys(k for k in keys if keys.count(k) > 1):
        same = [(ref, scale) for (ref, scale), k in zip(parsed, keys) if k == key]
        names = list(dict.fromkeys(ref for ref, _ in same))
        also = f", also as {' and '.join(names[1:])}" if len(names) > 1 else ""
        scales = " and ".join(f"{scale:g}" for _, scale in same)
        raise JobError(f"--lora {names[0]} is given twice{also} (scales {scales}, which would "
                       "add up); give it once, with the scale you want")


def _lora_identity(ref: str) -> str:
    """Which LoRA `ref` names: a local one's weights file, resolved (a folder's as the file it
    holds); a Hub id as written."""
    from hires.lora import LoraError, hub_parts, resolve

    path = Path(ref).expanduser()
    if not path.exists() and hub_parts(ref) is not None:
        return ref
    try:  # (pickles allowed here: whether they may load is checked apart)
        return str(resolve(ref, allow_pickle=True).resolve())
    except LoraError:  # missing, or a folder of several files: said by the checks after
        return str(path.resolve())


class _Facts(NamedTuple):
    problem: str | None  # why it cannot be used (None: it can)
    size: tuple[int, int] = (0, 0)  # as read: EXIF rotation applied
    alpha: bool = False  # a transparency that is not fully opaque (the RGB is what is used)


@lru_cache(maxsize=16)
def _facts(path: str, mtime_ns: int, size: int) -> _Facts:
    """What an add-on needs to know of the image at `path`, decoded whole as `up` reads its
    input, so a truncated file fails too; once per file and version (`--n 50` checks 50 jobs)."""
    from hires.images import ImageInputError, load_input

    try:
        image = load_input(path)
    except ImageInputError as e:
        return _Facts(str(e))
    return _Facts(None, image.rgb.size, image.alpha is not None)


def runs_controlnet(job: Job) -> bool:
    """Whether the job's ControlNet runs: at scale 0 it would add nothing (residuals times 0),
    so it is neither loaded nor run, nor counted by the planner; the record keeps it."""
    return bool(job.control_model) and job.control_scale != 0


def runs_ip_adapter(job: Job) -> bool:
    """Whether the job's IP-Adapter runs: at scale 0 it adds nothing, so it is not loaded."""
    return bool(job.ip_image) and job.ip_scale != 0




def named_ip_adapter(job: Job) -> bool:
    """Whether the job names an IP-Adapter: another than the default, or the default by its
    flag in a plan."""
    return job.ip_adapter != DEFAULT_IP_ADAPTER or job.extra.get(NAMED_IP_ADAPTER, False)


def planned_ip_adapter(job: Job) -> bool:
    """Whether a plan counts the job's IP-Adapter: it runs, or one is named without its image
    (`hires plan` plans it as given, as it plans a ControlNet without its image)."""
    return (bool(job.ip_image) or named_ip_adapter(job)) and job.ip_scale != 0


# A control image whose aspect is this far from the image's loses more than this share of it
# to the centre crop: said, as its edges would be steering nothing.
CROP_WARN_SHARE = 1 / 3


def input_warnings(job: Job) -> list[str]:
    """What fitting the job's add-on images leaves out of them, as warnings, for once a job:
    a transparency (the ControlNet and the image encoder read the colours beneath), and a
    control image whose aspect is far from the image's (scaled to cover, then more than a third
    of it cropped away). From the files' cached facts; an image that cannot be read says
    nothing here (`check_inputs` refuses it)."""
    notes = []
    for flag, ref, used, what in (
            ("--control", job.control, runs_controlnet(job), "the ControlNet"),
            ("--ip-image", job.ip_image, runs_ip_adapter(job), "the IP-Adapter")):
        path = Path(ref).expanduser() if ref and used else None
        if path is None or not path.is_file():
            continue
        stat = path.stat()
        facts = _facts(str(path), stat.st_mtime_ns, stat.st_size)
        if facts.problem:
            continue
        if facts.alpha:
            notes.append(f"{flag} {ref} has transparency, which {what} does not see: it reads "
                         "the colours beneath")
        (w, h), (width, height) = facts.size, (job.width, job.height)
        if flag == "--control" and w and h and width and height:
            # scaled to cover: the share of it that fits is the ratio of the two aspects
            kept = min(width / w, height / h) / max(width / w, height / h)
            if 1 - kept > CROP_WARN_SHARE:
                notes.append(f"{flag} {ref} ({w}x{h}) is scaled to cover the {width}x{height} "
                             f"image and centre-cropped: {1 - kept:.0%} of it is cut off; give a "
                             "control image of the image's aspect")
    return notes


class RecordedFile(NamedTuple):
    """A local file a recorded run read, and whether it is still that file."""

    flag: str  # how a command gives it: --lora, --control, ..., or "the input"
    ref: str
    sha256: Any  # as the record keeps it (None: an older record, a Hub add-on)
    now: Callable[[str], str | None]  # its sha256 now (None: nothing local to hash)
    part: str = ""  # what of `ref` it is, when not its weights: "its config.json", ...

    @property
    def label(self) -> str:
        """How a message names it: the path, and the part of it that changed."""
        return f"{self.ref} ({self.part})" if self.part else self.ref


def recorded_files(job: Job, recorded: dict[str, Any],
                   given: Collection[str] = frozenset()) -> list[RecordedFile]:
    """The local files of a recorded run's add-ons (`recorded`: its record's `addons`) that
    `job` uses as that run did, to compare. Left out: an add-on at scale 0 (it makes nothing)
    and one in `given`, the job's keys given on this command (lora, control, control_model,
    ip_image, ip_adapter, image): the user's choice, as it is now."""
    from hires import controlnet, ip_adapter
    from hires.lora import parse_lora

    files: list[RecordedFile] = []
    # a LoRA at scale 0 adds nothing to the image: its file is not compared
    refs = [ref for ref, scale in map(parse_lora, job.lora) if scale] \
        if "lora" not in given else []
    loras = recorded.get("lora")
    for lora in loras if isinstance(loras, list) else []:  # a tampered record: nothing to check
        if isinstance(lora, dict) and lora.get("ref") in refs:
            files.append(RecordedFile("--lora", lora["ref"], lora.get("sha256"), _lora_digest))
    control = recorded.get("controlnet") or {}
    runs = runs_controlnet(job)  # at scale 0 neither its weights nor its image make the image
    if isinstance(control, dict):
        image = control.get("image")
        key = "control" if image == job.control else "image" if image == job.image else None
        if key == "control" and not runs:
            key = None  # (`up`'s input is its input still: compared)
        if key and key not in given:
            files.append(RecordedFile("--control" if key == "control" else "the input", image,
                                      control.get("image_sha256"), _file_digest))
        if runs and control.get("model") == job.control_model and "control_model" not in given:
            files += [RecordedFile("--control-model", job.control_model, control.get("sha256"),
                                   lambda ref: controlnet.weights_sha256(ref, job.allow_pickle)),
                      RecordedFile("--control-model", job.control_model,
                                   control.get("config_sha256"), controlnet.config_sha256,
                                   "its config.json")]
    ip = recorded.get("ip_adapter") or {}
    if isinstance(ip, dict) and runs_ip_adapter(job):  # at scale 0 it adds nothing
        if ip.get("image") == job.ip_image and "ip_image" not in given:
            files.append(RecordedFile("--ip-image", job.ip_image, ip.get("image_sha256"),
                                      _file_digest))
        if ip.get("ref") == job.ip_adapter and "ip_adapter" not in given:
            files += [RecordedFile("--ip-adapter", job.ip_adapter, ip.get("sha256"),
                                   lambda ref: ip_adapter.weight_sha256(ref, job.allow_pickle)),
                      RecordedFile("--ip-adapter", job.ip_adapter, ip.get("image_encoder_sha256"),
                                   lambda ref: ip_adapter.encoder_sha256(ref, job.allow_pickle),
                                   "its image encoder")]
    return files


def first_changed(files: list[RecordedFile]) -> RecordedFile | None:
    """The first of `files` whose sha256 differs now from the recorded one."""
    for file in files:
        if not (isinstance(file.ref, str) and isinstance(file.sha256, str)):
            continue  # a Hub id, or a record of an older hires: nothing to compare
        try:
            now = file.now(file.ref)
        except OSError:  # a missing input fails when its job runs, with its own message
            continue
        if now is not None and now != file.sha256:
            return file
    return None


def check_unchanged(job: Job, recorded: dict[str, Any],
                    given: Collection[str] = frozenset()) -> None:
    """JobError when a local file the job still uses differs from the one a recorded run used
    (its sha256): a re-run (--from) would silently make another image. `given`: as for
    `recorded_files`."""
    changed = first_changed(recorded_files(job, recorded, given))
    if changed is None:
        return
    # --lora replaces the record's whole list: give every LoRA with its scale
    give = ("it" if changed.flag == "the input" else
            " ".join(f"--lora {shlex.quote(spec)}" for spec in job.lora)
            if changed.flag == "--lora" else f"{changed.flag} {shlex.quote(changed.ref)}")
    raise JobError(f"{changed.label} has changed since this image was made (its sha256 differs)"
                   f"{elsewhere_hint(changed.ref)}; restore the original, or give {give} "
                   "yourself to use it as it is")


def elsewhere_hint(ref: str) -> str:
    """For a relative path whose file differs from the recorded one: it may be another folder's
    file of that name, not an edit (a record keeps no working folder)."""
    if Path(ref).expanduser().is_absolute():
        return ""
    return " (or it is read in another folder than the one the image was made in: run there)"


def _file_digest(ref: str) -> str | None:
    path = Path(ref).expanduser()
    return sha256_once(path) if path.is_file() else None


def _lora_digest(ref: str) -> str | None:
    """A local LoRA's weights file's sha256 (a folder's file), as its record keeps it (None: a
    Hub one, or one refused when its job runs)."""
    from hires.lora import LoraError, resolve

    if not Path(ref).expanduser().exists():
        return None
    try:
        return sha256_once(resolve(ref, allow_pickle=True))
    except LoraError:
        return None


@contextmanager
def attached(components: Any, job: Job, source: Image.Image | None = None) -> Iterator[Addons]:
    """The job's add-ons on `components` for the duration; always taken off again.

    `source` is an upscale's input image: a ControlNet without --control is fed it (the tile
    ControlNet path). Add-on errors come out as JobError (exit code 2 in the CLI). One job at
    a time holds `components` (its lock): another thread's job waits until this one is done.
    """
    from hires import controlnet, ip_adapter, lora
    from hires.images import load_input

    theirs = (lora.LoraError, controlnet.ControlError, ip_adapter.IPAdapterError)
    if components.running_in == threading.get_ident():
        raise JobError("a job is running on these components already, in this thread (a "
                       "callback started another): start it after that one returns, or give "
                       "it its own hires.load()")
    go_offline_if_unreachable(job)  # once a process; the CLI's load has said it
    addons = Addons(control_scale=job.control_scale)
    pipe = components.pipe
    with components.lock, ExitStack() as undo:
        components.running_in = threading.get_ident()
        undo.callback(setattr, components, "running_in", None)
        components.addons_running = addons.record  # filled in below
        undo.callback(setattr, components, "addons_running", None)
        try:
            # The ControlNet first: its attention is copied from the UNet's, without LoRAs.
            if job.control_model:
                image = load_input(Path(job.control)) if job.control else None
                if runs_controlnet(job):  # at scale 0 it adds nothing: not loaded, not run
                    addons.controlnet = _controlnet(components, job.control_model,
                                                    job.allow_pickle)
                    addons.control_image = image.rgb if image else source
                addons.record["controlnet"] = {
                    "model": job.control_model, "scale": job.control_scale,
                    "image": job.control or job.image,
                    "image_sha256": image.sha256 if image else job.image_sha256,
                    # at scale 0 the image does not depend on its weights: not hashed
                    **(_controlnet_version(job.control_model, job.allow_pickle)
                       if runs_controlnet(job) else {})}
            if job.lora:
                addons.record["lora"] = lora.load_loras(pipe, job.lora, job.allow_pickle)
                undo.callback(lora.unload_loras, pipe)
            if job.ip_image and not runs_ip_adapter(job):  # not loaded: its weights unhashed
                # its image is, as a ControlNet's at scale 0: --from at another scale uses it
                addons.record["ip_adapter"] = {"ref": job.ip_adapter, "scale": 0.0,
                                               "image": job.ip_image,
                                               "image_sha256": _file_digest(job.ip_image)}
            elif job.ip_image:
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
    """The ControlNet for `ref`, loaded once per components and version of its weights
    (batches reuse it)."""
    from hires import controlnet

    cache = components.controlnets  # by reference, as the planner looks it up
    source = _controlnet_source(ref, allow_pickle)
    model = cache.get(ref)
    # The same words may name other weights now: a folder saved over, or a relative path
    # read from another working folder; the record hashes what is there now.
    if model is None or getattr(model, "hires_source", None) != source:
        cache.clear()  # one ControlNet at a time: each is 2.5 GB in fp16
        model = controlnet.load_controlnet(ref, components.dtype, components.device,
                                           allow_pickle)
        try:
            controlnet.check_fits(model, components.unet)
        except controlnet.ControlError as e:  # named as given, as the checks before name it
            raise controlnet.ControlError(f"--control-model {ref}: {e}") from None
        # Its attention follows the UNet's: linear when LinFusion is mounted.
        controlnet.linearize(model, components.unet, components.attention_originals)
        model.hires_source = source
        cache[ref] = model
    return model


def _controlnet_source(ref: str, allow_pickle: bool) -> tuple[str, str | None]:
    """Which weights `ref` names now: a local one's resolved path and weights' sha256 (hashed
    once per file version), a Hub id's cached commit."""
    from hires import controlnet

    if model_kind(ref) == "hub":
        return ref, controlnet.hub_revision(ref)
    return (str(Path(ref).expanduser().resolve()),
            f"{controlnet.weights_sha256(ref, allow_pickle)} {controlnet.config_sha256(ref)}")


def _controlnet_version(ref: str, allow_pickle: bool) -> dict[str, str]:
    """Which ControlNet ran, for its record: a local one's weights' sha256 (what `--from`
    compares), a Hub one's cached commit (the revision), where known."""
    from hires import controlnet

    if model_kind(ref) == "hub":
        revision = controlnet.hub_revision(ref)
        return {"revision": revision} if revision else {}
    digest, config = controlnet.weights_sha256(ref, allow_pickle), controlnet.config_sha256(ref)
    return {**({"sha256": digest} if digest else {}),
            **({"config_sha256": config} if config else {})}
