"""One command for a lent GPU: the full-size 1K -> 16K path, per phase, plus the attention sweep.

Builds SDXL base's UNet (2.6 B parameters) with LinFusion-XL-shaped modules mounted and the
SDXL VAE, all with random weights (nothing is downloaded; shapes are what cost time and memory),
plus real-shaped CLIP-L and OpenCLIP-bigG text encoders (random, with hires' offline byte-level
tokenizer: 77 tokens as in SDXL, a 514-entry vocabulary instead of 49,408, which only shrinks an
embedding lookup). The UNet runs fp16 (hires' default on CUDA), the VAE in the dtype
`hires.models.choose_vae_dtype` picks (bf16). It runs `hires.generate` from 1024 to `--size` with
a reduced schedule (`--steps 4 --strength 1.0`: base 4 steps, stages 4/3/2/1; strength only
picks which timesteps run, not what a step costs), then saves the PNG, and reports per phase
(text encode, each stage's denoise, each VAE decode and encode, each resize, the save): seconds,
peak GPU memory and achieved TFLOP/s. Then it projects the default job (50 base steps, stages
16/12/8/4 steps, CFG 2, the dilated global pass in a stage's first 12/8/4/0 of them while its
weight is at least `hires.sampling.GLOBAL_FLOOR`) from the measured phases: every phase as
measured, plus each stage's extra UNet passes at its steady time per pass (the median over its
steps after the first, which carries one-off costs, of a step's time over its passes; a
one-step stage's only step).

Phases are split on hires' progress events (`hires.progress.Event`), with a CUDA synchronize at
each phase change so GPU work is charged to the phase that queued it. "text-encode" runs from
the call until the first event (prompt encoding; the plan and the first noise are in it too).

FLOPs (matmuls and convolutions, as torch.utils.flop_counter.FlopCounterMode counts them; the
elementwise work is not counted): the UNet's FLOPs per evaluation (one batch item) are counted
at two small latents and fitted as a + b * latent pixels, which is exact for this UNet with
LinFusion (every layer is linear in pixels: convolutions, linear attention, cross-attention to
77 text tokens; a is the time/text embeddings), then multiplied by the stage's evaluations
(Denoiser.evaluations: batch items). In-place baddbmm_, LinFusion's k^T v accumulation, is
counted too (FlopCounterMode knows only the out-of-place form). The
VAE's are counted for one untiled 1024 px decode/encode (the tile size hires uses, mid-block
attention over the tile) and scaled by pixels: the nominal work of the image, so the extra
passes of the tiled VAE's exact statistics show as lower TFLOP/s. Each VAE phase also gets
`work_flops`, what the tiled VAE ran (`hires.vae_cost.tiled_flops` for its tile and the memory
budget it had), and the TFLOP/s of that ("VAE run TFLOP/s"). Text encoders: counted as run.

Memory: each stage's planned peak (what must be free) and planned use with the VAE's kept
outputs (`hires plan`'s "with the VAE's kept outputs"), beside the largest measured phase peak
(torch.cuda.max_memory_allocated), in the JSON's "stages" and a table of their own.

On a lent GPU (device tool; the GPU image has torch, transformers, accelerate, safetensors,
huggingface_hub >= 1.32 but no diffusers). Here, once: the wheels go to the git-ignored .whl/:

    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d .whl diffusers==0.42.1 importlib_metadata==10.2.0

Then the device tool's `run` with carry [".whl"], timeout_s 600 and the command:

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit; \
      PYTHONUNBUFFERED=1 python3 benchmarks/gpu.py --out $OUT/gpu.json 2>&1 | tee $OUT/gpu.log

`benchmarks/gpu_session.sh` runs the UNet levers' A/B (`benchmarks/unet_levers.py`) and this
(without the attention sweep) in one call, each with its own time limit; its STEPS adds the VAE
and UNet profiles and the resize benchmark.

Here, on CPU, to know it works (tiny model, 256 -> 512, seconds): `python benchmarks/gpu.py
--smoke`. Flags: --size, --steps, --strength, --dtype, --attention-tokens, --no-attention,
--no-levers.

Last, `benchmarks/gpu_levers.py` runs the memory levers that small cards depend on (parked skip
maps, streamed weights, the VAE's spilled outputs and scratch files) against the plain path on
the same inputs: a 16K plan on a big GPU never runs them. Seconds, peak memory and the largest
difference for each go to the JSON's "levers".
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # run from a bare checkout: hires need not be installed

import torch  # noqa: E402

GB = 1e9
VAE_TILE = 1024  # px: the tile hires' pipeline decodes and encodes in (DEFAULT_VAE_TILE)
WHEELS_HELP = ("diffusers is not installed here. On the GPU machine install the carried wheels "
               "first (see this script's docstring): python3 -m pip install --no-index --no-deps "
               "--target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD")


class Phases:
    """Wall time and peak device memory per (phase, stage), split on hires' progress events."""

    def __init__(self, device: torch.device, on_close=None):
        self.device, self.on_close = device, on_close
        self.rows: list[dict] = []
        self.current: dict | None = None
        self._t0 = 0.0

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _note_peak(self) -> None:
        # Allocations are recorded on the host as they are queued: no synchronize needed. hires
        # resets the peak at each stage start, so keep the running maximum of what we saw.
        if self.current is not None and self.device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(self.device)
            self.current["peak_bytes"] = max(self.current.get("peak_bytes") or 0, peak)

    def start(self, phase: str, stage: int, width: int, height: int) -> None:
        self.close()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        self.current = {"phase": phase, "stage": stage, "width": width, "height": height,
                        "peak_bytes": None}
        if phase.startswith("vae-"):  # what the fast statistics will keep outputs in, as hires
            from hires.vae_stats import fast_budget, spill_budget  # sees it as the pass starts

            self.current["memo_budget"] = fast_budget(self.device)
            self.current["spill_budget"] = spill_budget(self.device)  # used if the plan spills
        self._t0 = time.perf_counter()

    def close(self) -> None:
        if self.current is None:
            return
        self._sync()
        self._note_peak()
        self.current["seconds"] = time.perf_counter() - self._t0
        self.rows.append(self.current)
        self.current = None
        if self.on_close:
            self.on_close()

    def on_event(self, e) -> None:
        """hires' progress callback: a new (phase, stage, size) closes the one before."""
        self._note_peak()
        c = self.current
        if c is None or (c["phase"], c["stage"], c["width"], c["height"]) != (
                e.phase, e.stage, e.width, e.height):
            self.start(e.phase, e.stage, e.width, e.height)
            print(f"  stage {e.stage} {e.phase} {e.width}x{e.height}", file=sys.stderr,
                  flush=True)
        elif e.phase == "denoise" and e.done:
            # Each step's own time, so the projection can leave the first step's one-off
            # costs (kernel selection, allocator growth) out of the steps it adds.
            self._sync()
            c.setdefault("step_ends", []).append(time.perf_counter() - self._t0)


