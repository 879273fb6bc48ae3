"""Where a guided UNet evaluation's time goes on a GPU: torch.profiler over one CFG evaluation.

benchmarks/gpu.py measured SDXL's UNet with LinFusion (fp16, random weights) on an H200 at
32 TFLOP/s in the 1K base stage against 250-270 from 4K up: this says whether small maps are
bound by the host (launches, Python) or by some kernels, and which.

    python benchmarks/unet_profile.py --latents 128 512 --out DIR   # a GPU: SDXL + LinFusion
    python benchmarks/unet_profile.py --smoke --out DIR             # CPU: the tiny model

Writes DIR/unet-profile.txt (per latent size: seconds per evaluation unprofiled and
profiled, then the ops by device time and by host time) and DIR/unet-profile.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # run from a bare checkout: hires need not be installed

from vae_profile import tables, top_ops, write  # noqa: E402


def components(smoke: bool):
    """The UNet to time and a prompt's conditioning: with `smoke` the tiny model on the CPU,
    else SDXL + LinFusion-XL shapes on CUDA (fp16, random weights)."""
    from hires.job import Job
    from hires.models import load
    from hires.pipeline import encode_prompt, plan_for
    from hires.sdxl import random_components

    comps = (load("tiny", device="cpu") if smoke
             else random_components(torch.device("cuda"), torch.float16))
    job = Job(prompt="a lighthouse on a cliff at dawn", width=1024, height=1024, seed=0)
    with torch.inference_mode():
        return comps, encode_prompt(comps, job, plan_for(job, comps))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="CPU, the tiny model, 16 latent px")
    ap.add_argument("--latents", type=int, nargs="+", default=[128, 512],
                    help="latent sides (128: the 1K base stage)")
    ap.add_argument("--repeats", type=int, default=5, help="unprofiled evaluations, timed")
    ap.add_argument("--out", type=Path, default=Path("."))
    args = ap.parse_args()

    from hires.denoiser import Denoiser

    comps, cond = components(args.smoke)
    device = comps.device
    cuda = device.type == "cuda"
    latents = [16] if args.smoke else args.latents
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    device_key = "self_device_time_total" if cuda else "self_cpu_time_total"

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    lines, report = [], {"device": str(device),
                         "gpu": torch.cuda.get_device_name() if cuda else None,
                         "torch": torch.__version__, "dtype": str(comps.dtype), "latents": {}}
    denoiser = Denoiser(comps.unet, cond, 5.0)
    for side in latents:
        x = torch.randn(1, 4, side, side, generator=torch.Generator().manual_seed(0))
        x = x.to(device, comps.dtype)
        with torch.inference_mode():
            denoiser.eps(x, 3.0, 400)  # warm-up: kernels, cuDNN plans
            sync()
            start = time.perf_counter()
            for _ in range(args.repeats):
                denoiser.eps(x, 3.0, 400)
            sync()
            plain = (time.perf_counter() - start) / args.repeats
            start = time.perf_counter()
            with profile(activities=activities) as prof:
                denoiser.eps(x, 3.0, 400)
                sync()
            profiled = time.perf_counter() - start
        table, by_host = tables(prof, device_key)
        lines += [f"## latent {side}^2: {plain:.4f} s per guided evaluation ({profiled:.4f} s "
                  "profiled)", "### by device time", table, "### by host time", by_host, ""]
        report["latents"][str(side)] = {
            "seconds_per_evaluation": round(plain, 5), "profiled_seconds": round(profiled, 5),
            "by_device": top_ops(prof, device_key), "by_host": top_ops(prof, "self_cpu_time_total")}
        print(f"latent {side}^2: {plain:.4f} s per guided evaluation", flush=True)
    write(args.out, "unet-profile", lines, report)


if __name__ == "__main__":
    main()
