"""Train the tiny SDXL-shaped VAE (`hires.tiny.tiny_vae`) on the photos shipped in scikit-image.

The shipped weights came from three runs, each continuing (`--init`) from the one before:

    python tools/train_tiny_vae.py --steps 520 --crop 96 --batch 8 --lr 2e-3 --warmup 40 \
        --seed 0 --max-minutes 36 --out run1.safetensors             # 33.6 min, on a busy CPU
    python tools/train_tiny_vae.py --init run1.safetensors --steps 6000 --crop 96 --batch 8 \
        --lr 1.5e-3 --warmup 100 --seed 2 --out run2.safetensors     # 15.3 min, quiet 2 cores
    python tools/train_tiny_vae.py --init run2.safetensors --steps 6000 --crop 96 --batch 8 \
        --lr 1e-3 --warmup 100 --seed 3 --out hires/weights/tiny_vae.safetensors   # 15.5 min

Held-out PSNR on the centre 256 px crops: 14.3 / 18.3 dB (coffee / chelsea) after the first
run, whose decoder was still nearly grey; 23.6 / 26.1 after the second; 25.1 / 27.0 after the
third. Colour is learnt last: it needed thousands of steps, not a different recipe.

Training photos: every offline `skimage.data` photo except the held-out `coffee` and `chelsea`
(`cat` is the same picture as `chelsea`, so it is left out too). The loss is L1 + MSE on the
reconstruction from the latent *mean* (no sampling, no KL term). At the end the latent scale is
folded into the 1x1 quant convs so that latents times `scaling_factor` (0.13025, as SDXL) have
unit standard deviation, the log-variance is pinned to a negligible constant (so
`latent_dist.sample()` equals the mean), and the PSNR of the held-out photos is printed and
stored, with the recipe, in the safetensors metadata.

Deterministic for a given seed and thread count. What it reached is in BENCHMARKS.md
("Trained tiny VAE").
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from safetensors import safe_open
from safetensors.torch import load_file, save_file

TRAIN_PHOTOS = (
    "astronaut", "rocket", "stereo_motorcycle", "hubble_deep_field", "immunohistochemistry",
    "retina", "colorwheel", "logo", "camera", "moon", "grass", "gravel", "brick", "coins",
    "clock", "page", "text", "cell",
)
HELD_OUT = ("coffee", "chelsea")
EVAL_CROP = 256
# Grey photos teach texture and edges; colour photos are what the held-out set looks like.
COLOUR_WEIGHT = 3.0
LOGVAR_PIN = -20.0  # std exp(-10): sampling the posterior gives the mean, to float precision


def load_photo(name: str) -> torch.Tensor:
    """One skimage photo as a 3 x H x W float tensor in [-1, 1] (grey repeated, alpha on white)."""
    import skimage.data

    x = getattr(skimage.data, name)()
    if isinstance(x, tuple):  # stereo_motorcycle: (left, right, disparity)
        x = x[0]
    x = np.asarray(x)
    if x.dtype == bool:
        x = x.astype(np.uint8) * 255
    if x.dtype != np.uint8:
        x = (np.clip(x, 0, 1) * 255).round().astype(np.uint8)
    x = x.astype(np.float32) / 255
    if x.ndim == 2:
        x = np.repeat(x[..., None], 3, axis=2)
    if x.shape[2] == 4:
        x = x[..., :3] * x[..., 3:] + (1 - x[..., 3:])
    return torch.from_numpy(np.ascontiguousarray(x)).permute(2, 0, 1) * 2 - 1


def centre_crop(x: torch.Tensor, size: int | None) -> torch.Tensor:
    """The centre `size` square (or, with None, the largest multiple-of-8 centre region)."""
    h, w = x.shape[-2:]
    ch, cw = (size, size) if size else (h // 8 * 8, w // 8 * 8)
    top, left = (h - ch) // 2, (w - cw) // 2
    return x[..., top:top + ch, left:left + cw]


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of two images in [-1, 1], compared as 8-bit pixels."""
    qa = ((a.clamp(-1, 1) + 1) * 127.5).round()
    qb = ((b.clamp(-1, 1) + 1) * 127.5).round()
    mse = (qa - qb).pow(2).mean().item()
    return 10 * math.log10(255**2 / max(mse, 1e-10))


