"""Resolving a model reference (Hub id, local folder, single file, `tiny`) into components."""

from __future__ import annotations

import logging
import os
import re
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from hires.errors import first_line, reworded
from hires.job import DEFAULT_MODEL
from hires.model_refs import (  # ModelError: also hires.models.ModelError, as README documents
    ModelError,
    check_before_loading,
    check_given_paths,
    check_model_file,
    check_vae_ref,
    fp16_only,
    go_offline_if_unreachable,
    hub_closed,
    hub_unreachable,
    model_kind,
    no_linfusion_known,
    pickle_refusal,
    pipeline_folder_refusal,
    prediction_refusal,
    single_file_uncached,
    vae_mismatch,
)

FP16_VAE = "madebyollin/sdxl-vae-fp16-fix"  # the SDXL VAE fine-tuned not to overflow in fp16


# ModelError's messages speak of the CLI's flags; a library call (`hires.load`, `generate` or
# `upscale`) names its keywords instead, as hires.output's `_LIBRARY_TERMS` do for its errors.
# "--model tiny" is "model=tiny", "--allow-pickle" "allow_pickle=True".
_LIBRARY_TERMS = ((re.compile(r"--allow-pickle\b"), "allow_pickle=True"),
                  (re.compile(r"--([a-z][a-z0-9-]*)(?: (?!(?:or|and|if|to|for|with)\b)"
                              r"(?=[\w.~/'\"-]))?"),
                   lambda m: m.group(1).replace("-", "_") + "="))


def in_library_terms(error: Exception) -> Exception:
    """`error` (of its own kind, usage kept) with the CLI's flags named as the keywords."""
    message = str(error)
    for pattern, words in _LIBRARY_TERMS:
        message = pattern.sub(words, message)
    return reworded(error, message)


@dataclass
class Components:
    """A loaded SDXL (as a diffusers pipeline, used for its parts) and how it was loaded."""

    pipe: object  # diffusers StableDiffusionXLPipeline
    model: str
    linfusion: str | None  # what is mounted; None when running the original attention
    device: torch.device
    dtype: torch.dtype
    vae_dtype: torch.dtype
    offload: str = "none"  # none | model | sequential: where the weights wait between phases
    warnings: list[str] = field(default_factory=list)
    controlnets: dict[str, Any] = field(default_factory=dict)  # loaded ControlNets, by reference
    # The UNet's original attn1 modules (on the CPU) that LinFusion replaced, by name.
    attention_originals: dict[str, Any] = field(default_factory=dict)
    vae_ref: str | None = None  # the VAE loaded instead of the model's, as named; None: its own
    # Held for a job's run (hires.addons.attached): add-ons and hooks go on the shared model,
    # so a second thread's job waits; `running_in` is the thread that holds it (a job started
    # from its own callback is refused: it would change the running job's model).
    lock: Any = field(default_factory=threading.Lock, repr=False, compare=False)
    running_in: int | None = field(default=None, repr=False, compare=False)
    # The running job's add-ons as its image's record has them (their files' sha256): a stage
    # image saved as it is decoded records them too, for --from to compare.
    addons_running: dict[str, Any] | None = field(default=None, repr=False, compare=False)

    @property
    def unet(self):
        return self.pipe.unet

    @property
    def vae(self):
        return self.pipe.vae

    @property
    def parts(self) -> tuple[Any, ...]:
        """Every model with weights: UNet, VAE, both text encoders, the loaded ControlNets."""
        pipe = self.pipe
        return (pipe.unet, pipe.vae, pipe.text_encoder, pipe.text_encoder_2,
                *self.controlnets.values())

    @property
    def native(self) -> int:
        """The model's native image size in pixels (1024 for SDXL)."""
        return self.unet.config.sample_size * self.pipe.vae_scale_factor


def _no_fetch_error(record: logging.LogRecord) -> bool:
    """A logging filter: False (dropped) for diffusers' 'An error occurred while trying to
    fetch' line."""
    return not str(record.msg).startswith("An error occurred while trying to fetch")


