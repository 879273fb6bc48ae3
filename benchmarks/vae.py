"""Tiled VAE (hires.vae): decode and encode time and peak memory from 2K to 16K.

Every (size, operation) runs in a fresh subprocess, so that its memory peak is its own.

    python benchmarks/vae.py                                   # tiny VAE, CPU, 2K-16K
    python benchmarks/vae.py --sizes 2048,4096 --encode-sizes 2048
    python benchmarks/vae.py --full --device cuda --dtype bfloat16   # SDXL-size VAE, random weights
    python benchmarks/vae.py --compare --sizes 1024,2048   # trained tiny VAE, held-out photos:
                                       # untiled vs stats=fast/exact vs diffusers' tiling

--compare: latents from held-out photos (skimage `coffee` and `chelsea`, resized to the size
as long side, encoded by the untiled VAE), decoded untiled, with `stats="fast"`, with
`stats="exact"` and with diffusers' `vae.enable_tiling()` (same tile size), each in a fresh
process: time (ratio to untiled), peak RSS, scratch-file bytes, and max / mean |diff| against
the untiled decode in 8-bit steps.

Memory: on CPU the process's peak resident memory (the kernel's high-water mark VmHWM, which a
short peak cannot slip past), whole process; "work" is that minus the resident memory just
before the call (model and input already there) minus the full-size image (the uint8 canvas
that decode returns, or the uint8 image that encode reads): what the tiling itself costs. On
CUDA also torch.cuda.max_memory_allocated during the call. The spec's target: work memory at
16K within 1.5x of 4K (flat: it depends on the tile, not the image).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

GB = 1e9
ROOT = Path(__file__).resolve().parent.parent


def _status_bytes(field: str) -> int:
    """A memory field of /proc/self/status (VmRSS, VmHWM), in bytes."""
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"{field}:\s+(\d+) kB", text).group(1)) * 1024


def _full_vae_config() -> dict:
    """The SDXL VAE's architecture: from hires.sdxl when there, else the same dict here."""
    try:
        from hires.sdxl import SDXL_VAE_CONFIG
    except ImportError:
        return dict(
            in_channels=3, out_channels=3,
            down_block_types=["DownEncoderBlock2D"] * 4,
            up_block_types=["UpDecoderBlock2D"] * 4,
            block_out_channels=[128, 256, 512, 512], layers_per_block=2, latent_channels=4,
            norm_num_groups=32, sample_size=1024, scaling_factor=0.13025, force_upcast=True,
        )
    return dict(SDXL_VAE_CONFIG)


