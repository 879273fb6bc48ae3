"""ControlNet for hires' stages: loading and checking one, its control image, and the way its
outputs reach the UNet.

diffusers' ControlNetModel runs as it is. Two things are ours, both for memory at huge latents:
its residuals are recorded as each zero conv makes them (written over the skip that conv read,
so the ControlNet never holds two sets), and they are added into the UNet's skips as each UNet
down block returns them, so each residual is freed as soon as it is used. diffusers' own path
(`down_block_additional_residuals`) keeps every residual alive through the whole UNet call and
makes a third set when it adds them, and fails with skips parked on the CPU. Same arithmetic:
each residual is the zero conv's output times the scale, added to the skip.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import Tensor, nn

from hires import strategy as strategy_module
from hires.errors import first_line, shape_mismatch, shape_text
from hires.model_refs import (
    PICKLE_SUFFIXES,
    ModelError,
    config_class,
    fp16_only,
    hub_closed,
    hub_unreachable,
    weights_refusal,
)
from hires.models import lacking_weights, quiet_loading, weights_not_found


class ControlError(ValueError):
    """A ControlNet could not be loaded or does not fit the model; the message is one line."""



def load_controlnet(ref: str, dtype: torch.dtype, device: torch.device | str = "cpu",
                    allow_pickle: bool = False) -> Any:
    """A diffusers ControlNetModel from a Hub id, a local diffusers folder or one file."""
    with quiet_loading():  # failures are reported here, in one line
        model = _load(ref, dtype, allow_pickle).to(device)
    logging.getLogger("hires").debug("loaded ControlNet %s", ref)
    return model.requires_grad_(False).eval()


def _load(ref: str, dtype: torch.dtype, allow_pickle: bool) -> Any:
    from diffusers import ControlNetModel

    if ref == "tiny":
        raise ControlError(TINY_REFUSAL)
    path = Path(ref).expanduser()
    local = path.exists() or ref.startswith((".", "/", "~")) or path.suffix in (
        ".safetensors", *PICKLE_SUFFIXES)
    if local and not path.exists():
        raise ControlError(f"ControlNet not found: {ref}")
    if local and (problem := local_problem(ref, allow_pickle)):
        raise ControlError(problem)
    try:
        if path.is_file():
            model = ControlNetModel.from_single_file(str(path), dtype=dtype)
        else:
            with weights_not_found() as lacking:
                model = ControlNetModel.from_pretrained(
                    str(path) if path.is_dir() else ref, dtype=dtype,
                    use_safetensors=None if allow_pickle else True,
                    variant="fp16" if path.is_dir() and fp16_only(path) else None)
            if lacking:  # left on the meta device: "Cannot copy out of meta tensor"
                said = lacking_weights(f"ControlNet '{ref}'", lacking,
                                       "folder" if path.is_dir() else "hub")
                # the cache's copy is broken, not the option (exit 1, as a model's or VAE's)
                raise ControlError(said) if path.is_dir() else ModelError(said)
    except OSError as e:
        from huggingface_hub import constants

        if path.is_file():
            raise ControlError(f"could not load {path.name} as a ControlNet: {first_line(e)} "
                               "(single files need their config from the Hub: connect once to "
                               "cache it, or pass a diffusers folder)") from e
        if not local and (hub_unreachable(e) or "cached" in str(e)
                          or constants.HF_HUB_OFFLINE):
            raise ModelError(not_cached(ref)) from e
        raise ControlError(f"could not load ControlNet '{ref}': {first_line(e)}") from e
    except (ControlError, ModelError):  # said already
        raise
    except Exception as e:  # diffusers raises many kinds here; the user needs one line
        if mismatch := _mismatch(str(e)):
            raise ControlError(f"ControlNet {ref} was made for another architecture: {mismatch}; "
                               "use an SDXL ControlNet") from e
        raise ControlError(f"could not load '{ref}' as a ControlNet: {first_line(e)}") from e
    if not isinstance(model, ControlNetModel):
        raise ControlError(f"'{ref}' is a {type(model).__name__}, not a ControlNet")
    return model


TINY_REFUSAL = ("'tiny' is a model, not a ControlNet; pass a Hub id, a diffusers folder or a "
                ".safetensors file")
WEIGHTS = "diffusion_pytorch_model"  # what diffusers' from_pretrained reads in a folder
# Tensors only a ControlNet has: diffusers' names, and the single-file layout's (the keys
# diffusers' from_single_file looks for to take a file as a ControlNet).
CONTROL_KEYS = ("controlnet_cond_embedding.", "controlnet_down_blocks.", "controlnet_mid_block.",
                "control_model.")


def not_cached(ref: str) -> str:
    """A Hub ControlNet missing from the cache while the Hub is closed: why, and what to do."""
    return (f"ControlNet '{ref}' is not in the local cache and {hub_closed()} to download it, "
            "or pass a local folder or .safetensors file")


def local_problem(ref: str, allow_pickle: bool = False) -> str | None:
    """Why the local file or folder `ref` cannot be a ControlNet, from its names and the
    file's header alone (None: it may be; loading checks the rest): for a dry run, which loads
    nothing, and for a run before the model loads."""
    from hires.safetensors_header import read_header, truncated

    path = Path(ref).expanduser()
    if path.is_dir():
        if (path / "model_index.json").is_file():  # a whole model, with its ControlNet maybe
            own = path / "controlnet"
            its = f" (its ControlNet: {own})" if config_class(own / "config.json") == \
                "ControlNetModel" else ""
            return (f"{ref} is a whole model's folder (model_index.json), not a ControlNet"
                    f"{its}; give a ControlNet's folder, a .safetensors file or a Hub id")
        if not (path / "config.json").is_file():
            return (f"{ref} is a folder but not a diffusers ControlNet (no config.json); give "
                    "the folder that holds it, a .safetensors file or a Hub id")
        # A VAE's, UNet's or LinFusion's folder passed, then failed after SDXL had loaded.
        kind = config_class(path / "config.json")
        if kind is not None and kind != "ControlNetModel":
            return (f"{ref} holds {'an' if kind[:1] in 'AEIO' else 'a'} {kind}, not a "
                    "ControlNet (a ControlNetModel); give a ControlNet's folder, a .safetensors "
                    "file or a Hub id")
        files = weight_files(path, allow_pickle)
        if not files:
            if weight_files(path, True):
                return (f"{ref} holds pickle (.bin) weights only, which can run code when "
                        "loaded; convert them to .safetensors or pass --allow-pickle if you "
                        "trust them")
            return f"{ref} holds no ControlNet weights ({WEIGHTS}.safetensors)"
        # A cut-short download would pass until the loader's own unclear words, minutes later.
        for file in files:
            if file.suffix == ".safetensors" and read_header(file) is None:
                return (f"{ref}: {file.name} is "
                        f"{truncated(file) or 'not a readable safetensors file'}")
        return None
    if not path.is_file():
        return None
    refusal = weights_refusal(path, "a ControlNet", allow_pickle)
    if refusal or path.suffix != ".safetensors":
        return refusal  # a pickle allowed: read only by torch
    header = read_header(path)
    if header is None:
        return f"{path.name} is {truncated(path) or 'not a readable safetensors file'}"
    keys = [k for k in header if k != "__metadata__"]
    if any(k.startswith(CONTROL_KEYS) for k in keys):
        return None
    if said := control_lora(path.name, keys):
        return said
    lora = any("lora" in k.lower() for k in keys)
    return (f"{path.name} is not a ControlNet (none of its tensors is a ControlNet's)"
            + ("; it looks like a LoRA: give it with --lora" if lora else ""))


def control_lora(name: str, keys: list[str]) -> str | None:
    """What to say of Stability's Control-LoRA files (a `lora_controlnet` marker tensor), given
    as a ControlNet or a LoRA: neither loader runs them."""
    if "lora_controlnet" not in keys:
        return None
    return (f"{name} is a Control-LoRA (a ControlNet kept as a low-rank difference from the "
            "UNet), which hires cannot run yet, as --control-model or --lora; use a full SDXL "
            "ControlNet (for example diffusers/controlnet-canny-sdxl-1.0)")


def weight_files(folder: Path, allow_pickle: bool = False) -> list[Path]:
    """The files diffusers reads a folder's ControlNet weights from: one, or a sharded
    checkpoint's index and shards (pickle ones only with `allow_pickle`, as it is loaded)."""
    fp16 = fp16_only(folder)  # diffusers' variant names: NAME.fp16.safetensors, ...
    for suffix in (".safetensors", ".bin") if allow_pickle else (".safetensors",):
        one = folder / (f"{WEIGHTS}.fp16{suffix}" if fp16 else f"{WEIGHTS}{suffix}")
        if one.is_file():
            return [one]
        index = folder / f"{WEIGHTS}{suffix}.index{'.fp16' if fp16 else ''}.json"
        if index.is_file():
            import json

            try:
                shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                shards = []
            return [index, *(folder / s for s in shards if (folder / s).is_file())]
    return []