@contextmanager
def no_fetch_errors() -> Iterator[None]:
    """diffusers logs, as an error, the missing .safetensors of a part it then loads from its
    .bin under --allow-pickle ("An error occurred while trying to fetch ..."): no error at all
    then, and else the load's own error says it in one line. Off meanwhile."""
    fetching = logging.getLogger("diffusers.models.modeling_utils")
    fetching.addFilter(_no_fetch_error)
    try:
        yield
    finally:
        fetching.removeFilter(_no_fetch_error)


@contextmanager
def quiet_loading() -> Iterator[None]:
    """diffusers' and transformers' loading chatter (logs, progress bars) off meanwhile: our
    errors say what matters in one line."""
    from diffusers.utils import logging as dlogging
    from transformers.utils import logging as tlogging

    levels = dlogging.get_verbosity(), tlogging.get_verbosity()
    bars = tlogging.is_progress_bar_enabled(), dlogging.is_progress_bar_enabled()
    dlogging.set_verbosity_error()
    tlogging.set_verbosity_error()
    tlogging.disable_progress_bar()
    dlogging.disable_progress_bar()  # "Loading pipeline components", a folder's
    try:
        with warnings.catch_warnings(), no_fetch_errors():
            # diffusers passes huggingface_hub an argument it deprecated (single-file loads):
            # not the user's to fix.
            warnings.filterwarnings("ignore", message=".*local_dir_use_symlinks")
            # torch on a pickle saved by other means than torch.save: the load's own error
            # (not a model) is what the user needs
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            yield
    finally:
        dlogging.set_verbosity(levels[0])
        tlogging.set_verbosity(levels[1])
        if bars[0]:
            tlogging.enable_progress_bar()
        if bars[1]:
            dlogging.enable_progress_bar()


@contextmanager
def weights_not_found() -> Iterator[list[tuple[str, str, int]]]:
    """What diffusers and transformers log of weights a load did not find in the files: (the
    part's folder name, a missing weight, how many) each. They start those at random and say
    so in a warning (off in hires), so a part saved without some of its tensors ran, its
    output wrong. Their logs are caught here meanwhile; the others go where they went."""
    found: list[tuple[str, str, int]] = []

    class Catch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            text = record.getMessage()
            # transformers: a LOAD REPORT table ("KEY | MISSING"); diffusers: "Some weights of
            # X were not initialized from the model checkpoint at PATH and are newly
            # initialized: ['KEY', ...]"
            keys = re.findall(r"^(\S+)\s*\|\s*MISSING\b", text, re.MULTILINE) or re.findall(
                r"'([^']+)'", text.partition("newly initialized: ")[2])
            at = re.search(r"(?:from:|model checkpoint at) (\S+)", text)
            if keys and at:
                # the first in order: diffusers lists them from a set, in a new order a run
                found.append((Path(at[1]).name, min(keys), len(keys)))
                return
            _, shown, _, handlers = before[record.name.split(".")[0]]
            if record.levelno >= shown:  # what the user's settings show, shown as before
                for handler in handlers:
                    handler.handle(record)

    loggers = [logging.getLogger("transformers"), logging.getLogger("diffusers")]
    before = {lg.name: (lg.level, lg.getEffectiveLevel(), lg.propagate, lg.handlers)
              for lg in loggers}
    for lg in loggers:
        lg.handlers, lg.propagate = [Catch()], False
        lg.setLevel(min(logging.WARNING, lg.getEffectiveLevel()))
    try:
        yield found
    finally:
        for lg in loggers:
            level, _, lg.propagate, lg.handlers = before[lg.name]
            lg.setLevel(level)


