"""Model, VAE and LinFusion references checked before anything loads: local paths, single files'
headers, folders' components, the Hub cache."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

from hires.errors import first_line
from hires.job import DEFAULT_MODEL

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")


class ModelError(RuntimeError):
    """A model, add-on or LinFusion checkpoint could not be loaded; the message is one line.
    An add-on's Hub files that are not cached while the Hub is unreachable come out as this
    (exit 1, as for the model), not as the add-on's own usage error."""

    def __init__(self, message: str, usage: bool = False):
        super().__init__(message)
        self.usage = usage  # the options asked for what cannot be (exit 2), not a load failure


def model_kind(ref: str) -> str:
    """'tiny', 'folder', 'file' or 'hub', from the reference's form alone."""
    if ref == "tiny":
        return "tiny"
    path = Path(ref).expanduser()
    if path.is_dir():
        return "folder"
    if path.is_file() or path.suffix in (".safetensors", *PICKLE_SUFFIXES):
        return "file"
    if ref.startswith((".", "/", "~")) or os.sep in ref.strip("/").replace("/", "", 1):
        return "file"
    return "hub"


def check_given_paths(refs: dict[str, object]) -> None:
    """A library caller's model, vae or linfusion given as a path object (Path('models/x'))
    names a local file or folder: one that is not there is said so (a usage error), where its
    text was taken for a Hub id and said to be not in the cache."""
    for name, ref in refs.items():
        if isinstance(ref, os.PathLike) and not Path(ref).expanduser().exists():
            what = ("a LinFusion checkpoint folder, a Hugging Face Hub id as text "
                    "('owner/name'), or 'none'" if name == "linfusion" else
                    "a .safetensors file, a diffusers folder, or a Hugging Face Hub id as text "
                    "('owner/name')")
            raise ModelError(f"{name}={os.fspath(ref)!r}: no such file or folder; give {what}",
                             usage=True)


def check_paths(model: str, vae: str | None, linfusion: str, allow_pickle: bool = False) -> None:
    """Before any loading: a model, VAE or LinFusion checkpoint named by a path that is not
    there or cannot be used (a single file that is no safetensors or no SDXL checkpoint, a
    diffusers folder missing a component, a LinFusion folder without its config or with
    unreadable weights) is a usage error (else the VAE's and LinFusion's show only after the
    model loads), and so is a pickle file, or a folder of pickle weights, without
    `allow_pickle` (else a dry run plans what cannot run). Hub ids are checked by form only:
    `check_cached` says whether a run here finds them."""
    from hires import linfusion as lf

    for what, ref in (("--model", model), ("--vae", vae)):
        kind = model_kind(ref) if ref else None
        if kind == "hub" and (refusal := hub_id_refusal(what, ref)):
            raise ModelError(refusal, usage=True)
        if kind == "folder":
            _check_folder(what, ref, allow_pickle)
        if kind != "file":
            continue
        path = Path(ref).expanduser()
        if not path.exists():
            raise ModelError(f"{what} {ref}: no such file; give a .safetensors file, a diffusers "
                             "folder or a Hugging Face Hub id (owner/name)", usage=True)
        # what the file is first: junk is not "a pickle checkpoint" to allow
        refusal = single_file_refusal(path, what == "--vae") or weights_refusal(
            path, {"--vae": "a VAE"}.get(what, "an SDXL model"), allow_pickle)
        if refusal:
            raise ModelError(f"{what} {refusal}", usage=True)
    check_vae_fits(model, vae)
    check_linfusion(model, linfusion)
    kind = model_kind(model)
    by_id = kind == "hub" and model.lower() in {k.lower() for k in lf.DEFAULT_CHECKPOINTS}
    if linfusion == "auto" and kind in ("folder", "hub") and not by_id \
            and not carried_linfusion(model):
        # Else said once the model had loaded; a config it cannot count is the loader's to say
        # (a Hub id's, from the local cache: one not there is the load's to fetch)
        config = model_config(model, "unet/config.json")
        if config is not None and lf.attn1_count(config) is not None \
                and lf.checkpoint_for_config(config) is None:
            raise no_linfusion_known(model)


def carried_linfusion(model: str) -> str | None:
    """The LinFusion checkpoint a local model folder carries (FOLDER/linfusion, with its
    config), which `--linfusion auto` uses; None: none there."""
    from hires import linfusion as lf

    carried = Path(model).expanduser() / "linfusion"
    return str(carried) if (model_kind(model) == "folder"
                            and (carried / lf.CONFIG_NAME).is_file()) else None


