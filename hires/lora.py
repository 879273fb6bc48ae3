"""LoRA adapters on the SDXL pipeline (UNet and both text encoders), loaded through diffusers/peft.

A LoRA is a local .safetensors file, a folder holding one, or a Hugging Face Hub repository (or
a file in one); `--lora REF[:SCALE]` names it. Kohya (lora_unet_..., lora_te1_..., also with
SDXL's SGM block names) and diffusers/peft (unet.<module>.lora_A/lora_B) layouts both load:
diffusers converts them. Before anything is patched, every LoRA is checked against the model,
so a LoRA for another base model fails in one line naming the first module that does not fit.

LinFusion: a LoRA's self-attention (attn1) weights are applied to LinFusion's to_q, to_k, to_v
and to_out.0 projections. LinFusion's projections start from SDXL's own attn1 projections and
keep their roles (v and out act identically in both attentions; q and k still produce the
features the kernel compares), so a low-rank delta trained on them is meaningful; skipping them
would silently drop part of every style LoRA. LinFusion's own residual MLPs (to_q_, to_k_) are
never patched: no LoRA trained on SDXL has weights for them.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import nn

from hires.errors import first_line
from hires.images import sha256_once
from hires.linfusion import LinearAttention
from hires.model_refs import PICKLE_SUFFIXES, ModelError, hub_closed
from hires.models import quiet_loading

ADAPTER_PREFIX = "hires_"
_COMPONENTS = ("unet", "text_encoder", "text_encoder_2")
_HUB_REPO = re.compile(r"[\w][\w.-]*/[\w][\w.-]*")


class LoraError(ValueError):
    """A LoRA cannot be found, read or applied to this model; the message is one line."""


# --- naming a LoRA --------------------------------------------------------------------------------


MAX_SCALE = 10.0  # as --control-scale's and --ip-scale's bounds


def local_problem(ref: str, allow_pickle: bool = False, model: str | None = None) -> str | None:
    """Why a local LoRA file or folder cannot be one, from its names and the file's header
    (None: it may be; `load_loras` checks it again on the loaded model), and with `model`, why
    it does not fit that model's layers (`fit_problem`): for a dry run, which loads nothing,
    and a run, before the model loads."""
    try:
        file = resolve(ref, allow_pickle)
    except LoraError as e:
        return str(e)
    return file_problem(ref, file) or (fit_problem(ref, file, model) if model else None)


def cached_problem(ref: str, allow_pickle: bool = False, model: str | None = None) -> str | None:
    """`local_problem` for the Hub LoRA `ref` where its file is in the local cache (the Hub
    closed, or its file named and cached): the run refused a LoHa only once SDXL had loaded.
    None where nothing is cached to read: `hub_problem` says so, and loading reads the rest."""
    from hires.model_refs import hub_offline

    hub = hub_parts(ref)
    if hub is None:
        return None
    try:
        if hub_offline():
            file = _download(ref, *hub, allow_pickle)  # local files only: nothing is fetched
        else:
            from huggingface_hub import try_to_load_from_cache

            found = try_to_load_from_cache(*hub) if hub[1] else None
            if not isinstance(found, str):
                return None
            file = Path(found)
    except (ModelError, LoraError, ValueError):
        return None
    return file_problem(ref, file) or (fit_problem(ref, file, model) if model else None)


def not_safetensors(file: Path) -> str:
    """What a file that is no safetensors one is instead, and what to do: 'a pickle ...; name
    it .bin and pass --allow-pickle if you trust it', or that it is no LoRA's file."""
    try:
        with file.open("rb") as f:
            start = f.read(4)
    except OSError:
        start = b""
    if start.startswith(b"\x80") or (start.startswith(b"PK\x03\x04") and _saved_by_torch(file)):
        return ("a pickle (torch.save's), not a safetensors file: name it .bin (a run then "
                "needs --allow-pickle, if you trust it: pickles can run code), or convert it")
    if start.startswith(b"PK\x03\x04"):
        return "a zip file, not a safetensors file; unzip it and name the LoRA file inside"
    return "not a readable safetensors file; name the LoRA's .safetensors file"


def _saved_by_torch(file: Path) -> bool:
    """Whether the zip at `file` is torch.save's: its pickle is NAME/data.pkl."""
    import zipfile

    try:
        with zipfile.ZipFile(file) as zipped:
            return any(name.endswith("/data.pkl") for name in zipped.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def file_problem(ref: str, file: Path) -> str | None:
    """Why LoRA `ref`'s weights file cannot be one, from its name and header alone."""
    from hires.safetensors_header import read_header, truncated

    if file.name.lower().endswith(PICKLE_SUFFIXES):
        return None  # a pickle allowed: read only by torch
    header = read_header(file)  # any other name is read as safetensors, as the run reads it
    if header is None:
        if cut := truncated(file):
            return f"LoRA {ref}: {file.name} is {cut}"
        return f"LoRA {ref}: {file.name} is {not_safetensors(file)}"
    from hires.controlnet import control_lora

    if said := control_lora(f"LoRA {ref}", list(header)):
        return said
    keys = [key for key in header if key != "__metadata__"]
    if said := lycoris_problem(ref, keys):
        return said
    # Every LoRA layout diffusers reads names its tensors so (kohya's lora_unet_*, PEFT's
    # lora_A, LyCORIS' LoCon lycoris_*); a checkpoint or a VAE does not.
    if not any(m in key.lower() for key in keys for m in ("lora", "lycoris")):
        return (f"LoRA {ref}: {file.name} holds no LoRA weights (no lora tensors); is it a "
                "LoRA file?")
    return alpha_problem(ref, file, [key for key in keys if key.endswith(".alpha")])


def lycoris_problem(ref: str, keys: Sequence[str]) -> str | None:
    """Why a LyCORIS LoHa or LoKr file (hada_*, lokr_* tensors) cannot load: diffusers reads
    LoRA and LoCon layouts only, and said so as a list of keys it had not renamed."""
    kind = next((k for k, mark in (("LoHa", "hada_"), ("LoKr", "lokr_"))
                 if any(mark in key.lower() for key in keys)), None)
    if kind is None:
        return None
    return (f"LoRA {ref}: a LyCORIS {kind} file, which diffusers cannot load (it reads LoRA "
            "and LoCon files); convert it to a LoRA, or use another")


def alpha_problem(ref: str, file: Path, names: Sequence[str]) -> str | None:
    """Why a kohya file's alphas (`names`, one number a layer) would spoil the image or fail
    the load: one that is not one finite number, read here for a dry run as the run's
    `_folded` and diffusers read them."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(file), framework="pt") as f:
            for name in names:
                if said := alpha_refusal(ref, name.removesuffix(".alpha"), f.get_tensor(name)):
                    return said
    except (SafetensorError, OSError):
        return None  # the run's reading says what is wrong
    return None


def alpha_refusal(ref: str, layer: str, alpha: torch.Tensor) -> str | None:
    """Why `layer`'s alpha cannot be one: not one number (diffusers: "a Tensor with 2
    elements cannot be converted to Scalar"), or not finite (the image would be NaN)."""
    if alpha.numel() != 1:
        return (f"LoRA {ref}: the alpha of {layer} holds {alpha.numel()} numbers, not one; the "
                "file is damaged: re-download or re-save it")
    if not math.isfinite(float(alpha)):
        return (f"LoRA {ref}: the alpha of {layer} is {float(alpha)}, not a finite number; the "
                "file is damaged: re-download or re-save it")
    return None


def parse_lora(spec: str) -> tuple[str, float]:
    """'REF' or 'REF:SCALE' -> (REF, scale); the scale defaults to 1.0.

    Only a trailing ':<number>' is a scale, so Windows paths (C:\\x.safetensors) keep working.
    """
    if spec.strip() and Path(spec).expanduser().exists():  # a file named like "style:v2"
        return spec, 1.0
    ref, colon, tail = spec.rpartition(":")
    # A tail with a path separator, or a one-letter head (a drive), is part of the reference.
    if not colon or any(c in tail for c in "/\\") or (len(ref) == 1 and ref.isalpha()):
        ref, tail = spec, None
    if tail is not None:
        try:
            scale = float(tail)
        except ValueError:
            raise LoraError(f"LoRA '{spec}': the scale after ':' must be a number, not "
                            f"'{tail}'; write REF or REF:SCALE (e.g. style.safetensors:0.8)"
                            ) from None
        if not math.isfinite(scale) or abs(scale) > MAX_SCALE:
            # Far past its training a LoRA only breaks the model: :1e9 made a black image.
            raise LoraError(f"LoRA '{spec}': the scale must be from -{MAX_SCALE:g} to "
                            f"{MAX_SCALE:g} (1: as trained), not {tail}")
    else:
        scale = 1.0
    if not ref.strip():
        raise LoraError(f"LoRA '{spec}': no file, folder or Hub id before the scale; write "
                        "REF or REF:SCALE")
    if ref == "none" and tail is not None:  # else it was looked for as a file named 'none'
        raise LoraError(f"LoRA '{spec}': 'none' drops the LoRAs and takes no scale; write "
                        "none alone")
    return ref, scale


def resolve(ref: str, allow_pickle: bool = False) -> Path:
    """The local weights file of a LoRA reference, downloaded from the Hub when needed.

    A .safetensors file; a folder (its pytorch_lora_weights.safetensors or single .safetensors);
    a Hub id owner/repo (the same choice among its files) or owner/repo/FILE.
    """
    path = Path(ref).expanduser()
    if path.is_dir():
        from hires.model_refs import folder_holds

        held = folder_holds(path)
        if held is not None:  # it holds .safetensors files, in its parts' folders: no LoRA's
            raise LoraError(f"LoRA {ref} is {held[0]}'s folder, not a LoRA; name the LoRA's "
                            ".safetensors file")
        return path / _pick(ref, [p.name for p in path.iterdir() if p.is_file()], allow_pickle)
    if path.is_file():
        _refuse_pickle(ref, path.name, allow_pickle)
        return path
    hub = hub_parts(ref)
    if hub is None:
        raise LoraError(f"LoRA file not found: {ref}")
    return _download(ref, *hub, allow_pickle)


def _refuse_pickle(ref: str, name: str, allow_pickle: bool) -> None:
    if name.lower().endswith(PICKLE_SUFFIXES) and not allow_pickle:
        raise LoraError(f"LoRA {ref}: {name} is a pickle file, which can run code when loaded; "
                        "use a .safetensors LoRA or pass --allow-pickle if you trust it")


def _pick(where: str, names: list[str], allow_pickle: bool) -> str:
    """The LoRA file among a folder's (or repository's) top-level files."""
    for kind in (".safetensors", PICKLE_SUFFIXES):
        found = sorted(n for n in names if n.lower().endswith(kind))
        # What diffusers' trainers write: the LoRA among checkpoints and samples.
        preferred = [n for n in found if n.startswith("pytorch_lora_weights.")]
        found = preferred or found
        if len(found) > 1:
            listed = ", ".join(found[:3]) + (", ..." if len(found) > 3 else "")
            raise LoraError(f"LoRA {where} holds {len(found)} weights files ({listed}); name "
                            f"the one to use, e.g. {where.rstrip('/')}/{found[0]}")
        if found:
            _refuse_pickle(where, found[0], allow_pickle)
            return found[0]
    raise LoraError(f"LoRA {where} holds no .safetensors file; name the LoRA file itself")


def hub_parts(ref: str) -> tuple[str, str | None] | None:
    """(repo id, file or None) when `ref` reads as a Hub reference, else None (a local path:
    one that is here is, whatever its shape, as `resolve` reads it first)."""
    if ref.startswith((".", "/", "~")) or "\\" in ref or re.match(r"[A-Za-z]:", ref) or \
            Path(ref).expanduser().exists():  # loras/sdxl/x.safetensors was asked of the Hub
        return None
    parts = ref.split("/")
    repo = "/".join(parts[:2])
    if len(parts) < 2 or not _HUB_REPO.fullmatch(repo) or not all(parts):
        return None
    if len(parts) == 2:
        # dir/file.safetensors is a missing local file, not a repository named like a file.
        return None if parts[1].lower().endswith((".safetensors", *PICKLE_SUFFIXES)) else (
            repo, None)
    return repo, "/".join(parts[2:])


def hub_problem(ref: str, allow_pickle: bool = False) -> str | None:
    """With the Hub closed (HF_HUB_OFFLINE), why the Hub LoRA `ref` cannot load: the file it
    names, or any it could pick, is not in the local cache (None: it is, or the Hub is open)."""
    from hires.model_refs import hub_offline

    hub = hub_parts(ref)
    if hub is None or not hub_offline():
        return None
    try:
        _download(ref, *hub, allow_pickle)  # local files only: nothing is fetched
    except ModelError as e:
        return str(e)
    except LoraError:
        return None  # not a cache question: loading says what is wrong
    return None


def _download(ref: str, repo: str, filename: str | None, allow_pickle: bool) -> Path:
    """A Hub LoRA's file in the local cache, downloaded once."""
    from huggingface_hub import HfApi, hf_hub_download, snapshot_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
    )

    from hires.model_refs import hub_offline

    offline = hub_offline()
    try:
        if filename is None:
            if offline:  # what the cache holds of the repository is all there is to choose from
                folder = Path(snapshot_download(repo, local_files_only=True))
                names = [p.name for p in folder.iterdir() if p.is_file()]
            else:
                try:
                    # model_info, not list_repo_files: one request, where the latter retries
                    # for about 25 s when the Hub cannot be reached
                    names = [s.rfilename for s in HfApi().model_info(repo).siblings or []
                             if "/" not in s.rfilename]
                except HfHubHTTPError:  # the Hub answered: no such repository, a login, ...
                    raise
                except Exception:  # no answer (the HTTP library's own connection errors, not
                    # huggingface_hub's): what the cache holds decides, as offline
                    folder = Path(snapshot_download(repo, local_files_only=True))
                    names = [p.name for p in folder.iterdir() if p.is_file()]
            filename = _pick(repo, names, allow_pickle)
        else:
            _refuse_pickle(ref, filename, allow_pickle)
        return Path(hf_hub_download(repo, filename, local_files_only=offline))
    except (LocalEntryNotFoundError, OfflineModeIsEnabled):
        raise ModelError(f"LoRA {ref}: no such local file or folder, and not in the local Hugging "
                         f"Face cache while {hub_closed()} to download it, or pass a local "
                         ".safetensors file") from None
    except RepositoryNotFoundError:  # also gated repositories without a login
        raise LoraError(f"LoRA {ref}: no such local file or folder, nor Hugging Face Hub "
                        f"repository {repo} (or it needs a login)") from None
    except EntryNotFoundError:
        raise LoraError(f"LoRA {ref}: the Hub repository {repo} has no file {filename}") from None
    except (HfHubHTTPError, OSError) as e:
        raise LoraError(f"could not download LoRA {ref}: {first_line(e)}") from None