def lacking_weights(what: str, lacking: list[tuple[str, str, int]], kind: str) -> str:
    """The refusal of a load that did not find every weight its config makes (`lacking`, from
    `weights_not_found`): `what` lacks them, and how to get them back."""
    _, key, count = lacking[0]
    fix = ("delete it from the Hugging Face cache and download it again" if kind == "hub"
           else "restore it from the model's source")
    return (f"{what} lacks {count} of the weights its config.json makes (such as {key}), "
            f"which would run at random: {fix}")


def resolve_device(device: str = "auto") -> torch.device:
    """'auto' picks CUDA, then Apple MPS, then CPU."""
    if device != "auto":
        try:
            dev = torch.device(device)
        except RuntimeError:
            raise ModelError(f"unknown device '{device}'; use cpu, cuda, cuda:N or mps") from None
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ModelError(
                "torch sees no CUDA GPU here; use --device cpu (or install a CUDA build of torch)")
        # Else the load succeeds and the first tensor moved there fails, deep in a run, with
        # torch's "not linked with support for mps devices".
        if dev.type == "mps" and not mps_available():
            raise ModelError("this machine's torch has no Apple GPU (MPS) support; use "
                             "--device auto or cpu")
        return dev
    if torch.cuda.is_available():
        return torch.device("cuda")
    if mps_available():
        return torch.device("mps")
    return torch.device("cpu")


def mps_available() -> bool:
    """Whether this torch can run on an Apple GPU (built with MPS, on a Mac that has one)."""
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


