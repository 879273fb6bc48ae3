"""The full 1K -> 16K path: per-stage wall time, UNet evaluations and peak memory.

CPU (default): the builtin tiny SDXL from its native 256 px to 16384 px, with fewer steps.
GPU (`--full --device cuda`): full-size SDXL architecture with random weights in fp16, 1024 ->
16384, 50 base steps, strengths 0.32..0.08; shapes are what cost time and memory, so the numbers
are real even though the picture is noise.

    python benchmarks/pipeline.py                        # tiny, CPU, to 16384
    python benchmarks/pipeline.py --full --device cuda   # full size on a GPU
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


class RssSampler:
    """Samples this process's RSS every few ms and keeps the peak of each phase."""

    def __init__(self, every: float = 0.005):
        self.proc, self.every = psutil.Process(), every
        self.phase: tuple[int, str] | None = None
        self.peaks: dict[tuple[int, str], int] = {}
        self.before: dict[tuple[int, str], int] = {}
        self.seconds: dict[tuple[int, str], float] = {}  # wall time per phase
        self.start = self.since = time.perf_counter()
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
            self.since = now
            self.before.setdefault(key, self.proc.memory_info().rss)
            self.phase = key
            # Live, so that a long run shows where it is (and what it measured so far).
            print(f"[{now - self.start:8.1f} s] stage {e.stage} {e.phase} {e.width}x{e.height}"
                  f" (RSS {self.proc.memory_info().rss / GB:.2f} GB)", file=sys.stderr,
                  flush=True)

    def close_phase(self) -> None:
        if self.phase is not None:
            now = time.perf_counter()
            self.seconds[self.phase] = self.seconds.get(self.phase, 0) + now - self.since
            self.phase = None

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def full_size_components(device: str, dtype: torch.dtype):
    """SDXL base's architecture with random weights (nothing downloaded) and LinFusion-XL's."""
    from diffusers import AutoencoderKL, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from hires.linfusion import LinFusion
    from hires.memory import choose_offload
    from hires.models import Components
    from hires.sdxl import SDXL_UNET_CONFIG, SDXL_VAE_CONFIG
    from hires.tiny import tiny_clip_vocab, tiny_scheduler, tiny_tokenizer

    vocab = len(tiny_clip_vocab())  # the offline byte-level tokenizer; shapes are SDXL's
    common = dict(vocab_size=vocab, bos_token_id=vocab - 2, eos_token_id=vocab - 1,
                  pad_token_id=vocab - 1, max_position_embeddings=77, hidden_act="gelu")
    dev = torch.device(device)
    with dev:
        unet = UNet2DConditionModel(**SDXL_UNET_CONFIG).to(dtype)
        vae = AutoencoderKL(**SDXL_VAE_CONFIG)  # fp32: the SDXL VAE overflows in fp16
        te1 = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072,
                                           num_attention_heads=12, num_hidden_layers=12,
                                           **common)).to(dtype)
        te2 = CLIPTextModelWithProjection(CLIPTextConfig(
            hidden_size=1280, intermediate_size=5120, num_attention_heads=20,
            num_hidden_layers=32, projection_dim=1280, **common)).to(dtype)
        config = [dict(m, projection_mid_dim=m["dim_n"] // 16)
                  for m in LinFusion.default_config(unet)]
        LinFusion(config).to(dtype).mount(unet)
    pipe = StableDiffusionXLPipeline(unet=unet, vae=vae, text_encoder=te1, text_encoder_2=te2,
                                     tokenizer=tiny_tokenizer(),
                                     tokenizer_2=tiny_tokenizer(pad_token="!"),
                                     scheduler=tiny_scheduler())
    pipe.set_progress_bar_config(disable=True)
    for part in (unet, vae, te1, te2):
        part.requires_grad_(False).eval()
    return Components(pipe, "sdxl-random", "random", dev, dtype, torch.float32,
                      choose_offload("none", dev))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=16384, help="final long side")
    ap.add_argument("--steps", type=int, default=None, help="base steps (tiny: 10, full: 50)")
    ap.add_argument("--strength", type=float, default=0.32)
    ap.add_argument("--full", action="store_true", help="full-size SDXL, random weights")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--vae-tile", type=int, default=None)
    ap.add_argument("--out", default=None, help="JSON path (default benchmarks/results/...)")
    args = ap.parse_args()

    steps = args.steps or (50 if args.full else 10)
    if args.full:
        components = full_size_components(args.device, torch.float16)
    else:
        from hires.models import load

        components = load("tiny", device=args.device)
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
    print(f"total {total:.1f} s, process peak RSS {peak / GB:.2f} GB")
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
        "total_seconds": round(total, 2), "peak_rss_gb": round(peak / GB, 3), "stages": rows,
    }
    out = Path(args.out or f"benchmarks/results/pipeline-{report['model']}-{dev.type}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