def auto_linfusion(model: str) -> str | None:
    """What --linfusion auto mounts on a local model, known from its files before it loads:
    its folder's own linfusion/, else the checkpoint for its UNet's architecture (a single
    file is an SDXL checkpoint); None where none is known."""
    from hires import linfusion as lf

    kind = model_kind(model)
    if kind == "file":
        return lf.DEFAULT_CHECKPOINTS[DEFAULT_MODEL]
    if kind != "folder":
        return None
    if carried := carried_linfusion(model):
        return carried
    config = model_config(model, "unet/config.json")
    return lf.checkpoint_for_config(config) if config is not None else None


def config_for_checks(model: str, part: str) -> dict | None:
    """The config.json of the model's `part` ('unet', 'vae', 'text_encoder' or
    'text_encoder_2') that its add-ons are checked against before it loads: a folder's or the
    cache's, SDXL base's for a single file (read with those), the builtin tiny model's own;
    None where there is none."""
    kind = model_kind(model)
    text = part.startswith("text_encoder")
    if kind == "tiny":
        from hires import tiny

        if text:
            return tiny.tiny_text_config().to_dict()
        return dict((tiny.tiny_unet() if part == "unet" else tiny.tiny_vae()).config)
    if kind == "file":
        return _sdxl_config(part)
    found = model_config(model, f"{part}/config.json")
    from hires.job import DEFAULT_MODEL

    if found is None and model == DEFAULT_MODEL:  # not cached yet: its configs are known
        return _sdxl_config(part)
    return found


def _sdxl_config(part: str) -> dict:
    """SDXL base's config of `part`, as hires.sdxl holds it."""
    from hires import sdxl

    if part.startswith("text_encoder"):
        return dict(sdxl.SDXL_TEXT_CONFIGS[part == "text_encoder_2"])
    return dict(sdxl.SDXL_UNET_CONFIG if part == "unet" else sdxl.SDXL_VAE_CONFIG)


def model_config(model: str, name: str) -> dict | None:
    """The JSON file `name` (as 'unet/config.json') of a model's local folder, or of a Hub
    id's snapshot in the local cache (never downloaded); None where there is none, or it does
    not read as a JSON object."""
    import json

    kind = model_kind(model)
    if kind == "folder":
        found = Path(model).expanduser() / name
    elif kind == "hub":
        from huggingface_hub import try_to_load_from_cache

        try:
            cached = try_to_load_from_cache(model, name)
        except ValueError:  # not a valid repository id
            return None
        found = Path(cached) if isinstance(cached, str) else None
    else:
        return None
    try:
        config = json.loads(found.read_text(encoding="utf-8")) if found else None
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return config if isinstance(config, dict) else None


def no_linfusion_known(model: str) -> ModelError:
    """--linfusion auto on a model whose architecture no LinFusion checkpoint is known for."""
    return ModelError(f"no LinFusion checkpoint is known for '{model}'; pass --linfusion PATH or "
                      "HUB_ID, or --linfusion none for the original (quadratic) attention",
                      usage=True)


def hub_offline() -> bool:
    """Whether huggingface_hub is in offline mode now (HF_HUB_OFFLINE, or switched on by
    `go_offline_if_unreachable`): a Hub id must then be in the local cache. The variable is
    read now too: huggingface_hub reads it once, at import."""
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE", "").strip().upper()
    return env in ("1", "ON", "YES", "TRUE") or bool(constants.is_offline_mode())


def hub_cached(repo: str, *files: str) -> bool:
    """Whether one of `files` of the Hub repository `repo` is in the local cache (no network)."""
    from huggingface_hub import try_to_load_from_cache

    for name in files:
        try:
            if isinstance(try_to_load_from_cache(repo, name), str):
                return True
        except ValueError:  # not a valid repository id: nothing of it is cached
            return False
    return False


# What a Hub id's repository must have in the cache, by flag: the file that is read first.
_HUB_CONFIGS = {"--model": ("model_index.json",), "--vae": ("config.json", "vae/config.json"),
                "--linfusion": ("config.json",)}


def not_cached(flag: str, ref: str, auto: bool = False) -> str | None:
    """Why the Hub id `ref` given as `flag` cannot be loaded here (None: it can, or the Hub
    may be asked): offline, and its config is not in the local cache. `auto`: the LinFusion
    checkpoint --linfusion auto picks for the model."""
    if not hub_offline():
        return None
    closed = hub_closed()
    if hub_cached(ref, *_HUB_CONFIGS[flag]):
        if flag != "--linfusion":
            return None
        from hires.linfusion import WEIGHTS_NAME, half_cached

        # its weights, 0.9 GB, are what a download cut short lacks
        return None if hub_cached(ref, WEIGHTS_NAME) else half_cached(ref, closed)
    if flag == "--model":
        return (f"model '{ref}' is not in the local cache and {closed} to download it, or pass "
                "a local folder or .safetensors file with --model (or --model tiny to try hires "
                "offline)")
    if flag == "--vae":
        return (f"VAE '{ref}' is not in the local cache and {closed} to download it, or pass a "
                "local folder or .safetensors file with --vae")
    picked = " (what --linfusion auto takes for this model)" if auto else ""
    return (f"LinFusion checkpoint {ref}{picked} is not in the local Hugging Face cache and "
            f"{closed} to download it, pass a local folder (--linfusion PATH), or run without it "
            "(--linfusion none)")


