"""Between stages, pixel or latent upsampling (`--upsample`): what each hands the next stage.

The stage after an x2 step starts from x0, the previous stage's image made twice as large:
- pixel (the default): decode the latents, Lanczos-resize the image, encode it again;
- latent: resize the latents (bicubic), no VAE in between.
On the trained tiny VAE (`--model tiny`'s), for held-out photos: the previous stage's latents are
the photo's own encoding at 1/4 of its size (then 1/2 for the second step). Each x0 is decoded
and compared (PSNR) with the Lanczos-resized previous image, which is what the pixel path aims
to encode, and with the real photo at that size. Also: how far apart the two x0 are in latent
units against the noise a stage adds at its strength (`sigma`), and their detail (mean |Laplacian|
of the decoded x0, relative to the Lanczos image's). Two steps chain the same way: the second
starts from the first's x0, as if the denoising had changed nothing. No UNet runs (the tiny one
is random), so this judges the VAE's side only. Prints a table and writes JSON.

    python benchmarks/upsample.py
"""

from __future__ import annotations

import argparse
import json
import platform
from datetime import date
from pathlib import Path

import numpy as np
import torch
from photos import cropped
from PIL import Image
from torch.nn import functional as F

from hires import tiny
from hires import vae as tv
from hires.plan import sdxl_alphas_cumprod
from hires.sampling import sigmas_for

HELD_OUT = ("chelsea", "coffee")  # not seen in training (tools/train_tiny_vae.py)
STRENGTHS = (0.32, 0.24, 0.16, 0.08)  # a 1K -> 16K job's x2 stages (`hires plan --size 16384`)


def lanczos(image: np.ndarray, width: int, height: int) -> np.ndarray:
    return np.asarray(Image.fromarray(image).resize((width, height), Image.LANCZOS))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255**2 / mse)) if mse else float("inf")


def detail(image: np.ndarray) -> float:
    """Mean |Laplacian| of the luma: how much fine detail an image holds."""
    y = image.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    lap = 4 * y[1:-1, 1:-1] - y[:-2, 1:-1] - y[2:, 1:-1] - y[1:-1, :-2] - y[1:-1, 2:]
    return float(np.abs(lap).mean())


def rms(x: torch.Tensor) -> float:
    return float(x.double().pow(2).mean().sqrt())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "upsample.json")
    args = ap.parse_args()

    alphas = sdxl_alphas_cumprod()
    sigmas = {s: sigmas_for(alphas, [round(s * 1000) - 1])[0] for s in STRENGTHS}
    vae = tiny.tiny_vae()
    rows = []
    with torch.inference_mode():
        for name in HELD_OUT:
            full = cropped(name, 32)  # two x2 steps down to latents
            h, w = full.shape[:2]
            real = {k: lanczos(full, w // k, h // k) for k in (4, 2, 1)}
            latents = {"pixel": tv.encode(vae, real[4]), "latent": tv.encode(vae, real[4])}
            for step, k in enumerate((2, 1), start=1):
                size = (w // k, h // k)
                x0 = {}
                for way in ("pixel", "latent"):
                    previous = tv.decode(vae, latents[way])
                    target = lanczos(previous, *size)  # what the pixel path encodes
                    if way == "pixel":
                        x0[way] = tv.encode(vae, target)
                    else:
                        x0[way] = F.interpolate(latents[way], size=(size[1] // 8, size[0] // 8),
                                                mode="bicubic", align_corners=False)
                    image = tv.decode(vae, x0[way])
                    rows.append({
                        "photo": name, "step": step, "size": f"{size[0]}x{size[1]}", "way": way,
                        "psnr_vs_lanczos": round(psnr(image, target), 2),
                        "psnr_vs_photo": round(psnr(image, real[k]), 2),
                        "lanczos_psnr_vs_photo": round(psnr(target, real[k]), 2),
                        "detail_vs_lanczos": round(detail(image) / detail(target), 3),
                        "latent_rms": round(rms(x0[way]), 4),
                    })
                apart = rms(x0["latent"] - x0["pixel"])
                for r in rows[-2:]:
                    r["latents_apart_rms"] = round(apart, 4)
                    r["apart_over_sigma"] = {str(s): round(apart / sigma, 3)
                                             for s, sigma in sigmas.items()}
                latents = x0

    header = (f"{'photo':<8} {'step':>4} {'size':>9} {'way':<6} {'PSNR vs Lanczos':>15} "
              f"{'PSNR vs photo':>13} {'detail':>6} {'apart':>6} {'apart/sigma 0.32..0.08':>24}")
    print(header)
    for r in rows:
        ratio = " ".join(f"{v:.2f}" for v in r["apart_over_sigma"].values())
        print(f"{r['photo']:<8} {r['step']:>4} {r['size']:>9} {r['way']:<6} "
              f"{r['psnr_vs_lanczos']:>15.2f} {r['psnr_vs_photo']:>13.2f} "
              f"{r['detail_vs_lanczos']:>6.2f} {r['latents_apart_rms']:>6.3f} {ratio:>24}")
    print("Lanczos of the previous image vs photo, dB: " + ", ".join(
        f"{r['photo']} step {r['step']} {r['lanczos_psnr_vs_photo']:.2f}"
        for r in rows if r["way"] == "pixel"))
    print("sigma at strength: " + ", ".join(f"{s}: {v:.3f}" for s, v in sigmas.items()))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "date": date.today().isoformat(), "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__, "vae": "trained tiny (hires/weights/tiny_vae.safetensors)",
        "sigmas": {str(s): v for s, v in sigmas.items()}, "rows": rows}, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
