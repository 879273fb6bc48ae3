"""The memory levers against the plain path, on the device: what a lent GPU must check once.

A plan for a big GPU runs everything batched and resident, so `benchmarks/gpu.py`'s 16K job never
runs the paths that small cards depend on and that only a GPU can run: skip maps parked in
page-locked CPU memory (cudaHostRegister, event waits, band copies) or, past a RAM cap, in files
on the scratch disk, UNet blocks streamed from one locked buffer, the VAE's step outputs spilled
to pinned CPU memory, the exact mode's scratch files written from GPU tensors. Each check runs
one piece both ways on the same input and reports the time, the peak device memory and how far
the result is from the plain path's.

On the CPU (`gpu.py --smoke`) parking and streaming do nothing (there is nowhere to move to), so
the smoke run only shows that this harness works.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import contextmanager

import torch
from torch import Tensor

GB = 1e9
LEANEST = dict(split_cfg=True, ff_chunks=True, row_bands=True, park_skips=True)
DISK_AFTER = 64 << 20  # bytes of parked maps kept in RAM when checking the disk's files
# Relative max difference (to the plain output's largest magnitude) still counted as the same
# result: the levers reorder float work (other batch sizes, bands, chunks), and half precision
# rounds at about 1e-3.
TOLERANCE = {torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 4e-2}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(device: torch.device, fn: Callable[[], Tensor]) -> tuple[Tensor, float, float | None]:
    """fn's result, its seconds and the peak device GB while it ran (None off a GPU)."""
    from hires.memory import reset_peak

    _sync(device)
    reset_peak(device)
    start = time.perf_counter()
    out = fn()
    _sync(device)
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) / GB if device.type == "cuda" else None
    return out, seconds, peak


def _row(check: str, seconds: float, peak: float | None, diff: float, tolerance: float) -> dict:
    return {"check": check, "seconds": round(seconds, 3),
            "peak_gpu_gb": None if peak is None else round(peak, 2),
            "max_rel_diff": float(f"{diff:.3g}"), "tolerance": tolerance,
            "ok": bool(diff <= tolerance)}


def _rel(a: Tensor, b: Tensor) -> float:
    """max |a - b| relative to b's largest magnitude."""
    a, b = a.float().cpu(), b.float().cpu()
    if not torch.isfinite(a).all():
        return float("inf")
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()


def unet_checks(comps, cond, latent: int, seed: int = 0) -> list[dict]:
    """One guided UNet evaluation at a `latent` x `latent` latent, batched and resident, then
    with every lever and each way of holding the weights."""
    from hires.denoiser import Denoiser
    from hires.memory import placed
    from hires.strategy import Strategy, applied

    device, unet = comps.device, comps.unet
    x = torch.randn((1, 4, latent, latent), generator=torch.Generator().manual_seed(seed))
    x = x.to(device)

    def run(strategy: Strategy, disk_after: int | None = None
            ) -> tuple[Tensor, float, float | None]:
        with placed(comps, strategy.weights, unet), \
                applied(unet, strategy, device, disk_after=disk_after), torch.inference_mode():
            denoiser = Denoiser(unet, cond, 5.0, split_cfg=strategy.split_cfg)
            return _timed(device, lambda: denoiser.eps(x, 3.0, 400))

    tolerance = TOLERANCE[comps.dtype]
    plain, seconds, peak = run(Strategy())
    rows = [_row(f"unet {latent}^2 latent: batched", seconds, peak, 0.0, tolerance)]
    for weights in ("resident", "model", "sequential"):
        strategy = Strategy(**LEANEST, weights=weights)
        out, seconds, peak = run(strategy)
        rows.append(_row(f"unet {latent}^2 latent: {strategy.label}", seconds, peak,
                         _rel(out, plain), tolerance))
    # Maps past a small RAM cap in files on the scratch disk (not page-locked: copies wait).
    out, seconds, peak = run(Strategy(**LEANEST, weights="sequential"), disk_after=DISK_AFTER)
    rows.append(_row(f"unet {latent}^2 latent: parked maps past {DISK_AFTER >> 20} MiB on "
                     "disk", seconds, peak, _rel(out, plain), tolerance))
    return rows


@contextmanager
def _memo_budget(fast: float, spill: float):
    """The fast mode's memory budgets set for a check, and put back; yields a list that ends
    up holding the most bytes the memo spilled to the CPU."""
    from hires import vae_memo, vae_stats

    saved = vae_stats.FAST_BYTES, vae_stats.SPILL_BYTES, vae_memo.MemoryMemo.save
    most = [0]

    def save(memo, *args):
        saved[2](memo, *args)
        most[0] = max(most[0], memo.spilled)

    vae_stats.FAST_BYTES, vae_stats.SPILL_BYTES, vae_memo.MemoryMemo.save = fast, spill, save
    try:
        yield most
    finally:
        vae_stats.FAST_BYTES, vae_stats.SPILL_BYTES, vae_memo.MemoryMemo.save = saved