def check_cached(model: str, vae: str | None, linfusion: str, known: bool = True) -> None:
    """When the Hub is offline, each Hub id the job loads (its model, VAE, LinFusion checkpoint)
    must be in the local cache: ModelError (exit 1, as the load's own) naming the first that is
    not. `known`: check hires' defaults too (the default model and the LinFusion checkpoint
    --linfusion auto takes by the model's id); a dry run leaves them out, as the planner knows
    their shapes and the run says in seconds, before anything loads, that they are missing."""
    from hires import linfusion as lf

    if not hub_offline():
        return
    refs = [("--model", model, False), ("--vae", vae, False)]
    if linfusion not in ("auto", "none"):
        refs.append(("--linfusion", linfusion, False))
    elif linfusion == "auto" and known and model_kind(model) == "hub":
        picked = {k.lower(): v for k, v in lf.DEFAULT_CHECKPOINTS.items()}.get(model.lower())
        if picked is None:  # a fine-tune's: by its UNet's architecture, as its load picks it
            config = model_config(model, "unet/config.json")
            picked = lf.checkpoint_for_config(config) if config is not None else None
        refs.append(("--linfusion", picked, True))
    elif linfusion == "auto" and known:  # a local model's pick, found before it loads
        refs.append(("--linfusion", auto_linfusion(model), True))
    if known and model_kind(model) == "file" and not hub_cached(DEFAULT_MODEL,
                                                                 "model_index.json"):
        raise ModelError(single_file_uncached(Path(model).name))
    for flag, ref, auto in refs:
        if not ref or model_kind(ref) != "hub" or (not known and ref == DEFAULT_MODEL):
            continue
        if flag == "--linfusion" and Path(ref).expanduser().exists():
            continue  # a local folder that looks like owner/name
        why = not_cached(flag, ref, auto)
        if why:
            raise ModelError(why)


def defaults_uncached(model: str, linfusion: str) -> list[str]:
    """What a dry run leaves to the run (`check_cached`'s `known`): hires' default model, the
    LinFusion checkpoint --linfusion auto takes, or a single file's configs, not in the local
    cache while the Hub is off; a line to warn of (the plan knows their shapes)."""
    try:
        check_cached(model, None, linfusion)
    except ModelError as e:
        return [str(e)]
    return []


def check_model_file(ref: str, allow_pickle: bool) -> None:
    """A single-file model's own refusals: not there, not an SDXL checkpoint in safetensors, or
    a pickle without `allow_pickle`."""
    path = Path(ref).expanduser()
    if not path.is_file():
        raise ModelError(f"model file not found: {ref}", usage=True)
    refusal = single_file_refusal(path) or weights_refusal(path, "an SDXL model", allow_pickle)
    if refusal:
        raise ModelError(refusal, usage=True)


def single_file_uncached(name: str) -> str:
    """Why a single-file checkpoint cannot load here: diffusers reads its layout with SDXL
    base's configs, from the Hub."""
    return (f"could not load {name} as an SDXL checkpoint: single files are read with SDXL "
            f"base's configs ({DEFAULT_MODEL}), which are not in the local cache, and "
            f"{hub_closed()} to cache them")


def check_before_loading(model: str, vae: str | None, linfusion: str,
                         allow_pickle: bool = False) -> None:
    """What `load` checks before the model's weights: the Hub ids it needs are cached (when
    offline), and the VAE and LinFusion checkpoint it names can be read, so that a bad --vae or
    --linfusion fails in seconds, not after the model loaded (minutes for SDXL)."""

    if model_kind(model) == "file":  # before the configs it is read with
        check_model_file(model, allow_pickle)
    check_cached(model, vae, linfusion)
    if vae is not None:
        check_vae_ref(vae, allow_pickle)
        check_vae_fits(model, vae)
    check_linfusion(model, linfusion)


def check_linfusion(model: str, linfusion: str) -> None:
    """The LinFusion checkpoint `linfusion` names for `model` (its folder's own for 'auto') can
    be read and fits the model's UNet, as their config.json files say: a checkpoint for
    another base failed after the model loaded, or left some attention quadratic."""
    from hires import linfusion as lf

    named = carried_linfusion(model) if linfusion == "auto" else linfusion
    if named in (None, "none"):
        return
    try:
        lf.check_ref(named)
    except lf.LinFusionError as e:  # a file to fix, as check_paths says it
        raise ModelError(str(e), usage=True) from None
    folder = Path(named).expanduser()
    # A folder's own (auto) was made with it: a mismatch there is its UNet's config at fault,
    # which the checks of its weights say.
    config = config_for_checks(model, "unet") if named == linfusion else None
    if not folder.is_dir() or config is None:
        return
    why = lf.config_mismatch(lf.read_config(folder / lf.CONFIG_NAME), config)
    if why:
        raise ModelError(f"LinFusion checkpoint {named} does not fit {model}: {why}",
                         usage=True)


