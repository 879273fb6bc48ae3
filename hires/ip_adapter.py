"""An image prompt (IP-Adapter) for the SDXL pipeline, through diffusers' IPAdapterMixin.

IP-Adapter replaces the UNet's cross-attention (attn2) processors and adds an image
projection (`encoder_hid_proj`); LinFusion replaces the self-attention (attn1) modules, which
then have no processor at all, so the two touch disjoint parts and coexist. Diffusers numbers
the adapter's weights per attn2 (1, 3, 5, ...), not per processor, so the numbering holds with
LinFusion mounted.

Diffusers' own unload puts fresh processors back and leaves small traces (the pipeline config's
(None, None) becomes a list); `unload_ip_adapter` here puts back the very objects from before.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from hires.errors import shape_mismatch, shape_text
from hires.images import sha256_once
from hires.model_refs import (
    PICKLE_SUFFIXES,
    ModelError,
    hub_closed,
    hub_unreachable,
    model_kind,
    weights_refusal,
)
from hires.models import quiet_loading

# The reference SDXL IP-Adapter. Checked on the Hub (tree of h94/IP-Adapter, sdxl_models/):
# ip-adapter_sdxl.safetensors (703 MB, a safetensors copy of ip-adapter_sdxl.bin) and
# image_encoder/ (config.json + model.safetensors, 3.69 GB: OpenCLIP ViT-bigG/14, whose
# 1280-wide image embeddings image_proj takes); no preprocessor config: diffusers builds a
# CLIPImageProcessor sized from the encoder's config.
DEFAULT_IP_ADAPTER = "h94/IP-Adapter"
HUB_SUBFOLDER = "sdxl_models"
WEIGHT_NAME = "ip-adapter_sdxl.safetensors"
IMAGE_ENCODER_FOLDER = "image_encoder"


TINY_REFUSAL = ("'tiny' is a model, not an IP-Adapter; pass a Hub id, a folder or a "
                ".safetensors file")


class IPAdapterError(ValueError):
    """An IP-Adapter could not be loaded or used; the message is one line."""


def local_problem(ref: str, allow_pickle: bool = False) -> str | None:
    """Why the local file or folder `ref` cannot be an IP-Adapter, from its names and its
    safetensors files' headers (no weight file, two of them, a pickle, no image_encoder/ beside
    it, a file cut short), as loading would say (None: it may be one): for a dry run, and a
    run before the model loads."""
    try:
        folder, subfolder, weight = _local_weight(Path(ref).expanduser(), ref, allow_pickle)
    except IPAdapterError as e:
        return str(e)
    where = Path(folder) / subfolder
    for file in (where / weight, *encoder_files(where / IMAGE_ENCODER_FOLDER)):
        if file.suffix == ".safetensors" and (said := _unreadable(file)):
            named = "" if file == Path(ref).expanduser() else \
                f": {file.relative_to(where).as_posix()}"
            return f"IP-Adapter {ref}{named} is {said}"
    return _other_weights(where / weight, ref)


def fit_problem(ref: str, model: str) -> str | None:
    """That the local IP-Adapter `ref` was made for another cross-attention width than
    `model`'s UNet (SD 1.5's 768 for SDXL's 2048), from its weights' header and the UNet's
    config.json: as loading says it, but before the model loads. None where it may fit."""
    from hires.model_refs import config_for_checks
    from hires.safetensors_header import read_header

    try:
        folder, subfolder, weight = _local_weight(Path(ref).expanduser(), ref, True)
    except IPAdapterError:
        return None  # local_problem says it
    file = Path(folder) / subfolder / weight
    header = read_header(file) if file.suffix == ".safetensors" else None
    config = config_for_checks(model, "unet") if header else None
    cross = config.get("cross_attention_dim") if isinstance(config, dict) else None
    if not isinstance(cross, int):
        return None
    for name, entry in (header or {}).items():
        shape = entry.get("shape") if isinstance(entry, dict) else None
        if name.endswith(("to_k_ip.weight", "to_v_ip.weight")) and isinstance(shape, list) \
                and shape and shape[-1] != cross:
            return (f"IP-Adapter {ref} does not fit this model: {name} is {shape_text(shape)} "
                    f"in the file (cross-attention width {shape[-1]}, {cross} in the model's "
                    "UNet: made for another model)")
    return None


def projection_params(ref: str, allow_pickle: bool = False) -> int | None:
    """The parameters of the local IP-Adapter `ref`'s image projection (its image_proj
    tensors), from its weights' header: a "plus" adapter's Resampler is ten times the plain
    one's linear projection. A pickle (.bin) is read only where `allow_pickle`, its tensors on
    the meta device (no data read). None for a Hub id or a file that does not say."""
    from math import prod

    from hires.safetensors_header import read_header

    try:
        folder, subfolder, weight = _local_weight(Path(ref).expanduser(), ref, True)
    except IPAdapterError:
        return None
    file = Path(folder) / subfolder / weight
    if not file.is_file():  # a named pipe would hang the read; a run says what it is
        return None
    if file.suffix == ".safetensors":
        header = read_header(file)
        shapes = [entry.get("shape") for name, entry in (header or {}).items()
                  if name.startswith("image_proj.") and isinstance(entry, dict)]
    else:
        shapes = _pickled_shapes(file) if allow_pickle else []
    if not shapes or not all(isinstance(s, list) and all(isinstance(n, int) for n in s)
                             for s in shapes):
        return None
    return sum(prod(s) for s in shapes)


def _pickled_shapes(file: Path) -> list[list[int]]:
    """The shapes of a pickled adapter's image_proj tensors ({"image_proj": {...}, ...}, as
    torch.save wrote it), loaded on the meta device; [] where it cannot be read so."""
    try:
        state = torch.load(file, map_location="meta", weights_only=True, mmap=True)
    except Exception:  # an old (not zip) pickle, or no adapter: the plan counts the plain one
        return []
    proj = state.get("image_proj") if isinstance(state, dict) else None
    if not isinstance(proj, dict):
        return []
    return [list(t.shape) for t in proj.values() if isinstance(t, torch.Tensor)]


def _other_weights(file: Path, ref: str) -> str | None:
    """That the weights at `file` are no IP-Adapter's, and whose they look like (a LoRA's, a
    ControlNet's), from its header: else the load failed on the UNet's first layer, as if made
    for another model."""
    from hires.controlnet import CONTROL_KEYS
    from hires.safetensors_header import read_header

    header = read_header(file) if file.suffix == ".safetensors" else None
    keys = [k for k in header or {} if k != "__metadata__"]
    if not keys or any(k.startswith(("image_proj.", "ip_adapter.")) for k in keys):
        return None
    hint = ("; it looks like a LoRA: give it with --lora" if any("lora" in k.lower() for k in keys)
            else "; it looks like a ControlNet: give it with --control-model"
            if any(k.startswith(CONTROL_KEYS) for k in keys) else "")
    return (f"IP-Adapter {ref}: {file.name} is not an IP-Adapter (none of its tensors is an "
            f"image_proj or ip_adapter one){hint}")


def encoder_files(folder: Path) -> list[Path]:
    """The image encoder's safetensors weights that transformers reads: one file, or the
    shards its index names."""
    import json

    one, index = folder / "model.safetensors", folder / "model.safetensors.index.json"
    if one.is_file():
        return [one]
    try:
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return []  # none, or a pickle one: loading says what is wrong
    return [folder / s for s in shards if (folder / s).is_file()]


def _unreadable(file: Path) -> str | None:
    """'truncated (N of M bytes); re-download it', or that it is no safetensors file; None
    when its header reads and its tensors are all there."""
    from hires.safetensors_header import read_header, truncated

    if read_header(file) is not None:
        return None
    return truncated(file) or "not a readable safetensors file"


def weight_sha256(ref: str, allow_pickle: bool = False) -> str | None:
    """The sha256 of a local IP-Adapter's weight file, as its record keeps it (None: a Hub id,
    or no usable file there now)."""
    if model_kind(ref) not in ("file", "folder") or local_problem(ref, allow_pickle):
        return None
    folder, subfolder, weight = _local_weight(Path(ref).expanduser(), ref, allow_pickle)
    return sha256_once(Path(folder) / subfolder / weight)


def local_files(ref: str, allow_pickle: bool = False) -> tuple[Path, Path]:
    """A local IP-Adapter's weight file and its image encoder's folder (IPAdapterError when
    there is none usable)."""
    folder, subfolder, weight = _local_weight(Path(ref).expanduser(), ref, allow_pickle)
    where = Path(folder) / subfolder
    return where / weight, where / IMAGE_ENCODER_FOLDER


def encoder_sha256(ref: str, allow_pickle: bool = False) -> str | None:
    """The sha256 of a local IP-Adapter's image encoder (its config and weights), as its record
    keeps it: it makes the image prompt's embeddings (None: a Hub id, or none usable now)."""
    from hires.images import files_sha256

    if model_kind(ref) not in ("file", "folder") or local_problem(ref, allow_pickle):
        return None
    encoder = local_files(ref, allow_pickle)[1]
    return files_sha256([encoder / "config.json", *encoder_files(encoder)])


