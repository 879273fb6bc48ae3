"""LinFusion's linear attention vs softmax attention (SDPA): wall time and peak extra memory.

Batch 2, 10 heads of 64 channels (C = 640, SDXL's 640-dim level), self-attention over N tokens.
Every case runs in a fresh subprocess so that its memory peak is its own.

    python benchmarks/attention.py                                  # CPU, float32
    python benchmarks/attention.py --device cuda --dtype float16    # GPU, up to 1M tokens

"Extra" memory is the peak beyond the inputs q, k, v and the B x N x C output, reported as a
multiple of the q+k+v size. On CUDA it is torch.cuda.max_memory_allocated minus the memory
allocated once the inputs exist. On CPU it is the process's peak resident memory (VmHWM, reset
through /proc/self/clear_refs once the inputs exist, so import and set-up peaks do not count)
minus the resident memory at that moment: the kernel tracks the high-water mark itself, so a
short peak between two samples cannot be missed, and it counts everything the process really
touched (allocator slack included), which is what a user pays.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

BATCH, HEADS, HEAD_DIM = 2, 10, 64
CPU_TOKENS = [1024, 4096, 16384, 65536, 262144]
CUDA_TOKENS = [1024, 4096, 16384, 65536, 262144, 1048576]
SDPA_MAX_TOKENS = {"cpu": 65536, "cuda": 262144}  # beyond: minutes to hours of quadratic work
SLOW_S = 5.0  # a first run slower than this is the measurement itself: no warm-up, no repeats


def _kib(field: str) -> int:
    """A memory field of /proc/self/status, in bytes."""
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"{field}:\s+(\d+) kB", text).group(1)) * 1024


def run_case(impl: str, tokens: int, device: str, dtype: str, repeats: int,
             threads: int | None = None) -> dict:
    """Time one implementation at one token count, in this process; returns the measurements."""
    import torch
    import torch.nn.functional as F

    from hires.linfusion import linear_attention

    if threads:
        torch.set_num_threads(threads)

    dev, dt = torch.device(device), getattr(torch, dtype)
    c = HEADS * HEAD_DIM
    gen = torch.Generator(dev).manual_seed(0)
    q, k, v = (torch.randn(BATCH, tokens, c, device=dev, dtype=dt, generator=gen)
               for _ in range(3))

    def sdpa(q, k, v):
        # As diffusers runs it: split heads (views), attend, merge heads back into B x N x C.
        n = q.shape[1]
        qh, kh, vh = (t.view(BATCH, n, HEADS, HEAD_DIM).transpose(1, 2) for t in (q, k, v))
        return F.scaled_dot_product_attention(qh, kh, vh).transpose(1, 2).reshape(BATCH, n, c)

    def linear(q, k, v):
        return linear_attention(q, k, v, HEADS)

    attend = sdpa if impl == "sdpa" else linear
    with torch.inference_mode():
        # Library set-up (BLAS buffers, thread pools, cuBLAS workspace) happens once per process,
        # not per call: get it done on a small input before memory is measured.
        attend(*(t[:, :256].contiguous() for t in (q, k, v)))

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    sync()
    if dev.type == "cuda":
        base = torch.cuda.memory_allocated(dev)
        torch.cuda.reset_peak_memory_stats(dev)
    else:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        base = _kib("VmRSS")

    def timed() -> tuple[float, float]:
        start, cpu_start = time.perf_counter(), time.process_time()
        out = attend(q, k, v)
        sync()
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
        del out  # two outputs alive at once would count as extra memory
        return elapsed, cpu

    with torch.inference_mode():
        first = timed()  # the warm-up, unless it is slow enough to be the measurement
        runs = [first] if first[0] >= SLOW_S else [timed() for _ in range(repeats)]
    times = [wall for wall, _ in runs]
    # CPU time of this process: with one thread it is the work done, whatever else runs on the
    # machine; with more it also counts threads spinning at barriers.
    cpu_times = [cpu for _, cpu in runs]

    if dev.type == "cuda":
        peak = torch.cuda.max_memory_allocated(dev) - base
    else:
        peak = _kib("VmHWM") - base
    tensor_bytes = q.numel() * q.element_size()
    extra = max(0, peak - tensor_bytes)  # the output is part of the peak, not extra
    return {"impl": impl, "tokens": tokens, "time_s": statistics.median(times), "runs": times,
            "cpu_s": statistics.median(cpu_times),
            "qkv_bytes": 3 * tensor_bytes, "extra_bytes": extra,
            "extra_over_qkv": extra / (3 * tensor_bytes)}


def run_isolated(impl: str, tokens: int, args: argparse.Namespace) -> dict:
    """run_case in a fresh Python process, so earlier cases leave no memory behind."""
    cmd = [sys.executable, __file__, "--case", impl, "--tokens", str(tokens),
           "--device", args.device, "--dtype", args.dtype, "--repeats", str(args.repeats)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        return {"impl": impl, "tokens": tokens, "error": tail}
    return json.loads(done.stdout.strip().splitlines()[-1])


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return ""


def _seconds(s: float | None) -> str:
    if s is None:
        return "-"
    return f"{s * 1000:.1f} ms" if s < 1 else f"{s:.2f} s"


def _ratio(x: float) -> str:
    return f"{x:.1f}x" if x < 10 else f"{x:.0f}x"


def table(rows: list[dict]) -> list[list[str]]:
    """Rows for the report: one per token count, ours and SDPA side by side."""
    by = {(r["impl"], r["tokens"]): r for r in rows}
    lines = []
    for n in sorted({r["tokens"] for r in rows}):
        ours, sdpa = by.get(("linear", n), {}), by.get(("sdpa", n), {})
        speedup = "-"
        if "time_s" in ours and "time_s" in sdpa:
            ratio = sdpa["time_s"] / ours["time_s"]
            speedup = _ratio(ratio)
        cpu_speedup = "-"
        if "cpu_s" in ours and "cpu_s" in sdpa:
            cpu_speedup = _ratio(sdpa["cpu_s"] / ours["cpu_s"])
        qkv = ours.get("qkv_bytes") or sdpa.get("qkv_bytes")
        lines.append([
            f"{n:,}", _size(qkv) if qkv else "-",
            _seconds(ours.get("time_s")) if ours else "-",
            _seconds(sdpa.get("time_s")) if "time_s" in sdpa else sdpa.get("error", "-"),
            speedup, cpu_speedup,
            f"{ours['extra_over_qkv']:.2f}" if "extra_over_qkv" in ours else "-",
            f"{sdpa['extra_over_qkv']:.2f}" if "extra_over_qkv" in sdpa else "-",
        ])
    return lines


HEADER = ["tokens", "q+k+v", "linear", "SDPA", "speedup", "CPU-time speedup", "linear extra",
          "SDPA extra"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, nargs="+", help="token counts (default: by device)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--repeats", type=int, default=5, help="timed runs after a warm-up")
    parser.add_argument("--sdpa-max-tokens", type=int,
                        help="largest N for SDPA (default 65536 on CPU, 262144 on CUDA)")
    parser.add_argument("--out", type=Path, help="JSON path (default results/attention-DEVICE)")
    parser.add_argument("--threads", type=int, help="CPU threads (default: torch's choice)")
    parser.add_argument("--markdown", action="store_true", help="also print a Markdown table")
    parser.add_argument("--case", choices=["linear", "sdpa"], help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.case:  # child process: one measurement, printed as JSON
        print(json.dumps(run_case(args.case, args.tokens[0], args.device, args.dtype,
                                  args.repeats, args.threads)))
        return

    import torch

    kind = args.device.split(":")[0]
    tokens = args.tokens or (CUDA_TOKENS if kind == "cuda" else CPU_TOKENS)
    sdpa_max = args.sdpa_max_tokens or SDPA_MAX_TOKENS.get(kind, 65536)
    load_before = os.getloadavg()  # another busy process makes CPU timings noisy: record it
    rows = []
    for n in tokens:
        for impl in ("linear", "sdpa"):
            if impl == "sdpa" and n > sdpa_max:
                continue
            rows.append(run_isolated(impl, n, args))
            r = rows[-1]
            print(f"{impl:6s} {n:>8,} tokens: " + (r.get("error") or
                  f"{_seconds(r['time_s'])}, extra {r['extra_over_qkv']:.2f} x q+k+v"),
                  flush=True)

    from rich.console import Console
    from rich.table import Table

    lines = table(rows)
    shown = Table(title=f"attention, batch {BATCH}, {HEADS} heads x {HEAD_DIM}, {args.device} "
                        f"{args.dtype}", caption="extra: peak memory beyond the inputs and the "
                        "output, in multiples of q+k+v")
    for h in HEADER:
        shown.add_column(h, justify="right")
    for line in lines:
        shown.add_row(*line)
    Console(width=120).print(shown)
    if args.markdown:
        print("| " + " | ".join(HEADER) + " |")
        print("|" + "---:|" * len(HEADER))
        for line in lines:
            print("| " + " | ".join(line) + " |")

    out = args.out or Path(__file__).parent / "results" / f"attention-{kind}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "date": date.today().isoformat(), "command": " ".join(["python"] + sys.argv),
        "machine": platform.platform(), "processor": platform.processor(),
        "cpu_count": os.cpu_count(), "torch": torch.__version__,
        "device": args.device, "dtype": args.dtype,
        "threads": args.threads or torch.get_num_threads(), "batch": BATCH, "heads": HEADS,
        "head_dim": HEAD_DIM, "load_average_before": load_before,
        "load_average_after": os.getloadavg(), "results": rows,
    }
    if kind == "cuda" and torch.cuda.is_available():
        report["gpu"] = torch.cuda.get_device_name(torch.device(args.device))
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