DTYPES = {"fp16": torch.float16, "float16": torch.float16, "bf16": torch.bfloat16,
          "bfloat16": torch.bfloat16, "fp32": torch.float32, "float32": torch.float32}


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """'auto' is fp16 on GPUs and fp32 on CPU (fp16 is ~50x slower there)."""
    if dtype == "auto":
        return torch.float32 if device.type == "cpu" else torch.float16
    if dtype not in DTYPES:
        raise ModelError(f"unknown dtype '{dtype}'; use auto, fp16, bf16 or fp32")
    return DTYPES[dtype]


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU has native bf16 dot products (AVX512-BF16; AMX CPUs have it too).

    Measured faster than fp32 with it: Intel AMX (SDXL UNet 3.9x, tiny VAE decode 2.1-2.3x) and
    AMD Zen 5 without AMX (2.7-3.4x, 1.3-1.7x). Without it torch emulates bf16, several times
    slower.
    """
    return torch.cpu._is_avx512_bf16_supported()


def choose_vae_dtype(device: torch.device, model_dtype: torch.dtype,
                     requested: str | None = None, fp16_ok: bool | None = False) -> torch.dtype:
    """The VAE's dtype: bf16 on CUDA and bf16-capable CPUs unless fp32 is asked for, else fp32.

    The SDXL VAE overflows in fp16 (NaNs at its largest activations) but not in bf16, which has
    fp32's exponent range; bf16 halves its memory and runs on tensor cores (CUDA) or native bf16
    units (AVX512-BF16, AMX: recent Xeons and EPYCs). `fp16_ok`: the VAE is made for fp16 (its
    config has `force_upcast` off, as madebyollin/sdxl-vae-fp16-fix's has); then fp16 may be
    asked for, and a GPU without native bf16 (T4, V100) or MPS runs it in fp16 rather than
    fp32, several times faster; None: not known (a single-file VAE, which has no config of its
    own), taken as False except that fp16 asked for runs (an overflow then stops the run at
    its first decode: `hires.errors.NotFinite`).
    `requested` ('auto', 'fp16', 'bf16', 'fp32') overrides; on
    CUDA an fp32 model counts as asking for an fp32 VAE (on the CPU fp32 is simply auto's
    choice for the model).
    """
    wanted = requested or "auto"
    if wanted not in ("auto", *DTYPES):
        raise ModelError(f"unknown VAE dtype '{wanted}'; use auto, bf16, fp32 or fp16")
    # A single file says nothing of its fp16 safety: asked for, fp16 runs, and an overflow
    # stops the run at its first decode (hires.errors.NotFinite) rather than saving black.
    if wanted != "auto" and DTYPES[wanted] == torch.float16 and fp16_ok is False:
        raise ModelError("this VAE overflows in fp16 (its config says force_upcast); use bf16 "
                         f"or fp32, or a VAE made for fp16 (--vae {FP16_VAE})", usage=True)
    if wanted != "auto" and device.type != "cuda":
        return DTYPES[wanted]
    if device.type == "cpu":
        # With AVX512-BF16 (and AMX) bf16 convolutions run faster than fp32: 2.5-7x on a
        # 2-core AMX Xeon, 1.3-1.7x for a whole decode on a 2-core Zen 5; without it bf16 is
        # emulated and several times slower.
        return torch.bfloat16 if cpu_has_fast_bf16() else torch.float32
    if device.type != "cuda":
        # MPS: bf16 convolutions need macOS 14+ and are slow where they exist; fp16 is its
        # fast path, for a VAE that does not overflow in it.
        return torch.float16 if fp16_ok and model_dtype != torch.float32 else torch.float32
    if wanted == "auto":
        wanted = "fp32" if model_dtype == torch.float32 else "bf16"
    # Pre-Ampere GPUs (T4, V100): bf16 is emulated, several times slower, or missing. torch
    # counts emulation as support unless told not to.
    if DTYPES[wanted] == torch.bfloat16 and not torch.cuda.is_bf16_supported(
            including_emulation=False):
        return torch.float16 if fp16_ok else torch.float32
    return DTYPES[wanted]


def _sdxl_pipeline_class():
    """diffusers' StableDiffusionXLPipeline. Importing it the first time makes transformers log
    that torchvision is missing, about image processors hires does not use: not for our users'
    eyes (the CLI turns such notices off for its whole run; a library caller gets this)."""
    from transformers.utils import logging as tlogging

    level = tlogging.get_verbosity()
    tlogging.set_verbosity_error()
    try:
        from diffusers import StableDiffusionXLPipeline
    finally:
        tlogging.set_verbosity(level)
    return StableDiffusionXLPipeline


def load_pipeline(ref: str, dtype: torch.dtype, allow_pickle: bool = False):
    """The StableDiffusionXLPipeline for a reference, with one-line errors for the usual faults."""
    from diffusers.utils import logging as dlogging

    StableDiffusionXLPipeline = _sdxl_pipeline_class()  # noqa: N806 (a class)

    kind = model_kind(ref)
    if kind == "tiny":
        from hires.tiny import tiny_pipeline

        pipe = tiny_pipeline()
        return pipe if dtype == torch.float32 else pipe.to(dtype=dtype)
    dlogging.set_verbosity_error()  # we report failures ourselves, in one line
    path = Path(ref).expanduser()
    if kind == "file":
        check_model_file(ref, allow_pickle)
        try:
            with quiet_loading():
                return StableDiffusionXLPipeline.from_single_file(str(path), dtype=dtype)
        except Exception as e:  # diffusers raises many kinds here; the user needs one line
            if hub_unreachable(e) or "cached snapshot" in str(e):
                # Its layout is read with SDXL base's configs, which come from the Hub.
                raise ModelError(single_file_uncached(path.name)) from e
            raise ModelError(f"could not load {path.name} as an SDXL checkpoint: {first_line(e)}"
                             ) from e
    if kind == "folder" and (refusal := pipeline_folder_refusal(path, allow_pickle)):
        raise ModelError(f"{ref} {refusal}", usage="pickle" in refusal)
    safetensors = None if allow_pickle else True
    where = str(path) if kind == "folder" else ref
    variant = "fp16" if (dtype == torch.float16 and kind == "hub") or (
        kind == "folder" and fp16_only(path)) else None
    try:
        with weights_not_found() as lacking, no_fetch_errors():
            try:
                pipe = StableDiffusionXLPipeline.from_pretrained(
                    where, dtype=dtype, use_safetensors=safetensors, variant=variant)
            except (OSError, ValueError) as e:
                if variant is None or mismatched_shapes(e) is not None:
                    raise  # (a mismatch is no missing variant: its fallback hid it)
                # Not every repo ships an fp16 variant: fall back to the full-precision files.
                lacking.clear()
                pipe = StableDiffusionXLPipeline.from_pretrained(
                    where, dtype=dtype, use_safetensors=safetensors)
        if lacking:
            raise ModelError(lacking_weights(f"model '{ref}': its {lacking[0][0]}/", lacking,
                                             kind), usage=kind != "hub")
        return pipe
    except OSError as e:
        pickled = kind == "folder" and not allow_pickle and any(
            not any(b.parent.glob("*.safetensors")) for b in path.rglob("*.bin"))
        if pickled:  # a component folder with .bin weights only: say why, and the way out
            raise pickle_refusal(f"{ref} holds pickle (.bin) weights only", "them") from e
        if kind == "hub" and "cached" in str(e):
            raise ModelError(
                f"model '{ref}' is not in the local cache and {hub_closed()} to download it, "
                "or pass a local folder or .safetensors file with --model (or --model tiny to "
                "try hires offline)") from e
        raise ModelError(f"could not load model '{ref}': {first_line(e)}") from e
    except ModelError:
        raise
    except (ValueError, RuntimeError) as e:  # a config.json that does not fit its weights
        error = load_failure(e, f"model '{ref}'", kind, _config_of(e))
        if error is None:
            raise
        raise error from e


def load_failure(e: BaseException, what: str, kind: str, config: str) -> ModelError | None:
    """A load's ValueError or RuntimeError as the one line to raise (a config that does not
    fit its weights, a usage error); None for a RuntimeError that is not the files' (out of
    memory, say), to raise as it is."""
    said = shape_mismatch(e, kind, config)
    if said is None and isinstance(e, RuntimeError):
        return None
    return ModelError(f"could not load {what}: {said or first_line(e)}", usage=said is not None)


def _config_of(e: BaseException) -> str:
    """Which part's config a mismatched weight is of, by its name (diffusers leaves the part's
    name blank); transformers' report (no name) is a text encoder's."""
    found = re.search(r"(\S+) expected shape", str(e))
    if found is None:
        return "a text encoder's config.json (text_encoder/ or text_encoder_2/)"
    if found[1].startswith(("encoder.", "decoder.", "quant_conv.", "post_quant_conv.")):
        return "vae/config.json"
    return "unet/config.json"


def shape_mismatch(e: BaseException, kind: str, config: str) -> str | None:
    """A config.json that does not fit its weights, said for a user; None for another error.
    `kind`: the reference's (model_kind); `config`: which config, in words."""
    shapes = mismatched_shapes(e)
    if shapes is None:
        return None
    fix = ("delete it from the Hugging Face cache and download it again" if kind == "hub"
           else "restore it from the model's source")
    return f"its weights do not fit {config}{shapes}: {fix}"


