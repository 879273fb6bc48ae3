"""Candidate speed-ups of the tiled VAE's GPU work, each timed against hires' own way (A/B).

Run 3's 8K profile on the H200 (BENCHMARKS.md, "The VAE levers on the H200") left, besides
the convolutions and the attention's kernels, two costs that need not be there:

- GroupNorm moments. A tile's per-channel sums (`hires.vae_stats._moments`) take each band of
  rows through a float32 copy, a subtraction, a square and two sums: about 30 bytes of memory
  traffic for each bf16 value, in the profile's sub_ / pow_ / sum kernels and much of its
  copy_ and add_ (about 1.5 s of the 8.4 s decode). `bn-stats` takes them with
  torch.batch_norm_stats (one Welford pass that reads bf16 and returns float32, as
  SyncBatchNorm does; CUDA only), on the tile's owned window as it is, or made contiguous
  first (`bn-stats-copy`); `sum-norm` with a float32-accumulating sum and norm (no pilot, so
  its variance can cancel: the error column says how much).
- Copies to pageable memory, 0.62 s: a tile's attention input goes into the pinned
  whole-image map through a window that is not contiguous, which torch copies through a
  pageable buffer (`today`). `staged` copies it into a contiguous pinned buffer, then into
  the window on the host.

Errors are against float64 on the same input: the mean's as a share of the channel's standard
deviation, the variance's relative. Nothing here changes hires: a lever that wins moves into
hires with its tests.

    python benchmarks/vae_levers.py --out DIR           # a GPU: SDXL VAE shapes, bf16
    python benchmarks/vae_levers.py --smoke --out DIR   # CPU, small shapes

It prints the tables and writes DIR/vae-levers.json (one file: a lent GPU's run brings back
few).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
from torch import Tensor

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # run from a bare checkout: hires need not be installed

if str(Path(__file__).resolve().parent) not in sys.path:  # its neighbours, when imported
    sys.path.append(str(Path(__file__).resolve().parent))

from unet_levers import timed  # noqa: E402

from hires.vae_stats import _moments  # noqa: E402

# GroupNorm inputs of the SDXL decoder in one 2048 px tile with its 256 px overlap (channels,
# side of the tile's run, side of its owned window), and the smoke run's.
LEVELS = {"full": (128, 2304, 2048), "half": (256, 1152, 1024), "quarter": (512, 576, 512)}
SMOKE_LEVELS = {"full": (16, 72, 64), "quarter": (64, 18, 16)}
# The mid-block attention's input: a 2048 px tile's latent with overlap, its owned part, and
# the whole map of an 8K image (channels, run side, owned side, whole side).
WINDOW = (512, 288, 256, 1024)
SMOKE_WINDOW = (64, 36, 32, 128)
MOMENTS = ("banded", "bn-stats", "bn-stats-copy", "sum-norm")
COPIES = ("today", "staged")


def banded(x: Tensor) -> tuple[Tensor, Tensor]:
    """hires' way: sums about a pilot, in float32 bands (`vae_stats._moments`)."""
    pilot = x[:, :, ::4, ::4].float().mean((0, 2, 3))
    s, ss = _moments(x, pilot)
    n = x.numel() // x.shape[1]
    mean = s.double() / n
    return pilot.double() + mean, ss.double() / n - mean ** 2


def bn_stats(x: Tensor) -> tuple[Tensor, Tensor]:
    """One Welford pass (torch.batch_norm_stats, CUDA): mean and 1/std in float32."""
    mean, invstd = torch.batch_norm_stats(x, 0.0)
    return mean.double(), invstd.double() ** -2


def bn_stats_copy(x: Tensor) -> tuple[Tensor, Tensor]:
    """The same on a contiguous (channels-last) copy of the window."""
    return bn_stats(x.contiguous(memory_format=torch.channels_last))


def sum_norm(x: Tensor) -> tuple[Tensor, Tensor]:
    """A float32-accumulating sum and 2-norm per channel; variance as E[x^2] - E[x]^2."""
    n = x.numel() // x.shape[1]
    mean = x.sum((0, 2, 3), dtype=torch.float32).double() / n
    square = torch.linalg.vector_norm(x, 2, (0, 2, 3), dtype=torch.float32).double() ** 2 / n
    return mean, square - mean ** 2


MOMENT_FNS = {"banded": banded, "bn-stats": bn_stats, "bn-stats-copy": bn_stats_copy,
              "sum-norm": sum_norm}


