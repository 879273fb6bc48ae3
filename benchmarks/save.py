"""Saving a huge PNG or TIFF: Pillow's encoders against hires' parallel strip writers.

The image is realistic, not flat colour: four scikit-image photos, upscaled (bicubic) to fill a
2 x 2 grid of the requested size, with Gaussian noise (sigma 3 levels) like a generated image's
fine texture; `--kind smooth` leaves the noise out. Each case saves through the same metadata
(the A1111 parameters and the job JSON) into a temporary file, once (a 16K save is seconds to a
minute, well above timer noise), and reports wall time, process CPU time (all threads) and size.

    python benchmarks/save.py                               # 8192 and 16384, photo
    python benchmarks/save.py --sizes 4096 --kinds photo smooth --methods pillow-l1 strips
    python benchmarks/save.py --methods pillow-tiff tiff-strips     # TIFF: libtiff against ours
    python benchmarks/save.py --methods strips strips-16 tiff-strips tiff-strips-16  # --depth 16

The 16-bit cases (`--depth 16`) save the same photo at 16 bits a sample with random low bytes,
as a decoder's float output has: the worst case for compression.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import zlib
from datetime import date
from pathlib import Path

import numpy as np
from PIL import Image

from hires import output, png
from hires.job import Job

METHODS = {
    "pillow-l1": "Pillow, adaptive filters, zlib level 1 (hires until 2026-12-01)",
    "pillow-l6": "Pillow's default (zlib level 6)",
    "strips": "hires.png.write_png: Up filter, zlib level 1 RLE, strips in threads (now)",
    "strips-lz": "the same strips, zlib level 1 with LZ77 matches (Z_DEFAULT_STRATEGY)",
    "pillow-tiff": "Pillow's libtiff, deflate, no predictor (hires until 2026-12-03)",
    "tiff-strips": "hires.tiff.write_tiff: predictor 2, zlib level 1 RLE, strips in threads",
    "strips-16": "hires.png.write_png at 16 bits a sample (gen --depth 16)",
    "tiff-strips-16": "hires.tiff.write_tiff at 16 bits a sample (gen --depth 16)",
}


def photo(size: int, noise: float = 3.0, seed: int = 0) -> Image.Image:
    """A size x size RGB image from four upscaled photos, plus Gaussian noise."""
    from skimage import data

    half = size // 2
    tiles = [np.asarray(Image.fromarray(p).resize((half, half), Image.BICUBIC))
             for p in (data.astronaut(), data.coffee(), data.chelsea(), data.rocket())]
    image = np.concatenate([np.concatenate(tiles[:2], 1), np.concatenate(tiles[2:], 1)], 0)
    if noise:
        rng = np.random.default_rng(seed)
        for rows in range(0, size, 1024):  # in bands: an int16 copy of 16K would be 1.6 GB
            band = image[rows:rows + 1024].astype(np.int16)
            band += rng.normal(0, noise, band.shape).round().astype(np.int16)
            image[rows:rows + 1024] = band.clip(0, 255).astype(np.uint8)
    return Image.fromarray(image)


def sixteen(image: Image.Image, seed: int = 0) -> np.ndarray:
    """The image at 16 bits a sample: each 8-bit level times 257, low byte random (+-128)."""
    eight = np.asarray(image)
    out = np.empty(eight.shape, np.uint16)
    rng = np.random.default_rng(seed)
    for rows in range(0, len(eight), 1024):  # in bands, as in photo()
        band = eight[rows:rows + 1024].astype(np.int32) * 257
        band += rng.integers(-128, 129, band.shape, dtype=np.int32)
        out[rows:rows + 1024] = band.clip(0, 65535)
    return out


def save(image: Image.Image, method: str, folder: Path, metadata: dict,
         pixels16: np.ndarray | None = None) -> Path:
    """Save `image` one way (the 16-bit methods save `pixels16`); returns the file."""
    path = folder / f"{method}.png"
    if method.endswith("-16"):
        path = path.with_suffix(".tiff" if method.startswith("tiff") else ".png")
        return output.save_image(image, path, metadata=metadata, overwrite=True,
                                 pixels16=pixels16)
    if method in ("pillow-tiff", "tiff-strips"):
        path = path.with_suffix(".tiff")
        if method == "tiff-strips":
            return output.save_image(image, path, metadata=metadata, overwrite=True)
        with open(path, "wb") as f:
            image.save(f, format="TIFF", **output._encoder_args(image, "tiff", metadata, 95))
        return path
    if method == "strips":
        return output.save_image(image, path, metadata=metadata, overwrite=True)
    kwargs = output._encoder_args(image, "png", metadata, 95)
    if method == "strips-lz":
        strategy, png.PNG_STRATEGY = png.PNG_STRATEGY, zlib.Z_DEFAULT_STRATEGY
        try:
            with open(path, "wb") as f:
                png.write_png(image, f, kwargs["pnginfo"])
        finally:
            png.PNG_STRATEGY = strategy
        return path
    kwargs["compress_level"] = 1 if method == "pillow-l1" else 6
    with open(path, "wb") as f:
        image.save(f, format="PNG", **kwargs)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[8192, 16384])
    ap.add_argument("--kinds", nargs="+", default=["photo"], choices=["photo", "smooth"])
    ap.add_argument("--methods", nargs="+", default=["pillow-l1", "strips"],
                    choices=list(METHODS))
    ap.add_argument("--dir", type=Path, default=None, help="where to write (default TMPDIR)")
    ap.add_argument("--out", type=Path, default=None, help="JSON (default results/save-cpu.json)")
    args = ap.parse_args()

    job = Job(prompt="a lighthouse on a cliff at dawn", width=16384, height=16384, seed=1)
    metadata = {"hires": "benchmark", "job": job.to_dict()}
    rows = []
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        for size in args.sizes:
            for kind in args.kinds:
                t0 = time.perf_counter()
                image = photo(size, noise=3.0 if kind == "photo" else 0.0)
                deep = sixteen(image) if any(m.endswith("-16") for m in args.methods) else None
                print(f"{kind} {size}: made in {time.perf_counter() - t0:.1f} s", flush=True)
                for method in args.methods:
                    wall, cpu = time.perf_counter(), time.process_time()
                    path = save(image, method, Path(tmp), metadata, deep)
                    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
                    size_mb = path.stat().st_size / 1e6
                    bytes_per = 2 if method.endswith("-16") else 1
                    path.unlink()
                    rows.append({"size": size, "kind": kind, "method": method,
                                 "wall_s": round(wall, 2), "cpu_s": round(cpu, 2),
                                 "file_mb": round(size_mb, 1),
                                 "raw_mb": round(size * size * 3 * bytes_per / 1e6, 1)})
                    print(f"  {method:10s} wall {wall:7.2f} s  cpu {cpu:7.2f} s  "
                          f"{size_mb:8.1f} MB", flush=True)
                del image, deep
    header = "| size | image | method | wall s | CPU s | MB | speedup (wall) |"
    # (a 16-bit row's "speedup" is against the same writer at 8 bits: below 1 is its cost)
    print("\n" + header + "\n|---:|---|---|---:|---:|---:|---:|")
    for r in rows:
        before = "pillow-tiff" if "tiff" in r["method"] else "pillow-l1"
        if r["method"].endswith("-16"):  # against the same writer at 8 bits
            before = r["method"][:-3]
        base = next((b for b in rows if b["size"] == r["size"] and b["kind"] == r["kind"]
                     and b["method"] == before), None)
        speedup = f"{base['wall_s'] / r['wall_s']:.1f}x" if base else "-"
        print(f"| {r['size']} | {r['kind']} | {r['method']} | {r['wall_s']} | {r['cpu_s']} | "
              f"{r['file_mb']} | {speedup} |")
    out = args.out or Path(__file__).parent / "results" / "save-cpu.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "benchmark": "save", "date": date.today().isoformat(),
        "command": " ".join(["python"] + sys.argv), "machine": platform.platform(),
        "cpu_count": os.cpu_count(), "pillow": Image.__version__, "numpy": np.__version__,
        "zlib": zlib.ZLIB_RUNTIME_VERSION, "load_average_before": load_before,
        "load_average_after": os.getloadavg(), "methods": METHODS, "results": rows,
    }, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