def _smooth_latents(size: int, seed: int = 0):
    """UNet-space latents of a size x size image: a low-frequency random field, unit scale."""
    import torch
    import torch.nn.functional as F

    side = size // 8
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(1, 4, max(2, side // 16), max(2, side // 16), generator=g)
    return F.interpolate(coarse, size=(side, side), mode="bicubic", align_corners=False)


def _test_image(size: int):
    """A size x size x 3 uint8 image (smooth colour waves), built row block by row block."""
    import numpy as np

    image = np.empty((size, size, 3), dtype=np.uint8)
    x = np.arange(size, dtype=np.float32) / size
    for y0 in range(0, size, 1024):
        y = (np.arange(y0, min(size, y0 + 1024), dtype=np.float32) / size)[:, None]
        for c in range(3):
            wave = np.sin(2 * np.pi * (3 + c) * x[None, :] + 5 * y * (c + 1)) * np.cos(7 * y)
            image[y0:y0 + len(y), :, c] = (127.5 + 120 * wave).astype(np.uint8)
    return image


PHOTOS = ("coffee", "chelsea")  # held out from the tiny VAE's training
METHODS = ("untiled", "fast", "exact", "diffusers")


def _trained_vae(args: argparse.Namespace):
    """The trained tiny VAE (hires.tiny), or the tiny architecture with --weights loaded."""
    import inspect

    from hires.tiny import tiny_vae

    if args.weights:
        from safetensors.torch import load_file

        vae = tiny_vae(0, **({"trained": False} if "trained" in inspect.signature(
            tiny_vae).parameters else {}))
        vae.load_state_dict(load_file(args.weights))
        return vae
    if "trained" not in inspect.signature(tiny_vae).parameters:
        raise SystemExit("no trained tiny VAE in hires.tiny yet: pass --weights FILE")
    return tiny_vae(trained=True)


def _photo_latents(vae, name: str, size: int):
    """UNet-space latents of a held-out photo resized to `size` px on its long side."""
    import torch
    from photos import resized

    pixels = resized(name, long_side=size, multiple=8)
    x = torch.from_numpy(pixels.copy()).permute(2, 0, 1)[None].float() / 127.5 - 1
    with torch.no_grad():
        return vae.encode(x).latent_dist.mean * vae.config.scaling_factor


def run_compare(method: str, args: argparse.Namespace) -> dict:
    """Decode the saved latents one way, in this process; save the uint8 image next to them."""
    import numpy as np
    import torch

    from hires import vae as tiled
    from hires import vae_memo

    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    vae = _trained_vae(args).eval().to(dtype)
    work = Path(args.work)
    latents = torch.load(work / "latents.pt")
    scratch = []
    close = vae_memo.DiskMemo.close

    def counting_close(memo) -> None:
        scratch.append(memo.bytes)
        close(memo)

    vae_memo.DiskMemo.close = counting_close
    before = _status_bytes("VmRSS")
    start = time.perf_counter()
    with torch.inference_mode():
        if method in ("fast", "exact"):
            image = tiled.decode(vae, latents, tile=args.tile, overlap=args.overlap, stats=method)
        else:
            if method == "diffusers":
                vae.enable_tiling()
                vae.tile_sample_min_size = args.tile
                vae.tile_latent_min_size = args.tile // 8
            z = (latents / vae.config.scaling_factor).to(dtype)
            sample = vae.decode(z).sample.float()
            image = tiled.to_uint8(sample).numpy()
    wall = time.perf_counter() - start
    np.save(work / f"{method}{'' if dtype == torch.float32 else '-' + args.dtype}.npy", image)
    return dict(method=method, wall_s=round(wall, 2), peak_rss_gb=round(_status_bytes(
        "VmHWM") / GB, 3), rss_before_gb=round(before / GB, 3),
        scratch_gb=round(sum(scratch) / GB, 3), threads=torch.get_num_threads(),
        dtype=args.dtype)


def compare(args: argparse.Namespace, sizes: list[int]) -> None:
    """--compare: every method on every (size, photo), each in a fresh process."""
    import tempfile

    import numpy as np
    import torch

    vae = _trained_vae(args).eval()
    rows = []
    for size in sizes:
        for photo in args.photos.split(","):
            with tempfile.TemporaryDirectory() as work:
                latents = _photo_latents(vae, photo, size)
                torch.save(latents, Path(work) / "latents.pt")
                shape = f"{latents.shape[-1] * 8}x{latents.shape[-2] * 8}"
                low = args.dtype != "float32"  # also the fp32 untiled decode, as a reference
                runs = ([("untiled", "float32")] if low else []) + [
                    (m, args.dtype) for m in args.methods.split(",")]
                for method, dtype in runs:
                    cmd = [sys.executable, __file__, "--child-compare", method, "--work", work,
                           "--tile", str(args.tile), "--dtype", dtype]
                    for flag, value in (("--overlap", args.overlap), ("--threads", args.threads),
                                        ("--weights", args.weights)):
                        if value is not None:
                            cmd += [flag, str(value)]
                    load = os.getloadavg()[0]
                    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT,
                                          timeout=args.timeout,
                                          env={**os.environ, "PYTHONPATH": str(ROOT)})
                    if proc.returncode != 0:
                        print(f"{method} {shape} {photo}: failed\n{proc.stderr[-2000:]}")
                        continue
                    row = dict(size=shape, photo=photo, load_before=round(load, 1),
                               **json.loads(proc.stdout.strip().splitlines()[-1]))
                    suffix = "" if dtype == "float32" else f"-{dtype}"
                    ours = np.load(Path(work) / f"{method}{suffix}.npy").astype(np.int16)
                    for key, ref_name in (("", f"untiled{suffix}"), ("_fp32", "untiled")):
                        ref_path = Path(work) / f"{ref_name}.npy"
                        if ref_path.exists() and (key == "" or low):
                            diff = np.abs(ours - np.load(ref_path).astype(np.int16))
                            row[f"max_diff{key}"] = int(diff.max())
                            row[f"mean_diff{key}"] = round(float(diff.mean()), 3)
                    rows.append(row)
                    print(json.dumps(row), flush=True)
            base = {r["photo"]: r["wall_s"] for r in rows if r["size"] == shape
                    and r["method"] == "untiled" and r["dtype"] == args.dtype}
            for r in rows:
                if r["size"] == shape and r["photo"] in base:
                    r["time_ratio"] = round(r["wall_s"] / base[r["photo"]], 2)
    print()
    print("| size | photo | method | dtype | wall s | x untiled | peak RSS GB | scratch GB "
          "| max diff | mean diff | vs fp32: max | mean |")
    print("|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['size']} | {r['photo']} | {r['method']} | {r['dtype']} | {r['wall_s']} | "
              f"{r.get('time_ratio', '')} | {r['peak_rss_gb']} | {r['scratch_gb']} | "
              f"{r.get('max_diff', '')} | {r.get('mean_diff', '')} | "
              f"{r.get('max_diff_fp32', '')} | {r.get('mean_diff_fp32', '')} |")
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / "vae-compare-cpu.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(dict(
        date=date.today().isoformat(), machine=_machine(args),
        model=f"trained tiny VAE ({args.weights or 'hires.tiny'})",
        command=" ".join(["python", "benchmarks/vae.py", *sys.argv[1:]]),
        tile=args.tile, overlap=args.overlap, dtype=args.dtype, results=rows), indent=2) + "\n")
    print(f"wrote {out}")


