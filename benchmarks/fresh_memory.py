"""What fresh memory costs this machine: first touch, touch again, churn, and reuse.

On a VM whose balloon reports free pages to the host, memory the process frees goes back to
the host after a few seconds, and the next first touch of it faults on the host too. This
times writing `--gb` GiB four ways, one thread, and writes a table and JSON:

    python benchmarks/fresh_memory.py --gb 4
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import time
from datetime import date
from pathlib import Path

import torch

MB = 1 << 20
CHUNK = 256 * MB  # about one activation map of a 2048 px VAE tile


def balloon_reports_free_pages() -> bool | None:
    """Whether a virtio balloon with free page reporting (feature bit 5) is present."""
    for features in Path("/sys/bus/virtio/drivers/virtio_balloon").glob("*/features"):
        return features.read_text()[5] == "1"
    return None


def timed(fn) -> dict:
    """Wall and system seconds and minor page faults of `fn()`."""
    before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    fn()
    wall, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
    return {"seconds": round(wall, 2), "system_seconds": round(after.ru_stime - before.ru_stime, 2),
            "minor_faults": after.ru_minflt - before.ru_minflt}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gb", type=float, default=4.0,
                    help="GiB written in each case, in whole 256 MiB chunks (at least 0.25)")
    ap.add_argument("--rest", type=float, default=10.0,
                    help="seconds to wait before the first touch (lets freed pages go back)")
    ap.add_argument("--out", type=Path,
                    default=Path(__file__).parent / "results" / "fresh-memory.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    size = int(args.gb * (1 << 30)) // CHUNK * CHUNK
    if size < CHUNK:
        ap.error(f"--gb {args.gb:g}: under one {CHUNK // MB} MiB chunk; give at least "
                 f"{CHUNK / (1 << 30):g}")

    def whole() -> None:
        buf = torch.empty(size, dtype=torch.uint8)
        buf.fill_(1)
        del buf

    def churn() -> None:
        for _ in range(size // CHUNK):
            buf = torch.empty(CHUNK, dtype=torch.uint8)
            buf.fill_(1)
            del buf

    kept = torch.empty(CHUNK, dtype=torch.uint8)
    kept.fill_(0)

    def reuse() -> None:
        for _ in range(size // CHUNK):
            kept.fill_(1)

    time.sleep(args.rest)
    cases = [
        ("first touch (memory idle before)", whole),
        ("the same, right after", whole),
        ("allocate, touch, free, in 256 MB pieces", churn),
        ("rewrite one kept 256 MB buffer", reuse),
    ]
    rows = [{"case": name, **timed(fn)} for name, fn in cases]
    gb = size / (1 << 30)
    print(f"{gb:g} GiB written per case, 1 thread; free page reporting: "
          f"{balloon_reports_free_pages()}\n")
    print("| case | s | s per GiB | system s | minor faults |\n|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['case']} | {r['seconds']:.2f} | {r['seconds'] / gb:.2f} | "
              f"{r['system_seconds']:.2f} | {r['minor_faults']:,} |")
    report = {"benchmark": "fresh_memory", "date": date.today().isoformat(),
              "machine": f"{platform.machine()} {torch.get_num_threads()} thread, "
                         f"{platform.node()}", "gib": gb,
              "free_page_reporting": balloon_reports_free_pages(), "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=1) + "\n")
    tmp.replace(args.out)


if __name__ == "__main__":
    main()
