"""LinFusion: normalized linear attention that replaces a UNet's self-attention (attn1).

See the spec in shared/specs/linfusion.md: the module, the checkpoint format (a diffusers-style
folder with config.json and diffusion_pytorch_model.safetensors) and mounting on a UNet.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hires.errors import first_line

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"

DEFAULT_CHECKPOINTS = {
    "stabilityai/stable-diffusion-xl-base-1.0": "Yuanshi/LinFusion-XL",
    "stable-diffusion-v1-5/stable-diffusion-v1-5": "Yuanshi/LinFusion-1-5",
    "runwayml/stable-diffusion-v1-5": "Yuanshi/LinFusion-1-5",
    "stabilityai/stable-diffusion-2-1": "Yuanshi/LinFusion-2-1",
    "stabilityai/stable-diffusion-2-1-base": "Yuanshi/LinFusion-2-1",
}
"""The LinFusion checkpoint mounted by default on each known base model (Hub ids)."""

DISTILLED_FROM = {
    "Yuanshi/LinFusion-XL": "stabilityai/stable-diffusion-xl-base-1.0",
    "Yuanshi/LinFusion-1-5": "stable-diffusion-v1-5/stable-diffusion-v1-5",
    "Yuanshi/LinFusion-2-1": "stabilityai/stable-diffusion-2-1",
}
"""The base model each public checkpoint was distilled from."""

# Other Hub ids of the very same weights: no distillation warning for these.
_SAME_WEIGHTS = {"runwayml/stable-diffusion-v1-5": "stable-diffusion-v1-5/stable-diffusion-v1-5"}

# UNet architecture (cross-attention width, number of attn1 modules) -> checkpoint, for models
# that are not known by id (local folders, single files, fine-tunes on the Hub).
_BY_ARCHITECTURE = {
    (2048, 70): "Yuanshi/LinFusion-XL",
    (768, 16): "Yuanshi/LinFusion-1-5",
    (1024, 16): "Yuanshi/LinFusion-2-1",
}


class LinFusionError(ValueError):
    """A LinFusion checkpoint cannot be loaded or mounted; the message is one line."""


# --- the attention itself ---------------------------------------------------------------------


def _accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp16/bf16 sums over a million tokens lose too much: those accumulate in fp32."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


# Bytes of fp32 work buffers per call. On CPU, tiles of a few hundred tokens stay in cache:
# measured 15-30% less time than whole-sequence chunks of one or two heads, and 10-25% less
# than tiles of 3K-16K tokens (2-core EPYC, 10 heads, 4K-64K tokens). On GPUs, big tiles keep
# the number of kernel launches low.
CPU_WORK_BYTES = 8 << 20
GPU_WORK_BYTES = 256 << 20
# On a GPU, small calls take one tile whatever their inputs' size: capped at one input, a 1K
# image's calls ran in 4-5 tiles, and the base stage is bound by kernel launches (with the
# floor, a guided evaluation at 1K took 0.081 s on the H200 host, its FLOPs 0.023 s of it).
GPU_WORK_FLOOR = 64 << 20


def _tokens_per_tile(q: Tensor, heads: int, acc: torch.dtype) -> int:
    """Tokens per tile: the work buffers stay under the device's budget and a third of q+k+v
    (on a GPU, at least GPU_WORK_FLOOR)."""
    d = q.shape[-1] // heads
    per_token = q.shape[0] * heads * (2 * d + 1) * torch.finfo(acc).bits // 8
    one_input = q.numel() * q.element_size()  # a third of q+k+v
    if q.device.type == "cpu":
        budget = min(CPU_WORK_BYTES, one_input)
    else:
        budget = min(GPU_WORK_BYTES, max(GPU_WORK_FLOOR, one_input))
    return max(16, budget // per_token)


def _even_tiles(n: int, most: int) -> int:
    """The tile size that splits n tokens into the fewest near-equal tiles of at most `most`."""
    count = max(1, -(-n // most))
    return max(1, -(-n // count))


def _split_heads(x: Tensor, heads: int) -> Tensor:
    """B x N x C -> B x heads x N x d, a view (no copy)."""
    return x.unflatten(-1, (heads, x.shape[-1] // heads)).transpose(1, 2)


def _features_into(buffer: Tensor, x: Tensor, heads: int) -> Tensor:
    """elu(x) + 1 of B x N x (heads*d) `x`, written head-major into the front of `buffer`."""
    b, n, c = x.shape
    f = buffer[: x.numel()].view(b, heads, n, c // heads)
    f.copy_(_split_heads(x, heads))
    return F.elu_(f).add_(1)


def _linear_attention_differentiable(q: Tensor, k: Tensor, v: Tensor, heads: int,
                                     eps: float) -> Tensor:
    """The same maths with plain out-of-place ops, so autograd can train through it."""
    acc = _accumulation_dtype(q.dtype)
    qf = F.elu(_split_heads(q, heads).to(acc)) + 1
    kf = F.elu(_split_heads(k, heads).to(acc)) + 1
    state = kf.transpose(-1, -2) @ _split_heads(v, heads).to(acc) / k.shape[1]
    z = qf @ kf.mean(dim=-2).unsqueeze(-1) + eps
    return ((qf @ state) / z).transpose(1, 2).flatten(2).to(q.dtype)


def linear_attention(q: Tensor, k: Tensor, v: Tensor, heads: int, eps: float = 1e-4, *,
                     tile_tokens: int | None = None) -> Tensor:
    """LinFusion's normalized linear attention of projected B x N x C tensors, O(N d^2).

    out_i = (Qf_i S) / (Qf_i . mean_j Kf_j + eps) with S = mean_j Kf_j^T V_j and
    Qf, Kf = elu(Q) + 1, elu(K) + 1 per head. Means (not sums) make the output invariant to
    repeating every token. fp16/bf16 inputs accumulate and divide in fp32. `tile_tokens` sets
    how many tokens go through the work buffers at once (default: by device and input size).
    """
    if q.ndim != 3 or k.shape != v.shape or q.shape[0] != k.shape[0] or q.shape[2] != k.shape[2]:
        raise ValueError(f"expected B x N x C q, k, v; got {tuple(q.shape)}, {tuple(k.shape)}, "
                         f"{tuple(v.shape)}")
    if q.shape[2] % heads:
        raise ValueError(f"{q.shape[2]} channels do not split into {heads} heads")
    if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
        return _linear_attention_differentiable(q, k, v, heads, eps)
    state = KeyValueState(heads)
    state.add(k, v, tile_tokens=tile_tokens)
    return state.attend(q, eps, tile_tokens=tile_tokens)


class KeyValueState:
    """The keys' and values' part of the linear attention, summed over as many batches of
    tokens as are added: what lets a huge image's attention run over chunks of its tokens.

    Tiles of tokens (all heads) go through two work buffers, reused by every tile: the
    features (Kf or Qf) and the products (an fp32 copy of V, or [Qf S | Qf.kmean]). Reuse also
    matters on CPU, where each fresh allocation pays a page fault per page.
    """

    def __init__(self, heads: int) -> None:
        self.heads = heads
        self.count = 0
        self.kv: Tensor | None = None  # B x heads x d x d: sum of Kf_j^T V_j
        self.k_sum: Tensor | None = None  # B x heads x d: sum of Kf_j

    def _buffers(self, x: Tensor, tile: int, acc: torch.dtype) -> tuple[Tensor, Tensor]:
        b, d = x.shape[0], x.shape[2] // self.heads
        return (torch.empty(b * self.heads * tile * d, dtype=acc, device=x.device),
                torch.empty(b * self.heads * tile * (d + 1), dtype=acc, device=x.device))

    def add(self, k: Tensor, v: Tensor, *, tile_tokens: int | None = None) -> None:
        """Sum the projected B x N x C keys and values `k`, `v` into the state."""
        b, n_k, c = k.shape
        heads, d, acc = self.heads, c // self.heads, _accumulation_dtype(k.dtype)
        if self.kv is None:
            self.kv = torch.zeros(b, heads, d, d, dtype=acc, device=k.device)
            self.k_sum = torch.zeros(b, heads, d, dtype=acc, device=k.device)
        tile = _even_tiles(n_k, tile_tokens or _tokens_per_tile(k, heads, acc))
        features, products = self._buffers(k, tile, acc)
        for t in range(0, n_k, tile):
            kf = _features_into(features, k[:, t:t + tile], heads)
            vh = _split_heads(v[:, t:t + tile], heads)
            if vh.dtype != acc:
                vh = products[: vh.numel()].view(vh.shape).copy_(vh)
            for i in range(b):  # per batch element: bmm reads the strided vh[i] in place
                self.kv[i].baddbmm_(kf[i].transpose(-1, -2), vh[i])
            self.k_sum += kf.sum(dim=-2)
        self.count += n_k

    def attend(self, q: Tensor, eps: float = 1e-4, *, tile_tokens: int | None = None) -> Tensor:
        """The attention output for the projected B x N x C queries `q` (dtype of `q`)."""
        if self.kv is None or self.count == 0:
            raise ValueError("no keys added to the attention state")
        b, n_q, c = q.shape
        heads, d, acc = self.heads, c // self.heads, _accumulation_dtype(q.dtype)
        # [S | kmean], d x (d + 1) per head: one matmul gives numerator and normalizer together.
        state = torch.cat([self.kv, self.k_sum.unsqueeze(-1)], dim=-1).div_(self.count)
        state = state.view(b * heads, d, d + 1)
        tile = _even_tiles(n_q, tile_tokens or _tokens_per_tile(q, heads, acc))
        features, products = self._buffers(q, tile, acc)
        out = torch.empty(b, n_q, c, dtype=q.dtype, device=q.device)
        for t in range(0, n_q, tile):
            qf = _features_into(features, q[:, t:t + tile], heads)
            n = qf.shape[2]
            prod = products[: b * heads * n * (d + 1)].view(b * heads, n, d + 1)
            torch.bmm(qf.view(b * heads, n, d), state, out=prod)
            prod = prod.view(b, heads, n, d + 1)
            # Divide in place, then copy (and cast) into the output: a division straight into
            # a half-precision `out` would allocate an fp32 temporary.
            _split_heads(out[:, t:t + n], heads).copy_(prod[..., :d].div_(prod[..., d:].add_(eps)))
        return out


class LinearAttention(nn.Module):
    """LinFusion's replacement for one self-attention (attn1) module; a drop-in for diffusers'."""

    def __init__(self, dim: int, heads: int, projection_mid_dim: int | None = None) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} does not split into {heads} heads")
        self.dim = dim
        self.heads = heads
        self.projection_mid_dim = projection_mid_dim
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(dim, dim, bias=False)
        self.to_v = nn.Linear(dim, dim, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(dim, dim), nn.Dropout(0.0)])
        self.to_q_ = _residual_mlp(dim, projection_mid_dim)
        self.to_k_ = _residual_mlp(dim, projection_mid_dim)

    def forward(self, hidden_states: Tensor, encoder_hidden_states: Tensor | None = None,
                attention_mask: Tensor | None = None, **kwargs) -> Tensor:
        """Self-attention of B x N x C `hidden_states`; masks and encoder states are unused."""
        x = hidden_states
        # q, k, v stay temporaries of this call, freed before to_out allocates its result.
        out = linear_attention(self.to_q(x + self.to_q_(x)), self.to_k(x + self.to_k_(x)),
                               self.to_v(x), self.heads)
        return self.to_out[1](self.to_out[0](out))

    def add_keys(self, state: KeyValueState, x: Tensor) -> None:
        """Add the keys and values of the B x n x C tokens `x` (a chunk of the image) to
        `state` (a `KeyValueState` of this module's heads)."""
        state.add(self.to_k(x + self.to_k_(x)), self.to_v(x))

    def attend(self, state: KeyValueState, x: Tensor) -> Tensor:
        """This module's output for the tokens `x`, their keys those summed in `state`."""
        out = state.attend(self.to_q(x + self.to_q_(x)))
        return self.to_out[1](self.to_out[0](out))

    def extra_repr(self) -> str:
        return f"dim={self.dim}, heads={self.heads}, projection_mid_dim={self.projection_mid_dim}"


def _residual_mlp(dim: int, mid: int | None) -> nn.Module:
    """The learned correction added to the q/k projection input; -1 means an identity."""
    if mid == -1:
        # The reference code uses an identity here, so the input becomes x + x; the checkpoint
        # weights were trained that way, so keep it.
        return nn.Identity()
    mid = mid or dim
    return nn.Sequential(nn.Linear(dim, mid), nn.LayerNorm(mid), nn.LeakyReLU(0.01),
                         nn.Linear(mid, dim))


# --- the container: checkpoint format and mounting ----------------------------------------------


def _check_entry(i: int, entry: object) -> dict:
    """One modules_list item, validated and normalized to the four known keys."""
    if not isinstance(entry, dict):
        raise LinFusionError(f"modules_list[{i}] is not an object")
    name, dim, heads = entry.get("module_name"), entry.get("dim_n"), entry.get("heads")
    mid = entry.get("projection_mid_dim")
    if not isinstance(name, str) or not name:
        raise LinFusionError(f"modules_list[{i}] has no module_name")
    if not isinstance(dim, int) or not isinstance(heads, int) or dim <= 0 or heads <= 0:
        raise LinFusionError(f"modules_list[{i}] ({name}) needs positive integers dim_n and heads")
    if dim % heads:
        raise LinFusionError(f"modules_list[{i}] ({name}): dim_n {dim} does not split into "
                             f"{heads} heads")
    if mid is not None and (not isinstance(mid, int) or (mid <= 0 and mid != -1)):
        raise LinFusionError(f"modules_list[{i}] ({name}): projection_mid_dim must be null, -1 "
                             f"or a positive integer, not {mid!r}")
    return {"module_name": name, "dim_n": dim, "heads": heads, "projection_mid_dim": mid}


class LinFusion(nn.Module):
    """The LinFusion modules of one UNet: children "0", "1", ... as in the checkpoint's keys."""

    def __init__(self, modules_list: list[dict]) -> None:
        super().__init__()
        self.modules_list = [_check_entry(i, e) for i, e in enumerate(modules_list)]
        for i, entry in enumerate(self.modules_list):
            module = LinearAttention(entry["dim_n"], entry["heads"], entry["projection_mid_dim"])
            self.add_module(str(i), module)
        self._originals: list[tuple[str, nn.Module]] = []  # what mount() replaced, in order

    @staticmethod
    def default_config(unet: nn.Module) -> list[dict]:
        """One entry per attn1 module of `unet`, in named_modules() order."""
        return [
            {"module_name": name, "dim_n": module.to_q.out_features, "heads": module.heads,
             "projection_mid_dim": None}
            for name, module in unet.named_modules() if name.endswith("attn1")
        ]

    @classmethod
    def from_unet(cls, unet: nn.Module, projection_mid_dim: int | None = None,
                  init_from_unet: bool = True) -> LinFusion:
        """A new LinFusion for `unet` (fp32, on its device), starting from its attention weights.

        With init_from_unet, q/k/v/out copy the original attn1 projections and the last layer
        of each residual MLP is zero, so the MLP starts as identity: a start for distillation.
        """
        config = cls.default_config(unet)
        for entry in config:
            entry["projection_mid_dim"] = projection_mid_dim
        device = next(unet.parameters()).device
        if not init_from_unet:
            return cls(config).to(device)
        with torch.device("meta"):
            model = cls(config)
        # Only the MLPs need a random init; the rest is overwritten by the copies below.
        model.to_empty(device=device)
        with torch.no_grad():
            for entry, module in zip(model.modules_list, model.children(), strict=True):
                original = unet.get_submodule(entry["module_name"])
                for name in ("to_q", "to_k", "to_v"):
                    getattr(module, name).weight.copy_(getattr(original, name).weight)
                out, original_out = module.to_out[0], original.to_out[0]
                out.weight.copy_(original_out.weight)
                if original_out.bias is None:
                    out.bias.zero_()
                else:
                    out.bias.copy_(original_out.bias)
                for mlp in (module.to_q_, module.to_k_):
                    if isinstance(mlp, nn.Sequential):
                        mlp[0].reset_parameters()
                        mlp[1].reset_parameters()
                        mlp[3].weight.zero_()
                        mlp[3].bias.zero_()
        return model

    @classmethod
    def load(cls, ref: str | Path, *, dtype: torch.dtype | None = None,
             cache_dir: str | Path | None = None, local_files_only: bool = False) -> LinFusion:
        """Load a checkpoint from a local folder or a Hugging Face Hub id (safetensors only)."""
        folder = _checkpoint_folder(ref, cache_dir, local_files_only)
        modules_list = read_config(folder / CONFIG_NAME)
        weights = folder / WEIGHTS_NAME
        if not weights.is_file():
            from hires.model_refs import hub_closed, hub_offline

            if not Path(ref).expanduser().is_dir() and hub_offline():  # a Hub snapshot
                raise LinFusionError(half_cached(str(ref), hub_closed()))
            _no_weights(folder)
        from safetensors.torch import load_file

        try:
            state = load_file(weights)
        except Exception as e:  # safetensors raises its own error types for corrupt files
            raise LinFusionError(f"checkpoint {weights}: unreadable ({first_line(e)}); "
                                 "re-download or re-save it") from None
        with torch.device("meta"):
            model = cls(modules_list)
        model.check_shapes({key: tuple(t.shape) for key, t in state.items()}, weights)
        model.load_state_dict(state, assign=True)  # take the loaded tensors, no second copy
        if dtype is not None:
            model.to(dtype)
        return model

    def check_shapes(self, state: dict[str, tuple[int, ...]], where: Path) -> None:
        """Raise LinFusionError on the first missing, mis-shaped or unexpected tensor of a
        checkpoint's (`state`: each tensor's name and shape)."""
        expected = {key: tuple(t.shape) for key, t in self.state_dict().items()}
        unexpected = [key for key in state if key not in expected]
        for key, shape in expected.items():
            entry = self.modules_list[int(key.split(".", 1)[0])]
            module = f"module {entry['module_name']} (dim {entry['dim_n']})"
            if key not in state:
                found = f"; it has {unexpected[0]} instead" if unexpected else ""
                raise LinFusionError(f"checkpoint {where}: tensor {key} for {module} is missing"
                                     f"{found}; the weights do not match config.json")
            if tuple(state[key]) != shape:
                raise LinFusionError(
                    f"checkpoint {where}: tensor {key} has shape {tuple(state[key])}, "
                    f"expected {shape} for {module}; is this checkpoint for another base model?")
        if unexpected:
            raise LinFusionError(f"checkpoint {where}: unexpected tensor {unexpected[0]}, not "
                                 f"part of the {len(self.modules_list)} modules in config.json")

    def save(self, folder: str | Path) -> Path:
        """Write config.json and diffusion_pytorch_model.safetensors (the official format)."""
        import diffusers
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        config = {"_class_name": "LinFusion", "_diffusers_version": diffusers.__version__,
                  "modules_list": self.modules_list}
        (folder / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        save_file(state, folder / WEIGHTS_NAME, metadata={"format": "pt"})
        return folder

    @property
    def mounted(self) -> bool:
        """Whether this LinFusion currently replaces a UNet's attn1 modules."""
        return bool(self._originals)

    @property
    def originals(self) -> dict[str, nn.Module]:
        """The attn1 modules mount() replaced (parked on the CPU), by module name."""
        return dict(self._originals)

    def mount(self, unet: nn.Module) -> LinFusion:
        """Replace `unet`'s attn1 modules with these, each on its original's device and dtype.

        The originals are kept for unmount(), parked on the CPU so that they cost no GPU memory
        (0.8 GB for SDXL in fp16) while LinFusion runs.
        """
        if self.mounted:
            raise LinFusionError("this LinFusion is already mounted; unmount() it first")
        for entry in self.modules_list:
            _check_fits(unet, entry)  # all of them before changing anything
        ours = {entry["module_name"] for entry in self.modules_list}
        left = [name for name, _ in unet.named_modules()
                if name.endswith("attn1") and name not in ours]
        if left:  # those would stay quadratic: hours, or out of memory, at the sizes planned
            raise LinFusionError(f"this LinFusion checkpoint covers {len(ours)} of the UNet's "
                                 f"{len(ours) + len(left)} self-attention modules (not {left[0]});"
                                 " is it for another base model?")
        for entry, module in zip(self.modules_list, self.children(), strict=True):
            parent_name, _, child = entry["module_name"].rpartition(".")
            parent = unet.get_submodule(parent_name)
            original = getattr(parent, child)
            weight = original.to_q.weight
            module.to(device=weight.device, dtype=weight.dtype)
            setattr(parent, child, module)
            self._originals.append((entry["module_name"], original.to("cpu")))
        return self

    def unmount(self, unet: nn.Module) -> nn.Module:
        """Put the original attn1 modules back, placed like the UNet now is; returns the UNet."""
        if not self.mounted:
            raise LinFusionError("this LinFusion is not mounted; nothing to unmount")
        ours = dict(zip((e["module_name"] for e in self.modules_list), self.children(),
                        strict=True))
        for name, _ in self._originals:
            if _get(unet, name) is not ours[name]:
                raise LinFusionError(f"module {name}: this LinFusion is not mounted on that UNet")
        for name, original in self._originals:
            parent_name, _, child = name.rpartition(".")
            weight = ours[name].to_q.weight  # it followed the UNet's moves since mount()
            original.to(device=weight.device, dtype=weight.dtype)
            setattr(unet.get_submodule(parent_name), child, original)
        self._originals = []
        return unet


def _get(unet: nn.Module, name: str) -> nn.Module | None:
    try:
        return unet.get_submodule(name)
    except AttributeError:
        return None


def _check_fits(unet: nn.Module, entry: dict) -> None:
    """The UNet has this entry's attn1 module, with the same width and heads."""
    name = entry["module_name"]
    target = _get(unet, name)
    if target is None:
        raise LinFusionError(f"module {name}: not found in the UNet; is this LinFusion "
                             "checkpoint for another base model?")
    if name.rpartition(".")[2] != "attn1":
        raise LinFusionError(f"module {name}: LinFusion replaces only self-attention (attn1) "
                             "modules")
    if isinstance(target, LinearAttention):
        raise LinFusionError(f"module {name}: already a LinFusion module; another LinFusion "
                             "is mounted on this UNet")
    to_q = getattr(target, "to_q", None)
    dim = getattr(to_q, "out_features", None)
    heads = getattr(target, "heads", None)
    if dim != entry["dim_n"] or heads != entry["heads"] or to_q.in_features != dim:
        raise LinFusionError(f"module {name}: checkpoint has dim {entry['dim_n']} / "
                             f"{entry['heads']} heads, the UNet has {dim} / {heads}")


# --- finding and reading checkpoints -------------------------------------------------------------




def check_ref(ref: str | Path) -> None:
    """A checkpoint reference that cannot be loaded, found from its files alone (no weights
    read): a file, a path that is neither a folder here nor a Hub id (owner/name), or a folder
    without config.json (a model's folder that carries its own in linfusion/ is named), with a
    config that is not LinFusion's, or weights missing or unreadable. Hub ids are checked by
    form only (hires.model_refs.check_cached says whether a run here finds them)."""
    path = Path(ref).expanduser()
    if path.exists() and not path.is_dir():
        raise LinFusionError(f"LinFusion checkpoint {ref} is a file; pass the folder holding "
                             f"{CONFIG_NAME} and {WEIGHTS_NAME}")
    if not path.is_dir():
        if not re.fullmatch(r"[\w][\w.-]*/[\w][\w.-]*", str(ref)):
            raise LinFusionError(f"LinFusion checkpoint {ref}: no such folder, and not a Hugging "
                                 "Face Hub id (owner/name); give a checkpoint folder, a Hub id, "
                                 "or none")
        return
    if not (path / CONFIG_NAME).is_file() and (path / "linfusion" / CONFIG_NAME).is_file():
        carried = Path(str(ref).rstrip("/\\")) / "linfusion"
        raise LinFusionError(f"LinFusion checkpoint {ref} has no {CONFIG_NAME}, but {carried} is "
                             f"a LinFusion checkpoint: pass --linfusion {carried} (or "
                             "--linfusion auto, which takes a model folder's own)")
    modules_list = read_config(path / CONFIG_NAME)
    weights = path / WEIGHTS_NAME
    if not weights.is_file():
        _no_weights(path)
    from hires.safetensors_header import read_header, truncated

    header = read_header(weights)
    if header is None:
        if cut := truncated(weights):
            raise LinFusionError(f"checkpoint {weights}: {cut}")
        raise LinFusionError(f"checkpoint {weights}: unreadable (not a valid safetensors file: "
                             "truncated?); re-download or re-save it")
    # The header holds every tensor's name and shape: matched to config.json as the load
    # matches them, so a dry run fails where the run would.
    with torch.device("meta"):
        model = LinFusion(modules_list)
    model.check_shapes({key: tuple(entry.get("shape", ())) for key, entry in header.items()
                        if key != "__metadata__" and isinstance(entry, dict)}, weights)


def half_cached(ref: str, closed: str) -> str:
    """Why the Hub checkpoint `ref`, its config cached but not its weights, cannot load while
    the Hub is closed (`closed`: why, and what opens it)."""
    return (f"LinFusion checkpoint {ref} is only partly in the local Hugging Face cache (its "
            f"{WEIGHTS_NAME} is missing: a download cut short?); {closed} to finish it, pass a "
            "local folder (--linfusion PATH), or run without it (--linfusion none)")


def _no_weights(folder: Path) -> None:
    """Raise for a checkpoint folder without its safetensors weights."""
    pickled = sorted(p.name for p in folder.glob("*.bin"))
    found = f" (found {pickled[0]}: pickle weights are not loaded)" if pickled else ""
    raise LinFusionError(f"checkpoint {folder}: no {WEIGHTS_NAME}{found}; LinFusion "
                         "checkpoints load from safetensors only")


def _checkpoint_folder(ref: str | Path, cache_dir: str | Path | None,
                       local_files_only: bool) -> Path:
    """The local folder of a checkpoint: `ref` itself, or its Hub snapshot (downloaded once)."""
    path = Path(ref).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise LinFusionError(f"LinFusion checkpoint {ref} is a file; pass the folder holding "
                             f"{CONFIG_NAME} and {WEIGHTS_NAME}")
    check_ref(ref)
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
    )

    from hires.model_refs import hub_closed, hub_offline

    try:
        return Path(snapshot_download(
            str(ref), allow_patterns=[CONFIG_NAME, "*.safetensors"], cache_dir=cache_dir,
            local_files_only=local_files_only or hub_offline()))
    except (LocalEntryNotFoundError, OfflineModeIsEnabled):

        raise LinFusionError(
            f"LinFusion checkpoint {ref} is not in the local Hugging Face cache and "
            f"{hub_closed()} to download it, pass a local folder (--linfusion PATH), or run "
            "without it (--linfusion none)") from None
    except RepositoryNotFoundError:  # also gated repositories without a login
        raise LinFusionError(f"LinFusion checkpoint {ref} was not found on the Hugging Face Hub "
                             "(or needs a login); check the id, or pass a local folder") from None
    except (HfHubHTTPError, OSError) as e:
        raise LinFusionError(f"could not download LinFusion checkpoint {ref}: "
                             f"{first_line(e)}") from None


def read_config(path: Path) -> list[dict]:
    """The modules_list of a checkpoint's config.json, validated."""
    if not path.is_file():
        raise LinFusionError(f"checkpoint {path.parent}: no {CONFIG_NAME}; a LinFusion "
                             "checkpoint is a folder with config.json and safetensors weights")
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise LinFusionError(f"{path}: unreadable ({first_line(e)})") from None
    if not isinstance(config, dict) or config.get("_class_name") != "LinFusion":
        found = config.get("_class_name") if isinstance(config, dict) else None
        from hires.model_refs import folder_holds

        held = folder_holds(path.parent) if isinstance(found, str) else None
        if held is not None:  # another part's folder: what it is, and where it goes
            what, flag = held
            where = f"pass it as {flag}, and " if flag else ""
            raise LinFusionError(f"--linfusion {path.parent} is {what}'s folder, not a LinFusion "
                                 f"checkpoint; {where}give --linfusion a LinFusion folder, or "
                                 "auto (the model's own) or none (plain attention)")
        raise LinFusionError(f"{path}: _class_name is {found!r}, not 'LinFusion'; this is not a "
                             "LinFusion checkpoint")
    modules_list = config.get("modules_list")
    if not isinstance(modules_list, list) or not modules_list:
        raise LinFusionError(f"{path}: no modules_list; this is not a LinFusion checkpoint")
    try:
        return [_check_entry(i, e) for i, e in enumerate(modules_list)]
    except LinFusionError as e:
        raise LinFusionError(f"{path}: {e}") from None


# --- which checkpoint for which model ------------------------------------------------------------


def _canonical(model_id: str) -> str:
    lowered = {k.lower(): k for k in DEFAULT_CHECKPOINTS}
    model_id = lowered.get(model_id.lower(), model_id)
    return _SAME_WEIGHTS.get(model_id, model_id)


def checkpoint_for(model_id: str | None, unet: nn.Module) -> str | None:
    """The default LinFusion checkpoint: by Hub id when known, else by UNet architecture."""
    if model_id:
        known = {k.lower(): v for k, v in DEFAULT_CHECKPOINTS.items()}
        if model_id.lower() in known:
            return known[model_id.lower()]
    cross = getattr(getattr(unet, "config", None), "cross_attention_dim", None)
    if isinstance(cross, (list, tuple)):
        cross = cross[0]
    n_attn1 = sum(1 for name, _ in unet.named_modules() if name.endswith("attn1"))
    return _BY_ARCHITECTURE.get((cross, n_attn1))


def checkpoint_for_config(config: dict[str, Any]) -> str | None:
    """`checkpoint_for`'s pick by architecture, from a UNet's config.json before it loads."""
    cross = config.get("cross_attention_dim")
    cross = cross[0] if isinstance(cross, list) and cross else cross
    n = attn1_count(config)
    return None if n is None else _BY_ARCHITECTURE.get((cross, n))


def attn1_count(config: dict[str, Any]) -> int | None:
    """How many attn1 modules a UNet of this config.json has, counted from its blocks' layers
    as diffusers builds them (an up block has one layer more, and takes the per-block depths
    reversed); None for a config this cannot read."""
    try:
        blocks = len(config["down_block_types"])
        per_block = _per_block(config.get("layers_per_block", 2), blocks)
        depths = _per_block(config.get("transformer_layers_per_block", 1), blocks)
        up_depths = _per_block(config.get("reverse_transformer_layers_per_block")
                               or depths[::-1], blocks)
        n = sum(layers * depth for kind, layers, depth in
                zip(config["down_block_types"], per_block, depths) if "CrossAttn" in kind)
        n += sum((layers + 1) * depth for kind, layers, depth in
                 zip(config["up_block_types"], per_block[::-1], up_depths) if "CrossAttn" in kind)
        if "CrossAttn" in str(config.get("mid_block_type", "UNetMidBlock2DCrossAttn")):
            n += depths[-1]
    except (KeyError, TypeError, ValueError):
        return None
    return n


def config_mismatch(modules_list: list[dict], config: dict[str, Any]) -> str | None:
    """Why a checkpoint's `modules_list` cannot mount on a UNet of this config.json, found
    before either loads (the UNet built on the meta device: no weights): a module it lacks,
    has twice or has not, or of another width or head count; None when it fits (or the
    config builds no UNet: loading says why)."""
    from diffusers import UNet2DConditionModel

    try:
        with torch.device("meta"):
            unet = UNet2DConditionModel.from_config(config)
    except Exception:  # diffusers raises many kinds for a config it cannot build
        return None
    wanted = {e["module_name"]: e for e in LinFusion.default_config(unet)}
    names = [e["module_name"] for e in modules_list]
    if twice := next((n for n in names if names.count(n) > 1), None):
        return f"it lists module {twice} twice: is it for another base model?"
    if extra := next((n for n in names if n not in wanted), None):
        return f"module {extra} is not in the model's UNet: is it for another base model?"
    if len(names) < len(wanted):
        left = next(n for n in wanted if n not in names)
        return (f"it covers {len(names)} of the model's UNet's {len(wanted)} self-attention "
                f"modules (not {left}), the rest of which would run quadratic: is it for "
                "another base model?")
    for entry in modules_list:
        own = wanted[entry["module_name"]]
        if (entry["dim_n"], entry["heads"]) != (own["dim_n"], own["heads"]):
            return (f"module {entry['module_name']}: the checkpoint's has width "
                    f"{entry['dim_n']} and {entry['heads']} heads, the model's UNet's "
                    f"{own['dim_n']} and {own['heads']}: is it for another base model?")
    return None


def _per_block(value: Any, blocks: int) -> list[int]:
    values = list(value) if isinstance(value, list | tuple) else [value] * blocks
    if len(values) != blocks or not all(isinstance(v, int) for v in values):
        raise ValueError("not one whole number a block")
    return values


def distillation_warning(model_id: str | None, checkpoint: str) -> str | None:
    """One line when `checkpoint` was distilled from a different base than `model_id`."""
    base = DISTILLED_FROM.get(checkpoint)
    if base is None or (model_id and _canonical(model_id) == base):
        return None
    model = f"'{model_id}'" if model_id else "this model"
    return (f"{checkpoint} was distilled from {base}: on {model} it replaces the model's own "
            "self-attention with those weights (cross-attention, feed-forward and ResNets stay "
            "its own), which can shift a fine-tune's look; pass --linfusion PATH|HUB_ID for a "
            "checkpoint distilled from this model, or --linfusion none for the original attention")