def hub_problem(ref: str) -> str | None:
    """With HF_HUB_OFFLINE set, why the Hub IP-Adapter `ref` cannot load: its weight or image
    encoder is not in the local cache (None: they are, or the Hub may be asked)."""
    from huggingface_hub import constants, try_to_load_from_cache

    if not constants.HF_HUB_OFFLINE:
        return None
    names = [f"{HUB_SUBFOLDER}/{WEIGHT_NAME}",
             f"{HUB_SUBFOLDER}/{IMAGE_ENCODER_FOLDER}/config.json"]
    try:
        cached = all(isinstance(try_to_load_from_cache(ref, n), str) for n in names)
    except Exception:  # an id the cache cannot hold: loading says what is wrong
        return None
    return None if cached else not_cached(ref)


def not_cached(ref: str) -> str:
    """A Hub IP-Adapter missing from the cache while the Hub is closed: why, and what to do."""
    return (f"IP-Adapter '{ref}' is not in the local cache and {hub_closed()} to download it, "
            f"or pass a local .safetensors file with an {IMAGE_ENCODER_FOLDER}/ folder beside it")


@dataclass
class _Before:
    """What loading changes, kept to undo it exactly."""

    processors: dict
    encoder_hid_proj: object
    encoder_hid_dim_type: object
    image_encoder: object
    feature_extractor: object


