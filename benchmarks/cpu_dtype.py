"""fp32 against bf16 on this CPU: one UNet evaluation and one tiled VAE decode in each.

With native bf16 dot products (AVX512-BF16: Zen 4/5, Cooper Lake; AMX: 4th-gen Xeon and later)
bf16 matmuls and convolutions run in hardware, which is why `hires.models.choose_vae_dtype`
picks bf16 for the VAE there; without them torch emulates bf16.

    python benchmarks/cpu_dtype.py              # SDXL UNet at 512 px, trained tiny VAE at 2048 px
    python benchmarks/cpu_dtype.py --smoke      # tiny UNet, 512 px VAE: seconds

The SDXL UNet has random weights and diffusers' own attention (no LinFusion): the shapes, not
the weights, set its time.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import date
from pathlib import Path

import torch
from diffusers import UNet2DConditionModel

from hires import vae as tiled
from hires.models import cpu_has_fast_bf16
from hires.sdxl import SDXL_UNET_CONFIG
from hires.tiny import tiny_unet, tiny_vae

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def best_of(runs: int, fn) -> float:
    """The fastest of `runs` timed calls, after one untimed warm-up call."""
    fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def unet_seconds(unet: UNet2DConditionModel, side: int, dtype: torch.dtype, runs: int) -> float:
    """One UNet evaluation (batch 1) on a `side` px image's latents."""
    cfg = unet.config
    unet = unet.to(dtype)
    x = torch.randn(1, cfg.in_channels, side // 8, side // 8, dtype=dtype)
    text = torch.randn(1, 77, cfg.cross_attention_dim, dtype=dtype)
    pooled = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
    added = {"text_embeds": torch.randn(1, pooled, dtype=dtype),
             "time_ids": torch.randn(1, 6, dtype=dtype)}
    with torch.inference_mode():
        return best_of(runs, lambda: unet(x, 500, encoder_hidden_states=text,
                                          added_cond_kwargs=added))


def vae_seconds(side: int, dtype: torch.dtype, runs: int) -> float:
    """A `fast` tiled decode (1024 px tiles) of a `side` px square by the trained tiny VAE."""
    vae = tiny_vae().eval().to(dtype)
    z = torch.randn(1, 4, side // 8, side // 8, generator=torch.Generator().manual_seed(0))
    return best_of(runs, lambda: tiled.decode(vae, z, tile=1024, stats="fast"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny UNet and a 512 px VAE decode")
    ap.add_argument("--unet-size", type=int, default=512, help="px")
    ap.add_argument("--vae-size", type=int, default=2048, help="px")
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--out", default=Path(__file__).parent / "results" / "cpu-dtype.json")
    args = ap.parse_args()
    name, vae_size, runs = ("tiny", 512, 1) if args.smoke else ("sdxl", args.vae_size, args.runs)
    # The VAE first: the fast mode keeps outputs in half the free RAM, which an SDXL UNet
    # (10 GB in fp32) would take.
    rows = [dict(dtype=label, vae_decode_s=round(vae_seconds(vae_size, dtype, runs), 3))
            for label, dtype in DTYPES.items()]
    unet = tiny_unet() if args.smoke else UNet2DConditionModel(**SDXL_UNET_CONFIG)
    for row, dtype in zip(rows, DTYPES.values()):
        row["unet_s"] = round(unet_seconds(unet.eval(), args.unet_size, dtype, runs), 3)
    print(f"| dtype | {name} UNet, 1 evaluation at {args.unet_size} px, s "
          f"| tiny VAE, fast decode at {vae_size} px, s |")
    print("|---|---:|---:|")
    for r in rows:
        print(f"| {r['dtype']} | {r['unet_s']} | {r['vae_decode_s']} |")
    fp32, bf16 = rows
    caps = torch.cpu.get_capabilities()
    print(f"bf16 speed-up: UNet {fp32['unet_s'] / bf16['unet_s']:.2f}x, "
          f"VAE {fp32['vae_decode_s'] / bf16['vae_decode_s']:.2f}x "
          f"(native bf16: {cpu_has_fast_bf16()}, AMX: {caps.get('amx_bf16', False)})")
    report = dict(benchmark="cpu_dtype", date=date.today().isoformat(),
                  machine=f"{platform.processor() or platform.machine()}, "
                          f"{torch.get_num_threads()} threads",
                  native_bf16=cpu_has_fast_bf16(), amx=caps.get("amx_bf16", False),
                  torch=torch.__version__, unet=name,
                  unet_size=args.unet_size, vae_size=vae_size, runs=runs, results=rows)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