def weights_sha256(ref: str, allow_pickle: bool = False) -> str | None:
    """The sha256 of a local ControlNet's weights, as a record keeps it (None: a Hub id, or
    none to read): a file's own; a folder's weight file's, or, sharded, that of its files'
    names and sha256 one a line. Hashed once per file and version (a ControlNet is 2.5 GB)."""
    from hires.images import files_sha256

    path = Path(ref).expanduser()
    return files_sha256([path] if path.is_file() else weight_files(path, allow_pickle)
                        if path.is_dir() else [])


def config_sha256(ref: str) -> str | None:
    """The sha256 of a local ControlNet folder's config.json (its settings change the image
    as its weights do); None for a file or a Hub id."""
    from hires.images import sha256_once

    config = Path(ref).expanduser() / "config.json"
    return sha256_once(config) if config.is_file() else None


def hub_revision(ref: str) -> str | None:
    """The commit of the Hub ControlNet `ref` the cache holds (what a load read), if known."""
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(ref, "config.json")
    except Exception:  # not a repo id the cache knows: nothing to record
        return None
    return Path(found).parent.name if isinstance(found, str) else None


def hub_problem(ref: str, allow_pickle: bool = False) -> str | None:
    """With HF_HUB_OFFLINE set, why the Hub ControlNet `ref` cannot load: its config or
    weights are not in the local cache (None: they are, or the Hub may be asked)."""
    from huggingface_hub import constants, try_to_load_from_cache

    if not constants.HF_HUB_OFFLINE:
        return None
    names = [f"{WEIGHTS}.safetensors", f"{WEIGHTS}.safetensors.index.json"]
    if allow_pickle:
        names += [f"{WEIGHTS}.bin", f"{WEIGHTS}.bin.index.json"]
    try:
        cached = (isinstance(try_to_load_from_cache(ref, "config.json"), str)
                  and any(isinstance(try_to_load_from_cache(ref, n), str) for n in names))
    except Exception:  # an id the cache cannot hold: loading says what is wrong
        return None
    return None if cached else not_cached(ref)