def mismatched_shapes(e: BaseException) -> str | None:
    """' (conv_in.bias is [32] where it makes [320])' from diffusers' 'Cannot load  because
    conv_in.bias expected shape ..., but got ...', '' from transformers' 'You set
    `ignore_mismatched_sizes` to `False`' (both advice for training code); None for another
    error."""
    text = str(e)
    found = re.search(r"(\S+) expected shape torch\.Size\(\[([^\]]*)\]\), but got "
                      r"torch\.Size\(\[([^\]]*)\]\)", text)
    if found:
        return f" ({found[1]} is [{found[3]}] where it makes [{found[2]}])"
    return "" if "ignore_mismatched_sizes" in text else None


def load_vae(ref: str, like, allow_pickle: bool = False):
    """An AutoencoderKL to use instead of the model's (`like`): a Hub id or diffusers folder (a
    VAE's own, or a whole pipeline's `vae/`), or a single .safetensors file read with `like`'s
    config. It must make latents of `like`'s shape."""

    kind = model_kind(ref)
    path = Path(ref).expanduser()
    try:
        with quiet_loading():
            if kind == "tiny":
                from hires.tiny import tiny_vae

                vae = tiny_vae()
            elif kind == "file":
                vae = _vae_from_file(path, like, allow_pickle)
            else:
                check_vae_ref(ref, allow_pickle)
                with weights_not_found() as lacking:
                    vae = _vae_from_pretrained(str(path) if kind == "folder" else ref,
                                               allow_pickle)
                if lacking:  # left on the meta device: "Cannot copy out of meta tensor"
                    raise ModelError(lacking_weights(f"VAE '{ref}'", lacking, kind),
                                     usage=kind != "hub")
    except OSError as e:
        from huggingface_hub import constants

        if kind == "hub" and (hub_unreachable(e) or "cached" in str(e)
                              or constants.HF_HUB_OFFLINE):
            raise ModelError(
                f"VAE '{ref}' is not in the local cache and {hub_closed()} to download it, or "
                "pass a local folder or .safetensors file with --vae") from e
        if kind == "folder" and not allow_pickle and not any(path.rglob("*.safetensors")):
            raise pickle_refusal(f"{ref} holds pickle (.bin) weights only", "them") from e
        raise ModelError(f"could not load VAE '{ref}': {first_line(e)}") from e
    except ModelError:  # a RuntimeError too: said already (a single file's, say)
        raise
    except (ValueError, RuntimeError) as e:
        error = load_failure(e, f"VAE '{ref}'", kind, "its config.json")
        if error is None:
            raise
        raise error from e
    if why := vae_mismatch(ref, dict(vae.config), dict(like.config)):
        raise ModelError(why, usage=True)  # a file to fix, as said before loading
    return vae