def activations(c: int, side: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """A channels-last 1 x c x side x side map: channels with spreads from 0.1 to 3 and
    offsets up to 30 of their spreads (where sums of squares cancel)."""
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(1, c, side, side, device=device, generator=g)
    std = torch.linspace(0.1, 3.0, c, device=device).view(1, c, 1, 1)
    offset = torch.linspace(-30.0, 30.0, c, device=device).view(1, c, 1, 1)
    return (x.mul_(std).add_(offset * std)).to(dtype).contiguous(
        memory_format=torch.channels_last)


def moments_rows(levels: dict, device: torch.device, dtype: torch.dtype, repeats: int,
                 sync: Callable[[], None]) -> dict:
    """Each moments candidate at each level: ms, and its errors against float64."""
    rows = {}
    for level, (c, side, owned) in levels.items():
        x = activations(c, side, device, dtype)
        o = (side - owned) // 2
        crop = x[:, :, o:o + owned, o:o + owned]  # a tile's owned window: not contiguous
        ref_var, ref_mean = torch.var_mean(crop.double(), dim=(0, 2, 3), correction=0)
        rows[level] = {}
        for name in MOMENTS:
            try:
                seconds, (mean, var) = timed(partial(MOMENT_FNS[name], crop), repeats, sync)
            except Exception as e:  # one candidate failing on this device leaves the others
                rows[level][name] = {"error": f"{type(e).__name__}: {_first_line(e)}"}
                continue
            rows[level][name] = {
                "ms": round(seconds * 1e3, 3),
                "gb_per_s": round(crop.numel() * crop.element_size() / seconds / 1e9, 1),
                "mean_err": ((mean - ref_mean).abs() / ref_var.sqrt()).max().item(),
                "var_err": ((var - ref_var).abs() / ref_var).max().item()}
        del x, crop
    return rows


def copy_rows(window: tuple, device: torch.device, dtype: torch.dtype, repeats: int,
              sync: Callable[[], None]) -> dict:
    """A tile's owned attention input into the whole-image map on the host, both ways."""
    c, side, owned, whole_side = window
    pinned = device.type == "cuda"
    whole = torch.empty_strided((1, c, whole_side, whole_side),
                                (whole_side ** 2 * c, 1, whole_side * c, c), dtype=dtype,
                                pin_memory=pinned)  # as hires keeps it (vae_attention._whole_map)
    x = activations(c, side, device, dtype)
    o = (side - owned) // 2
    crop = x[:, :, o:o + owned, o:o + owned]
    y0 = x0 = whole_side // 2 - owned // 2  # a window inside the map, as most tiles' are
    target = whole[:, :, y0:y0 + owned, x0:x0 + owned]

    def today() -> Tensor:
        target.copy_(crop)
        return target

    def staged() -> Tensor:
        buf = torch.empty_strided(crop.shape, (owned * owned * c, 1, owned * c, c),
                                  dtype=dtype, pin_memory=pinned)
        buf.copy_(crop, non_blocking=pinned)
        if pinned:
            torch.cuda.current_stream().synchronize()
        target.copy_(buf)
        return target

    rows, want = {}, crop.cpu()
    for name, fn in (("today", today), ("staged", staged)):
        target.zero_()
        try:
            seconds, got = timed(fn, repeats, sync)
        except Exception as e:
            rows[name] = {"error": f"{type(e).__name__}: {_first_line(e)}"}
            continue
        rows[name] = {"ms": round(seconds * 1e3, 3),
                      "gb_per_s": round(want.numel() * want.element_size() / seconds / 1e9, 2),
                      "equal": bool(torch.equal(got, want))}
    return rows


def _first_line(e: Exception) -> str:
    return (str(e).splitlines() or [""])[0][:120]


def table(report: dict) -> list[str]:
    """The report as Markdown tables."""
    lines = ["| level | moments | ms | GB/s read | vs banded | mean err (of std) | var err |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for level, rows in report["moments"].items():
        base = rows.get("banded", {}).get("ms")
        for name, row in rows.items():
            if "error" in row:
                lines.append(f"| {level} | {name} | failed: {row['error']} |")
                continue
            speed = "-" if base is None else f"{base / row['ms']:.2f}x"
            lines.append(f"| {level} | {name} | {row['ms']:.2f} | {row['gb_per_s']} | {speed} | "
                         f"{row['mean_err']:.1e} | {row['var_err']:.1e} |")
    lines += ["", "| window copy | ms | GB/s | equal |", "|---|---:|---:|---|"]
    for name, row in report["copies"].items():
        lines.append(f"| {name} | failed: {row['error']} |" if "error" in row else
                     f"| {name} | {row['ms']:.2f} | {row['gb_per_s']} | {row['equal']} |")
    return lines


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="CPU, small shapes")
    ap.add_argument("--repeats", type=int, default=5, help="timed calls per candidate")
    ap.add_argument("--out", type=Path, default=Path("."))
    args = ap.parse_args(argv)
    cuda = torch.cuda.is_available() and not args.smoke
    device = torch.device("cuda" if cuda else "cpu")
    dtype = torch.bfloat16  # the VAE's dtype on a GPU (hires.models)

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    report = {"device": str(device), "gpu": torch.cuda.get_device_name() if cuda else None,
              "torch": torch.__version__, "dtype": str(dtype)}
    report["moments"] = moments_rows(SMOKE_LEVELS if args.smoke else LEVELS, device, dtype,
                                     args.repeats, sync)
    report["copies"] = copy_rows(SMOKE_WINDOW if args.smoke else WINDOW, device, dtype,
                                 args.repeats, sync)
    lines = table(report)
    print("\n".join(lines))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "vae-levers.json").write_text(json.dumps(report, indent=1))  # table(): its lines
    print(f"wrote {args.out / 'vae-levers.json'}")
    return report


if __name__ == "__main__":
    main()
