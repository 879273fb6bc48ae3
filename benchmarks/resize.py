"""The x2 Lanczos resize between stages: Pillow's one whole `Image.resize` (single-threaded)
against hires.images.resize_lanczos (bands of rows on threads, bit for bit the same).

The source is four scikit-image photos, upscaled (bicubic) to fill a 2 x 2 grid of the size
asked for, then resized x2 once each way (seconds per resize are well above timer noise); the
outputs are compared byte for byte. The 8192 -> 16384 case holds the 16K image twice, each
1.07 GB as Pillow stores RGB (4 bytes a pixel; 805 MB as raw samples), plus the 8K source.

    python benchmarks/resize.py                        # 4096 -> 8192 and 8192 -> 16384
    python benchmarks/resize.py --sizes 4096 --methods whole banded
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np
from photos import photo
from PIL import Image

from hires.images import resize_lanczos
from hires.strips import cores

METHODS = {
    "whole": "Image.resize(size, Image.LANCZOS): one call, one thread (hires until 2026-12-04)",
    "banded": "hires.images.resize_lanczos: bands of rows on every core (now)",
    "banded-1": "the same bands on one thread: what the bands cost in themselves",
}


def grid(size: int) -> Image.Image:
    """A size x size RGB image: four photos, upscaled to fill a 2 x 2 grid (smooth noise where
    scikit-image is missing, as on a lent GPU: a resize's time does not depend on content)."""
    half = size // 2
    try:
        sources = [photo(name) for name in ("astronaut", "coffee", "chelsea", "rocket")]
    except ImportError:
        rng = np.random.default_rng(0)
        sources = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(4)]
    tiles = [np.asarray(Image.fromarray(s).resize((half, half), Image.BICUBIC))
             for s in sources]
    return Image.fromarray(np.concatenate([np.concatenate(tiles[:2], 1),
                                           np.concatenate(tiles[2:], 1)], 0))


def resize(image: Image.Image, size: tuple[int, int], method: str) -> Image.Image:
    """`image` resized to `size` one way."""
    if method == "whole":
        return image.resize(size, Image.Resampling.LANCZOS)
    return resize_lanczos(image, size, threads=1 if method == "banded-1" else None)


def same(a: Image.Image, b: Image.Image, rows: int = 1024) -> bool:
    """Whether two images hold the same bytes (compared a band at a time: no 1 GB copies)."""
    return a.size == b.size and a.mode == b.mode and all(
        a.crop((0, y, a.width, y + rows)).tobytes() == b.crop((0, y, b.width, y + rows)).tobytes()
        for y in range(0, a.height, rows))


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what platform says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[4096, 8192],
                    help="source sides, each resized to twice that")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--out", type=Path, default=None,
                    help="JSON (default results/resize-cpu.json)")
    args = ap.parse_args()

    rows = []
    load_before = os.getloadavg()
    for side in args.sizes:
        t0 = time.perf_counter()
        image = grid(side)
        size = (2 * side, 2 * side)
        print(f"{side} -> {2 * side}: source made in {time.perf_counter() - t0:.1f} s",
              flush=True)
        reference = None
        for method in args.methods:
            wall, cpu = time.perf_counter(), time.process_time()
            out = resize(image, size, method)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            if reference is None:
                reference, identical = out, True
            else:
                identical = same(out, reference)
            rows.append({"source": side, "output": 2 * side, "method": method,
                         "wall_s": round(wall, 2), "cpu_s": round(cpu, 2),
                         "identical": identical})
            print(f"  {method:9s} wall {wall:6.2f} s  cpu {cpu:6.2f} s  "
                  f"{'identical' if identical else 'DIFFERENT'}", flush=True)
            del out
        del image, reference
    print("\n| resize | method | wall s | CPU s | speedup (wall) | identical |")
    print("|---|---|---:|---:|---:|---|")
    for r in rows:
        base = next((b for b in rows if b["source"] == r["source"] and b["method"] == "whole"),
                    None)
        speedup = f"{base['wall_s'] / r['wall_s']:.2f}x" if base else "-"
        print(f"| {r['source']} -> {r['output']} | {r['method']} | {r['wall_s']} | "
              f"{r['cpu_s']} | {speedup} | {r['identical']} |")
    out = args.out or Path(__file__).parent / "results" / "resize-cpu.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "benchmark": "resize", "date": date.today().isoformat(),
        "command": " ".join(["python"] + sys.argv), "machine": platform.platform(),
        "cpu_count": os.cpu_count(), "cores_usable": cores(), "cpu_model": cpu_model(),
        "pillow": Image.__version__, "numpy": np.__version__,
        "load_average_before": load_before, "load_average_after": os.getloadavg(),
        "methods": METHODS, "results": rows,
    }, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