# Pipelines with an IP-Adapter loaded by this module, and their state from before.
_LOADED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def is_loaded(pipe) -> bool:
    """Whether this module has an IP-Adapter loaded on the pipeline."""
    return pipe in _LOADED


def load_ip_adapter(pipe, ref: str = DEFAULT_IP_ADAPTER, allow_pickle: bool = False) -> dict:
    """Load an IP-Adapter and its image encoder onto `pipe`; returns a record for metadata.

    `ref`: a Hub id laid out like h94/IP-Adapter (sdxl_models/ip-adapter_sdxl.safetensors and
    sdxl_models/image_encoder/), a local .safetensors file with an image_encoder/ folder beside
    it, or a local folder laid out like the Hub repo or holding one weight file and
    image_encoder/. One already loaded by this module is replaced.
    """
    kind = model_kind(ref)
    if kind == "tiny":
        raise IPAdapterError(TINY_REFUSAL)
    if is_loaded(pipe):
        unload_ip_adapter(pipe)
    elif getattr(pipe.unet, "encoder_hid_proj", None) is not None:
        raise IPAdapterError("this UNet already has an image or text projection "
                             "(encoder_hid_proj); hires cannot add an IP-Adapter to it")
    if kind == "hub":
        repo, subfolder, weight = ref, HUB_SUBFOLDER, WEIGHT_NAME
    else:
        if problem := local_problem(ref, allow_pickle):  # a cut-short file, said clearly
            raise IPAdapterError(problem)
        repo, subfolder, weight = _local_weight(Path(ref).expanduser(), ref, allow_pickle)
    before = _Before(dict(pipe.unet.attn_processors), pipe.unet.encoder_hid_proj,
                     pipe.unet.config.encoder_hid_dim_type, pipe.image_encoder,
                     pipe.feature_extractor)
    try:
        with quiet_loading():
            pipe.load_ip_adapter(repo, subfolder=subfolder, weight_name=weight,
                                 image_encoder_folder=IMAGE_ENCODER_FOLDER)
    except Exception as e:  # diffusers raises many kinds here; the user needs one line
        _restore(pipe, before)
        raise _load_error(e, ref, kind, pipe.unet) from e
    if pipe.image_encoder is None:
        _restore(pipe, before)
        raise IPAdapterError(f"IP-Adapter '{ref}' loaded without an image encoder; it needs an "
                             f"{IMAGE_ENCODER_FOLDER}/ folder beside its weights")
    _LOADED[pipe] = before
    # Parked on the CPU: it runs once per job (image_embeds moves it to the device for that),
    # and SDXL's ViT-bigG would otherwise hold 2.5 GB of GPU memory through the whole job.
    encoder = pipe.image_encoder.requires_grad_(False).eval().to("cpu")
    encoder_digest = encoder_sha256(ref, allow_pickle) if kind != "hub" else None
    return {
        "ref": ref,
        "weight": weight,
        "sha256": sha256_once(_weight_file(ref, kind, repo, subfolder, weight)),
        "image_encoder": "/".join(p for p in (subfolder, IMAGE_ENCODER_FOLDER) if p),
        **({"image_encoder_sha256": encoder_digest} if encoder_digest else {}),
        "image_encoder_params": sum(p.numel() for p in encoder.parameters()),
        "image_size": encoder.config.image_size,
        "projection_dim": encoder.config.projection_dim,
    }