def _vae_from_pretrained(where: str, allow_pickle: bool):
    """A VAE's own folder or Hub repo, else a whole pipeline's `vae/`."""
    from diffusers import AutoencoderKL

    safetensors = None if allow_pickle else True
    if Path(where).is_dir():
        sub = None if (Path(where) / "config.json").is_file() else "vae"
        variant = "fp16" if fp16_only(Path(where) / (sub or "")) else None
        return AutoencoderKL.from_pretrained(where, subfolder=sub, use_safetensors=safetensors,
                                             variant=variant)
    try:
        return AutoencoderKL.from_pretrained(where, use_safetensors=safetensors)
    except OSError:  # no config.json at the top: a pipeline's repo
        return AutoencoderKL.from_pretrained(where, subfolder="vae", use_safetensors=safetensors)


def _vae_from_file(path: Path, like, allow_pickle: bool):
    """A single-file VAE (diffusers' or the original layout) read with `like`'s config."""
    import tempfile

    from diffusers import AutoencoderKL

    if not path.is_file():
        raise ModelError(f"VAE file not found: {path}", usage=True)
    check_vae_ref(str(path), allow_pickle)
    with tempfile.TemporaryDirectory() as config:
        # Its own config would come from the Hub; the model's VAE has the same architecture.
        like.save_config(config)
        try:
            return AutoencoderKL.from_single_file(str(path), config=config,
                                                  local_files_only=True)
        except Exception as e:  # diffusers raises many kinds here; the user needs one line
            # Read with this model's VAE config: weights of other shapes are another model's
            shapes = mismatched_shapes(e)
            other = (f"it is a VAE of another model{shapes}; give one made for SDXL"
                     if shapes is not None else None)
            raise ModelError(f"could not load {path.name} as a VAE for this model: "
                             f"{other or first_line(e)}", usage=other is not None) from e