def _baddbmm_(self_shape, a_shape, b_shape, *args, out_shape=None, **kwargs) -> int:
    batch, n, k = a_shape
    return 2 * batch * n * k * b_shape[-1]


def count_flops(fn) -> int:
    """Matmul/convolution FLOPs of one call of `fn`, as FlopCounterMode counts them."""
    from torch.utils.flop_counter import FlopCounterMode

    # FlopCounterMode knows baddbmm but not its in-place form, which LinFusion's k^T v
    # accumulation uses (half of its attention FLOPs).
    mapping = {torch.ops.aten.baddbmm_: _baddbmm_}
    with torch.inference_mode(), FlopCounterMode(display=False,
                                                 custom_mapping=mapping) as counter:
        fn()
    return int(counter.get_total_flops())


def unet_flop_model(comps, sides: tuple[int, int] = (32, 64)) -> tuple[float, float]:
    """(a, b): one UNet evaluation (batch 1) at a latent of P pixels costs a + b * P FLOPs."""
    unet, dev, dt = comps.unet, comps.device, comps.dtype
    cfg = unet.config
    pooled = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
    text = torch.randn(1, 77, cfg.cross_attention_dim, device=dev, dtype=dt)
    added = {"text_embeds": torch.randn(1, pooled, device=dev, dtype=dt),
             "time_ids": torch.tensor([[1024.0, 1024, 0, 0, 1024, 1024]], device=dev, dtype=dt)}
    counts = []
    for side in sides:
        x = torch.randn(1, 4, side, side, device=dev, dtype=dt)
        t = torch.full((1,), 500.0, device=dev)
        counts.append(count_flops(lambda x=x, t=t: unet(
            x, t, encoder_hidden_states=text, added_cond_kwargs=added, return_dict=False)))
    p0, p1 = sides[0] ** 2, sides[1] ** 2
    b = (counts[1] - counts[0]) / (p1 - p0)
    return counts[0] - b * p0, b


