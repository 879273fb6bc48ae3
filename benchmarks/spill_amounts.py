"""How much RAM the VAE keeps outputs in: the planner's ladder against all or nothing.

    python benchmarks/spill_amounts.py --out benchmarks/results/spill-amounts-16k.json

The default 16K job's estimated time on each card `--gpu` knows, with 32, 64 and 128 GB of
RAM free, planned twice: as hires plans it (`hires.costs.spill_amounts`: the fastest amount up
to the budget) and as it did before (the whole budget or none). Estimates, not measurements.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from hires import costs
from hires.dry_run import dry_run
from hires.gpus import GPUS
from hires.job import Job
from hires.plan import PlanError


def seconds(card: str, size: int, ram: float) -> float | None:
    try:
        return dry_run(Job(width=size, height=size, ram=ram), card).plan.seconds
    except PlanError:
        return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=16384)
    ap.add_argument("--ram", type=float, nargs="+", default=[32, 64, 128])
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    ladder = costs.spill_amounts
    rows: dict[str, dict[str, list[float | None]]] = {}
    for amounts in (ladder, lambda budget: [budget]):
        costs.spill_amounts = amounts
        for card in GPUS:
            for ram in args.ram:
                rows.setdefault(card, {}).setdefault(f"{ram:g}", []).append(
                    seconds(card, args.size, ram))
    costs.spill_amounts = ladder
    print("| `--gpu` | RAM free | all or nothing | fastest amount |")
    print("|---|---|---:|---:|")
    for card, cells in rows.items():
        for ram, (fastest, whole) in cells.items():
            if fastest is not None:
                print(f"| {card} | {ram} GB | ~{whole:.0f} s | ~{fastest:.0f} s |")
    if args.out:
        data = {card: {ram: {"fastest": f, "whole_or_none": w} for ram, (f, w) in cells.items()}
                for card, cells in rows.items()}
        args.out.write_text(json.dumps({"size": args.size, "cards": data}, indent=1) + "\n")


if __name__ == "__main__":
    main()
