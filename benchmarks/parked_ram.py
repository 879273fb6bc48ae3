"""The CPU memory one UNet call parks (hires.parking): as simulated, as the planner counts it,
and what torch's pinned allocator would have taken for the same maps.

Full SDXL with LinFusion-XL's modules (bf16, on the `meta` device: shapes only), optionally
with an SDXL ControlNet, under the leanest strategy (split CFG, token chunks, row bands, parked
skips, streamed weights). torch's pinned allocator rounds each block up to a power of two;
hires' own buffers are each map's exact size.

    python benchmarks/parked_ram.py                    # 4K, 8K and 16K, with and without
    python benchmarks/parked_ram.py --sizes 16384 --out benchmarks/results/parked-ram.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from hires import memsim
from hires.costs import parked_bytes, sdxl_shape
from hires.parking import Parking
from hires.strategy import Strategy

LEANEST = Strategy(split_cfg=True, ff_chunks=True, row_bands=True, park_skips=True,
                   weights="sequential")


def parked_maps(unet, net, size: int) -> list[int]:
    """The bytes of each map the first UNet call (and its ControlNet's) parks at `size` px."""
    sizes: list[int] = []
    calls: list[int] = []
    hold, recycle = Parking._hold, Parking.recycle

    def counting(self, nbytes):
        sizes.append(nbytes)
        hold(self, nbytes)

    def ending(self):
        calls.append(len(sizes))
        recycle(self)

    Parking._hold, Parking.recycle = counting, ending
    try:
        memsim.unet_call_peak(unet, size // 8, size // 8, LEANEST, controlnet=net)
    finally:
        Parking._hold, Parking.recycle = hold, recycle
    return sizes[:calls[0]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[4096, 8192, 16384])
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    unet, net = memsim.sdxl_unet_on_meta(), memsim.sdxl_controlnet_on_meta()
    rows = []
    print(f"{'size':>6} {'ControlNet':>10} {'maps':>5} {'exact GB':>9} {'planner GB':>10} "
          f"{'torch pinned GB':>15}")
    for size in args.sizes:
        for control in (False, True):
            start = time.perf_counter()
            maps = parked_maps(unet, net if control else None, size)
            model = parked_bytes(sdxl_shape(controlnet=control), size // 8, size // 8, LEANEST)
            rounded = sum(1 << (n - 1).bit_length() for n in maps)
            rows.append(dict(size=size, controlnet=control, maps=len(maps), exact=sum(maps),
                             planner=model, torch_pinned=rounded,
                             seconds=round(time.perf_counter() - start, 1)))
            print(f"{size:>6} {'yes' if control else 'no':>10} {len(maps):>5} "
                  f"{sum(maps) / 1e9:>9.2f} {model / 1e9:>10.2f} {rounded / 1e9:>15.2f}")
    if args.out:
        args.out.write_text(json.dumps({"strategy": LEANEST.label, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
