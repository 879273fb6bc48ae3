"""What a 16-bit output (`--depth 16`) keeps: the saved samples against the VAE's float decode.

On the trained tiny VAE (`--model tiny`'s), each photo is encoded, then decoded through
`hires.vae.decode` at 8 and 16 bits with the VAE in fp32 and in bf16; the reference is the fp32
float decode. Prints the RMS difference in 8-bit steps (a table) and writes JSON.

    python benchmarks/depth.py
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from datetime import date
from pathlib import Path

import numpy as np
import torch

from hires import tiny
from hires import vae as tv

HELD_OUT = ("chelsea", "coffee")  # not seen in training (tools/train_tiny_vae.py)
PHOTOS = HELD_OUT + ("astronaut",)  # and one training photo


def photo(name: str) -> np.ndarray:
    """A scikit-image photo cropped to multiples of 64 px."""
    from skimage import data

    image = getattr(data, name)()
    h, w = image.shape[0] // 64 * 64, image.shape[1] // 64 * 64
    return np.ascontiguousarray(image[:h, :w])


def rms_steps(samples: np.ndarray, reference: np.ndarray) -> float:
    """RMS difference in 8-bit steps of uint8 or uint16 samples from reference floats in 0..255."""
    scale = 255 / (65535 if samples.dtype == np.uint16 else 255)
    return float(np.sqrt(np.mean((samples.astype(np.float64) * scale - reference) ** 2)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=None, help="JSON (default results/depth-cpu.json)")
    args = ap.parse_args()

    torch.manual_seed(0)
    vaes = {"fp32": tiny.tiny_vae(), "bf16": tiny.tiny_vae().to(torch.bfloat16)}
    rows = []
    with torch.inference_mode():
        for name in PHOTOS:
            image = photo(name)
            latents = tv.encode(vaes["fp32"], image)
            floats = tv.decode_float(vaes["fp32"], latents)[0].permute(1, 2, 0).double()
            reference = ((floats * 0.5 + 0.5).clamp(0, 1) * 255).numpy()
            for dtype, vae in vaes.items():
                for bits in (8, 16):
                    samples = tv.decode(vae, latents, bits=bits)
                    rows.append({"photo": name, "held_out": name in HELD_OUT,
                                 "size": f"{image.shape[1]}x{image.shape[0]}", "vae": dtype,
                                 "bits": bits, "rms_8bit_steps": round(rms_steps(samples,
                                                                                 reference), 4)})
                    print(f"{name:10s} {dtype} {bits:2d}-bit  RMS {rows[-1]['rms_8bit_steps']}",
                          flush=True)
    print("\n| VAE | file | " + " | ".join(PHOTOS) + " |\n|---|---|" + "---:|" * len(PHOTOS))
    for dtype in vaes:
        for bits in (8, 16):
            cells = [str(r["rms_8bit_steps"]) for r in rows if r["vae"] == dtype
                     and r["bits"] == bits]
            print(f"| {dtype} | {bits}-bit | " + " | ".join(cells) + " |")
    out = args.out or Path(__file__).parent / "results" / "depth-cpu.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "benchmark": "depth", "date": date.today().isoformat(),
        "command": " ".join(["python"] + sys.argv), "machine": platform.platform(),
        "cpu_count": os.cpu_count(), "torch": torch.__version__,
        "reference": "the fp32 VAE's float decode", "results": rows,
    }, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