def vae_fp16_ok(model: str, vae: str | None) -> bool | None:
    """Whether the VAE a job names is made for fp16 (`force_upcast` off in its config), read
    without loading weights; False where its config cannot be read here, None for a single
    file (it has no config: it is read with the model's, which says nothing of its weights)."""
    import json

    if vae == "tiny" or (vae is None and model == "tiny"):
        from hires.tiny import TINY_VAE_CONFIG

        return TINY_VAE_CONFIG["force_upcast"] is False
    ref, subs = (vae, ("", "vae/")) if vae else (model, ("vae/",))
    kind = model_kind(ref)
    if kind == "file":
        return None if vae else False
    for sub in subs:
        if kind == "folder":
            found = Path(ref).expanduser() / sub / "config.json"
            text = found.read_text(encoding="utf-8") if found.is_file() else None
        else:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(ref, f"{sub}config.json")
            text = Path(cached).read_text(encoding="utf-8") if isinstance(cached, str) else None
        if text is not None:
            try:
                return json.loads(text).get("force_upcast", True) is False
            except ValueError:
                return False
    return ref == FP16_VAE  # not cached here: the one VAE known to be made for fp16


def attach_linfusion(
    pipe, model: str, linfusion: str, dtype: torch.dtype
) -> tuple[str | None, list[str], dict[str, Any]]:
    """Mount LinFusion on the pipeline's UNet; returns what was mounted, any warnings and the
    original attn1 modules it replaced (by name)."""
    if linfusion == "none":
        return None, [], {}
    from hires import linfusion as lf

    warnings: list[str] = []
    unet = pipe.unet
    if linfusion == "auto":
        if model == "tiny":
            from hires.tiny import tiny_linfusion

            mounted = tiny_linfusion(unet).mount(unet)
            return "tiny", [], mounted.originals
        carried = Path(model).expanduser() / "linfusion"
        if model_kind(model) == "folder" and (carried / "config.json").is_file():
            linfusion = str(carried)
        else:
            hub_id = model if model_kind(model) == "hub" else None
            checkpoint = lf.checkpoint_for(hub_id, unet)
            if checkpoint is None:
                raise no_linfusion_known(model)
            linfusion = checkpoint
            warning = lf.distillation_warning(hub_id, checkpoint)
            if warning:
                warnings.append(warning)
    try:
        loaded = lf.LinFusion.load(linfusion, dtype=dtype)
    except lf.LinFusionError as e:  # a folder here is a file to fix, as the checks say
        raise ModelError(str(e), usage=model_kind(linfusion) == "folder") from e
    try:
        mounted = loaded.mount(unet)
    except lf.LinFusionError as e:  # made for another UNet: a setting to change, exit 2
        raise ModelError(str(e), usage=True) from e
    return linfusion, warnings, mounted.originals


def tune_for_cuda(pipe) -> None:
    """TF32 for fp32 matmuls, and the VAE's convolution weights channels-last."""
    # LinFusion's attention sums run in fp32 even when the model is half precision, and
    # PyTorch leaves TF32 off for fp32 matmuls: without this they run at a fraction of the
    # tensor cores' speed. TF32 keeps fp32's range; its 10-bit mantissa is still finer than
    # the fp16/bf16 inputs those sums are made from.
    torch.backends.cuda.matmul.allow_tf32 = True
    # cuDNN's tensor-core convolutions are NHWC: with NCHW maps every VAE convolution converted
    # its input and output (0.64 s of an 8K decode on an H200). Channels-last weights make
    # PyTorch pick NHWC for their convolutions, and the maps stay NHWC from there on. Not the
    # UNet's: its attention and linear layers want tokens in rows, and channels-last made the
    # H200's 4K-16K denoising 6-20 % slower (BENCHMARKS.md).
    pipe.vae.to(memory_format=torch.channels_last)


