"""What skipping the global pass below its weight floor saves, and how far it moves the image.

Two parts:
- the planner's projection for full SDXL + LinFusion-XL on a GPU (`--gpu`, `--vram`): UNet work
  and seconds of the default 1K -> N job with the floor at 0 (every global pass, as DemoFusion)
  and at hires' default (`hires.sampling.GLOBAL_FLOOR`);
- the tiny model on this machine (random UNet, trained VAE), the same job run with both floors
  from the same seed: each stage's UNet evaluations and denoise seconds, and the final images'
  difference in 8-bit steps. Random weights say nothing of picture quality; the difference shows
  the size of the change the skipped passes would have made with these weights.

    python benchmarks/global_floor.py --sizes 2048 4096 --out benchmarks/results/global-floor.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from hires.costs import sdxl_shape
from hires.gpus import GPUS, rate_for
from hires.job import Job
from hires.pipeline import generate
from hires.plan import make_plan
from hires.progress import Event
from hires.sampling import GLOBAL_FLOOR

GIB = 2**30


def projection(sizes: list[int], gpu: str, vram: float) -> list[dict]:
    """The planner's default job at each size, with every global pass and with the floor."""
    rows = []
    for size in sizes:
        for floor in (0.0, GLOBAL_FLOOR):
            p = make_plan(size, size, model=sdxl_shape(), budget=int(vram * GIB),
                          rate=rate_for(gpu), global_floor=floor)
            rows.append({"size": size, "floor": floor,
                         "global_steps": [s.global_steps for s in p.stages[1:]],
                         "steps": [s.steps for s in p.stages[1:]],
                         "unet_pflop": round(sum(s.cost.unet_tflop for s in p.stages) / 1e3, 2),
                         "pflop": round(sum(s.cost.tflop for s in p.stages) / 1e3, 2),
                         "seconds": round(p.seconds, 1)})
    return rows


def tiny_run(size: int, floor: float, steps: int, components) -> tuple[dict, np.ndarray]:
    """One tiny job; the denoise seconds per stage from the progress events."""
    marks: list[tuple[float, Event]] = []
    start = time.perf_counter()
    r = generate(Job(prompt="a lighthouse on a cliff at dawn", width=size, height=size,
                     steps=steps, seed=0, global_floor=floor), components=components,
                 progress=lambda e: marks.append((time.perf_counter(), e)))
    total = time.perf_counter() - start
    denoise: dict[int, float] = {}
    for (t0, e), (t1, _) in zip(marks, marks[1:] + [(start + total, None)]):
        if e.phase == "denoise":
            denoise[e.stage] = denoise.get(e.stage, 0.0) + t1 - t0
    row = {"size": size, "floor": floor, "seconds": round(total, 2),
           "stages": [{"size": f"{s.width}x{s.height}", "steps": s.steps,
                       "global_steps": p.global_steps if p.kind != "base" else 0,
                       "unet_evaluations": s.unet_evaluations,
                       "denoise_seconds": round(denoise.get(s.index, 0.0), 2)}
                      for s, p in zip(r.stages, r.plan.stages, strict=True)]}
    return row, np.asarray(r.image, dtype=np.int16)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[2048], help="tiny runs' sizes")
    ap.add_argument("--steps", type=int, default=50, help="base steps (the default job's 50)")
    ap.add_argument("--gpu", default="h200", choices=sorted(GPUS))
    ap.add_argument("--vram", type=float, default=139.0, help="GiB, for the projection")
    ap.add_argument("--out", default=None, help="JSON path")
    args = ap.parse_args()

    from hires.models import load

    report = {"benchmark": "global_floor", "started": datetime.now(timezone.utc).isoformat(
        timespec="seconds"), "machine": f"{platform.machine()} {torch.get_num_threads()} threads",
        "torch": torch.__version__, "floor": GLOBAL_FLOOR}
    report["projection"] = projection([4096, 8192, 16384], args.gpu, args.vram)
    print(f"SDXL + LinFusion-XL, default job, planner on {args.gpu} ({args.vram:g} GiB):")
    print(f"{'size':>6} {'floor':>6} {'global steps':>16} {'UNet PFLOP':>10} {'PFLOP':>7} {'s':>6}")
    for r in report["projection"]:
        print(f"{r['size']:>6} {r['floor']:>6} {str(r['global_steps']):>16} "
              f"{r['unet_pflop']:>10} {r['pflop']:>7} {r['seconds']:>6}")

    components = load("tiny")
    report["tiny"] = []
    print(f"\ntiny model, CPU, {args.steps} base steps, seed 0:")
    for size in args.sizes:
        rows, images = {}, {}
        for floor in (0.0, GLOBAL_FLOOR):
            rows[floor], images[floor] = tiny_run(size, floor, args.steps, components)
        diff = np.abs(images[GLOBAL_FLOOR] - images[0.0])
        for floor, row in rows.items():
            report["tiny"].append({**row, "max_diff": int(diff.max()),
                                   "mean_diff": round(float(diff.mean()), 4)})
            evals = [s["unet_evaluations"] for s in row["stages"]]
            den = [s["denoise_seconds"] for s in row["stages"]]
            print(f"{size:>6} floor {floor:<5} evals {evals} denoise s {den} total "
                  f"{row['seconds']} s")
        print(f"{size:>6} the two images: max {int(diff.max())}, mean {diff.mean():.4f} "
              "8-bit steps")
    report["ended"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