def vae_checks(comps, side: int, tile: int, seed: int = 0) -> list[dict]:
    """A tiled decode and encode of a `side` px image in `tile` px tiles: the fast mode with
    room for every output, then with little room and the rest spilled to the CPU's pinned
    memory, then the exact mode's scratch files."""
    from hires import vae as tiled_vae
    from hires.memory import placed

    device, vae = comps.device, comps.vae
    latent = torch.randn((1, 4, side // 8, side // 8),
                         generator=torch.Generator().manual_seed(seed)).to(device, comps.vae_dtype)
    # Small enough that most step outputs cannot stay on the device, so they spill.
    little = 64e6 if device.type == "cuda" else 2e6
    tolerance = TOLERANCE[comps.vae_dtype]
    rows = []

    def plain_and_spilled(what: str, run: Callable[[float], Tensor]) -> Tensor:
        """`run(spill)` with room for every output, then with most of them spilled."""
        plain, seconds, peak = _timed(device, lambda: run(0.0))
        rows.append(_row(f"vae {what}, {tile} px tiles: fast", seconds, peak, 0.0, tolerance))
        with _memo_budget(little, 64 * little) as spilled:
            out, seconds, peak = _timed(device, lambda: run(float("inf")))
        rows.append(_row(f"vae {what}: fast, outputs spilled to the CPU", seconds, peak,
                         _rel(out, plain), tolerance) | {"spilled_mb": spilled[0] / 1e6})
        return plain

    with placed(comps, "model", vae), torch.inference_mode():
        plain = plain_and_spilled(f"decode {side} px", lambda spill: tiled_vae.decode_float(
            vae, latent, tile=tile, spill=spill))
        out, seconds, peak = _timed(device, lambda: tiled_vae.decode_float(
            vae, latent, tile=tile, stats="exact"))
        rows.append(_row(f"vae decode {side} px: exact (scratch files)", seconds, peak,
                         _rel(out, plain), tolerance))
        # The sweep (block by block, key rows copied in bands) with exact keys reaching over
        # the whole image is the whole attention: on a GPU, its pinned non-blocking copies.
        with _whole_sweep():
            out, seconds, peak = _timed(device, lambda: tiled_vae.decode_float(
                vae, latent, tile=tile))
        rows.append(_row(f"vae decode {side} px: the attention swept in blocks", seconds, peak,
                         _rel(out, plain), tolerance))
        # The cross-fade's buffer in the CPU's memory (a small card's case), against the GPU's.
        with _rows_share(0.0):
            out, seconds, peak = _timed(device, lambda: tiled_vae.decode_float(
                vae, latent, tile=tile))
        rows.append(_row(f"vae decode {side} px: cross-fade in the CPU's memory", seconds,
                         peak, _rel(out, plain), tolerance))
        image = plain.clamp(-1, 1)
        plain_and_spilled(f"encode {side} px", lambda spill: tiled_vae.encode(
            vae, image, tile=tile, spill=spill))
    rows.append(_attention_check(device, comps.vae_dtype, 1024 if device.type == "cpu" else 65536,
                                 tolerance))
    return rows


@contextmanager
def _rows_share(share: float):
    """`hires.vae_tiles.ROWS_SHARE` set for a check, and put back."""
    from hires import vae_tiles

    saved, vae_tiles.ROWS_SHARE = vae_tiles.ROWS_SHARE, share
    try:
        yield
    finally:
        vae_tiles.ROWS_SHARE = saved


@contextmanager
def _whole_sweep():
    """The VAE attention's sweep on any size, its exact keys reaching over the whole image."""
    from hires import vae_attention

    saved = vae_attention.GLOBAL_TOKENS, vae_attention.SWEEP_REACH
    vae_attention.GLOBAL_TOKENS, vae_attention.SWEEP_REACH = 0, 1 << 20
    try:
        yield
    finally:
        vae_attention.GLOBAL_TOKENS, vae_attention.SWEEP_REACH = saved


def _attention_check(device: torch.device, dtype: torch.dtype, keys: int,
                     tolerance: float) -> dict:
    """The VAE attention's own kernel (`vae_attention.attend`: chunked matmuls, float32
    scores) against SDPA, at the SDXL VAE's single 512-channel head."""
    from hires.vae_attention import attend

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 1, n, 512, generator=g).to(device, dtype)
               for n in (4096, keys, keys))
    ref = torch.nn.functional.scaled_dot_product_attention(q.float(), k.float(), v.float())
    out, seconds, peak = _timed(device, lambda: attend(q, k, v))
    return _row(f"vae attention: 4096 queries x {keys} keys against SDPA (fp32)", seconds,
                peak, _rel(out, ref), tolerance)


def table(rows: list[dict]) -> list[str]:
    lines = ["| check | s | peak GPU GB | max rel. diff | same result |",
             "|---|---:|---:|---:|---|"]
    for r in rows:
        peak = "-" if r["peak_gpu_gb"] is None else f"{r['peak_gpu_gb']:.2f}"
        lines.append(f"| {r['check']} | {r['seconds']:.3f} | {peak} | {r['max_rel_diff']:.3g} | "
                     f"{'yes' if r['ok'] else 'NO'} (<= {r['tolerance']:g}) |")
    return lines
