"""What a 16-bit output (`--depth 16`) keeps: the saved samples against the VAE's float decode.

On the trained tiny VAE (`--model tiny`'s), each photo is encoded, then decoded through
`hires.vae.decode` at 8 and 16 bits with the VAE in fp32 and in bf16; the reference is the fp32
float decode. Prints the RMS difference in 8-bit steps (a table) and writes JSON.

Then the other way: what a 16-bit *input* loses when hires reads it at 8 bits (as it does). A
smooth sky ramp and two photos averaged 2x2 (so their samples have fractions) are encoded from
their floats and from the same rounded to 8 bits; the table gives how far apart the latents are
(against the 0.296 noise sigma the 16K stage starts from) and the two decodes, in 8-bit steps.

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
from photos import cropped

from hires import tiny
from hires import vae as tv

HELD_OUT = ("chelsea", "coffee")  # not seen in training (tools/train_tiny_vae.py)
PHOTOS = HELD_OUT + ("astronaut",)  # and one training photo


def rms_steps(samples: np.ndarray, reference: np.ndarray) -> float:
    """RMS difference in 8-bit steps of uint8 or uint16 samples from reference floats in 0..255."""
    scale = 255 / (65535 if samples.dtype == np.uint16 else 255)
    return float(np.sqrt(np.mean((samples.astype(np.float64) * scale - reference) ** 2)))


def sky(height: int = 512, width: int = 512) -> np.ndarray:
    """A vertical ramp of blues in 0..255 floats: 110 levels over 512 rows, bands at 8 bits."""
    t = np.linspace(0, 1, height)[:, None, None]
    top, bottom = np.array([40.0, 90.0, 170.0]), np.array([150.0, 190.0, 230.0])
    return np.broadcast_to(top + (bottom - top) * t, (height, width, 3)).copy()


def input_rows(vae) -> list[dict]:
    """Encode floats and the same rounded to 8 bits; how far apart latents and decodes land."""
    def pixels(x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(x / 127.5 - 1).permute(2, 0, 1)[None].float()

    def halved(name: str) -> np.ndarray:
        x = cropped(name, 64).astype(np.float64)
        h, w = x.shape[0] // 2, x.shape[1] // 2
        return x.reshape(h, 2, w, 2, 3).mean((1, 3))

    rows = []
    for name, x in [("sky ramp", sky())] + [(f"{n} / 2", halved(n)) for n in HELD_OUT]:
        latents = {k: tv.encode(vae, pixels(v)) for k, v in (("16", x), ("8", np.round(x)))}
        out = {k: (tv.decode_float(vae, z)[0].permute(1, 2, 0).double() * 127.5 + 127.5).numpy()
               for k, z in latents.items()}
        apart = out["8"] - out["16"]
        rows.append({
            "image": name, "size": f"{x.shape[1]}x{x.shape[0]}",
            "input_rounding_rms": round(float(np.sqrt(np.mean((np.round(x) - x) ** 2))), 3),
            "latents_apart_rms": round(float((latents["8"] - latents["16"]).pow(2).mean()
                                             .sqrt()), 5),
            "decodes_apart_rms": round(float(np.sqrt(np.mean(apart ** 2))), 3),
            "decodes_apart_max": round(float(np.abs(apart).max()), 2),
            "round_trip_rms": round(float(np.sqrt(np.mean((out["16"] - x) ** 2))), 2),
        })
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=None, help="JSON (default results/depth-cpu.json)")
    args = ap.parse_args()

    torch.manual_seed(0)
    vaes = {"fp32": tiny.tiny_vae(), "bf16": tiny.tiny_vae().to(torch.bfloat16)}
    rows = []
    with torch.inference_mode():
        for name in PHOTOS:
            image = cropped(name, 64)
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
    with torch.inference_mode():
        inputs = input_rows(vaes["fp32"])
    print("\n| input (fp32 VAE) | rounding, steps | latents apart | decodes apart, RMS / max "
          "| round trip RMS |\n|---|---:|---:|---:|---:|")
    for r in inputs:
        print(f"| {r['image']} {r['size']} | {r['input_rounding_rms']} | "
              f"{r['latents_apart_rms']} | {r['decodes_apart_rms']} / {r['decodes_apart_max']} "
              f"| {r['round_trip_rms']} |")
    out = args.out or Path(__file__).parent / "results" / "depth-cpu.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "benchmark": "depth", "date": date.today().isoformat(),
        "command": " ".join(["python"] + sys.argv), "machine": platform.platform(),
        "cpu_count": os.cpu_count(), "torch": torch.__version__,
        "reference": "the fp32 VAE's float decode", "results": rows, "inputs": inputs,
    }, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
