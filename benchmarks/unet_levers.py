"""Candidate speed-ups of a guided UNet evaluation, each timed against the plain one (A/B).

The H200 profile of SDXL + LinFusion (fp16, a 4K image's 512^2 latent, 0.70 s per guided
evaluation; BENCHMARKS.md, run 3) named three costs that kernels elsewhere avoid:

- GroupNorm's moments, 61 ms: torch's fp16 kernel reduces each (sample, group) row in one
  thread block, and a batch of 2 x 32 groups is 64 blocks on 132 SMs. `wide-groupnorm`
  takes the moments with `torch.var_mean`, whose reduction spreads one long row over many
  blocks, then normalizes in one pass (batch_norm with per-channel statistics).
- LinFusion in fp32, 78 ms: features upcast to fp32 copies and TF32 matmuls.
  `mixed-linfusion` keeps features in the model's dtype and runs half-precision matmuls
  with fp32 results (`bmm(..., out_dtype=float32)`, CUDA); sums and the division stay fp32.
- Everything else elementwise (GELU and the GEGLU product, 76 ms): `compile` runs the UNet
  through `torch.compile`, which fuses such chains (its compile time is reported apart).

Each variant runs the same input; the table gives seconds per guided evaluation, peak GPU
memory and the largest difference from the plain output relative to its largest value.
Nothing here changes hires: a lever that wins moves into hires with its tests.

    python benchmarks/unet_levers.py --latents 128 512 --out DIR   # a GPU: SDXL + LinFusion
    python benchmarks/unet_levers.py --smoke --out DIR             # CPU: the tiny model
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # run from a bare checkout: hires need not be installed

if str(Path(__file__).resolve().parent) not in sys.path:  # its neighbours, when imported
    sys.path.append(str(Path(__file__).resolve().parent))

from unet_profile import components  # noqa: E402

import hires.linfusion as linfusion  # noqa: E402
from hires.vae_attention import mixed_matmul  # noqa: E402

VARIANTS = ("plain", "wide-groupnorm", "mixed-linfusion", "both", "compile")


# --- GroupNorm: moments from a reduction that spreads over the device -------------------------


def wide_group_norm(norm: nn.GroupNorm, x: Tensor) -> Tensor:
    """`norm(x)`, its moments from torch.var_mean over (sample, group) rows."""
    n, c = x.shape[:2]
    groups = norm.num_groups
    # fp16 / bf16 inputs: the reduction sums in fp32 and rounds the result once.
    var, mean = torch.var_mean(x.reshape(n * groups, -1), dim=1, correction=0)
    per = c // groups
    # One normalizing pass with the affine folded in: channels of all samples side by side,
    # each with its own (sample, group) statistics; batch_norm's mixed-dtype kernel keeps
    # x - mean in fp32 for half inputs.
    y = F.batch_norm(x.reshape(1, n * c, *x.shape[2:]), mean.float().repeat_interleave(per),
                     var.float().repeat_interleave(per),
                     None if norm.weight is None else norm.weight.float().repeat(n),
                     None if norm.bias is None else norm.bias.float().repeat(n),
                     False, 0.0, norm.eps)
    return y.view_as(x)


@contextmanager
def wide_groupnorms(unet: nn.Module) -> Iterator[None]:
    """Every GroupNorm of `unet` runs `wide_group_norm` while the block runs."""
    norms = [m for m in unet.modules() if isinstance(m, nn.GroupNorm)]
    for m in norms:
        m.forward = functools.partial(wide_group_norm, m)
    try:
        yield
    finally:
        for m in norms:
            del m.forward


# --- LinFusion: half-precision features, fp32 results ----------------------------------------


def _bmm_f32(a: Tensor, b: Tensor) -> Tensor:
    """a @ b in float32: half products with fp32 sums where bmm can (CUDA), else upcast."""
    if mixed_matmul(a.device.type, a.dtype):
        return torch.bmm(a, b, out_dtype=torch.float32)
    return torch.bmm(a.float(), b.float())


def mixed_linear_attention(q: Tensor, k: Tensor, v: Tensor, heads: int,
                           eps: float = 1e-4, **_) -> Tensor:
    """`hires.linfusion.linear_attention` without fp32 copies of the features: elu + 1 in the
    inputs' dtype, matmuls with fp32 results, the state rounded to that dtype once."""
    b, n, c = q.shape
    d = c // heads
    out = torch.empty_like(q)
    for i in range(b):
        kf = F.elu(k[i]).add_(1).view(n, heads, d)
        kv = _bmm_f32(kf.permute(1, 2, 0), v[i].view(n, heads, d).transpose(0, 1))
        k_sum = kf.sum(0, dtype=torch.float32).unsqueeze(-1)  # heads x d x 1
        state = torch.cat([kv, k_sum], dim=-1).div_(n).to(q.dtype)  # [S | kmean]
        qf = F.elu(q[i]).add_(1).view(n, heads, d).transpose(0, 1)
        prod = _bmm_f32(qf, state)  # heads x n x (d + 1): numerators and normalizers
        out[i] = prod[..., :d].div_(prod[..., d:].add_(eps)).transpose(0, 1).reshape(n, c)
    return out


@contextmanager
def mixed_linfusion() -> Iterator[None]:
    """LinFusion's modules call `mixed_linear_attention` while the block runs."""
    plain = linfusion.linear_attention
    linfusion.linear_attention = mixed_linear_attention
    try:
        yield
    finally:
        linfusion.linear_attention = plain


