"""Parked maps past the RAM cap, in files on the scratch disk: do they fit a memory limit, and
how fast do they go out and come back?

    python benchmarks/parked_disk.py --maps-gb 6 --ram-gb 1 --limit-gb 2.5 --out parked.json

A UNet call on a 12 GB card at 16K parks 21 GB of maps and reads them back (`hires.parking`).
This parks `--maps-gb` of maps in 1 GB pieces through `Parking` (its first `--ram-gb` in RAM,
the rest in files in TMPDIR), writes each the way the GPU's copies do, then reads them back
last first, as the up blocks do (`--passes` times over each, as row bands do), and checks every
value, `--calls` times over the same buffers. It runs each case in a child process inside a
cgroup (v1, as root) whose memory is capped at `--limit-gb`: the RAM case must die there, the
disk case must not. Prints a table, writes JSON.
No GPU is involved: the buffers are the ones a CUDA run gets, filled by the CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CGROUP = Path("/sys/fs/cgroup/memory")
PIECE = 1 << 30  # bytes a map


def child(maps: int, ram: int | None, calls: int, passes: int = 1) -> dict:
    """Park, read back and check `maps` bytes; the figures as a dict."""
    import torch

    from hires.memory import scratch_folder
    from hires.parking import Parking

    class Done:
        def synchronize(self) -> None:
            pass

    # No GPU: nothing to page-lock, and every copy has landed when it returns.
    parking = Parking(lambda t: True, lambda t: None, lambda n: None, Done,
                      ram=ram, disk=scratch_folder() if ram is not None else None)
    cuda = torch.device("cuda")  # what `empty` hands a GPU run; the CPU fills them here
    pieces = maps // PIECE
    out = {"write_s": [], "read_s": []}
    for call in range(calls):
        start = time.perf_counter()
        buffers = []
        for i in range(pieces):
            b = parking.empty((PIECE // 2,), torch.bfloat16, cuda)
            b.view(torch.int16).fill_(i * 7 + call)
            buffers.append(b)
        out["write_s"].append(time.perf_counter() - start)
        start = time.perf_counter()
        for i in reversed(range(pieces)):
            # Read back in bands, as row bands do, `passes` times over (their norm passes,
            # conv and shortcut); each band checked.
            flat = buffers[i].view(torch.int16)
            for _ in range(passes):
                for band in flat.split(PIECE // 16):
                    if not bool((band == i * 7 + call).all()):
                        raise SystemExit(f"map {i} came back wrong in call {call}")
        out["read_s"].append(time.perf_counter() - start)
        parking.recycle()
    out.update(on_disk=parking.on_disk, in_ram=parking.bytes - parking.on_disk)
    parking.close()
    return out


def run_case(args, ram_gb: float | None) -> dict:
    """One case in a child process, in a memory-capped cgroup where there is one."""
    cmd = [sys.executable, __file__, "--child", "--maps-gb", str(args.maps_gb),
           "--calls", str(args.calls), "--passes", str(args.passes)]
    cmd += ["--ram-gb", str(ram_gb)] if ram_gb is not None else ["--in-ram"]
    group = None
    if args.limit_gb and (CGROUP / "cgroup.procs").exists() and os.geteuid() == 0:
        group = CGROUP / f"hires-parked-{os.getpid()}-{'disk' if ram_gb is not None else 'ram'}"
        group.mkdir(exist_ok=True)
        (group / "memory.limit_in_bytes").write_text(str(int(args.limit_gb * 2**30)))

    def enter() -> None:
        if group is not None:
            (group / "cgroup.procs").write_text(str(os.getpid()))

    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, preexec_fn=enter)
    wall = time.perf_counter() - start
    result = {"case": "disk" if ram_gb is not None else "ram", "wall_s": round(wall, 2),
              "returncode": done.returncode, "limit_gb": args.limit_gb if group else None}
    if group is not None:
        result["peak_gb"] = round(int((group / "memory.max_usage_in_bytes").read_text()) / 1e9, 2)
        result["oom_events"] = int((group / "memory.failcnt").read_text())
        group.rmdir()
    if done.returncode == 0:
        result.update(json.loads(done.stdout.strip().splitlines()[-1]))
    else:
        result["error"] = (done.stderr.strip().splitlines() or ["killed"])[-1][:200]
    return result


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--maps-gb", type=float, default=6.0, help="GB of maps a call parks")
    ap.add_argument("--ram-gb", type=float, default=1.0, help="of them, GB held in RAM")
    ap.add_argument("--limit-gb", type=float, default=2.5, help="the cgroup's memory cap (GiB)")
    ap.add_argument("--calls", type=int, default=2)
    ap.add_argument("--passes", type=int, default=1,
                    help="reads of each map a call (row bands read each four times)")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--in-ram", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    maps = int(args.maps_gb * 2**30) // PIECE * PIECE
    if args.child:
        ram = None if args.in_ram else int(args.ram_gb * 2**30)
        print(json.dumps(child(maps, ram, args.calls, args.passes)))
        return
    rows = [run_case(args, None), run_case(args, args.ram_gb)]
    gb = maps / 1e9
    print(f"{gb:.1f} GB of maps a call, {args.calls} calls, read {args.passes}x, cap "
          f"{args.limit_gb} GiB, scratch {tempfile.gettempdir()}")
    print("| maps wait in | result | peak GB | write GB/s | read GB/s | wall s |")
    print("|---|---|---:|---:|---:|---:|")
    for r in rows:
        where = "RAM" if r["case"] == "ram" else f"RAM {args.ram_gb:g} GiB + files"
        if r["returncode"]:
            print(f"| {where} | died ({r['error']}, exit {r['returncode']}) | "
                  f"{r.get('peak_gb', '-')} | - | - | {r['wall_s']} |")
            continue
        write = gb / (sum(r["write_s"]) / args.calls)
        read = args.passes * gb / (sum(r["read_s"]) / args.calls)
        print(f"| {where} | ok | {r.get('peak_gb', '-')} | {write:.2f} | {read:.2f} | "
              f"{r['wall_s']} |")
    if args.out:
        args.out.write_text(json.dumps({"machine": platform.processor() or platform.machine(),
                                        "maps_gb": gb, "calls": args.calls,
                                        "passes": args.passes,
                                        "cases": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