# --- loading --------------------------------------------------------------------------------------


def load_loras(pipe, specs: Sequence[str], allow_pickle: bool = False) -> list[dict]:
    """Apply LoRAs ('REF[:SCALE]'), all checked against the model first, replacing any loaded
    before; one record each (see `_record`)."""
    parsed = [parse_lora(spec) for spec in specs]
    files = [resolve(ref, allow_pickle) for ref, _ in parsed]
    with _quiet():
        sources = [_source(ref, file) for (ref, _), file in zip(parsed, files, strict=True)]
        expected = [_check_fits(pipe, ref, source)
                    for (ref, _), source in zip(parsed, sources, strict=True)]
        unload_loras(pipe)
        names = [f"{ADAPTER_PREFIX}{i}" for i in range(len(specs))]
        which = "the LoRAs"
        try:
            for (ref, _), name, source in zip(parsed, names, sources, strict=True):
                which = f"LoRA {ref}"
                if isinstance(source, dict):
                    pipe.load_lora_weights(dict(source), adapter_name=name)
                else:  # a path: diffusers also reads the adapter settings in the file's header
                    pipe.load_lora_weights(source, adapter_name=name, use_safetensors=True)
            which = "the LoRAs"
            if names:
                pipe.set_adapters(names, adapter_weights=[scale for _, scale in parsed])
        except Exception as e:  # diffusers and peft raise many kinds; leave the model clean
            unload_loras(pipe)
            raise LoraError(f"could not apply {which}: {first_line(e)}") from e
    return [_record(pipe, *args) for args in zip(parsed, files, names, expected, strict=True)]