def check_vae_ref(ref: str, allow_pickle: bool) -> None:
    """`load_vae`'s refusals of a VAE reference that need no weights, said before any loading."""
    kind = model_kind(ref)
    path = Path(ref).expanduser()
    if kind == "file":
        if not path.is_file():
            raise ModelError(f"VAE file not found: {path}", usage=True)
        refusal = single_file_refusal(path, True) or weights_refusal(path, "a VAE", allow_pickle)
        if refusal:
            raise ModelError(refusal, usage=True)
    elif kind == "folder":
        refusal = _vae_folder_refusal(path, allow_pickle)
        if refusal:
            raise ModelError(f"{ref} {refusal}", usage="pickle" in refusal)


# The keys a single-file SDXL checkpoint (the original layout diffusers' from_single_file
# reads) has: the UNet's and the two text encoders'.
SDXL_FILE_PREFIXES = ("model.diffusion_model.", "conditioner.")


def single_file_refusal(path: Path, vae: bool = False) -> str | None:
    """Why the single file at `path` is not an SDXL checkpoint (`vae`: a VAE's weights), from
    its tensor names alone (None: it may be): a .safetensors header's, a torch.save file's
    where they can be read without running its code (`_pickle_keys`); a pickle's first bytes
    are checked to be torch.save's (a zip, or a pickle), so a dry run refuses junk."""
    from hires.safetensors_header import read_header, truncated

    name = path.name
    if path.suffix in PICKLE_SUFFIXES:
        return _pickle_file_refusal(path) or _keys_refusal(name, _pickle_keys(path), vae)
    if path.suffix != ".safetensors":
        return None
    header = read_header(path)
    if header is None and (cut := truncated(path)):
        return f"{name} is {cut}"
    if header is None:
        return (f"{name} is not a valid safetensors file (truncated, or not safetensors at "
                "all?); re-download or re-save it")
    return _keys_refusal(name, [k for k in header if k != "__metadata__"], vae)


def _keys_refusal(name: str, keys: list[str] | None, vae: bool) -> str | None:
    """Why a single file with these tensor names is not an SDXL checkpoint (`vae`: a VAE's
    weights); None: it may be, or its names are not known (None)."""
    if keys is None:
        return None
    lora = any("lora" in k.lower() for k in keys)
    if vae:
        if lora or not any(k.startswith("decoder.") or ".decoder." in k for k in keys):
            return (f"{name} is not a VAE's weights (no decoder.* tensors); give a VAE's "
                    ".safetensors file, its diffusers folder or a Hub id")
        return None
    unet, text = (any(k.startswith(p) for k in keys) for p in SDXL_FILE_PREFIXES)
    # The refiner's file has OpenCLIP-G alone, as its first embedder; base has CLIP-L first
    refiner = any(k.startswith("conditioner.embedders.0.model.") for k in keys) and not any(
        k.startswith("conditioner.embedders.1.") for k in keys)
    if unet and text and refiner:
        return (f"{name} is an SDXL refiner (the second text encoder alone), which refines a "
                "base model's images and cannot make one; give an SDXL base model's (or a "
                "fine-tune's) .safetensors file, folder or Hub id")
    if unet and text and "v_pred" in keys:  # the marker v-prediction SDXL files carry
        return f"{name} {V_PREDICTION}"
    if unet and text:
        return None
    if unet and any(k.startswith("cond_stage_model.") for k in keys):
        guess = "an SD 1.x/2.x checkpoint"
    elif lora:
        guess = "a LoRA? give it with --lora"
    elif any(k.startswith(("controlnet_cond_embedding.", "control_model.")) for k in keys):
        guess = "a ControlNet? give it with --control-model"
    elif any(k.startswith(("down_blocks.", "input_blocks.", "model.diffusion_model."))
             for k in keys):
        guess = "a UNet alone?"
    elif any(k.startswith(("decoder.", "encoder.")) for k in keys):
        guess = "a VAE? give it with --vae"
    else:
        guess = "a UNet-only or LoRA file?"
    return (f"{name} is not an SDXL checkpoint ({guess}): it has no model.diffusion_model.* "
            "and conditioner.* weights; give a whole SDXL .safetensors checkpoint, a diffusers "
            "folder or a Hub id")