def vae_flops_per_pixel(comps, tile: int) -> tuple[float, float]:
    """(decode, encode) FLOPs per image pixel: one untiled `tile` px decode/encode, scaled."""
    vae, dev, dt = comps.vae, comps.device, comps.vae_dtype
    z = torch.randn(1, 4, tile // 8, tile // 8, device=dev, dtype=dt)
    x = torch.randn(1, 3, tile, tile, device=dev, dtype=dt)
    decode = count_flops(lambda: vae.decode(z).sample)
    encode = count_flops(lambda: vae.encode(x).latent_dist.mean)
    return decode / tile**2, encode / tile**2


def run_attention(args, device: torch.device, out: Path) -> dict:
    """benchmarks/attention.py in its own processes (as it always runs), on this device."""
    cmd = [sys.executable, str(ROOT / "benchmarks" / "attention.py"), "--device", str(device),
           "--dtype", "float16" if device.type == "cuda" else "float32", "--out", str(out),
           "--markdown"]
    if args.attention_tokens:
        cmd += ["--tokens", *map(str, args.attention_tokens)]
    if args.attention_repeats:
        cmd += ["--repeats", str(args.attention_repeats)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    print(done.stdout, end="", flush=True)
    if done.returncode != 0 or not out.is_file():
        tail = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        return {"error": tail, "seconds": round(time.perf_counter() - t0, 1)}
    report = json.loads(out.read_text())
    report["seconds"] = round(time.perf_counter() - t0, 1)
    return report


def phase_flops(row: dict, stages: dict, unet_ab, vae_pp, text_flops: int) -> float | None:
    """The FLOP count of one measured phase (None for CPU-only phases: resize, save)."""
    pixels = row["width"] * row["height"]
    if row["phase"] == "denoise":
        a, b = unet_ab
        return stages[row["stage"]]["unet_evaluations"] * (a + b * pixels / 64)
    if row["phase"] == "vae-decode":
        return vae_pp[0] * pixels
    if row["phase"] == "vae-encode":
        return vae_pp[1] * pixels
    if row["phase"] == "text-encode":
        return text_flops
    return None


def vae_work(row: dict, job, plan, vae_config, dtype_bytes: int) -> float | None:
    """What the tiled VAE ran in a VAE phase: its statistics passes and recomputation too
    (`hires.vae_cost.tiled_flops`, with the memory budget it had), not only the image's work."""
    from hires.costs import VaeShape
    from hires.pipeline import vae_tile
    from hires.vae_cost import tiled_flops

    if not row["phase"].startswith("vae-") or row.get("memo_budget") is None:
        return None
    decode, last = row["phase"] == "vae-decode", len(plan.stages) - 1
    # A stage decodes the previous stage's latents with its own tile.
    stage = plan.stages[row["stage"] + 1 if decode and row["stage"] < last else row["stage"]]
    tile = vae_tile(job, stage)
    # That stage's plan also says whether its passes spilled outputs to the CPU (hires.pipeline).
    spilled = stage.cost.vae_spill_bytes if stage.cost else 0.0
    return tiled_flops(VaeShape.from_config(vae_config), row["width"], row["height"],
                       decode=decode, tile=tile, budget=row["memo_budget"],
                       dtype_bytes=dtype_bytes,
                       spill=min(row.get("spill_budget", 0.0), spilled))


def plan_stage_of(row: dict, last: int) -> int:
    """The plan stage whose cost counts a phase. Progress labels a decode with the stage it
    decodes; the plan counts that decode in the next stage (it decodes its previous image),
    except the last stage's final decode."""
    if row["phase"] == "vae-decode" and row["stage"] < last:
        return row["stage"] + 1
    return row["stage"]


def table(rows: list[dict]) -> list[str]:
    """The phases as Markdown rows."""
    lines = ["| phase | stage | size | seconds | peak GPU GB | TFLOP | TFLOP/s | VAE run TFLOP/s |",
             "|---|---:|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        gb = "-" if r.get("peak_gpu_gb") is None else f"{r['peak_gpu_gb']:.1f}"
        tf = "-" if r.get("flops") is None else f"{r['flops'] / 1e12:.4g}"
        rate = "-" if r.get("tflop_per_s") is None else f"{r['tflop_per_s']:.3g}"
        run = "-" if r.get("work_tflop_per_s") is None else f"{r['work_tflop_per_s']:.3g}"
        lines.append(f"| {r['phase']} | {r['stage']} | {r['width']}x{r['height']} | "
                     f"{r['seconds']:.2f} | {gb} | {tf} | {rate} | {run} |")
    return lines


def memory_table(stages: dict[int, dict]) -> list[str]:
    """Each stage's planned GPU memory against its largest measured phase peak, in GB."""
    def gb(value: float | None) -> str:
        return "-" if value is None else f"{value:.1f}"

    lines = ["| stage | size | planned peak GB | planned with the VAE's kept outputs GB | "
             "measured peak GB |", "|---:|---|---:|---:|---:|"]
    for index, s in stages.items():
        lines.append(f"| {index} | {s['size']} | {gb(s.get('planned_peak_gb'))} | "
                     f"{gb(s.get('planned_used_gb'))} | {gb(s.get('measured_peak_gb'))} |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true",
                    help="CPU check: tiny model, 256 -> 512, 2 steps, attention at 1024 tokens")
    ap.add_argument("--device", default=None, help="default cuda (cpu with --smoke)")
    ap.add_argument("--size", type=int, default=None, help="final side (16384; smoke 512)")
    ap.add_argument("--steps", type=int, default=None, help="base steps (4; smoke 2)")
    ap.add_argument("--strength", type=float, default=1.0,
                    help="stage strength; 1.0 with 4 steps gives stages of 4/3/2/1 steps")
    ap.add_argument("--dtype", default="fp16", help="UNet/text encoder dtype (fp16, bf16)")
    ap.add_argument("--attention-tokens", type=int, nargs="+", default=None,
                    help="token counts for benchmarks/attention.py (default: its own, to 1M)")
    ap.add_argument("--attention-repeats", type=int, default=None)
    ap.add_argument("--no-attention", action="store_true")
    ap.add_argument("--no-levers", action="store_true",
                    help="skip the memory levers' checks against the plain path (gpu_levers.py)")
    ap.add_argument("--out", type=Path, default=None,
                    help="JSON path (default benchmarks/results/gpu-DEVICE.json)")
    args = ap.parse_args()
    try:
        import diffusers
    except ImportError:
        sys.exit(WHEELS_HELP)

    from hires.job import Job
    from hires.memory import peak_rss, placed
    from hires.models import DTYPES, load
    from hires.output import save_image
    from hires.pipeline import encode_prompt, generate, plan_for
    from hires.sdxl import random_components

    device = torch.device(args.device or ("cpu" if args.smoke else "cuda"))
    size = args.size or (512 if args.smoke else 16384)
    steps = args.steps or (2 if args.smoke else 4)
    if args.smoke and args.attention_tokens is None:
        args.attention_tokens, args.attention_repeats = [1024], args.attention_repeats or 1
    out = args.out or ROOT / "benchmarks" / "results" / f"gpu-{device.type}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    report: dict = {
        "benchmark": "gpu", "date": date.today().isoformat(),
        "command": " ".join(["python"] + sys.argv), "smoke": args.smoke,
        "machine": f"{platform.machine()}, {os.cpu_count()} cpus", "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "torch": torch.__version__, "diffusers": diffusers.__version__,
    }

    def dump() -> None:
        report["elapsed_seconds"] = round(time.perf_counter() - started, 1)
        out.write_text(json.dumps(report, indent=2) + "\n")

    if not args.no_attention:  # first: its length is known, the pipeline's is what we measure
        print("attention benchmark ...", flush=True)
        report["attention"] = run_attention(args, device, out.with_name(out.stem +
                                                                        "-attention.json"))
        dump()

    t0 = time.perf_counter()
    if args.smoke:
        comps = load("tiny", device=str(device))
        report["model"] = "tiny (hires.tiny), LinFusion from its UNet"
    else:
        comps = random_components(device, DTYPES[args.dtype])
        report["model"] = ("SDXL base UNet + LinFusion-XL shapes + SDXL VAE + real-shaped "
                           "CLIP-L/bigG text encoders, random weights")
    report.update(dtype=str(comps.dtype), vae_dtype=str(comps.vae_dtype),
                  build_seconds=round(time.perf_counter() - t0, 1))
    print(f"built {report['model']} in {report['build_seconds']} s", flush=True)

    job = Job(prompt="a lighthouse on a cliff at dawn, oil painting", width=size, height=size,
              steps=steps, strength=args.strength, seed=0)
    plan = plan_for(job, comps)
    tile = min(VAE_TILE, comps.native)
    sides = (16, 32) if args.smoke else (32, 64)
    unet_ab = unet_flop_model(comps, sides)
    vae_pp = vae_flops_per_pixel(comps, tile)
    text_flops = count_flops(lambda: comps.pipe.encode_prompt(
        prompt=job.prompt, device=device, num_images_per_prompt=1,
        do_classifier_free_guidance=True))
    report["flops"] = {
        "method": "torch.utils.flop_counter.FlopCounterMode (matmuls and convolutions)",
        "unet_per_evaluation": {"a": unet_ab[0], "b_per_latent_pixel": unet_ab[1],
                                "fit_latents": list(sides)},
        "vae_decode_per_pixel": vae_pp[0], "vae_encode_per_pixel": vae_pp[1],
        "vae_counted_at_px": tile, "text_encode": text_flops,
    }
    phases = Phases(device, on_close=lambda: (report.__setitem__("phases", list(phases.rows)),
                                              dump()))
    print(f"run {plan.stages[0].width} -> {size}, stages "
          f"{[s.steps for s in plan.stages]} steps", flush=True)
    phases.start("text-encode", 0, plan.stages[0].width, plan.stages[0].height)
    try:
        result = generate(job, components=comps, progress=phases.on_event)
    except BaseException as e:  # keep what was measured, and say where it stopped
        phases.close()
        report["error"] = f"{type(e).__name__}: {e}"[:2000]
        dump()
        raise
    phases.close()
    with tempfile.TemporaryDirectory() as tmp:
        phases.start("save", len(plan.stages) - 1, result.image.width, result.image.height)
        path = save_image(result.image, Path(tmp) / "gpu.png",
                          metadata={"hires": "benchmark", "job": result.job.to_dict()})
        phases.close()
        report["png_mb"] = round(path.stat().st_size / 1e6, 1)

    stages = {s.index: {"size": f"{s.width}x{s.height}", "steps": s.steps,
                        "global_steps": p.global_steps if p.kind != "base" else 0,
                        "unet_evaluations": s.unet_evaluations}
              for s, p in zip(result.stages, result.plan.stages, strict=True)}
    rows = []
    for r in phases.rows:
        flops = phase_flops(r, stages, unet_ab, vae_pp, text_flops)
        work = vae_work(r, job, plan, comps.vae.config, comps.vae_dtype.itemsize)
        ends = r.get("step_ends", [])
        steps_s = [round(b - a, 4) for a, b in zip([0.0, *ends], ends, strict=False)]
        rows.append({**{k: v for k, v in r.items() if k not in ("peak_bytes", "step_ends")},
                     "seconds": round(r["seconds"], 3),
                     **({"step_seconds": steps_s} if r["phase"] == "denoise" else {}),
                     "peak_gpu_gb": None if r["peak_bytes"] is None
                     else round(r["peak_bytes"] / GB, 2),
                     "flops": flops, "tflop_per_s": None if flops is None
                     else float(f"{flops / 1e12 / max(r['seconds'], 1e-9):.4g}"),
                     **({} if work is None else {
                         "work_flops": work,
                         "work_tflop_per_s": float(f"{work / 1e12 / max(r['seconds'], 1e-9):.4g}")
                     })})
    # The planner's memory beside what ran: the peak a stage needs free, and what it takes
    # with the VAE's kept outputs (which fill a share of what is free), against the largest
    # of the measured peaks of the phases the plan counts in that stage.
    last = max(stages)
    for index, stage in stages.items():
        cost = plan.stages[index].cost
        measured = [r["peak_gpu_gb"] for r in rows
                    if plan_stage_of(r, last) == index and r["peak_gpu_gb"] is not None]
        stage.update(planned_peak_gb=None if cost is None else round(cost.peak_bytes / GB, 2),
                     planned_used_gb=None if cost is None
                     else round(max(cost.used_bytes, cost.peak_bytes) / GB, 2),
                     measured_peak_gb=max(measured, default=None))
    report.update(stages=stages, phases=rows,
                  total_seconds=round(sum(r["seconds"] for r in rows), 2))

    # The default job: the same phases; each denoise gets the default schedule's extra UNet
    # passes at the stage's steady time per pass (its later steps' median; the first if it ran
    # one). A step runs the global pass too in the stage's first `global_steps` steps.
    default = plan_for(Job(width=size, height=size), comps)
    projected = []
    for r in rows:
        seconds = r["seconds"]
        if r["phase"] == "denoise":
            ran = stages[r["stage"]]
            per_pass = [dt / (2 if i < ran["global_steps"] else 1)
                        for i, dt in enumerate(r["step_seconds"])]
            times = per_pass[1:] or per_pass or [0.0]
            want = default.stages[r["stage"]]
            extra = (want.steps + (want.global_steps if want.kind != "base" else 0)) \
                - (ran["steps"] + ran["global_steps"])
            seconds += extra * statistics.median(times)
        projected.append({"phase": r["phase"], "stage": r["stage"],
                          "seconds": round(seconds, 2)})
    report["projection"] = {
        "job": "default: 50 base steps, strength 0.32, stages "
               f"{[s.steps for s in default.stages[1:]]} steps, the global pass in "
               f"{[s.global_steps for s in default.stages[1:]]} of them, CFG 2",
        "phases": projected, "total_seconds": round(sum(p["seconds"] for p in projected), 1),
    }
    report["peak_rss_gb"] = round((peak_rss() or 0) / GB, 2)
    dump()

    print(f"\n{report['model']}, {device}"
          + (f" ({report['gpu']})" if report["gpu"] else "") + f", {comps.dtype} UNet, "
          f"{comps.vae_dtype} VAE; {plan.stages[0].width} -> {size}, steps "
          f"{[s['steps'] for s in stages.values()]}")
    print("\n".join(table(rows)))
    print("\n".join(memory_table(stages)))
    print(f"total {report['total_seconds']:.1f} s; projected default job "
          f"({report['projection']['job']}): {report['projection']['total_seconds']:.0f} s")

    if not args.no_levers:  # last: the job's figures are written whatever happens here
        import gpu_levers

        print("\nthe memory levers against the plain path ...", flush=True)
        levers: list[dict] = []
        report["levers"] = levers
        try:
            with placed(comps, plan.stages[0].strategy.weights, comps.pipe.text_encoder,
                        comps.pipe.text_encoder_2):
                cond = encode_prompt(comps, job, plan)
            levers += gpu_levers.unet_checks(comps, cond, 32 if args.smoke else 256)
            dump()
            levers += gpu_levers.vae_checks(comps, 256 if args.smoke else 2048,
                                            64 if args.smoke else 512)
        except Exception as e:  # keep the rows that ran, and say where it stopped
            report["levers_error"] = f"{type(e).__name__}: {e}"[:2000]
            print(f"levers: {report['levers_error']}", flush=True)
        dump()
        print("\n".join(gpu_levers.table(levers)))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