def load(
    model: str | os.PathLike = DEFAULT_MODEL,
    linfusion: str | os.PathLike = "auto",
    dtype: str = "auto",
    device: str = "auto",
    allow_pickle: bool = False,
    offload: str = "auto",
    vae_dtype: str = "auto",
    vae: str | os.PathLike | None = None,
) -> Components:
    """Load a model for generation: pipeline parts, LinFusion mounted, on the chosen device.

    `vae_dtype`: 'auto' (bf16 on CUDA and bf16-capable CPUs, else fp32), 'fp16', 'bf16' or
    'fp32'; see choose_vae_dtype. `vae`: a VAE to use instead of the model's (load_vae).
    """
    from hires.job import Job, check_kind
    from hires.memory import choose_offload, place

    check_kind("allow_pickle", allow_pickle)
    check_given_paths({"model": model, "vae": vae, "linfusion": linfusion})
    # The library's callers get the CLI's checks: a Path is taken, offload="bad" refused.
    asked = Job(model=model, linfusion=linfusion, dtype=dtype, device=device, offload=offload,
                vae_dtype=vae_dtype, vae=vae).validate()
    go_offline_if_unreachable(asked)
    model, linfusion, dtype, device, offload, vae_dtype, vae = (
        asked.model, asked.linfusion, asked.dtype, asked.device, asked.offload, asked.vae_dtype,
        asked.vae)
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    # The VAE and LinFusion checkpoint are checked first: a bad one fails in seconds, not
    # after the model loaded.
    check_before_loading(model, vae, linfusion, allow_pickle)
    single_file_vae = vae is not None and model_kind(vae) == "file"
    pipe = load_pipeline(model, dt, allow_pickle)
    if said := prediction_refusal(dict(pipe.scheduler.config)):  # a Hub id's, read as loaded
        raise ModelError(f"{model} {said}", usage=True)
    if vae is not None:
        pipe.register_modules(vae=load_vae(vae, pipe.vae, allow_pickle))
    mounted, warnings, originals = attach_linfusion(pipe, model, linfusion, dt)
    fp16_ok = None if single_file_vae else pipe.vae.config.force_upcast is False
    vae_dt = choose_vae_dtype(dev, dt, vae_dtype, fp16_ok=fp16_ok)
    if dev.type == "cuda" and vae_dt == torch.float32:
        # An fp32 VAE on tensor cores (TF32): several times faster, with errors far below one
        # 8-bit pixel level. cuDNN's flag is on by default; set it in case someone turned it off.
        torch.backends.cudnn.allow_tf32 = True
    if vae_dt != pipe.vae.dtype:
        # diffusers warns on any dtype cast of a model that lists fp32 modules, an empty list
        # too (AutoencoderKL's): a library caller saw "... should be kept in float32: []"
        with quiet_loading():
            pipe.vae.to(dtype=vae_dt)
    for part in (pipe.unet, pipe.vae, pipe.text_encoder, pipe.text_encoder_2):
        part.requires_grad_(False).eval()
    if dev.type == "cuda":
        tune_for_cuda(pipe)
    pipe.set_progress_bar_config(disable=True)
    logging.getLogger("hires").debug("loaded %s (linfusion %s) on %s %s", model, mounted, dev, dt)
    components = Components(pipe, where_loaded(model), where_loaded(mounted), dev, dt, vae_dt,
                            choose_offload(offload, dev), warnings)
    # Kept (in RAM, 0.8 GB for SDXL in fp16) so a ControlNet's own attention fine-tuning can be
    # carried over to LinFusion (hires.controlnet.linearize).
    components.attention_originals = originals
    components.vae_ref = where_loaded(vae)
    place(components)
    return components


def where_loaded(ref: str | None) -> str | None:
    """A local model, VAE or LinFusion checkpoint by a relative path as the absolute one:
    after a `chdir`, a job run on the components (and its record) still names what they were
    loaded from."""
    if ref is None or model_kind(ref) not in ("folder", "file"):
        return ref
    path = Path(ref).expanduser()
    return str(path.absolute()) if path.exists() and not path.is_absolute() else ref


def load_args(job) -> tuple:
    """`load`'s arguments for a Job: what decides the loaded components (a batch's key)."""
    return (job.model, job.linfusion, job.dtype, job.device, job.allow_pickle, job.offload,
            job.vae_dtype, job.vae)
