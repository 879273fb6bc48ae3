"""The planner's memory model against a simulated GPU, and against a real one when there is one.

For the full SDXL UNet with LinFusion-XL's modules (random weights, bf16), at the 1K, 4K and
16K stages' latents and under each strategy: the estimate (hires.costs), the simulated peak
(hires.memsim: the model run on the `meta` device) and, with --device cuda, the measured
`torch.cuda.max_memory_allocated` of the same UNet call.

    python benchmarks/memory.py                        # estimate vs simulated, prints a table
    python benchmarks/memory.py --device cuda          # + measured on the GPU (full SDXL)
    python benchmarks/memory.py --sizes 1024 4096      # fewer stages
    python benchmarks/memory.py --controlnet           # with an SDXL ControlNet before the UNet

With --controlnet the evaluation is the ControlNet's call then the UNet's, the ControlNet's
attention linear as hires makes it (hires.controlnet.controlnet_like); the estimate is
hires.unet_costs.denoise_peak_bytes, and the control image (which the stage counts) is left out of
both figures.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from hires.memsim import sdxl_unet_on_meta, unet_call_peak
from hires.strategy import Strategy
from hires.unet_costs import (
    ControlShape,
    UNetShape,
    controlnet_peak_bytes,
    denoise_peak_bytes,
    unet_peak_bytes,
)

GIB = 1024**3
EVERY = dict(split_cfg=True, ff_chunks=True, row_bands=True, park_skips=True)
STRATEGIES = [
    Strategy(),
    Strategy(ff_chunks=True),
    Strategy(row_bands=True),
    Strategy(park_skips=True),
    Strategy(split_cfg=True),
    Strategy(split_cfg=True, ff_chunks=True),
    Strategy(split_cfg=True, park_skips=True),
    Strategy(split_cfg=True, ff_chunks=True, row_bands=True),
    Strategy(**EVERY),
    Strategy(**EVERY, weights="sequential"),
]


def measured_peak(unet, latent: int, strategy: Strategy) -> int:
    """One guided UNet call on the GPU: torch.cuda.max_memory_allocated, weights included."""
    from hires.denoiser import Conditioning, Denoiser
    from hires.strategy import applied

    dev, dt, cfg = torch.device("cuda"), torch.bfloat16, unet.config
    pooled = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
    cond = Conditioning(torch.zeros(2, 77, cfg.cross_attention_dim, dtype=dt, device=dev),
                        torch.zeros(2, pooled, dtype=dt, device=dev),
                        torch.zeros(2, 6, dtype=dt, device=dev))
    unet.to(dev)
    x = torch.randn(1, 4, latent, latent, device=dev)
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    with torch.inference_mode(), applied(unet, strategy, dev):
        Denoiser(unet, cond, 7.5, split_cfg=strategy.split_cfg).eps(x, 10.0, 500)
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - x.numel() * 4 - sum(
        t.numel() * t.element_size() for t in (cond.embeds, cond.pooled, cond.time_ids))


def real_unet():
    """Full-size SDXL UNet + LinFusion-XL-shaped modules, random weights, bf16, on the GPU."""
    from diffusers import UNet2DConditionModel

    from hires.linfusion import LinFusion
    from hires.sdxl import SDXL_UNET_CONFIG

    with torch.device("cuda"):
        unet = UNet2DConditionModel(**SDXL_UNET_CONFIG).to(torch.bfloat16)
        config = [dict(m, projection_mid_dim=m["dim_n"] // 16)
                  for m in LinFusion.default_config(unet)]
        LinFusion(config).to(torch.bfloat16).mount(unet)
    return unet.eval()


def control_estimate(shape: UNetShape, control: ControlShape, latent: int,
                     strategy: Strategy) -> tuple[int, str]:
    """denoise_peak_bytes, and which call sets it: the ControlNet's or the UNet's."""
    est = denoise_peak_bytes(shape, control, latent, latent, strategy)
    held = shape.outer_param_bytes if strategy.weights == "sequential" else shape.param_bytes
    net_side = held + controlnet_peak_bytes(control, latent, latent, strategy)
    return est, "controlnet" if net_side >= est else "unet"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1024, 4096, 16384],
                    help="stage sizes in px (square)")
    ap.add_argument("--device", default="meta", choices=["meta", "cuda"],
                    help="cuda: also measure on the GPU")
    ap.add_argument("--controlnet", action="store_true",
                    help="an SDXL ControlNet (linear attention, as hires runs it) before the UNet")
    ap.add_argument("--strategies", nargs="+", metavar="LABEL",
                    help="only these strategies (labels as printed, e.g. split-cfg+ff-chunks)")
    ap.add_argument("--out", type=Path, help="default benchmarks/results/memory-sim.json, or "
                    "memory-controlnet-sim.json with --controlnet")
    args = ap.parse_args()
    if args.controlnet and args.device == "cuda":
        ap.error("--controlnet is simulated only for now (--device meta)")
    strategies = STRATEGIES
    if args.strategies:
        known = {s.label: s for s in STRATEGIES}
        if unknown := [x for x in args.strategies if x not in known]:
            ap.error(f"unknown strategies {unknown}; known: {', '.join(known)}")
        strategies = [known[x] for x in args.strategies]
    out = args.out or Path(__file__).parent / ("results/" + (
        "memory-controlnet-sim.json" if args.controlnet else "memory-sim.json"))

    unet = sdxl_unet_on_meta()
    shape = UNetShape.of(unet)
    net = control = None
    if args.controlnet:
        from hires.controlnet import controlnet_like

        net = controlnet_like(unet)
        control = ControlShape.of(net)
    gpu = real_unet() if args.device == "cuda" else None
    rows = []
    print(f"{'stage':>6} {'strategy':52} {'estimate':>9} {'simulated':>9} {'err':>7}"
          + (f" {'measured':>9} {'err':>7}" if gpu is not None else "")
          + (f" {'peak in':>10}" if net is not None else ""), flush=True)
    for size in args.sizes:
        latent = size // 8
        for strategy in strategies:
            t0 = time.perf_counter()
            row = {"size": size, "strategy": strategy.label, "levers": strategy.to_dict()}
            if net is None:
                est = unet_peak_bytes(shape, latent, latent, strategy)
                sim = unet_call_peak(unet, latent, latent, strategy)
            else:
                est, row["estimate_peak_in"] = control_estimate(shape, control, latent, strategy)
                # The control image is the stage's (stage_cost), not the evaluation's.
                sim = unet_call_peak(unet, latent, latent, strategy, controlnet=net) \
                    - 3 * 64 * latent * latent * 2
            row.update(estimate_bytes=est, simulated_bytes=sim,
                       error_vs_simulated=est / sim - 1,
                       seconds=round(time.perf_counter() - t0, 2))
            line = (f"{size:>6} {strategy.label:52} {est / GIB:8.2f}G {sim / GIB:8.2f}G "
                    f"{100 * (est / sim - 1):+6.1f}%")
            if net is not None:
                line += f" {row['estimate_peak_in']:>10}"
            if gpu is not None:
                try:
                    real = measured_peak(gpu, latent, strategy)
                    row.update(measured_bytes=real, error_vs_measured=est / real - 1)
                    line += f" {real / GIB:8.2f}G {100 * (est / real - 1):+6.1f}%"
                except torch.cuda.OutOfMemoryError:
                    row["measured_bytes"] = None
                    line += "       OOM"
                    torch.cuda.empty_cache()
            rows.append(row)
            print(line, flush=True)
    worst = max(abs(r["error_vs_simulated"]) for r in rows)
    print(f"worst estimate error vs simulated: {100 * worst:.1f}%")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.node()} {platform.processor() or platform.machine()}",
        "torch": torch.__version__, "device": args.device, "controlnet": args.controlnet,
        "rows": rows, "worst_error_vs_simulated": worst}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