def run_case(op: str, size: int, args: argparse.Namespace) -> dict:
    """Time one operation at one size, in this process; returns the measurements."""
    import torch

    from hires import vae as tiled

    if args.threads:
        torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    if args.full:
        from diffusers import AutoencoderKL

        torch.manual_seed(0)
        vae = AutoencoderKL(**_full_vae_config())
    else:
        from hires.tiny import tiny_vae

        vae = tiny_vae(0)
    vae = vae.to(device=device, dtype=dtype).eval()

    if op == "decode":
        data = _smooth_latents(size)
    else:
        data = _test_image(size)
    image_bytes = size * size * 3  # the uint8 canvas (decode) or input image (encode)
    tiles = []

    def progress(done: int, total: int) -> None:
        if not tiles:
            tiles.append(total)

    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        cuda_before = torch.cuda.memory_allocated()
    before = _status_bytes("VmRSS")
    start_wall, start_cpu = time.perf_counter(), time.process_time()
    with torch.inference_mode():
        if op == "decode":
            out = tiled.decode(vae, data, tile=args.tile, overlap=args.overlap,
                               progress=progress, stats=args.stats)
            assert out.shape == (size, size, 3)
        else:
            out = tiled.encode(vae, data, tile=args.tile, overlap=args.overlap,
                               progress=progress, stats=args.stats)
            assert out.shape == (1, 4, size // 8, size // 8)
    if device.type == "cuda":
        torch.cuda.synchronize()
    wall, cpu = time.perf_counter() - start_wall, time.process_time() - start_cpu
    peak = _status_bytes("VmHWM")
    result = dict(
        op=op, size=size, wall_s=round(wall, 2), cpu_s=round(cpu, 2),
        tile_runs=tiles[0] if tiles else 0, peak_rss_gb=round(peak / GB, 3),
        rss_before_gb=round(before / GB, 3), image_gb=round(image_bytes / GB, 3),
        work_gb=round((peak - before - image_bytes) / GB, 3),
        threads=torch.get_num_threads(),
    )
    if device.type == "cuda":
        result["cuda_peak_gb"] = round(torch.cuda.max_memory_allocated() / GB, 3)
        result["cuda_work_gb"] = round((torch.cuda.max_memory_allocated() - cuda_before) / GB, 3)
    return result


def _child_command(op: str, size: int, args: argparse.Namespace) -> list[str]:
    cmd = [sys.executable, __file__, "--child", op, "--sizes", str(size), "--device", args.device,
           "--dtype", args.dtype, "--tile", str(args.tile)]
    if args.overlap is not None:
        cmd += ["--overlap", str(args.overlap)]
    cmd += ["--stats", args.stats]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    if args.full:
        cmd.append("--full")
    return cmd


def _machine(args: argparse.Namespace) -> str:
    import torch

    if args.device == "cuda":
        return f"{torch.cuda.get_device_name()}, torch {torch.__version__}"
    return f"{os.cpu_count()}-core {platform.machine()} CPU, torch {torch.__version__}"


def _table(rows: list[dict]) -> str:
    cuda = any("cuda_peak_gb" in r for r in rows)
    head = "| op | size | wall s | CPU s | tile runs | peak RSS GB | image GB | work GB |"
    rule = "|---|---|---|---|---|---|---|---|"
    if cuda:
        head += " CUDA peak GB |"
        rule += "---|"
    lines = [head, rule]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['op']} | {r['size']} | {r['error']} |")
            continue
        line = (f"| {r['op']} | {r['size']} | {r['wall_s']} | {r['cpu_s']} | {r['tile_runs']} | "
                f"{r['peak_rss_gb']} | {r['image_gb']} | {r['work_gb']} |")
        if cuda:
            line += f" {r.get('cuda_peak_gb', '')} |"
        lines.append(line)
    return "\n".join(lines)


