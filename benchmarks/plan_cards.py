"""A 16K job on each card `--gpu` names, from the planner's model: does it fit, and how long.

    python benchmarks/plan_cards.py                     # 16384 px; 16, 32 and 64 GiB of free RAM
    python benchmarks/plan_cards.py --size 8192 --ram 16 32 --disk 0 --out cards.json

Each cell is `hires plan --size N --gpu CARD --ram R --disk D` (SDXL + LinFusion-XL, 50 steps,
the card's memory less the CUDA context; RAM free as hires starts; D GB of scratch disk for
parked maps the RAM cannot hold): the estimated time with the VAE's share and the RAM the plan
fills (while denoising: parked maps and offloaded weights / the VAE's outputs kept there, at
another time) and the maps that wait on the disk, or the largest size that fits. Prints the
Markdown table in README.md ("Will it run on my card?") and writes JSON; a card without
native bf16 gets a second row with a VAE made for fp16. Estimates, not
measurements: times assume each card reaches hires.gpus.EFFICIENCY of its data-sheet bf16 peak.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from hires.dry_run import dry_run
from hires.gpus import GPUS
from hires.job import Job
from hires.models import FP16_VAE
from hires.plan import PlanError, largest_fitting

FP16_ROW = f"with `--vae {FP16_VAE}`"


def cell(card: str, size: int, ram: float, vae: str | None = None, disk: float = 0.0) -> dict:
    """One card at one RAM size: the plan's figures, or the largest size that fits."""
    try:
        p = dry_run(Job(width=size, height=size, ram=ram, disk=disk, vae=vae), card).plan
    except PlanError as e:
        fits = largest_fitting(size, size, **e.plan_kwargs)
        return {"fits": False, "largest": fits[0] if fits else None, "ram_short": e.host}
    return {"fits": True, "seconds": round(p.seconds, 1), "vae_seconds": round(p.vae_seconds, 1),
            "peak_gib": round(p.peak_bytes / 1024**3, 2),
            "ram_gib": round(max(s.cost.host_bytes - s.cost.disk_bytes for s in p.stages) / 1024**3,
                             1),
            "vae_ram_gib": round(p.vae_spill_bytes / 1024**3, 1),
            "disk_gb": round(max(s.cost.disk_bytes for s in p.stages) / 1e9, 1)}


def text(c: dict) -> str:
    if c["fits"]:
        minutes = f"{c['seconds'] / 60:.0f} min" if c["seconds"] >= 600 else f"{c['seconds']:.0f} s"
        share = f"~{minutes} (VAE {100 * c['vae_seconds'] / c['seconds']:.0f} %)"
        if not c["ram_gib"] and not c["vae_ram_gib"]:
            return share
        disk = f", disk {c['disk_gb']:.0f} GB" if c.get("disk_gb") else ""
        return share + f", RAM {c['ram_gib']:.0f} / {c['vae_ram_gib']:.0f} GiB" + disk
    short = "RAM" if c["ram_short"] else "GPU memory"
    return f"no ({short}); {c['largest']} px fits" if c["largest"] else f"no ({short})"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=16384)
    ap.add_argument("--ram", type=float, nargs="+", default=[16, 32, 64],
                    help="GiB of free RAM, one column each")
    ap.add_argument("--disk", type=float, default=100.0,
                    help="GB of scratch disk for parked maps the RAM cannot hold (0: none)")
    ap.add_argument("--cards", nargs="+", choices=list(GPUS), default=list(GPUS))
    ap.add_argument("--out", type=Path, help="write the cells as JSON here")
    args = ap.parse_args(argv)
    rows = {}
    for card in args.cards:
        rows[card] = {f"{ram:g}": cell(card, args.size, ram, disk=args.disk)
                      for ram in args.ram}
        if not GPUS[card].bf16:  # its VAE runs in fp32 unless it is made for fp16
            rows[f"{card} {FP16_ROW}"] = {f"{ram:g}": cell(card, args.size, ram, FP16_VAE,
                                                           args.disk) for ram in args.ram}
    head = " | ".join(f"{ram:g} GiB of RAM free" for ram in args.ram)
    print(f"| `--gpu` | memory | {head} |")
    print("|---|---|" + "---|" * len(args.ram))
    for card, cells in rows.items():
        row = " | ".join(text(cells[f"{ram:g}"]) for ram in args.ram)
        name = card.removesuffix(f" {FP16_ROW}")
        print(f"| {card} | {GPUS[name].memory_gib:g} GiB | {row} |")
    if args.out:
        args.out.write_text(json.dumps({"size": args.size, "disk_gb": args.disk, "cards": rows},
                                       indent=1) + "\n")


if __name__ == "__main__":
    main()
