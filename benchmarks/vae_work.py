"""The tiled VAE's work at full SDXL shapes, replayed on the meta device: no GPU, no weights.

Runs `hires.vae`'s own tiling and statistics passes (`vae_stats.whole_image`) on the SDXL VAE
built on the `meta` device, so shapes are real and nothing is computed, and counts FLOPs with
torch's FlopCounterMode: the statistics passes, the final pass, and the plain (untiled, 1 MP
extrapolated) FLOPs `hires.costs.vae_flops` assumes, for a given memory budget of `fast` mode.
It answers "how much does exactness cost at 16K on a GPU with B GB free" without the GPU.

    python benchmarks/vae_work.py --sizes 4096 8192 16384 --budget-gb 4 60
    python benchmarks/vae_work.py --job --budget-gb 98   # a 1K -> 16K job's VAE work, summed

98 GB is what `hires.vae_stats.fast_budget` gives on an H200 (139 GB) with the UNet, the text
encoders and the VAE resident: 0.8 x (131 - 8) GB.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hires.costs import VaeShape, vae_flops  # noqa: E402
from hires.sdxl import SDXL_VAE_CONFIG  # noqa: E402
from hires.vae_cost import replayed_flops, tiled_flops  # noqa: E402
from hires.vae_tiles import Grid, tile_sizes  # noqa: E402

META = torch.device("meta")


def sdxl_vae(dtype: torch.dtype):
    from diffusers import AutoencoderKL

    with META:
        vae = AutoencoderKL(**SDXL_VAE_CONFIG).eval()
    return torch.nn.Module.to(vae, dtype)  # (diffusers' own .to warns about fp32 modules)


def replay(vae, size: int, tile: int, budget: float, decode: bool, dtype: torch.dtype) -> dict:
    """FLOPs of one tiled decode (or encode) of a size x size image, `fast` statistics: replayed,
    and as the planner simulates them (`hires.vae_cost.tiled_flops`)."""
    start = time.perf_counter()
    total, gathered = replayed_flops(vae, size, size, decode=decode, tile=tile, budget=budget)
    seconds = time.perf_counter() - start
    shape = VaeShape.from_config(SDXL_VAE_CONFIG)
    simulated = tiled_flops(shape, size, size, decode=decode, tile=tile, budget=budget,
                            dtype_bytes=dtype.itemsize)
    plain = vae_flops(shape, size, size, decode=decode)
    t, o = tile_sizes(tile, None)
    return {"size": size, "op": "decode" if decode else "encode", "tile": tile,
            "tiles": len(Grid.cover((size // 8, size // 8), t, o)), "budget_gb": budget / 1e9,
            "pflop": total / 1e15, "statistics_pflop": gathered / 1e15,
            "simulated_pflop": simulated / 1e15, "plain_pflop": plain / 1e15,
            "x_plain": total / plain, "replay_s": round(seconds, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[4096, 8192, 16384])
    ap.add_argument("--budget-gb", type=float, nargs="+", default=[4.0, 60.0],
                    help="fast mode's memory for kept step outputs (60: an H200 with the UNet "
                         "parked)")
    ap.add_argument("--job", action="store_true",
                    help="the VAE passes of a 1024 -> 16384 job: decodes at every size, "
                         "encodes from 2048 (overrides --sizes)")
    ap.add_argument("--tile", type=int, default=2048, help="px (the planner's pick on big GPUs)")
    ap.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16")
    ap.add_argument("--out", type=Path,
                    default=Path(__file__).parent / "results" / "vae-work-sdxl.json")
    args = ap.parse_args()
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    vae = sdxl_vae(dtype)
    rows = []
    print(f"{'size':>6} {'op':>6} {'tiles':>5} {'budget GB':>9} {'PFLOP':>7} {'stats':>7} "
          f"{'sim':>7} {'plain':>7} {'x plain':>7} {'replay s':>8}")
    sizes = [1024, 2048, 4096, 8192, 16384] if args.job else args.sizes
    for size in sizes:
        for budget in args.budget_gb:
            for decode in (True, False) if size > 1024 or not args.job else (True,):
                r = replay(vae, size, args.tile, budget * 1e9, decode, dtype)
                rows.append(r)
                print(f"{size:>6} {r['op']:>6} {r['tiles']:>5} {budget:>9g} {r['pflop']:>7.3f} "
                      f"{r['statistics_pflop']:>7.3f} {r['simulated_pflop']:>7.3f} "
                      f"{r['plain_pflop']:>7.3f} "
                      f"{r['x_plain']:>7.2f} {r['replay_s']:>8}", flush=True)
    for budget in args.budget_gb if args.job else []:
        mine = [r for r in rows if r["budget_gb"] == budget]
        total, plain = sum(r["pflop"] for r in mine), sum(r["plain_pflop"] for r in mine)
        print(f"job, {budget:g} GB: {total:.2f} PFLOP of VAE work, {total / plain:.2f}x the "
              f"{plain:.2f} PFLOP of plain passes")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"dtype": args.dtype, "tile": args.tile, "rows": rows},
                                   indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