def _record(pipe, parsed: tuple[str, float], file: Path, adapter: str,
            expected: tuple[int, int]) -> dict:
    """ref, scale, sha256 (of the file), adapter (its peft name), unet_modules and
    text_encoder_modules (layers patched), linfusion_modules (of those, LinFusion attn1 ones)."""
    ref, scale = parsed
    unet, text, linfusion = _patched(pipe, adapter)
    if (unet, text) != expected:  # a layer peft skipped would silently weaken the LoRA
        unload_loras(pipe)
        raise LoraError(f"LoRA {ref}: diffusers patched {unet} UNet and {text} text-encoder "
                        f"layers, but the LoRA has weights for {expected[0]} and {expected[1]}")
    return {"ref": ref, "scale": scale, "sha256": sha256_once(file), "adapter": adapter,
            "unet_modules": unet, "text_encoder_modules": text, "linfusion_modules": linfusion}


def unload_loras(pipe) -> None:
    """Remove every LoRA: the UNet and text encoders get their original layers back, unchanged."""
    if any(getattr(getattr(pipe, c, None), "peft_config", None) for c in _COMPONENTS):
        with _quiet():
            pipe.unload_lora_weights()


@contextmanager
def _quiet() -> Iterator[None]:
    """Loading chatter off meanwhile (hires.models.quiet_loading), and peft's warning that a
    second adapter makes "multiple adapters", which is the point."""
    # transformers also reports every base weight as "MISSING" when peft loads a text
    # encoder's adapter, and shows a progress bar per encoder: quiet_loading covers those.
    with quiet_loading(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Already found a `peft_config`")
        yield


def _source(ref: str, file: Path) -> str | dict[str, torch.Tensor]:
    """What diffusers loads: the path of a safetensors file, or its tensors where its layers'
    alphas differ (`_alphas_folded`); a pickle's tensors read safely."""
    if not file.name.lower().endswith(PICKLE_SUFFIXES):
        from hires.safetensors_header import read_header

        if said := lycoris_problem(ref, list(read_header(file) or ())):
            raise LoraError(said)
        return _alphas_folded(ref, file) or str(file)
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle and zip errors of every kind
        raise LoraError(f"LoRA {ref}: {file.name} is unreadable ({first_line(e)})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor)
                                              for v in state.values()):
        raise LoraError(f"LoRA {ref}: {file.name} holds no plain dict of tensors; it is not a "
                        "LoRA file")
    if said := lycoris_problem(ref, list(state)):
        raise LoraError(said)
    return _folded(ref, state) or state


def _alphas_folded(ref: str, file: Path) -> dict[str, torch.Tensor] | None:
    """A kohya-layout file's tensors with each layer's alpha folded in (`_folded`); None where
    it has no alphas that differ (or cannot be read: diffusers then says why)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(file), framework="pt") as f:
            keys = list(f.keys())
            alphas = [f.get_tensor(key) for key in keys if key.endswith(".alpha")]
            # Most files: one finite alpha on every layer, nothing to fold, and diffusers
            # reads the file itself (not read twice; a LoRA can be hundreds of MB).
            ups = sum(key.endswith(".lora_up.weight") for key in keys)
            if not alphas or (len(alphas) == ups and all(a.numel() == 1 for a in alphas) and
                              len({float(a) for a in alphas}) == 1 and
                              math.isfinite(float(alphas[0]))):
                return None
            state = {key: f.get_tensor(key) for key in keys}
    except (SafetensorError, OSError):
        return None
    return _folded(ref, state)


def _folded(ref: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
    """Kohya-layout tensors whose layers' alphas differ, each layer's `alpha / rank` moved into
    its up weight and every alpha set to 1 (None where they are all alike): diffusers names a
    per-layer alpha by its older module names (`text_model.` that transformers 5's CLIP text
    model lacks, `attn2.processor.to_k` in the UNet), peft matches none, and the layer got the
    common alpha: a layer given alpha 0 still ran at full strength (peft 0.21, diffusers 0.42)."""
    if not any(key.endswith(".alpha") for key in state):
        return None
    layers = [key[:-len(".lora_up.weight")] for key in state if key.endswith(".lora_up.weight")]
    ups = [state[f"{layer}.lora_up.weight"] for layer in layers]
    given = [state.get(f"{layer}.alpha") for layer in layers]
    # A malformed layer (an alpha of many numbers, a 1-D up weight) is left as it is, for the
    # checks and diffusers to refuse in their words.
    if any(up.ndim < 2 for up in ups) or any(a is not None and a.numel() != 1 for a in given):
        return None
    for layer, a in zip(layers, given, strict=True):
        if a is not None and (said := alpha_refusal(ref, layer, a)):
            raise LoraError(said)
    # A layer without an alpha has its rank (kohya's rule: a scale of 1).
    alphas = {layer: float(a) if a is not None else float(up.shape[1])
              for layer, up, a in zip(layers, ups, given, strict=True)}
    if len(set(alphas.values())) < 2:
        return None
    state = dict(state)
    for layer, alpha in alphas.items():
        up = state[f"{layer}.lora_up.weight"]
        # peft scales by lora_alpha / rank: with alpha 1, the up weight carries alpha itself
        folded = (up.float() * alpha).to(up.dtype)
        if not bool(folded.isfinite().all()):  # an fp16 file's 60000 x 100
            raise LoraError(f"LoRA {ref}: the alpha of {layer} ({alpha:g}) makes its weights "
                            f"overflow {str(up.dtype).removeprefix('torch.')}; the file is "
                            "damaged: re-download or re-save it")
        state[f"{layer}.lora_up.weight"] = folded
        state[f"{layer}.alpha"] = torch.tensor(1.0)
    return state


# --- checking a LoRA against the model -----------------------------------------------------------


def _converted(pipe, ref: str, source: str | dict) -> dict[str, torch.Tensor]:
    """The LoRA's tensors as diffusers will load them: unet./text_encoder. keys, kohya converted."""
    from safetensors import SafetensorError

    arg = dict(source) if isinstance(source, dict) else source  # diffusers pops from dicts
    try:
        state, _ = pipe.lora_state_dict(arg, unet_config=pipe.unet.config, use_safetensors=True)
    except SafetensorError as e:
        raise LoraError(f"LoRA {ref} is not a readable safetensors file ({first_line(e)})"
                        ) from None
    except Exception as e:  # diffusers' kohya conversion raises bare ValueErrors and others
        raise LoraError(f"LoRA {ref} is not a LoRA diffusers can read: {first_line(e)}") from None
    if not state:
        raise LoraError(f"LoRA {ref} holds no tensors")
    return state


def _peft_keys(pipe, component: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """One component's tensors under the module names peft will patch (as diffusers maps them)."""
    from diffusers.utils import (
        convert_state_dict_to_diffusers,
        convert_state_dict_to_peft,
        convert_unet_state_dict_to_peft,
    )

    if not state:
        return {}
    if component == "unet":
        return state if "lora_A" in next(iter(state)) else convert_unet_state_dict_to_peft(state)
    state = convert_state_dict_to_peft(convert_state_dict_to_diffusers(state))
    if not hasattr(getattr(pipe, component), "text_model"):  # transformers 5's flat CLIP
        state = {k.removeprefix("text_model."): v for k, v in state.items()}
    return state


def _check_fits(pipe, ref: str, source: str | dict) -> tuple[int, int]:
    """Raise LoraError on the first module the LoRA names that this model lacks or sizes
    differently; returns how many UNet and text-encoder modules it patches."""
    state = _converted(pipe, ref, source)
    parts: dict[str, dict[str, torch.Tensor]] = {c: {} for c in _COMPONENTS}
    for key, tensor in state.items():
        component, _, rest = key.partition(".")
        if component not in parts or "lora" not in key:
            raise LoraError(f"LoRA {ref} is not an SDXL LoRA: its tensor {key} belongs to no "
                            "LoRA layer of the UNet or text encoders")
        parts[component][rest] = tensor
    counts = []
    for component, tensors in parts.items():
        model = getattr(pipe, component)
        where = "" if component == "unet" else f"{component}."
        modules: dict[str, dict[str, torch.Tensor]] = {}
        for key, tensor in _peft_keys(pipe, component, tensors).items():
            module, dot, kind = key.partition(".lora_")
            if not dot:
                raise LoraError(f"LoRA {ref}: tensor {where}{key} is not in a LoRA layout "
                                "diffusers can load")
            modules.setdefault(module, {})[kind] = tensor
        for module, weights in modules.items():
            _check_module(ref, f"{where}{module}", _get(model, module), weights)
        counts.append(len(modules))
    return counts[0], counts[1] + counts[2]


def fit_problem(ref: str, file: Path, model: str) -> str | None:
    """Why LoRA `ref` (at `file`) does not fit `model`, found before the model loads, from its
    configs (its layers built on the meta device, no weights): a LoRA for another base model
    failed only after SDXL had loaded, and a dry run passed it. None where it fits, or where
    the model's configs are not here (a Hub id not cached: the load checks it)."""
    stat = file.stat()
    return _fit_problem(ref, str(file), stat.st_size, stat.st_mtime_ns, model)


@lru_cache(maxsize=16)  # a batch's jobs share their LoRAs: each is read once
def _fit_problem(ref: str, file: str, size: int, mtime_ns: int, model: str) -> str | None:
    skeleton = model_skeleton(model)
    if skeleton is None:
        return None
    try:
        with _quiet():
            _check_fits(skeleton, ref, _source(ref, Path(file)))
    except LoraError as e:
        return str(e)
    return None


@lru_cache(maxsize=4)
def model_skeleton(model: str) -> SimpleNamespace | None:
    """The model's UNet and text encoders on the meta device (shapes, no weights), as much of a
    pipeline as `_check_fits` reads; None where a config is missing or unreadable here."""
    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from hires.model_refs import config_for_checks

    configs = [config_for_checks(model, part) for part in _COMPONENTS]
    if any(config is None for config in configs):
        return None
    unet, text, text_2 = configs
    try:
        with torch.device("meta"), quiet_loading():
            return SimpleNamespace(
                unet=UNet2DConditionModel.from_config(unet),
                text_encoder=CLIPTextModel(CLIPTextConfig.from_dict(text)),
                text_encoder_2=CLIPTextModelWithProjection(CLIPTextConfig.from_dict(text_2)),
                lora_state_dict=StableDiffusionXLPipeline.lora_state_dict)
    except Exception:  # a config these classes cannot build: the load says what is wrong
        return None


def _get(model: nn.Module, name: str) -> nn.Module | None:
    try:
        module = model.get_submodule(name)
    except AttributeError:
        return None
    return getattr(module, "base_layer", module)  # already patched by another adapter


def _check_module(ref: str, name: str, module: nn.Module | None,
                  weights: dict[str, torch.Tensor]) -> None:
    """The layer exists and the LoRA's down (A) and up (B) factors match its in and out sizes."""
    misfit = f"LoRA {ref} does not fit this model: {name}"
    if module is None:
        raise LoraError(f"{misfit} is not a module of this model (a LoRA for another base "
                        "model?)")
    if isinstance(module, nn.Linear):
        sizes = module.in_features, module.out_features
    elif isinstance(module, nn.Conv2d):
        sizes = module.in_channels, module.out_channels
    else:
        raise LoraError(f"{misfit} is a {type(module).__name__}, not a Linear or Conv2d layer "
                        "(a LoRA for another base model?)")
    down, up = weights.get("A.weight"), weights.get("B.weight")
    if down is None or up is None or down.ndim < 2 or up.ndim < 2 or down.shape[0] != up.shape[1]:
        raise LoraError(f"LoRA {ref}: the layer for {name} is incomplete or malformed (its down "
                        "and up weights do not pair up)")
    if (down.shape[1], up.shape[0]) != sizes:
        raise LoraError(f"{misfit} is {sizes[0]} -> {sizes[1]} but the LoRA has "
                        f"{down.shape[1]} -> {up.shape[0]} (a LoRA for another base model?)")


def _patched(pipe, adapter: str) -> tuple[int, int, int]:
    """Layers carrying `adapter`: in the UNet, in the text encoders, and LinFusion's attn1 ones."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    def carrying(model: nn.Module) -> list[str]:
        return [name for name, m in model.named_modules() if isinstance(m, BaseTunerLayer)
                and any(adapter in getattr(m, attr, {}) for attr in m.adapter_layer_names)]

    unet = carrying(pipe.unet)
    linfusion = {f"{name}.{proj}" for name, m in pipe.unet.named_modules()
                 if isinstance(m, LinearAttention) for proj in ("to_q", "to_k", "to_v", "to_out.0")}
    text = carrying(pipe.text_encoder) + carrying(pipe.text_encoder_2)
    return len(unet), len(text), sum(name in linfusion for name in unet)