def image_embeds(pipe, image: Image.Image, device: torch.device | str,
                 dtype: torch.dtype) -> torch.Tensor:
    """The image prompt's embeddings for `Conditioning.image_embeds`: 2 x 1 x D (one adapter).

    Row 0 is the unconditional embedding and row 1 the image's, the order diffusers'
    `prepare_ip_adapter_image_embeds` returns with CFG (it concatenates negative, then
    positive). For the plain IP-Adapter the unconditional row is zeros (`encode_image` uses
    zeros_like), not the encoder's view of a blank image. The encoder runs on `device` and goes
    back where it was.
    """
    if not is_loaded(pipe):
        raise IPAdapterError("no IP-Adapter is loaded; load one before encoding an image prompt")
    encoder = pipe.image_encoder
    home = next(encoder.parameters()).device
    try:
        encoder.to(device)
        with torch.no_grad():
            embeds = pipe.prepare_ip_adapter_image_embeds(
                ip_adapter_image=image.convert("RGB"), ip_adapter_image_embeds=None,
                device=device, num_images_per_prompt=1, do_classifier_free_guidance=True)
    finally:
        encoder.to(home)
    return embeds[0].to(device=device, dtype=dtype)


def set_scale(pipe, scale: float) -> None:
    """How strongly the image prompt steers: 0 turns it off (diffusers then skips the branch)."""
    if not is_loaded(pipe):
        raise IPAdapterError("no IP-Adapter is loaded; load one before setting its scale")
    try:
        value = float(scale)
    except (TypeError, ValueError):
        value = float("nan")
    if not 0 <= value < float("inf"):
        raise IPAdapterError(f"IP-Adapter scale must be a number >= 0, not {scale!r}")
    pipe.set_ip_adapter_scale(value)


def unload_ip_adapter(pipe) -> None:
    """Remove the IP-Adapter: the UNet, its processors and config are as before loading."""
    before = _LOADED.pop(pipe, None)
    if before is None:
        raise IPAdapterError("no IP-Adapter is loaded; nothing to unload")
    pipe.unload_ip_adapter()
    _restore(pipe, before)


def _restore(pipe, before: _Before) -> None:
    """Put back what loading changed (also after a load that failed half way)."""
    unet = pipe.unet
    # Keyed by what is there now: LinFusion may have been (un)mounted since, changing which
    # attn1 have processors; those keep the fresh ones diffusers' unload gave them.
    unet.set_attn_processor({n: before.processors.get(n, p)
                             for n, p in unet.attn_processors.items()})
    unet.encoder_hid_proj = before.encoder_hid_proj
    # diffusers sets this as an attribute of the config's FrozenDict (its item never changes)
    unet.config.encoder_hid_dim_type = before.encoder_hid_dim_type
    pipe.register_modules(image_encoder=before.image_encoder,
                          feature_extractor=before.feature_extractor)


