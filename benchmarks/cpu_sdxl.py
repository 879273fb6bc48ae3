"""A whole SDXL job on the CPU: does the planner's budget let it run, and does it fit?

Builds full-size SDXL + LinFusion-XL with random weights in fp32 on the CPU (nothing
downloaded), plans the job as `hires gen --device cpu` does after loading, runs it, and prints
the budget, each stage's planned peak and the process's measured peak resident memory:

    python benchmarks/cpu_sdxl.py --size 2048 --steps 2
    python benchmarks/cpu_sdxl.py --smoke   # the tiny model, for a quick check of the script
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import date
from pathlib import Path

import torch

GIB = 1024**3


def run(size: int, steps: int, smoke: bool) -> dict:
    """Build, plan and run one job; the figures as a dict."""
    from hires.job import Job
    from hires.memory import peak_rss, ram_bytes
    from hires.pipeline import budget_for, generate, plan_for

    start = time.perf_counter()
    if smoke:
        from hires.models import load

        components = load("tiny", dtype="fp32", device="cpu")
    else:
        from hires.sdxl import random_components

        components = random_components(torch.device("cpu"), torch.float32)
    built = time.perf_counter() - start
    job = Job(prompt="a lighthouse", width=size, height=size, steps=steps, seed=1,
              device="cpu", dtype="fp32", **({"model": "tiny"} if smoke else {}))
    budget = budget_for(job, components)
    plan = plan_for(job, components)
    before = peak_rss()
    start = time.perf_counter()
    generate(job, components=components, plan=plan)
    return {
        "size": size, "steps": steps, "model": "tiny" if smoke else "sdxl-random fp32",
        "ram_total_gib": round(ram_bytes()[0] / GIB, 1), "budget_gib": round(budget / GIB, 2),
        "build_seconds": round(built, 1), "run_seconds": round(time.perf_counter() - start, 1),
        "stages": [{"index": s.index, "width": s.width, "steps": len(s.timesteps),
                    "strategy": s.strategy.label,
                    "planned_peak_gib": round(s.cost.peak_bytes / GIB, 2)} for s in plan.stages],
        "rss_before_run_gib": round(before / GIB, 2), "peak_rss_gib": round(peak_rss() / GIB, 2),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, "
                   f"torch {torch.__version__}", "date": date.today().isoformat(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=1)
    ap.add_argument("--smoke", action="store_true", help="the tiny model at 512 px")
    ap.add_argument("--out", default=Path(__file__).parent / "results" / "cpu-sdxl.json")
    args = ap.parse_args()
    report = run(512 if args.smoke else args.size, args.steps, args.smoke)
    print(f"{report['model']}, {report['size']} px, {report['steps']} step(s): budget "
          f"{report['budget_gib']} GiB of {report['ram_total_gib']} GiB RAM")
    for s in report["stages"]:
        print(f"  stage {s['index']}: {s['width']} px, {s['steps']} step(s), {s['strategy']}, "
              f"planned peak {s['planned_peak_gib']} GiB")
    print(f"ran in {report['run_seconds']} s (built in {report['build_seconds']} s); peak "
          f"resident {report['peak_rss_gib']} GiB ({report['rss_before_run_gib']} before the run)")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
