"""Does more free RAM ever plan a slower job? The planner's estimate across `--ram`.

    python benchmarks/ram_sweep.py --out benchmarks/results/ram-sweep.json

Each row is one size, card and GPU budget (`hires plan --size N --gpu CARD --vram V --ram R
--disk 100` for each R): the estimated seconds at each amount of free RAM, and the most any
step up in RAM made the plan slower. Estimates from the planner's model, not measurements.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from hires.dry_run import dry_run
from hires.job import Job
from hires.plan import PlanError

# (size, --gpu, --vram): small budgets, where the VAE keeps outputs in RAM and maps wait there
CASES = [(4096, "h100", 8), (8192, "h100", 8), (8192, "h100", 16), (8192, "4090", 8),
         (6144, "4090", 12), (16384, "h100", 12), (16384, "h100", 24), (16384, "4090", 24),
         (16384, "l40s", 48), (16384, "a100", 40)]
RAMS = [16, 24, 32, 48, 56, 64, 96, 128]


def seconds(size: int, card: str, vram: float, ram: float) -> float | None:
    job = Job(width=size, height=size, vram=vram, ram=ram, disk=100)
    try:
        return dry_run(job, card).plan.seconds
    except PlanError:
        return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ram", type=float, nargs="+", default=RAMS)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    rows, started = [], time.time()
    print("| size | `--gpu` | `--vram` | " + " | ".join(f"{r:g} GiB" for r in args.ram)
          + " | worst step up |")
    print("|---" * (len(args.ram) + 4) + "|")
    for size, card, vram in CASES:
        times = [seconds(size, card, vram, ram) for ram in args.ram]
        known = [t for t in times if t is not None]
        # A refusal (None) before a plan is no slowdown; a plan after one is compared with
        # the plans before it.
        worst = max((b / a - 1 for a, b in zip(known, known[1:])), default=0.0)
        rows.append({"size": size, "gpu": card, "vram": vram, "ram": args.ram,
                     "seconds": times, "worst_slowdown": max(worst, 0.0)})
        cells = " | ".join("refused" if t is None else f"{t:.1f}" for t in times)
        print(f"| {size} | {card} | {vram:g} | {cells} | {100 * max(worst, 0.0):.2f} % |")
    print(f"({time.time() - started:.0f} s)")
    if args.out:
        args.out.write_text(json.dumps({"cases": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