def single_file_problem(ref: str) -> str | None:
    """With HF_HUB_OFFLINE set, why the single-file ControlNet `ref` cannot load: diffusers
    reads its layout with a Hub ControlNet's config (which one, by its tensors' names), and
    that config is not in the local cache (None: it is, the Hub may be asked, or loading says
    what is wrong)."""
    from diffusers.loaders.single_file_utils import fetch_diffusers_config
    from huggingface_hub import constants, try_to_load_from_cache

    from hires.safetensors_header import read_header

    path = Path(ref).expanduser()
    if not constants.HF_HUB_OFFLINE or path.suffix != ".safetensors":
        return None
    header = read_header(path)
    if header is None:
        return None
    # diffusers picks the config from the checkpoint's names and a few shapes: the header has both.
    tensors = {k: torch.empty(v["shape"], device="meta") for k, v in header.items()
               if k != "__metadata__"}
    try:
        repo = fetch_diffusers_config(tensors)["pretrained_model_name_or_path"]
        cached = isinstance(try_to_load_from_cache(repo, "config.json"), str)
    except Exception:  # a layout diffusers does not know: loading says so
        return None
    if cached:
        return None
    from hires.model_refs import hub_closed

    return (f"could not load {path.name} as a ControlNet: single files are read with the "
            f"config of {repo}, which is not in the local cache, and {hub_closed()} to cache "
            "it, or pass a diffusers folder")