def _local_weight(path: Path, ref: str, allow_pickle: bool) -> tuple[str, str, str]:
    """(folder, subfolder, weight file name) for diffusers, from a local file or folder."""
    if path.is_file():
        folder, subfolder, weight = path.parent, "", path.name
    elif path.is_dir():
        folder = path
        subfolder = HUB_SUBFOLDER if (path / HUB_SUBFOLDER).is_dir() else ""
        try:
            weight = _pick_weight(path / subfolder, ref, allow_pickle)
        except IPAdapterError:  # a model's folder: not 'must hold one weight file'
            if other := _other_folder(path, ref):
                raise IPAdapterError(other) from None
            raise
    else:
        raise IPAdapterError(f"IP-Adapter file or folder not found: {ref}")
    refusal = weights_refusal(Path(weight), "an IP-Adapter", allow_pickle)
    if refusal:
        raise IPAdapterError(refusal)
    if not (folder / subfolder / IMAGE_ENCODER_FOLDER / "config.json").is_file():
        # A VAE's folder, a LoRA or a ControlNet given here is told so, not to find it an
        # image encoder
        if other := (path.is_dir() and _other_folder(path, ref)) or \
                _other_weights(folder / subfolder / weight, ref):
            raise IPAdapterError(other)
        raise IPAdapterError(
            f"no image encoder for IP-Adapter {ref}: put the CLIP vision model (config.json and "
            f"weights) in an {IMAGE_ENCODER_FOLDER}/ folder beside {weight}")
    return str(folder), subfolder, weight


def _other_folder(path: Path, ref: str) -> str | None:
    """That the folder at `path` is a model's or a part's (a VAE's), not an IP-Adapter's, and
    where it goes; None where it is none of those."""
    from hires.model_refs import folder_holds

    held = folder_holds(path)
    if held is None:
        return None
    what, flag = held
    where = f": pass it as {flag}" if flag else ""
    return (f"IP-Adapter {ref} is {what}'s folder, not an IP-Adapter{where}; give an "
            "IP-Adapter's folder or file, or a Hub id")


def _pick_weight(folder: Path, ref: str, allow_pickle: bool) -> str:
    """The folder's one weight file: the reference name first, else its only .safetensors,
    else the reference name's .bin or its only pickle (refused later unless allow_pickle)."""
    if (folder / WEIGHT_NAME).is_file():
        return WEIGHT_NAME
    found = sorted(p.name for p in folder.glob("*.safetensors"))
    if not found:
        # An old .bin beside a lone .safetensors (ip-adapter-plus_sdxl's, say) is not the one
        if (folder / Path(WEIGHT_NAME).with_suffix(".bin")).is_file():
            return Path(WEIGHT_NAME).with_suffix(".bin").name
        pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
        if len(pickles) == 1:
            return pickles[0]  # refused later unless allow_pickle
        found = pickles if allow_pickle else []
    if len(found) != 1:
        what = ", ".join(found) if found else "no .safetensors file"
        raise IPAdapterError(f"IP-Adapter folder {ref} must hold one weight file ({what}); pass "
                             "the file to use instead of the folder")
    return found[0]


def _weight_file(ref: str, kind: str, repo: str, subfolder: str, weight: str) -> Path:
    if kind != "hub":
        return Path(repo) / subfolder / weight
    from huggingface_hub import hf_hub_download

    # load_ip_adapter has just fetched it, so this is a cache lookup
    return Path(hf_hub_download(ref, weight, subfolder=subfolder, local_files_only=True))


def _load_error(e: Exception, ref: str, kind: str, unet) -> IPAdapterError | ModelError:
    """The one-line message for a failed `pipe.load_ip_adapter`."""
    text = str(e)
    found = shape_mismatch(text)
    if found:
        name, got, want = found
        cross = unet.config.cross_attention_dim
        why = (f"cross-attention width {got[-1]} in the file, {cross} in this UNet"
               if "_ip." in name and got[-1] != want[-1] else "made for another model")
        return IPAdapterError(
            f"IP-Adapter {ref} does not fit this UNet: {name} is {shape_text(got)} in the file, "
            f"{shape_text(want)} in the UNet ({why})")
    if isinstance(e, KeyError):
        return IPAdapterError(
            f"IP-Adapter {ref} does not fit this UNet: it has no weights for cross-attention "
            f"layer {e.args[0]!r} (made for another model)")
    if "image_proj" in text and "missing" in text:
        return IPAdapterError(f"{ref} is not an IP-Adapter checkpoint (no image_proj or "
                              "ip_adapter weights)")
    if kind == "hub" and hub_unreachable(e):
        return ModelError(not_cached(ref))
    first = text.strip().splitlines()[0][:300] if text.strip() else type(e).__name__
    return IPAdapterError(f"could not load IP-Adapter '{ref}': {first}")


