"""Where the tiled VAE's time goes on a GPU: torch.profiler over one decode and one encode.

benchmarks/gpu.py measured the full SDXL VAE (bf16, random weights) on an H200 at 21-113 TFLOP/s
of the work it ran, against about 250 for the UNet: this says which ops and how much host time.

    python benchmarks/vae_profile.py --size 8192 --out DIR   # a GPU: the SDXL VAE, bf16
    python benchmarks/vae_profile.py --smoke --out DIR       # CPU: the tiny VAE, 512 px

Writes DIR/vae-profile.txt (per pass: wall seconds, then the ops by device time and by host
time) and DIR/vae-profile.json (the top ops of each).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # run from a bare checkout: hires need not be installed

from hires import vae as tiled  # noqa: E402


def build(smoke: bool, device: torch.device):
    """The VAE to profile: the tiny trained one on CPU, else SDXL's config, random, bf16."""
    if smoke:
        from hires.tiny import tiny_vae

        return tiny_vae(trained=True).eval()
    from diffusers import AutoencoderKL

    from hires.sdxl import SDXL_VAE_CONFIG

    config = {k: v for k, v in SDXL_VAE_CONFIG.items() if not k.startswith("_")}
    with torch.device(device):
        vae = AutoencoderKL(**config)
    # Channels-last weights, as hires.models.tune_for_cuda sets them for a run.
    return vae.to(torch.bfloat16, memory_format=torch.channels_last).eval()


def top_ops(prof, key: str, n: int = 25) -> list[dict]:
    """The `n` ops with the most `key` time (self_device_time_total or self_cpu_time_total)."""
    rows = sorted(prof.key_averages(), key=lambda e: getattr(e, key, 0), reverse=True)[:n]
    return [{"op": e.key, "calls": e.count, "self_ms": round(getattr(e, key, 0) / 1e3, 2),
             "cpu_total_ms": round(e.cpu_time_total / 1e3, 2)} for e in rows]


def tables(prof, device_key: str) -> tuple[str, str]:
    """The profile's ops as text tables: by device time, then by host time."""
    try:
        by_device = prof.key_averages().table(sort_by=device_key, row_limit=30)
    except (AttributeError, KeyError, ValueError):  # an older torch's name for it
        by_device = prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=30)
    return by_device, prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20)


def write(out: Path, stem: str, lines: list[str], report: dict) -> None:
    """OUT/STEM.txt (the tables) and OUT/STEM.json (the report)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.txt").write_text("\n".join(lines))
    (out / f"{stem}.json").write_text(json.dumps(report, indent=1))
    print(f"wrote {out / f'{stem}.txt'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="CPU, the tiny VAE, 512 px")
    ap.add_argument("--size", type=int, default=8192, help="image side, px")
    ap.add_argument("--tile", type=int, default=2048, help="VAE tile, px (the planner's)")
    ap.add_argument("--out", type=Path, default=Path("."))
    args = ap.parse_args()
    size, tile = (512, 256) if args.smoke else (args.size, args.tile)
    device = torch.device("cpu" if args.smoke else "cuda")
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
    vae = build(args.smoke, device)
    latents = torch.randn(1, 4, size // 8, size // 8, device=device)
    image = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    device_key = "self_device_time_total" if cuda else "self_cpu_time_total"

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    passes = {"decode": lambda: tiled.decode(vae, latents, tile=tile),
              "encode": lambda: tiled.encode(vae, image, tile=tile)}
    lines, report = [], {"size": size, "tile": tile, "device": str(device),
                         "gpu": torch.cuda.get_device_name() if cuda else None,
                         "torch": torch.__version__, "passes": {}}
    with torch.inference_mode():
        tiled.decode(vae, latents[..., :tile // 8, :tile // 8], tile=tile)  # warm-up: kernels
        for name, run in passes.items():
            sync()
            start = time.perf_counter()
            run()  # unprofiled first: the profiler's own overhead slows the host
            sync()
            plain = time.perf_counter() - start
            start = time.perf_counter()
            with profile(activities=activities) as prof:
                run()
                sync()
            seconds = time.perf_counter() - start
            by_device, by_host = tables(prof, device_key)
            lines += [f"## {name} {size} px, {tile} px tiles: {plain:.2f} s ({seconds:.2f} s "
                      "profiled)",
                      "### by device time", by_device, "### by host time", by_host, ""]
            report["passes"][name] = {"seconds": round(seconds, 3),
                                      "unprofiled_seconds": round(plain, 3),
                                      "by_device": top_ops(prof, device_key),
                                      "by_host": top_ops(prof, "self_cpu_time_total")}
            print(f"{name}: {plain:.2f} s ({seconds:.2f} s profiled)", flush=True)
    write(args.out, "vae-profile", lines, report)


if __name__ == "__main__":
    main()
