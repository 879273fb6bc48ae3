"""One UNet evaluation at a huge latent, diffusers' forward vs hires' row bands (hires.lean).

Each mode runs in its own process, so its peak memory is its own: peak RSS (VmHWM) on CPU,
`torch.cuda.max_memory_allocated` on a GPU. Both modes chunk the feed-forward only, to isolate
the row bands (the pipeline's big stages run whole transformer blocks over token chunks,
hires.token_chunks).

    python benchmarks/unet_memory.py                           # tiny, CPU, 2048^2 latent (16K)
    python benchmarks/unet_memory.py --dilation 64             # the 16K stage's global pass
    python benchmarks/unet_memory.py --full --device cuda      # full-size SDXL, fp16
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from contextlib import nullcontext
from datetime import date
from pathlib import Path

import psutil
import torch

GB = 1e9


def vm_hwm() -> int:
    """Peak resident memory of this process so far, in bytes (Linux)."""
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def one_evaluation(args: argparse.Namespace) -> dict:
    """Load the model, run one UNet call at the latent size, report time and peak memory."""
    from hires.denoiser import dilated_convs
    from hires.lean import lean_unet
    from hires.token_chunks import token_chunks

    if args.full:
        from hires.sdxl import random_components

        comps = random_components(torch.device(args.device), torch.float16)
    else:
        from hires.models import load

        comps = load("tiny", device=args.device)
    unet, dev, dtype = comps.unet, comps.device, comps.dtype
    g = torch.Generator().manual_seed(0)
    side = args.latent
    x = torch.randn(1, 4, side, side, generator=g).to(dev, dtype)
    emb = torch.randn(1, 77, unet.config.cross_attention_dim, generator=g).to(dev, dtype)
    pooled = (unet.config.projection_class_embeddings_input_dim
              - 6 * unet.config.addition_time_embed_dim)
    px = float(side * 8)
    added = {"text_embeds": torch.randn(1, pooled, generator=g).to(dev, dtype),
             "time_ids": torch.tensor([[px, px, 0, 0, px, px]], device=dev, dtype=dtype)}
    before = vm_hwm() if dev.type == "cpu" else torch.cuda.memory_allocated(dev)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    lean = lean_unet(unet) if args.mode == "lean" else nullcontext()
    t0 = time.perf_counter()
    with (torch.inference_mode(), dilated_convs(unet, args.dilation),
          token_chunks(unet, True), lean):
        unet(x, torch.tensor(500.0, device=dev), encoder_hidden_states=emb,
             added_cond_kwargs=added, return_dict=False)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    seconds = time.perf_counter() - t0
    peak = vm_hwm() if dev.type == "cpu" else torch.cuda.max_memory_allocated(dev)
    return {"mode": args.mode, "dilation": args.dilation, "seconds": round(seconds, 1),
            "before_gb": round(before / GB, 3), "peak_gb": round(peak / GB, 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--latent", type=int, default=2048, help="latent side (pixels / 8)")
    ap.add_argument("--dilation", type=int, default=1,
                    help="dilate the 3x3 convs, as the global pass does (stage ratio: 64 at 16K)")
    ap.add_argument("--full", action="store_true", help="full-size SDXL, random weights")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--mode", choices=["diffusers", "lean"], help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None, help="JSON path (default benchmarks/results/...)")
    args = ap.parse_args()
    if args.mode:  # a child: one measurement, as JSON on the last line
        print(json.dumps(one_evaluation(args)))
        return

    rows = []
    for mode in ("diffusers", "lean"):
        cmd = [sys.executable, __file__, "--mode", mode, "--latent", str(args.latent),
               "--dilation", str(args.dilation), "--device", args.device]
        cmd += ["--full"] if args.full else []
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode:
            sys.exit(f"{mode} run failed:\n{done.stderr[-2000:]}")
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        r = rows[-1]
        print(f"{r['mode']:>10}: {r['seconds']:>7} s, peak {r['peak_gb']:.2f} GB "
              f"(before the call {r['before_gb']:.2f} GB)", flush=True)
    model = "sdxl-random" if args.full else "tiny"
    report = {
        "benchmark": "unet_memory", "date": date.today().isoformat(),
        "machine": f"{platform.machine()} {psutil.cpu_count()} cpus, "
                   f"{psutil.virtual_memory().total / 2**30:.0f} GiB",
        "torch": torch.__version__, "model": model, "device": args.device,
        "latent": args.latent, "dilation": args.dilation,
        "memory": "VmHWM (peak RSS)" if args.device == "cpu" else "cuda max_memory_allocated",
        "rows": rows,
    }
    suffix = f"-dilation{args.dilation}" if args.dilation > 1 else ""
    out = Path(args.out or f"{Path(__file__).parent}/results/unet-memory-{model}-"
                           f"{torch.device(args.device).type}{suffix}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