def _flatness(rows: list[dict], op: str, key: str) -> float | None:
    """Work memory at the largest size over that at 4K (the spec's 16K vs 4K target)."""
    done = {r["size"]: r[key] for r in rows if r["op"] == op and key in r}
    if 4096 not in done or max(done) <= 4096 or done[4096] <= 0:
        return None
    return round(done[max(done)] / done[4096], 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="2048,4096,8192,16384", help="decode sizes, px")
    parser.add_argument("--encode-sizes", default=None,
                        help="encode sizes, px (default: the decode sizes)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32",
                        help="float32 or bfloat16 (the SDXL VAE overflows in float16)")
    parser.add_argument("--tile", type=int, default=1024)
    parser.add_argument("--overlap", type=int, default=None)
    parser.add_argument("--stats", default="fast", choices=["fast", "exact"],
                        help="how GroupNorms get whole-image statistics (hires.vae_stats)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--full", action="store_true",
                        help="full-size SDXL VAE (random weights) instead of the tiny one")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per case")
    parser.add_argument("--out", default=None, help="JSON path (default: results/vae-DEVICE.json)")
    parser.add_argument("--child", choices=["decode", "encode"], help=argparse.SUPPRESS)
    parser.add_argument("--compare", action="store_true",
                        help="trained tiny VAE on held-out photos: untiled vs fast/exact/diffusers")
    parser.add_argument("--photos", default=",".join(PHOTOS), help="--compare: skimage photos")
    parser.add_argument("--methods", default=",".join(METHODS), help="--compare: methods")
    parser.add_argument("--weights", default=None,
                        help="--compare: a tiny VAE state dict (default: hires.tiny's trained one)")
    parser.add_argument("--child-compare", choices=METHODS, help=argparse.SUPPRESS)
    parser.add_argument("--work", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s]

    if args.child_compare:
        print(json.dumps(run_compare(args.child_compare, args)))
        return
    if args.compare:
        compare(args, sizes)
        return

    if args.child:
        print(json.dumps(run_case(args.child, sizes[0], args)))
        return

    encode_sizes = sizes if args.encode_sizes is None else [
        int(s) for s in args.encode_sizes.split(",") if s]
    cases = [("decode", s) for s in sizes] + [("encode", s) for s in encode_sizes]
    rows = []
    for op, size in cases:
        cmd = _child_command(op, size, args)
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout,
                                  cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
        except subprocess.TimeoutExpired:
            rows.append(dict(op=op, size=size, error=f"timeout after {args.timeout:.0f} s"))
            print(f"{op} {size}: timeout", flush=True)
            continue
        if proc.returncode != 0:
            rows.append(dict(op=op, size=size, error=f"exit {proc.returncode}"))
            print(f"{op} {size}: failed\n{proc.stderr[-2000:]}", flush=True)
            continue
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)

    print()
    print(_table(rows))
    flat = {op: _flatness(rows, op, "work_gb") for op in ("decode", "encode")}
    print(f"\nwork memory, largest size / 4K: {flat} (target <= 1.5)")
    model = "sdxl" if args.full else "tiny"
    out = Path(args.out) if args.out else (
        ROOT / "benchmarks" / "results" / f"vae-{args.device}{'-full' if args.full else ''}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(dict(
        date=date.today().isoformat(), machine=_machine(args), model=model,
        command=" ".join(["python", "benchmarks/vae.py", *sys.argv[1:]]),
        tile=args.tile, overlap=args.overlap, dtype=args.dtype, stats=args.stats,
        flatness_largest_vs_4k=flat, results=rows), indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
