"""The full 1K -> 16K path: per-stage wall time, UNet evaluations and peak memory.

CPU (default): the builtin tiny SDXL from its native 256 px to 16384 px, with fewer steps.
GPU (`--full --device cuda`): full-size SDXL architecture with random weights in fp16, 1024 ->
16384, 50 base steps, strengths 0.32..0.08; shapes are what cost time and memory, so the numbers
are real even though the picture is noise.

    python benchmarks/pipeline.py                        # tiny, CPU, to 16384
    python benchmarks/pipeline.py --full --device cuda   # full size on a GPU

Upscaling (`hires.upscale`): `--image PATH` (or `--photo coffee|chelsea`, which writes skimage's
photo, Lanczos-resized to `--photo-width` px wide, to /tmp and uses that) runs a 4x and a 16x
upscale on the tiny model and reports per stage: size, steps, time per phase, peak RSS and
PSNR (the stage's result downscaled to the input's size, against the input).

    python benchmarks/pipeline.py --photo coffee --photo-width 128   # 128x85 -> 512x336, 2048x1360
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import threading
import time
from datetime import date
from pathlib import Path

import psutil
import torch

from hires.job import Job
from hires.pipeline import generate
from hires.progress import Event

GB = 1e9
PHOTOS = ("coffee", "chelsea")  # skimage.data photos that the tiny VAE was not trained on


class RssSampler:
    """Samples this process's RSS every few ms and keeps the peak of each phase."""

    def __init__(self, every: float = 0.005):
        self.proc, self.every = psutil.Process(), every
        self.phase: tuple[int, str] | None = None
        self.peaks: dict[tuple[int, str], int] = {}
        self.before: dict[tuple[int, str], int] = {}
        self.seconds: dict[tuple[int, str], float] = {}  # wall time per phase
        self.cpu: dict[tuple[int, str], float] = {}  # process CPU time per phase (all threads)
        self.start = self.since = time.perf_counter()
        self.cpu_since = time.process_time()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            rss = self.proc.memory_info().rss
            if self.phase is not None:
                self.peaks[self.phase] = max(self.peaks.get(self.phase, 0), rss)
            time.sleep(self.every)

    def on_event(self, e: Event) -> None:
        key = (e.stage, e.phase)
        if key != self.phase:
            now = time.perf_counter()
            if self.phase is not None:
                self.seconds[self.phase] = self.seconds.get(self.phase, 0) + now - self.since
                self._add_cpu()
            self.since = now
            self.before.setdefault(key, self.proc.memory_info().rss)
            self.phase = key
            # Live, so that a long run shows where it is (and what it measured so far).
            print(f"[{now - self.start:8.1f} s] stage {e.stage} {e.phase} {e.width}x{e.height}"
                  f" (RSS {self.proc.memory_info().rss / GB:.2f} GB)", file=sys.stderr,
                  flush=True)

    def _add_cpu(self) -> None:
        cpu = time.process_time()
        self.cpu[self.phase] = self.cpu.get(self.phase, 0) + cpu - self.cpu_since
        self.cpu_since = cpu

    def close_phase(self) -> None:
        if self.phase is not None:
            now = time.perf_counter()
            self.seconds[self.phase] = self.seconds.get(self.phase, 0) + now - self.since
            self._add_cpu()
            self.phase = None

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=16384, help="final long side")
    ap.add_argument("--steps", type=int, default=None, help="base steps (tiny: 10, full: 50)")
    ap.add_argument("--strength", type=float, default=None,
                    help="gen: 0.32; --image: hires.upscale's default (0.3)")
    ap.add_argument("--full", action="store_true", help="full-size SDXL, random weights")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--vae-tile", type=int, default=None)
    ap.add_argument("--vae-dtype", default="auto", choices=["auto", "bf16", "fp32"],
                    help="tiny model: the VAE's dtype (auto: bf16 on bf16-capable CPUs, else fp32)")
    ap.add_argument("--out", default=None, help="JSON path (default benchmarks/results/...)")
    ap.add_argument("--image", type=Path, default=None,
                    help="upscale this image (hires.upscale) instead of generating one")
    ap.add_argument("--photo", choices=PHOTOS, default=None,
                    help="--image from skimage.data: writes /tmp/<photo>-<width>.png")
    ap.add_argument("--photo-width", type=int, default=128, help="--photo's width in px")
    ap.add_argument("--scale", type=float, nargs="+", default=[4, 16],
                    help="--image: the upscale factors, one run each")
    args = ap.parse_args()
    if args.photo:
        if args.image:
            ap.error("give --image or --photo, not both")
        args.image = write_photo(args.photo, args.photo_width)
    if args.image:
        if args.full:
            ap.error("--image runs the tiny model only")
        upscale_main(args)
        return
    args.strength = 0.32 if args.strength is None else args.strength

    steps = args.steps or (50 if args.full else 10)
    if args.full:
        from hires.sdxl import random_components

        components = random_components(torch.device(args.device), torch.float16)
    else:
        from hires.models import load

        components = load("tiny", device=args.device, vae_dtype=args.vae_dtype)
    dev = components.device
    job = Job(prompt="a lighthouse on a cliff at dawn", width=args.size, height=args.size,
              steps=steps, strength=args.strength, seed=0, vae_tile=args.vae_tile)
    with RssSampler() as rss:
        t0 = time.perf_counter()
        result = generate(job, components=components, progress=rss.on_event)
        total = time.perf_counter() - t0
        rss.close_phase()
    rows = []
    for s in result.stages:
        decode_key = (s.index, "vae-decode")
        canvas = s.width * s.height * 3
        decode_peak = rss.peaks.get(decode_key)
        decode_extra = (decode_peak - rss.before[decode_key] - canvas) if decode_peak else None
        rows.append({
            "stage": s.index, "size": f"{s.width}x{s.height}", "strength": round(s.strength, 3),
            "steps": s.steps, "unet_evaluations": s.unet_evaluations,
            "seconds": round(s.seconds, 2),
            "peak_rss_gb": round(max(v for (i, _), v in rss.peaks.items() if i == s.index) / GB,
                                 3),
            "decode_peak_rss_gb": round(decode_peak / GB, 3) if decode_peak else None,
            "decode_extra_minus_canvas_gb": round(decode_extra / GB, 3) if decode_extra else None,
            "phase_seconds": {p: round(v, 1) for (i, p), v in rss.seconds.items()
                              if i == s.index},
            "phase_peak_rss_gb": {p: round(v / GB, 3) for (i, p), v in rss.peaks.items()
                                  if i == s.index},
            "cuda_max_allocated_gb": round(s.peak_memory / GB, 3)
            if dev.type == "cuda" and s.peak_memory else None,
        })
    header = f"{'stage':>5} {'size':>12} {'str':>5} {'steps':>5} {'UNet evals':>10} " \
             f"{'seconds':>8} {'peak RSS GB':>11} {'decode +GB':>10}"
    print(header)
    for r in rows:
        extra = r["decode_extra_minus_canvas_gb"]
        print(f"{r['stage']:>5} {r['size']:>12} {r['strength']:>5} {r['steps']:>5} "
              f"{r['unet_evaluations']:>10} {r['seconds']:>8} {r['peak_rss_gb']:>11} "
              f"{'' if extra is None else extra:>10}")
    peak = max(rss.peaks.values())
    vae = sum(v for (_, p), v in rss.seconds.items() if p.startswith("vae-"))
    print(f"total {total:.1f} s, the VAE {vae:.1f} s ({vae / total:.1%}, "
          f"{components.vae_dtype}), process peak RSS {peak / GB:.2f} GB")
    if dev.type == "cuda":
        print(f"torch.cuda.max_memory_allocated per stage: "
              f"{[r['cuda_max_allocated_gb'] for r in rows]} GB")
    report = {
        "benchmark": "pipeline", "date": date.today().isoformat(),
        "machine": f"{platform.machine()} {psutil.cpu_count()} cpus, "
                   f"{psutil.virtual_memory().total / 2**30:.0f} GiB"
                   + (f", {torch.cuda.get_device_name(dev)}" if dev.type == "cuda" else ""),
        "torch": torch.__version__, "model": "sdxl-random" if args.full else "tiny",
        "device": str(dev), "size": args.size, "steps": steps, "strength": args.strength,
        "dtype": str(components.dtype), "vae_dtype": str(components.vae_dtype),
        "total_seconds": round(total, 2), "vae_seconds": round(vae, 2),
        "vae_share": round(vae / total, 4), "peak_rss_gb": round(peak / GB, 3), "stages": rows,
    }
    out = Path(args.out or Path(__file__).parent
               / f"results/pipeline-{report['model']}-{dev.type}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"wrote {out}")


def write_photo(name: str, width: int) -> Path:
    """skimage.data's `name` photo, Lanczos-resized to `width` px wide, as /tmp/<name>-<w>.png."""
    from photos import resized
    from PIL import Image

    image = Image.fromarray(resized(name, width=width))
    height = image.height
    path = Path(f"/tmp/{name}-{width}.png")
    image.save(path)
    print(f"wrote {path} ({width}x{height}, skimage.data.{name}() resized)", file=sys.stderr)
    return path


def which_vae(components) -> dict:
    """Which tiny VAE ran: the trained weights file's (if it exists and they match) or another.

    Compared with the file itself, not with `tiny_vae()`, so it holds however `load("tiny")`
    comes to pick its VAE.
    """
    import hashlib

    import hires.tiny as tiny

    weights = Path(getattr(tiny, "TINY_VAE_WEIGHTS",
                           Path(tiny.__file__).parent / "weights" / "tiny_vae.safetensors"))
    loaded = components.vae.state_dict()
    # Relative to the package, so results carry no machine's paths.
    shown = weights.relative_to(Path(tiny.__file__).parent.parent) if weights.is_absolute() \
        and Path(tiny.__file__).parent.parent in weights.parents else weights
    info = {"weights_file": str(shown), "weights_file_exists": weights.is_file(),
            "parameters": sum(v.numel() for v in loaded.values())}
    trained = False
    if weights.is_file():
        from safetensors import safe_open

        with safe_open(str(weights), "pt") as f:
            info["weights_metadata"] = f.metadata()
            keys = set(f.keys())
            trained = keys == set(loaded) and all(
                torch.equal(f.get_tensor(k).float(), loaded[k].cpu().float()) for k in keys)
        info["weights_sha256"] = hashlib.sha256(weights.read_bytes()).hexdigest()
    info["vae"] = ("trained (the weights file)" if trained
                   else "random (tiny_vae(0))" if not weights.is_file()
                   else "not the weights file")
    return info


def references(components, source, first: tuple[int, int], final: tuple[int, int]) -> dict:
    """PSNRs to read the stages' against: a plain Lanczos upscale to the final size, and one
    VAE round trip (encode, decode; no denoising) at the first stage's size."""
    import numpy as np
    from PIL import Image

    from hires import vae as tiled_vae
    from hires.images import fidelity
    from hires.pipeline import fit

    with torch.inference_mode():
        latents = tiled_vae.encode(components.vae, np.asarray(fit(source.rgb, *first)))
        round_trip = Image.fromarray(tiled_vae.decode(components.vae, latents))
    return {"lanczos_psnr_db": round(fidelity(fit(source.rgb, *final), source), 2),
            "vae_round_trip_size": f"{first[0]}x{first[1]}",
            "vae_round_trip_psnr_db": round(fidelity(round_trip, source), 2)}


def reset_peak_rss() -> None:
    """Reset the kernel's resident high-water mark (Linux), so each scale's is its own."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def upscale_main(args: argparse.Namespace) -> None:
    """Per-stage time, peak RSS and PSNR of `hires.upscale` at each of `args.scale`."""
    from hires.images import ImageInputError, load_input
    from hires.job import UPSCALE_STRENGTH
    from hires.memory import peak_rss
    from hires.models import load
    from hires.upscale import upscale

    components = load("tiny", device=args.device)
    vae = which_vae(components)
    print(f"VAE: {vae['vae']} ({vae['weights_file']}"
          f"{'' if vae['weights_file_exists'] else ': not present'})", file=sys.stderr)
    try:
        source = load_input(args.image)
    except ImageInputError as e:
        sys.exit(f"error: {e}")
    strength = UPSCALE_STRENGTH if args.strength is None else args.strength
    extra = {"steps": args.steps} if args.steps else {}
    if args.vae_tile:
        extra["vae_tile"] = args.vae_tile
    runs = []
    for scale in args.scale:
        reset_peak_rss()
        with RssSampler() as rss:
            t0, c0 = time.perf_counter(), time.process_time()
            result = upscale(source, scale=scale, strength=strength, components=components,
                             seed=0, progress=rss.on_event, **extra)
            total, cpu = time.perf_counter() - t0, time.process_time() - c0
            rss.close_phase()
        rows = []
        for s, planned in zip(result.stages, result.plan.stages, strict=True):
            phases = {p: v for (i, p), v in rss.seconds.items() if i == s.index}
            rows.append({
                "stage": s.index, "size": f"{s.width}x{s.height}",
                "strength": round(s.strength, 3), "steps": s.steps,
                "unet_evaluations": s.unet_evaluations,
                # hires' own figure: from the stage's start to its end, which (after the first)
                # includes decoding the stage before (that decode is in the other's phases).
                "hires_seconds": round(s.seconds, 2),
                "seconds": round(sum(phases.values()), 2),  # this stage's own phases
                "phase_seconds": {p: round(v, 2) for p, v in phases.items()},
                "cpu_seconds": round(sum(v for (i, _), v in rss.cpu.items() if i == s.index), 2),
                "phase_cpu_seconds": {p: round(v, 2) for (i, p), v in rss.cpu.items()
                                      if i == s.index},
                "peak_rss_gb": round(max(v for (i, _), v in rss.peaks.items() if i == s.index)
                                     / GB, 3),
                "phase_peak_rss_gb": {p: round(v / GB, 3) for (i, p), v in rss.peaks.items()
                                      if i == s.index},
                "hires_peak_memory_gb": round(s.peak_memory / GB, 3) if s.peak_memory else None,
                "psnr_db": round(s.psnr, 2) if s.psnr is not None else None,
                "strategy": s.strategy,
                "vae_tile": args.vae_tile or (planned.cost.vae_tile if planned.cost else None),
            })
        first = (result.stages[0].width, result.stages[0].height)
        runs.append({"scale": scale, "output": f"{result.image.width}x{result.image.height}",
                     "steps": result.job.steps, "strength": strength,
                     "total_seconds": round(total, 2), "cpu_seconds": round(cpu, 2),
                     "load_average": [round(v, 2) for v in psutil.getloadavg()],
                     "peak_rss_gb": round(max(rss.peaks.values()) / GB, 3),
                     "process_peak_rss_gb": round((peak_rss() or 0) / GB, 3), "stages": rows,
                     "reference": references(components, source, first, result.image.size)})
        print(f"scale {scale:g}: {source.rgb.width}x{source.rgb.height} -> "
              f"{result.image.width}x{result.image.height} in {total:.1f} s", file=sys.stderr)

    print(f"input {args.image} {source.rgb.width}x{source.rgb.height}; VAE: {vae['vae']}")
    print(f"{'scale':>5} {'stage':>5} {'size':>10} {'str':>5} {'steps':>5} {'encode s':>8} "
          f"{'denoise s':>9} {'decode s':>8} {'stage s':>7} {'CPU s':>6} {'peak RSS GB':>11} "
          f"{'PSNR dB':>7}")
    for run in runs:
        for r in run["stages"]:
            ph = r["phase_seconds"]
            cells = [ph.get(p) for p in ("vae-encode", "denoise", "vae-decode")]
            enc, den, dec = (f"{c:.1f}" if c is not None else "-" for c in cells)
            print(f"{run['scale']:>5g} {r['stage']:>5} {r['size']:>10} {r['strength']:>5} "
                  f"{r['steps']:>5} {enc:>8} {den:>9} {dec:>8} {r['seconds']:>7.1f} "
                  f"{r['cpu_seconds']:>6.1f} {r['peak_rss_gb']:>11.2f} {r['psnr_db']!s:>7}")
        ref = run["reference"]
        print(f"scale {run['scale']:g}: total {run['total_seconds']:.1f} s "
              f"({run['cpu_seconds']:.1f} s CPU, load average {run['load_average'][0]}), "
              f"peak RSS {run['peak_rss_gb']:.2f} GB; reference PSNR: Lanczos to "
              f"{run['output']} {ref['lanczos_psnr_db']} dB, one VAE round trip at "
              f"{ref['vae_round_trip_size']} {ref['vae_round_trip_psnr_db']} dB")
    report = {
        "benchmark": "upscale", "date": date.today().isoformat(),
        "machine": f"{platform.machine()} {psutil.cpu_count()} cpus, "
                   f"{psutil.virtual_memory().total / 2**30:.0f} GiB",
        "torch": torch.__version__, "model": "tiny", "device": str(components.device),
        "vae": vae, "seed": 0,
        "input": {"path": str(args.image), "photo": args.photo, "sha256": source.sha256,
                  "size": f"{source.rgb.width}x{source.rgb.height}"},
        "runs": runs,
    }
    out = Path(args.out or Path(__file__).parent
               / f"results/upscale-tiny-{components.device.type}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