def _mismatch(text: str) -> str | None:
    """The first tensor whose shape in the weights differs from what the config makes, as
    'NAME is AxB in the weights, CxD by its config'."""
    if found := shape_mismatch(text):
        name, got, want = found
        return f"{name} is {shape_text(got)} in its weights, {shape_text(want)} by its config"
    return None


def linearize(controlnet: nn.Module, unet: nn.Module,
              originals: dict[str, nn.Module] | None = None) -> int:
    """Give the ControlNet's self-attention the UNet's LinFusion; returns how many were swapped.

    A ControlNet is a fine-tuned copy of the UNet's encoder, so each of its attn1 layers has a
    twin in the UNet. With softmax attention it would cost O(tokens^2) at 8K-16K (hours a
    stage); instead each gets a copy of its twin's LinearAttention, plus the ControlNet's own
    fine-tuning (its projections minus the UNet's original ones, from `originals`) added to the
    projections, the way a LoRA's delta is. Without `originals` the copies are used as they are.
    """
    import copy

    from hires.linfusion import LinearAttention

    swapped = 0
    for name, module in list(controlnet.named_modules()):
        if not name.endswith("attn1") or isinstance(module, LinearAttention):
            continue
        twin = _submodule(unet, name)
        if not isinstance(twin, LinearAttention):
            continue
        ours = copy.deepcopy(twin)
        original = (originals or {}).get(name)
        if original is not None:
            with torch.no_grad():
                for proj in ("to_q", "to_k", "to_v", "to_out.0"):
                    new, was = ours.get_submodule(proj), original.get_submodule(proj)
                    tuned = module.get_submodule(proj)
                    new.weight.add_((tuned.weight - was.weight.to(tuned.weight)).to(new.weight))
                    if new.bias is not None and tuned.bias is not None:
                        new.bias.add_((tuned.bias - was.bias.to(tuned.bias)).to(new.bias))
        parent, _, child = name.rpartition(".")
        setattr(controlnet.get_submodule(parent), child, ours)
        swapped += 1
    return swapped


def controlnet_like(unet: nn.Module) -> nn.Module:
    """A ControlNet for `unet` on the meta device (shapes only, for the planner), its attention
    as `linearize` leaves a loaded one."""
    from diffusers import ControlNetModel

    from hires.linfusion import LinearAttention

    dtype = next(unet.parameters()).dtype
    with torch.device("meta"), quiet_loading():
        net = ControlNetModel.from_unet(unet, load_weights_from_unet=False).to(dtype)
        for name, _ in list(net.named_modules()):
            twin = _submodule(unet, name) if name.endswith("attn1") else None
            if isinstance(twin, LinearAttention):
                parent, _, child = name.rpartition(".")
                setattr(net.get_submodule(parent), child, LinearAttention(
                    twin.dim, twin.heads, twin.projection_mid_dim).to(dtype))
    return net.eval()


def _submodule(model: nn.Module, name: str) -> nn.Module | None:
    try:
        return model.get_submodule(name)
    except AttributeError:
        return None


FITS = ("cross_attention_dim", "block_out_channels", "addition_embed_type", "in_channels",
        "projection_class_embeddings_input_dim")


