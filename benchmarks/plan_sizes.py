"""What sizes cost, from the planner's model: work, peak memory and time, fastest and leanest.

    python benchmarks/plan_sizes.py            # SDXL + LinFusion-XL, 50 steps, on an H100

Prints the Markdown table in README.md ("Sizes, memory and time"), each time with the VAE's share
of it. The fastest plan has room for everything (its memory aside); the smallest whole-GiB GPU
budget is planned as `hires plan --size N --gpu GPU --vram GIB --ram R --disk D` plans it (the
RAM it may keep the VAE's outputs in, park maps in and stream weights from), so a user who runs
that command sees the same time. Estimates, not measurements: times assume the GPU reaches
hires.gpus.EFFICIENCY of its peak bf16 throughput.
"""

from __future__ import annotations

import argparse

from hires.costs import sdxl_shape
from hires.dry_run import dry_run
from hires.gpus import rate_for
from hires.job import Job
from hires.plan import PlanError, make_plan

GIB = 1024**3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gpu", default="h100")
    ap.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048, 4096, 8192, 16384, 20000])
    ap.add_argument("--ram", type=float, default=64.0, help="GiB of RAM free as hires starts")
    ap.add_argument("--disk", type=float, default=100.0, help="GB of scratch disk")
    args = ap.parse_args()
    model, rate = sdxl_shape(), rate_for(args.gpu)
    print("| size | stages | work (PFLOP) | fastest plan: peak | est. time | smallest GPU budget "
          "| est. time there |")
    print("|---|---|---|---|---|---|---|")
    for size in args.sizes:
        fastest = make_plan(size, size, model=model, rate=rate)
        work = sum(s.cost.tflop for s in fastest.stages) / 1000
        for gib in range(2, 256):  # the smallest whole-GiB budget that fits
            job = Job(width=size, height=size, vram=gib, ram=args.ram, disk=args.disk)
            try:
                lean = dry_run(job, args.gpu).plan
                break
            except PlanError:
                continue
        print(f"| {size} | {len(fastest.stages)} | {work:.1f} | {fastest.peak_bytes / GIB:.1f} GiB "
              f"| {_time(fastest)} | {gib} GiB | {_time(lean)} |")


def _time(plan) -> str:
    """The plan's estimated time and the VAE's share of it."""
    return f"{plan.seconds:.0f} s (VAE {plan.vae_seconds:.0f} s)"


if __name__ == "__main__":
    main()
