"""Samplers on the base stage: how close Euler and DPM++ 2M (Karras or not) come to a fine solve.

    python benchmarks/samplers.py                         # tiny model, CPU, its native 256 px
    python benchmarks/samplers.py --size 128 --reference-steps 250   # quicker

The tiny model's UNet is random, so this measures convergence to the probability-flow ODE's
solution, not image quality. Each run takes the base stage's timesteps as `--steps N` makes
them (hires.plan.make_plan with the model's scheduler config), the same prompt, seed and noise.

Distances are of the final latents, relative to the reference's RMS: RMS and max |diff|.
- "to ref": the reference is Euler with `--reference-steps` steps (500: timesteps 999, 997,
  ..., 1). A "leading" N-step schedule starts lower (25 steps: t = 961, 50: 981), so this
  distance also holds the gap between start noise levels, the same for every sampler at N.
- "same start": the reference is Euler from the run's own first timestep down to 1 with the
  same stride (961, 959, ..., 1 for 25 steps): the solver's own discretization error.
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
from types import SimpleNamespace

import torch
from torch import Tensor

from hires.denoiser import Denoiser
from hires.job import Job
from hires.models import load
from hires.pipeline import encode_prompt
from hires.plan import make_plan
from hires.sampling import sample_base, sigma_schedule

RUNS = (("euler", False), ("dpmpp-2m", False), ("dpmpp-2m", True))


def base_timesteps(comps, size: int, steps: int) -> tuple[int, ...]:
    """The base stage's timesteps for `--steps steps`, spaced as the pipeline spaces them."""
    cfg = comps.pipe.scheduler.config
    plan = make_plan(size, size, steps=steps, native=comps.native,
                     spacing=cfg.get("timestep_spacing", "leading"),
                     train_steps=cfg["num_train_timesteps"], offset=cfg.get("steps_offset", 0))
    return plan.stages[0].timesteps


def distance(x: Tensor, ref: Tensor) -> tuple[float, float]:
    """RMS and max |x - ref|, both over the reference's RMS."""
    scale = ref.double().pow(2).mean().sqrt()
    diff = (x.double() - ref.double()).abs()
    return float(diff.pow(2).mean().sqrt() / scale), float(diff.max() / scale)