def check_fits(controlnet: nn.Module, unet: nn.Module) -> None:
    """ControlError when `controlnet` was made for another architecture than `unet`."""
    if not all(hasattr(controlnet, a) for a in ("controlnet_down_blocks", "controlnet_mid_block")):
        raise ControlError(f"{type(controlnet).__name__} is not a ControlNet")
    differ = _differences(dict(controlnet.config), dict(unet.config))
    if differ:
        raise ControlError(_another_architecture(differ))


def _differences(mine: dict, theirs: dict) -> list[str]:
    """The FITS settings in which a ControlNet's config differs from its UNet's; one that
    either config.json leaves out (its default) is not compared."""
    differ = []
    for key in (k for k in FITS if k in mine and k in theirs):
        a, b = mine[key], theirs[key]
        if isinstance(a, list | tuple) and isinstance(b, list | tuple):
            a, b = tuple(a), tuple(b)
        if a != b:
            differ.append(f"{key} {a} vs the model's {b}")
    return differ


def _another_architecture(differ: list[str]) -> str:
    return ("the ControlNet is for another model architecture (e.g. SD 1.5 rather than SDXL): "
            f"{'; '.join(differ)}; use an SDXL ControlNet")


def fit_problem(ref: str, model: str) -> str | None:
    """That the local ControlNet `ref` was made for another architecture than `model`'s UNet,
    from both config.json files, or a single file's cross-attention width in its header (no
    weights loaded): for a dry run, and a run before the model loads. None where it may fit (a
    Hub id is checked as it loads)."""
    import json

    from hires.model_refs import config_for_checks

    path = Path(ref).expanduser()
    config = path / "config.json"
    try:
        mine = json.loads(config.read_text()) if config.is_file() else \
            _single_file_config(path) if path.is_file() else None
    except (OSError, ValueError):
        return None  # loading says what is wrong with it
    theirs = config_for_checks(model, "unet") if isinstance(mine, dict) else None
    differ = _differences(mine, theirs) if isinstance(theirs, dict) else []
    return f"{ref}: {_another_architecture(differ)}" if differ else None


def _single_file_config(file: Path) -> dict | None:
    """The cross-attention width a single .safetensors ControlNet was made for, as a config:
    its cross-attentions' key projections take that many features, in diffusers' layout and
    the original one alike (SD 1.5's 768, SD 2's 1024, SDXL's 2048)."""
    from hires.safetensors_header import read_header

    header = read_header(file) if file.suffix == ".safetensors" else None
    for name, entry in (header or {}).items():
        shape = entry.get("shape") if isinstance(entry, dict) else None
        if name.endswith("attn2.to_k.weight") and isinstance(shape, list) and len(shape) == 2:
            return {"cross_attention_dim": shape[1]}
    return None


def control_tensor(image: Image.Image, width: int, height: int, device: torch.device | str,
                   dtype: torch.dtype) -> Tensor:
    """The control image as 1 x 3 x height x width in [0, 1], RGB: scaled to cover, then
    centre-cropped (Lanczos), as hires.pipeline.fit fits an input image."""
    import numpy as np

    from hires.images import cover_size

    image = image.convert("RGB")
    size = cover_size(image.size, width, height)
    if size != image.size:
        image = image.resize(size, Image.LANCZOS)
    left, top = (image.width - width) // 2, (image.height - height) // 2
    image = image.crop((left, top, left + width, top + height))
    pixels = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)[None]
    return (pixels.to(device=device, dtype=torch.float32) / 255).to(dtype)


# ---------------------------------------------------------------------------------------------
# One call: the ControlNet's residuals, then the UNet with them added to its skips


@dataclass
class Residuals:
    """A ControlNet's outputs for one call, times its scale: one per UNet skip (conv_in's
    first, as the UNet orders them), and the mid block's. Entries are dropped as used."""

    down: list[Tensor | None]
    mid: Tensor | None