@torch.no_grad()
def reconstruct(vae: AutoencoderKL, x: torch.Tensor) -> torch.Tensor:
    """Encode to the latent mean and decode, in float32."""
    return vae.decode(vae.encode(x[None]).latent_dist.mean).sample[0]


def evaluate(vae: AutoencoderKL, photos: dict[str, torch.Tensor]) -> dict[str, dict[str, float]]:
    """PSNR per photo: its centre 256 px crop, and the whole photo (cut to multiples of 8)."""
    vae.eval()
    out = {}
    for name, x in photos.items():
        crop = centre_crop(x, min(EVAL_CROP, *(d // 8 * 8 for d in x.shape[-2:])))
        whole = centre_crop(x, None)
        out[name] = {
            "crop256": round(psnr(reconstruct(vae, crop), crop), 3),
            "whole": round(psnr(reconstruct(vae, whole), whole), 3),
        }
    vae.train()
    return out


class Crops:
    """Random crops with random down-scaling, horizontal flips and channel shuffles."""

    def __init__(self, photos: dict[str, torch.Tensor], crop: int, seed: int) -> None:
        self.names = list(photos)
        self.photos = [photos[n] for n in self.names]
        weights = [COLOUR_WEIGHT if self._colour(p) else 1.0 for p in self.photos]
        self.weights = torch.tensor(weights) / sum(weights)
        self.crop = crop
        self.g = torch.Generator().manual_seed(seed)

    @staticmethod
    def _colour(x: torch.Tensor) -> bool:
        return bool((x[0] - x[1]).abs().max() > 0.02 or (x[1] - x[2]).abs().max() > 0.02)

    def _rand(self) -> float:
        return torch.rand((), generator=self.g).item()

    def one(self) -> torch.Tensor:
        x = self.photos[torch.multinomial(self.weights, 1, generator=self.g).item()]
        h, w = x.shape[-2:]
        # Down-scale by up to 2x (never below the crop): more scales of detail from few photos.
        smallest = self.crop / min(h, w)
        scale = max(smallest, 0.5 + 0.5 * self._rand()) if smallest < 1 else smallest
        side = min(h, w, max(self.crop, round(self.crop / scale)))
        top = int(self._rand() * (h - side + 1))
        left = int(self._rand() * (w - side + 1))
        x = x[:, top:top + side, left:left + side]
        if side != self.crop:
            x = F.interpolate(x[None], size=(self.crop, self.crop), mode="bilinear",
                              antialias=True, align_corners=False)[0]
        if self._rand() < 0.5:
            x = x.flip(-1)
        if self._rand() < 0.5:
            x = x[torch.randperm(3, generator=self.g)]
        return x.clamp(-1, 1)

    def batch(self, n: int) -> torch.Tensor:
        return torch.stack([self.one() for _ in range(n)])


def lr_at(step: int, steps: int, lr: float, warmup: int) -> float:
    """Linear warm-up, then cosine decay to 2% of the peak."""
    if step < warmup:
        return lr * (step + 1) / warmup
    t = (step - warmup) / max(1, steps - warmup)
    return lr * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * t)))


@torch.no_grad()
def finalize(vae: AutoencoderKL, photos: dict[str, torch.Tensor]) -> float:
    """Fold the latent scale into the quant convs and pin the log-variance; returns the factor."""
    vae.eval()
    means = [vae.encode(centre_crop(x, None)[None]).latent_dist.mean for x in photos.values()]
    std = torch.cat([m.flatten() for m in means]).std().item()
    k = (1 / vae.config.scaling_factor) / std
    c = vae.config.latent_channels
    q, pq = vae.quant_conv, vae.post_quant_conv
    q.weight[:c] *= k
    q.bias[:c] *= k
    pq.weight /= k  # 1x1 conv: dividing its input weights undoes the scale exactly
    q.weight[c:] = 0
    q.bias[c:] = LOGVAR_PIN
    return k