# --- the A/B harness ----------------------------------------------------------------------


def levers(variant: str, unet: nn.Module) -> ExitStack:
    """The patches of `variant` (entered by the caller)."""
    stack = ExitStack()
    if variant in ("wide-groupnorm", "both"):
        stack.enter_context(wide_groupnorms(unet))
    if variant in ("mixed-linfusion", "both"):
        stack.enter_context(mixed_linfusion())
    return stack


def timed(fn: Callable[[], Tensor], repeats: int, sync: Callable[[], None]) -> tuple[float, Tensor]:
    """Seconds per call of `fn` over `repeats` calls after one warm-up; the last output."""
    out = fn()
    sync()
    start = time.perf_counter()
    for _ in range(repeats):
        out = fn()
    sync()
    return (time.perf_counter() - start) / repeats, out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="CPU, the tiny model, 16 latent px")
    ap.add_argument("--latents", type=int, nargs="+", default=[128, 512],
                    help="latent sides (128: the 1K base stage, 512: a 4K stage)")
    ap.add_argument("--variants", nargs="+", choices=VARIANTS,
                    help="default: all; with --smoke all but compile (minutes on a CPU); "
                    "plain always runs first, as the reference")
    ap.add_argument("--repeats", type=int, default=5, help="timed evaluations per variant")
    ap.add_argument("--out", type=Path, default=Path("."))
    args = ap.parse_args(argv)
    asked = args.variants or [v for v in VARIANTS if not (args.smoke and v == "compile")]
    variants = ["plain"] + [v for v in asked if v != "plain"]  # plain first: the reference

    from hires.denoiser import Denoiser

    comps, cond = components(args.smoke)
    device = comps.device
    cuda = device.type == "cuda"
    latents = [16] if args.smoke else args.latents

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    report = {"device": str(device), "gpu": torch.cuda.get_device_name() if cuda else None,
              "torch": torch.__version__, "dtype": str(comps.dtype), "latents": {}}
    lines = ["| latent | variant | s per guided evaluation | vs plain | peak GPU GB | "
             "max rel. diff | compile s |", "|---:|---|---:|---:|---:|---:|---:|"]
    compiled, references = None, {}
    # The eager variants at every size first, then compile's (minutes of compiling): a run cut
    # short by its time limit loses compile's rows, not the others.
    eager = [v for v in variants if v != "compile"]
    for group in (eager, [v for v in variants if v == "compile"]):
        for side in latents:
            x = torch.randn(1, 4, side, side, generator=torch.Generator().manual_seed(0))
            x = x.to(device, comps.dtype)
            rows = report["latents"].setdefault(str(side), {})
            for variant in group:
                if variant == "compile" and compiled is None:
                    # Static shapes: each latent gets kernels of its own size, as a stage would.
                    compiled = torch.compile(comps.unet, dynamic=False)
                unet = compiled if variant == "compile" else comps.unet
                try:
                    row, out = run(variant, Denoiser(unet, cond, 5.0), comps.unet, x,
                                   args.repeats, sync, cuda)
                except Exception as e:  # one lever failing on this device leaves the others
                    first = (str(e).splitlines() or [""])[0][:300]
                    rows[variant] = {"error": f"{type(e).__name__}: {first}"}
                    lines.append(f"| {side}^2 | {variant} | failed: {rows[variant]['error']} |")
                else:
                    reference = references.setdefault(side, out)
                    row["max_rel_diff"] = ((out - reference).abs().max()
                                           / reference.abs().max()).item()
                    plain = rows.get("plain", {}).get("seconds")
                    row["speedup"] = None if plain is None else round(plain / row["seconds"], 3)
                    rows[variant] = row
                    lines.append(row_line(side, variant, row))
                print(lines[-1], flush=True)
                write(args.out, report, lines)  # after every row: a run cut short keeps them
    print(f"wrote {args.out / 'unet-levers.json'}")
    return report


def run(variant: str, denoiser, unet: nn.Module, x: Tensor, repeats: int,
        sync: Callable[[], None], cuda: bool) -> tuple[dict, Tensor]:
    """One variant's row (seconds, peak memory, compile seconds) and its output."""
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    compile_s = None
    with torch.inference_mode(), levers(variant, unet):
        if variant == "compile":  # the first call at a shape compiles it
            start = time.perf_counter()
            denoiser.eps(x, 3.0, 400)
            sync()
            compile_s = time.perf_counter() - start
        seconds, out = timed(lambda: denoiser.eps(x, 3.0, 400), repeats, sync)
    peak = torch.cuda.max_memory_allocated() / 1e9 if cuda else None
    return {"seconds": round(seconds, 5), "peak_gpu_gb": peak, "compile_seconds": compile_s}, out


def row_line(side: int, variant: str, row: dict) -> str:
    """The table's line for one variant."""
    speedup, peak, compile_s = row["speedup"], row["peak_gpu_gb"], row["compile_seconds"]
    return (f"| {side}^2 | {variant} | {row['seconds']:.4f} | "
            + ("-" if speedup is None else f"{speedup:.2f}x") + " | "
            + ("-" if peak is None else f"{peak:.1f}") + f" | {row['max_rel_diff']:.2e} | "
            + ("-" if compile_s is None else f"{compile_s:.0f}") + " |")


def write(out: Path, report: dict, lines: list[str]) -> None:
    """OUT/unet-levers.json and OUT/unet-levers.md (the table)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "unet-levers.json").write_text(json.dumps(report, indent=1))
    (out / "unet-levers.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
