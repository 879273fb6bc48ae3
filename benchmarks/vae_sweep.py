"""The VAE attention's sweep above 4096 px: time and error against the whole attention.

The trained tiny VAE, bf16, 2048 px tiles, `stats="fast"`, on a held-out photo resized to
`--size` px wide. An untiled 8K decode does not fit 24 GB, so the reference is the same tiled
decode with the attention run whole (GLOBAL_TOKENS raised): only the attention differs.

    python benchmarks/vae_sweep.py prep                 # latents: the photo, tiled encode
    python benchmarks/vae_sweep.py ref                  # the reference decode (slow)
    python benchmarks/vae_sweep.py run SWEEP_REACH=96   # a decode with module constants set

Files go to --dir (default /tmp); `run` appends a JSON line to --out.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("mode", choices=["prep", "ref", "run"])
    ap.add_argument("set", nargs="*", help="hires.vae_attention constants, NAME=int")
    ap.add_argument("--size", type=int, default=8192)
    ap.add_argument("--photo", default="chelsea")
    ap.add_argument("--dir", type=Path, default=Path("/tmp"))
    ap.add_argument("--out", type=Path,
                    default=Path(__file__).parent / "results" / "vae-sweep.jsonl",
                    help="the JSON lines `run` appends to (default: results/ beside this script)")
    args = ap.parse_args()

    from hires import vae as tiled
    from hires import vae_attention
    from hires.tiny import tiny_vae

    vae = tiny_vae(trained=True).to(torch.bfloat16).eval()
    base = args.dir / f"sweep-{args.photo}-{args.size}"
    if args.mode == "prep":
        from photos import resized

        pixels = resized(args.photo, width=args.size, multiple=8)
        torch.save(tiled.encode(vae, pixels, tile=2048), f"{base}-z.pt")
        return
    z = torch.load(f"{base}-z.pt")
    if args.mode == "ref":
        vae_attention.GLOBAL_TOKENS = 1 << 40
    for item in args.set:
        name, value = item.split("=")
        setattr(vae_attention, name, int(value))
    start = time.perf_counter()
    image = tiled.decode(vae, z, tile=2048)
    seconds = time.perf_counter() - start
    if args.mode == "ref":
        np.save(f"{base}-ref.npy", image)
        print(f"reference: {seconds:.1f} s")
        return
    diff = np.abs(image.astype(np.int16) - np.load(f"{base}-ref.npy"))
    row = {"photo": args.photo, "size": args.size, "set": args.set, "seconds": round(seconds, 1),
           "max": int(diff.max()), "mean": round(float(diff.mean()), 4),
           "px_over_5": int((diff.max(-1) > 5).sum()),
           "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 2),
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    print(json.dumps(row))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("a") as f:
        f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