V_PREDICTION = ("is a v-prediction model, which hires does not run (its sampler reads the "
                "UNet's output as noise, as SDXL base and most fine-tunes make it: a "
                "v-prediction model's images would come out wrong); give an epsilon-prediction "
                "SDXL model")


def prediction_refusal(scheduler_config: dict | None) -> str | None:
    """`V_PREDICTION` where a scheduler config says the model predicts anything but the noise
    (v_prediction, sample); None where it predicts noise, or says nothing."""
    kind = (scheduler_config or {}).get("prediction_type")
    return V_PREDICTION if kind not in (None, "epsilon") else None


def hub_id_refusal(flag: str, ref: str) -> str | None:
    """Why `ref`, which is no local path, is not taken as a Hub id (None: it is). A bare name is
    a mistyped local folder far more often than one of the Hub's old ids without an owner."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(ref)
    except HFValidationError:
        return (f"{flag} {ref}: no such file or folder here, and not a Hugging Face Hub id "
                "(owner/name); check the spelling")
    if "/" not in ref:
        return (f"{flag} {ref}: no such file or folder here (check the spelling), and a "
                "Hugging Face Hub id is owner/name")
    return None


# The file diffusers reads first in each kind of component folder (any one of them will do).
_COMPONENT_CONFIGS = {"scheduler": ("scheduler_config.json",),
                      "tokenizer": ("tokenizer_config.json", "vocab.json", "tokenizer.json"),
                      "feature_extractor": ("preprocessor_config.json",)}


def _component_config(name: str) -> tuple[str, ...]:
    return _COMPONENT_CONFIGS.get(name.rstrip("_0123456789"), ("config.json",))


def fp16_only(folder: Path) -> bool:
    """Whether a diffusers folder (a component's, or a whole pipeline's: any of its components')
    holds its weights in the fp16 variant only (`*.fp16.safetensors`, or sharded
    `*.fp16-00001-of-00002.safetensors`: what a download of that variant alone leaves, at half
    the disk); diffusers then reads them with variant="fp16"."""
    index = folder / "model_index.json"
    if index.is_file():
        return any(fp16_only(sub) for sub in folder.iterdir() if sub.is_dir())
    weights = [p.name for p in folder.glob("*") if p.name.endswith((".safetensors", ".bin"))]
    return bool(weights) and all(".fp16." in name or ".fp16-" in name for name in weights)


def _has_weights(folder: Path) -> bool:
    return any(folder.glob("*.safetensors")) or any(folder.glob("*.bin"))


# What tells an SDXL pipeline's model_index.json from SD 1.5's or 2's (one text encoder), a
# refiner's (the second alone) or a transformer model's (no UNet)
SDXL_PARTS = ("unet", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2")


def pipeline_folder_refusal(path: Path, allow_pickle: bool = True) -> str | None:
    """Why the diffusers folder at `path` cannot be loaded as a pipeline, from its files alone
    (None: it may be): no or unreadable model_index.json, a component it lists whose
    subfolder or config is missing, weights missing, unreadable, or pickle only without
    `allow_pickle`. The message starts after the folder's name."""
    import json

    index = path / "model_index.json"
    if not index.is_file():
        held = folder_holds(path)
        if held is not None:  # a part's folder ('tiny/vae'): what it is, and where it goes
            what, flag = held
            model = f" ({path.parent})" if (path.parent / "model_index.json").is_file() else ""
            where = f"pass it as {flag}, and the model's folder{model} as --model" if flag \
                else f"give the model's folder{model}, a .safetensors file or a Hub id"
            return f"is {what}'s folder, not a whole model (no model_index.json); {where}"
        if any((path / sub / "image_encoder" / "config.json").is_file()
               for sub in ("", "sdxl_models")):  # no part of a model: no folder above holds it
            return ("is an IP-Adapter's folder (its image_encoder/), not a whole model (no "
                    "model_index.json); pass it as --ip-adapter, and a model as --model")
        return ("is a folder but not a diffusers model (no model_index.json); give the folder "
                "that holds it, a .safetensors file or a Hub id")
    try:
        listed = json.loads(index.read_text(encoding="utf-8"))
        if not isinstance(listed, dict):
            raise ValueError("not a JSON object")
    except (OSError, UnicodeDecodeError, ValueError) as e:
        return f"has a model_index.json that cannot be read ({first_line(e)})"
    # An SD 1.5 or 2 folder (one text encoder) loaded, then failed with an AttributeError
    lacking = [name for name in SDXL_PARTS
               if not isinstance(listed.get(name), list) or None in listed[name]]
    give = "give an SDXL base model's (or a fine-tune's) folder, .safetensors file or Hub id"
    if lacking == ["text_encoder", "tokenizer"]:
        return (f"is an SDXL refiner (the second text encoder alone), which refines a base "
                f"model's images and cannot make one; {give}")
    if lacking:
        kind = listed.get("_class_name")
        kind = kind if isinstance(kind, str) and kind.isidentifier() else "pipeline"
        lacking = ", ".join(lacking[:-1]) + " and " * (len(lacking) > 1) + lacking[-1]
        return (f"is {_a(kind)} without {lacking}, not an SDXL model (hires runs SDXL and "
                f"its fine-tunes); {give}")
    if not isinstance(listed.get("_class_name"), str):  # diffusers failed with a KeyError
        return ("has a model_index.json without its _class_name; restore it from the model's "
                "source")
    pickled = []
    for name, spec in listed.items():
        if name.startswith("_") or not isinstance(spec, list) or None in spec:
            continue
        sub, wanted = path / name, _component_config(name)
        if not any((sub / f).is_file() for f in wanted):
            missing = f"no {name}/ folder" if not sub.is_dir() else f"no {name}/{wanted[0]}"
            return (f"is missing its {name}: model_index.json lists it, but there is {missing}; "
                    "restore it from the model's source (or give the folder that holds the "
                    "whole model)")
        if wanted != ("config.json",):
            continue  # no weights: a scheduler, a tokenizer
        try:  # diffusers' own words for a broken one say nothing of what to do
            json.loads((sub / "config.json").read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as e:
            return (f"has a {name}/config.json that cannot be read ({first_line(e)}); restore "
                    "it from the model's source")
        if not _has_weights(sub):
            return (f"has no weights for its {name} (no .safetensors file in {name}/); restore "
                    "them from the model's source")
        for file in sorted(sub.glob("*.safetensors")):
            if problem := _unreadable(file, f"{name}/{file.name}"):
                return problem
        if not any(sub.glob("*.safetensors")):
            pickled.append(name)
            for file in sorted(sub.glob("*.bin")) if allow_pickle else []:
                if problem := _cut_short_zip(file, f"{name}/{file.name}"):
                    return problem
    scheduler = model_config(str(path), "scheduler/scheduler_config.json")
    if said := prediction_refusal(scheduler):
        return said
    if pickled and not allow_pickle:
        folders = ", ".join(f"{name}/" for name in pickled)
        return (f"holds pickle (.bin) weights only (in {folders}), which can run code "
                "when loaded; convert them to .safetensors or pass --allow-pickle if you trust "
                "them")
    return None


def _unreadable(file: Path, shown: str) -> str | None:
    """Why a folder's weights `file` (named `shown`) cannot be read; None: its header reads."""
    from hires.safetensors_header import read_header, truncated

    if read_header(file) is not None:
        return None
    return f"has unreadable weights: {shown} is " + (
        truncated(file) or "not a valid safetensors file (truncated?); re-download or re-save it")


def _cut_short_zip(file: Path, shown: str) -> str | None:
    """Why a pickle `file` (torch.save's zip, named `shown`) cannot be read: a zip without the
    directory at its end, a copy cut short. Only the end is read, no pickle."""
    import zipfile

    try:
        with file.open("rb") as f:
            zipped = f.read(2) == b"PK"  # a legacy pickle (0x80 first) has no end to check
        if not zipped or zipfile.is_zipfile(file):
            return None
    except OSError:
        return None
    return (f"has unreadable weights: {shown} is cut short (a zip without its directory); "
            "re-download or re-save it")


def vae_folder(path: Path) -> Path | None:
    """Where a --vae folder keeps its config and weights: itself (a VAE's own folder), or its
    vae/ (a whole pipeline's); None: neither has a config.json."""
    return next((path / sub for sub in ("", "vae") if (path / sub / "config.json").is_file()),
                None)


def _vae_folder_refusal(path: Path, allow_pickle: bool = True) -> str | None:
    """Why the folder at `path` is not a diffusers VAE (its own, or a pipeline's vae/), from
    its files alone; None: it may be."""
    found = vae_folder(path)
    if found is None:
        return ("is a folder but not a diffusers VAE (no config.json, nor vae/config.json); "
                "give a VAE's folder, a .safetensors file or a Hub id")
    # A UNet's or LinFusion's folder passed the dry run and failed after SDXL had loaded
    kind = config_class(found / "config.json")
    if kind is not None and kind != "AutoencoderKL":
        what = "a VAE of another kind" if kind.startswith(("Autoencoder", "ConsistencyDecoder")
                                                           ) else "not a VAE"
        return (f"holds {_a(kind)}, {what}: hires takes an AutoencoderKL (SDXL's kind); give "
                "such a VAE's folder, a .safetensors file or a Hub id")
    for file in sorted(found.glob("*.safetensors")):
        if problem := _unreadable(file, file.name):
            return problem
    if not allow_pickle and any(found.glob("*.bin")) and not any(found.glob("*.safetensors")):
        return ("holds pickle (.bin) weights only, which can run code when loaded; convert them "
                "to .safetensors or pass --allow-pickle if you trust them")
    return None


def vae_mismatch(ref: str, mine: dict, theirs: dict) -> str | None:
    """Why the VAE `ref` of config `mine` cannot stand in for a model's VAE of config `theirs`
    (config.json dicts; AutoencoderKL's defaults where a key is left out): latents of another
    shape, or another latent space, which the scale gives away (an SD 1.x/2.x VAE has SDXL's
    shapes). None when it may."""
    def shape(config: dict) -> tuple[int, int]:
        return (config.get("latent_channels", 4),
                2 ** (len(config.get("block_out_channels", [64])) - 1))

    (channels, down), (want_channels, want_down) = shape(mine), shape(theirs)
    if (channels, down) != (want_channels, want_down):
        return (f"VAE '{ref}' makes {channels}-channel latents at 1/{down} scale and this "
                f"model's VAE {want_channels} at 1/{want_down}: use a VAE made for this model "
                "(an SDXL VAE for SDXL)")
    scale, wanted = mine.get("scaling_factor", 0.18215), theirs.get("scaling_factor", 0.18215)
    if isinstance(scale, int | float) and isinstance(wanted, int | float) and \
            abs(scale - wanted) > 1e-4:
        return (f"VAE '{ref}' scales latents by {scale:g} and this model's VAE by {wanted:g}: "
                f"it is made for another model (an SDXL VAE whose config lacks scaling_factor "
                f"needs \"scaling_factor\": {wanted:g} added)")
    return None


def check_vae_fits(model: str, vae: str | None) -> None:
    """A --vae folder (its own, or a pipeline's vae/) whose config.json does not fit the
    model's VAE config, as the model's folder or the cache has it: said before anything loads
    (it failed after the model loaded)."""
    import json

    if vae is None or model_kind(vae) != "folder":
        return
    found = vae_folder(Path(vae).expanduser())
    theirs = config_for_checks(model, "vae")
    if found is None or theirs is None:
        return
    try:
        mine = json.loads((found / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return  # the folder's own check says so
    if isinstance(mine, dict) and (why := vae_mismatch(vae, mine, theirs)):
        raise ModelError(why, usage=True)


def _a(word: str) -> str:
    return f"{'an' if word[:1] in 'AEIO' else 'a'} {word}"  # a UNet, an Autoencoder


# A diffusers part's config class: what it is, and the flag that takes it (None: no flag)
PART_KINDS = {"AutoencoderKL": ("a VAE", "--vae"),
              "LinFusion": ("a LinFusion checkpoint", "--linfusion"),
              "ControlNetModel": ("a ControlNet", "--control-model"),
              "UNet2DConditionModel": ("a UNet", None)}


def folder_holds(path: Path) -> tuple[str, str | None] | None:
    """What the diffusers folder at `path` is, and the flag that takes it: ('a whole model',
    '--model') for a pipeline's (model_index.json), ('a VAE', '--vae') for a part's by its
    config.json; None for a folder that is neither."""
    if (path / "model_index.json").is_file():
        return "a whole model", "--model"
    kind = config_class(path / "config.json")
    if kind is None:
        return None
    return PART_KINDS.get(kind, (_a(kind), None))


def config_class(config: Path) -> str | None:
    """The `_class_name` a diffusers config.json names, if it can be read (else the loader
    says what is wrong with it)."""
    import json

    try:
        kind = json.loads(config.read_text(encoding="utf-8")).get("_class_name")
    except (OSError, UnicodeDecodeError, ValueError, AttributeError):
        return None
    return kind if isinstance(kind, str) and kind.isidentifier() else None


def _check_folder(what: str, ref: str, allow_pickle: bool = True) -> None:
    """A folder given as a model must hold a diffusers pipeline, every component it lists
    there (a VAE: a diffusers VAE), and safetensors weights unless pickle is allowed."""
    path = Path(ref).expanduser()
    if what == "--model":
        refusal = pipeline_folder_refusal(path, allow_pickle)
    else:
        refusal = _vae_folder_refusal(path, allow_pickle)
    if refusal:
        raise ModelError(f"{what} {ref} {refusal}", usage=True)


def hub_unreachable(e: BaseException | None) -> bool:
    """Whether `e` comes of a file missing from the cache while the Hub could not be reached
    (no network, or HF_HUB_OFFLINE): diffusers words it as a file missing from the repo."""
    from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

    seen = 0
    while e is not None and seen < 10:  # diffusers re-raises hub errors with a vaguer message
        if isinstance(e, LocalEntryNotFoundError | OfflineModeIsEnabled):
            return True
        if "cached files" in str(e):  # transformers' wording, for the image encoder
            return True
        e, seen = e.__cause__ or e.__context__, seen + 1
    return False


def uses_hub(job) -> bool:
    """Whether `job` loads anything from the Hugging Face Hub: its model, VAE, LinFusion (auto
    takes a Hub checkpoint unless the model's folder carries one) or an add-on."""
    from hires.lora import hub_parts, parse_lora

    refs = [job.model, job.vae, job.control_model, job.ip_adapter if job.ip_image else None,
            None if job.linfusion in ("auto", "none") else job.linfusion]
    own = (Path(job.model).expanduser() / "linfusion" / "config.json").is_file()
    return (any(r and model_kind(r) == "hub" for r in refs)
            or (job.linfusion == "auto" and job.model != "tiny" and not own)
            or any(hub_parts(parse_lora(spec)[0]) for spec in job.lora or ()))


_hub_state: dict[str, bool] = {}  # "answered": whether the Hub answered this process's probe


def hub_closed() -> str:
    """Why hires did not download, and what lets it: 'the Hugging Face Hub cannot be reached;
    connect once', or the user's HF_HUB_OFFLINE (to finish: '... to download it')."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE and _hub_state.get("answered") is not False:
        return "HF_HUB_OFFLINE is set; unset it"
    return "the Hugging Face Hub cannot be reached; connect once"


def go_offline_if_unreachable(job, timeout: float = 5.0) -> bool:
    """When `job` loads from the Hub and it does not answer, switch huggingface_hub to offline
    mode for this process: loads then read the local cache at once, where its retries would
    wait about 25 s per file before falling back to it. True on the call that switched."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE or "answered" in _hub_state or not uses_hub(job):
        return False
    from huggingface_hub.utils import get_session

    try:  # any answer, an error status too, means it can be reached
        get_session().head(constants.ENDPOINT, timeout=timeout)
        _hub_state["answered"] = True
        return False
    except Exception:  # no name resolution, no route, refused, timed out (the HTTP library's
        # own errors, which huggingface_hub's versions name differently)
        _hub_state["answered"] = False
    constants.HF_HUB_OFFLINE = True  # read at every request by huggingface_hub and transformers
    os.environ["HF_HUB_OFFLINE"] = "1"  # for readers of the variable (hires.linfusion)
    return True


def _pickle_file_refusal(path: Path) -> str | None:
    """Why `path` is not a PyTorch checkpoint by its first bytes: torch.save writes a zip
    ('PK' first), its legacy format and plain pickles start with the protocol byte 0x80."""
    if not path.is_file():  # a FIFO would wait for a writer; the load says what it is
        return None
    try:
        with path.open("rb") as f:
            start = f.read(4)
    except OSError:
        return None  # the load says why it cannot be read
    if start.startswith((b"PK\x03\x04", b"\x80")):
        return None
    what = "empty" if not start else "not a PyTorch checkpoint (torch.save writes a zip)"
    return f"{path.name} is {what}; re-download or re-save it"


def _pickle_keys(path: Path) -> list[str] | None:
    """The tensor names of a file torch.save wrote (a zip), read without running its code
    (weights_only) or reading its tensors (mmap); None where they cannot be had so: a legacy
    file, or one holding other objects too (Lightning's callbacks), which only the trusted load
    reads."""
    import warnings

    import torch

    if not path.is_file() or not zipfile.is_zipfile(path):  # a FIFO's open would wait
        return None
    try:
        with warnings.catch_warnings():  # torch's about pickles: the load, if any, says them
            warnings.simplefilter("ignore")
            data = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except Exception:  # torch raises many kinds here (unpickling, zip, storage); each: cannot tell
        return None
    for _ in range(8):  # as diffusers unwraps it, nested; a file that holds itself ends
        if not (isinstance(data, dict) and isinstance(data.get("state_dict"), dict)):
            break
        data = data["state_dict"]
    return [str(k) for k in data] if isinstance(data, dict) else None


def weights_refusal(path: Path, what: str, allow_pickle: bool) -> str | None:
    """Why the file at `path` is not taken as `what`'s weights (None: it is): a pickle without
    --allow-pickle, or a suffix no weights have (an image given for a model, say)."""
    if path.suffix == ".safetensors" or path.suffix in PICKLE_SUFFIXES and allow_pickle:
        return None
    if path.suffix in PICKLE_SUFFIXES:
        return (f"{path.name} is a pickle checkpoint, which can run code when loaded; convert it "
                "to .safetensors or pass --allow-pickle if you trust it")
    return (f"{path.name} is not {what}'s weights: give a .safetensors file, a diffusers folder "
            "or a Hugging Face Hub id (owner/name)")


def pickle_refusal(what: str, it: str) -> ModelError:
    """The refusal of pickle weights without --allow-pickle: why, and the ways out."""
    return ModelError(f"{what}, which can run code when loaded; convert {it} to .safetensors or "
                      f"pass --allow-pickle if you trust {it}", usage=True)