def run(denoiser: Denoiser, noise: Tensor, alphas: Tensor, timesteps, sampler: str,
        karras: bool) -> tuple[Tensor, float, int]:
    """One base stage: its latents, wall seconds and UNet evaluations."""
    sigmas, steps = sigma_schedule(alphas, timesteps, karras)
    denoiser.evaluations = 0
    start = time.perf_counter()
    with torch.inference_mode():
        latents = sample_base(denoiser, noise, sigmas, steps, sampler=sampler)
    return latents, time.perf_counter() - start, denoiser.evaluations


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=None, help="px (default: the model's native)")
    ap.add_argument("--steps", type=int, nargs="+", default=[25, 50])
    ap.add_argument("--reference-steps", type=int, default=500)
    ap.add_argument("--prompt", default="a lighthouse on a cliff at dusk")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--guidance", type=float, default=Job.guidance)
    ap.add_argument("--repeat", type=int, default=3,
                    help="rounds of the compared runs, interleaved; each keeps its best time "
                    "(on a shared CPU single timings swing several-fold)")
    ap.add_argument("--out", type=Path, default=None,
                    help="JSON (default results/samplers.json)")
    args = ap.parse_args()

    comps = load("tiny", device="cpu")
    size = args.size or comps.native
    alphas = comps.pipe.scheduler.alphas_cumprod
    job = Job(prompt=args.prompt, width=size, height=size, seed=args.seed, model="tiny")
    cond = encode_prompt(comps, job, SimpleNamespace(width=size, height=size))
    denoiser = Denoiser(comps.unet, cond, args.guidance)
    # As the pipeline draws the base stage's noise (stage 0's stream of the job's seed).
    noise = torch.randn(1, 4, size // 8, size // 8,
                        generator=torch.Generator("cpu").manual_seed(args.seed))
    load_before = os.getloadavg()

    fine: dict[tuple[int, ...], tuple[Tensor, float]] = {}  # Euler references, by timesteps

    def euler_reference(timesteps: tuple[int, ...]) -> Tensor:
        if timesteps not in fine:
            latents, seconds, _ = run(denoiser, noise, alphas, timesteps, "euler", False)
            print(f"reference: Euler {len(timesteps)} steps from t={timesteps[0]} "
                  f"in {seconds:.1f} s", flush=True)
            fine[timesteps] = latents, seconds
        return fine[timesteps][0]

    cases = [(sampler, karras, steps) for sampler, karras in RUNS for steps in args.steps]
    timesteps = {steps: base_timesteps(comps, size, steps) for steps in args.steps}
    run(denoiser, noise, alphas, timesteps[args.steps[0]], "euler", False)  # warm-up
    # Rounds interleave the cases, so a burst of load elsewhere does not land on one case only.
    timed: dict[tuple[str, bool, int], tuple[Tensor, float, int]] = {}
    for _ in range(args.repeat):
        for case in cases:
            sampler, karras, steps = case
            latents, seconds, evals = run(denoiser, noise, alphas, timesteps[steps], sampler,
                                          karras)
            best = min(seconds, timed[case][1]) if case in timed else seconds
            timed[case] = latents, best, evals

    ref_steps = base_timesteps(comps, size, args.reference_steps)
    stride = ref_steps[0] - ref_steps[1]
    ref = euler_reference(ref_steps)
    ref_seconds = fine[ref_steps][1]
    rows = []
    for (sampler, karras, steps), (latents, seconds, evals) in timed.items():
        first = timesteps[steps][0]
        same = euler_reference(tuple(range(first, 0, -stride)))
        (rms, peak), (rms_same, peak_same) = distance(latents, ref), distance(latents, same)
        name = sampler + (" karras" if karras else "")
        rows.append({"sampler": sampler, "karras": karras, "steps": steps,
                     "first_timestep": first, "seconds": round(seconds, 2),
                     "unet_evaluations": evals, "rms_to_ref": rms, "max_to_ref": peak,
                     "rms_same_start": rms_same, "max_same_start": peak_same})
        print(f"{name:16s} {steps:3d} steps  {seconds:6.2f} s  to ref: rms {rms:.4f} "
              f"max {peak:.4f}  same start: rms {rms_same:.4f} max {peak_same:.4f}", flush=True)

    print(f"\nBase stage {size}x{size}, reference Euler {args.reference_steps} steps "
          f"(t = {ref_steps[0]}..{ref_steps[-1]})\n")
    print("| sampler | steps | first t | UNet evals | time (s) | RMS to ref | max to ref "
          "| RMS, same start | max, same start |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        name = "DPM++ 2M" if r["sampler"] == "dpmpp-2m" else "Euler"
        name += " Karras" if r["karras"] else ""
        print(f"| {name} | {r['steps']} | {r['first_timestep']} | {r['unet_evaluations']} "
              f"| {r['seconds']:.2f} "
              f"| {r['rms_to_ref']:.4f} | {r['max_to_ref']:.4f} "
              f"| {r['rms_same_start']:.4f} | {r['max_same_start']:.4f} |")

    out = args.out or Path(__file__).parent / "results" / "samplers.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "benchmark": "samplers", "date": date.today().isoformat(),
        "command": " ".join(["python"] + sys.argv), "machine": platform.platform(),
        "cpu_count": os.cpu_count(), "torch": torch.__version__, "model": "tiny",
        "size": size, "prompt": args.prompt, "seed": args.seed, "guidance": args.guidance,
        "repeat": args.repeat, "reference_seconds": round(ref_seconds, 1),
        "reference": {"sampler": "euler", "steps": args.reference_steps,
                      "timesteps": [ref_steps[0], ref_steps[-1], stride],
                      "rms": float(ref.pow(2).mean().sqrt())},
        "load_average_before": load_before, "load_average_after": os.getloadavg(),
        "results": rows,
    }, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