def save(vae: AutoencoderKL, path: Path, metadata: dict[str, str]) -> None:
    """Write the weights atomically, so an interrupted run never leaves a broken file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    state = {k: v.detach().contiguous() for k, v in vae.state_dict().items()}
    save_file(state, str(tmp), metadata=metadata)
    os.replace(tmp, path)


def build_vae(seed: int, init: Path | None) -> AutoencoderKL:
    """The random tiny VAE of `hires.tiny` (seeded), or earlier weights to train on from."""
    from hires.tiny import tiny_vae

    vae = tiny_vae(seed, trained=False)
    if init is not None:
        vae.load_state_dict(load_file(str(init)))
    return vae


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=800)
    p.add_argument("--crop", type=int, default=128, help="training crop side, px")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=True,
                   help="bfloat16 autocast for training (evaluation is always float32)")
    p.add_argument("--init", type=Path, default=None,
                   help="start from these weights (a checkpoint or an earlier run's output)")
    p.add_argument("--checkpoint-every", type=int, default=100)
    p.add_argument("--max-minutes", type=float, default=None,
                   help="safety stop: end early (schedule not finished) and still save")
    p.add_argument("--out", type=Path, default=Path("hires/weights/tiny_vae.safetensors"))
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    train = {n: load_photo(n) for n in TRAIN_PHOTOS}
    held = {n: load_photo(n) for n in HELD_OUT}
    vae = build_vae(args.seed, args.init).train()
    params = sum(p.numel() for p in vae.parameters())
    crops = Crops(train, args.crop, args.seed)
    opt = torch.optim.AdamW(vae.parameters(), lr=args.lr, betas=(0.9, 0.99), weight_decay=1e-4)
    recipe = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    recipe.update(params=params, loss="l1+mse on decode(mean)", optimizer="AdamW(0.9,0.99,wd1e-4)",
                  schedule="linear warmup, cosine to 2%", augment="scale 0.5-1, hflip, rgb shuffle",
                  train_photos=list(TRAIN_PHOTOS), held_out=list(HELD_OUT))
    earlier_minutes = 0.0
    if args.init is not None:
        # Keep the whole history: the run these weights came from, and its own history.
        with safe_open(str(args.init), "pt") as f:
            before = f.metadata() or {}
        recipe["init_recipe"] = json.loads(before.get("recipe", "null"))
        recipe["init_psnr"] = json.loads(before.get("psnr", "null"))
        done_before = recipe["init_psnr"] or {}
        earlier_minutes = float(done_before.get("train_minutes_total",
                                                done_before.get("train_minutes", 0)))
    print(f"params {params:,}; {len(train)} training photos; recipe {json.dumps(recipe)}",
          flush=True)

    start, cpu_start = time.time(), time.process_time()
    done = 0
    for step in range(args.steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args.steps, args.lr, args.warmup)
        x = crops.batch(args.batch)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
            rec = vae.decode(vae.encode(x).latent_dist.mean).sample
        rec = rec.float()
        loss = F.l1_loss(rec, x) + F.mse_loss(rec, x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        done = step + 1
        minutes = (time.time() - start) / 60
        if done % 10 == 0:
            mse = F.mse_loss(rec.detach().clamp(-1, 1), x).item()
            cpu = (time.process_time() - cpu_start) / 60
            print(f"step {done} loss {loss.item():.4f} train-crop psnr "
                  f"{10 * math.log10(4 / mse):.2f} lr {opt.param_groups[0]['lr']:.2e} "
                  f"{minutes:.1f} min ({cpu:.1f} cpu)", flush=True)
        if done % args.checkpoint_every == 0:
            save(vae, args.out.with_suffix(".ckpt.safetensors"),
                 {"step": str(done), "recipe": json.dumps(recipe)})
        if args.max_minutes is not None and minutes >= args.max_minutes:
            print(f"stopping early at step {done} (--max-minutes)", flush=True)
            break

    minutes = (time.time() - start) / 60
    k = finalize(vae, train)
    held_psnr = evaluate(vae, held)
    train_psnr = evaluate(vae, train)
    report = {
        "held_out": held_psnr, "train": train_psnr, "steps_done": done,
        "train_minutes": round(minutes, 1),
        "train_minutes_total": round(earlier_minutes + minutes, 1), "latent_fold": round(k, 4),
    }
    metadata = {
        "recipe": json.dumps(recipe), "psnr": json.dumps(report),
        "coffee_crop256_psnr": str(held_psnr["coffee"]["crop256"]),
    }
    save(vae, args.out, metadata)
    print(json.dumps(report, indent=1))
    for name, r in held_psnr.items():
        print(f"held-out {name}: {r['crop256']:.2f} dB (centre 256), {r['whole']:.2f} dB (whole)")


if __name__ == "__main__":
    main()