def control_residuals(controlnet: nn.Module, x: Tensor, timestep: Tensor, embeds: Tensor,
                      added: dict[str, Tensor], image: Tensor, scale: float) -> Residuals:
    """Run `controlnet` on `x` (the UNet's input) and the control image; its scaled outputs.

    A zero conv whose input came from the host (its skip parked there, hires.strategy) sends
    its output back there too: a residual waits where its skip waited.
    """
    down: list[Tensor | None] = []
    mid: list[Tensor] = []
    from_host: dict[nn.Module, bool] = {}
    pool = controlnet.config.get("global_pool_conditions", False)

    def note(module, args):
        from_host[module] = args[0].device != module.weight.device

    def record(module, args, out):
        res = out.mul_(scale)  # diffusers: zero conv output * conditioning_scale
        if pool:
            res = res.mean(dim=(2, 3), keepdim=True)
        if module is controlnet.controlnet_mid_block:
            mid.append(res)
        elif from_host[module]:
            down.append(strategy_module.park(res))
        else:
            skip = args[0]
            # The skip this conv read is not read again: keep the residual in its place.
            if skip.shape == res.shape and skip.dtype == res.dtype:
                res = skip.copy_(res)
            down.append(res)
        # What diffusers goes on to scale (and return) is a stand-in: the values are ours.
        return out.new_zeros((1, 1, 1, 1))

    convs = [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block]
    handles = [h for c in convs for h in (c.register_forward_pre_hook(note, prepend=True),
                                          c.register_forward_hook(record, prepend=True))]
    n = x.shape[0]
    try:
        controlnet(x, timestep, encoder_hidden_states=embeds,
                   controlnet_cond=image.expand(n, -1, -1, -1), conditioning_scale=1.0,
                   added_cond_kwargs=added, return_dict=False)
    finally:
        for h in handles:
            h.remove()
    return Residuals(down, mid[0])


@contextmanager
def residuals_added(unet: nn.Module, residuals: Residuals | None) -> Iterator[None]:
    """The UNet adds `residuals` to its skips as each down block returns them (conv_in's
    once down block 0 has read it) and to its mid block's output; each is freed once used."""
    if residuals is None:
        yield
        return
    down = residuals.down
    taken = [0]
    first: list[Tensor] = []  # conv_in's output as the UNet keeps it (parked or not)

    def conv_in_out(module, args, output):
        first.append(output)

    def take() -> Tensor:
        i = taken[0]
        res, down[i] = down[i], None
        taken[0] += 1
        return res

    def add(skip: Tensor, res: Tensor) -> Tensor:
        return skip.add_(res.to(skip.device, non_blocking=True))

    def after_down(module, args, kwargs, output):
        hidden, skips = output
        if module is unet.down_blocks[0]:  # conv_in's output, which this block has read
            read, kept, res = args[0] if args else kwargs["hidden_states"], first.pop(), take()
            if kept is read:
                add(kept, res)
            elif not read.is_meta:  # parked: add where the block's input is, then copy over
                kept.copy_(add(read, res), non_blocking=True)
            del res  # (on the simulated GPU, hires.memsim, a parked copy holds no values)
        # The block's last output is also the next block's input: that one is added anew.
        summed = tuple(s + take().to(s.device) if s is hidden else add(s, take())
                       for s in skips)
        return hidden, summed

    def after_mid(module, args, kwargs, output):
        res, residuals.mid = residuals.mid, None
        return output + res

    # Prepended: the residuals are added before hires.strategy.parked_skips parks the skips.
    handles = [b.register_forward_hook(after_down, prepend=True, with_kwargs=True)
               for b in unet.down_blocks]
    handles.append(unet.mid_block.register_forward_hook(after_mid, prepend=True,
                                                        with_kwargs=True))
    # Appended: it sees what conv_in's other hooks made of the output (parked_skips parks it).
    handles.append(unet.conv_in.register_forward_hook(conv_in_out))
    try:
        yield
    finally:
        for h in handles:
            h.remove()

