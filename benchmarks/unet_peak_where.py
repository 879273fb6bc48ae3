"""Where a simulated UNet call peaks: per module, the live bytes at its entry, the peak inside it
and the live bytes after it (GiB), for the full SDXL UNet with LinFusion-XL's modules on meta
under every lever with sequential offload (what an 8-12 GB card's 16K stage runs).

    python benchmarks/unet_peak_where.py [LATENT] [DEPTH] [GIB]   # default 2048 4 5: modules
                                                                 # < DEPTH dots, peaks > GIB
"""

from __future__ import annotations

import argparse

from hires import memsim
from hires.strategy import Strategy
from hires.unet_costs import UNetShape, unet_peak_bytes

GIB = 2**30


def main() -> None:
    parser = argparse.ArgumentParser(
        description="Where a simulated UNet call peaks (full SDXL UNet + LinFusion-XL on meta, "
                    "every lever, sequential offload): per module, the live GiB at its entry, "
                    "the peak inside it and the live GiB after it.")
    parser.add_argument("latent", nargs="?", type=int, default=2048,
                        help="latent side, px (default 2048: a 16K image)")
    parser.add_argument("depth", nargs="?", type=int, default=4,
                        help="list modules with fewer dots in their name than this (default 4)")
    parser.add_argument("gib", nargs="?", type=float, default=5.0,
                        help="list modules whose peak is above this many GiB (default 5)")
    args = parser.parse_args()
    lat, depth, floor = args.latent, args.depth, args.gib
    unet = memsim.sdxl_unet_on_meta()
    strategy = Strategy(True, True, True, True, "sequential")
    trackers, stack, rows = [], [], []
    init = memsim.PeakTracker.__init__

    def tracked_init(self, *args, **kwargs):  # the tracker unet_call_peak makes
        init(self, *args, **kwargs)
        trackers.append(self)

    def pre(name):
        def hook(module, args):
            t = trackers[-1]
            stack.append((t.live, t.peak))
            t.peak = t.live
        return hook

    def post(name):
        def hook(module, args, out):
            t = trackers[-1]
            live, peak = stack.pop()
            rows.append((name, live / GIB, t.peak / GIB, t.live / GIB))
            t.peak = max(peak, t.peak)
        return hook

    for name, m in unet.named_modules():
        if name and name.count(".") < depth:
            m.register_forward_pre_hook(pre(name))
            m.register_forward_hook(post(name))
    memsim.PeakTracker.__init__ = tracked_init
    try:
        peak = memsim.unet_call_peak(unet, lat, lat, strategy)
    finally:
        memsim.PeakTracker.__init__ = init
    print(f"call peak {peak / GIB:.2f} GiB (simulated), "
          f"{unet_peak_bytes(UNetShape.of(unet), lat, lat, strategy) / GIB:.2f} GiB (estimate)")
    for name, live, top, after in rows:
        if top > floor:
            print(f"{name:50s} in {live:6.2f} peak {top:6.2f} out {after:6.2f}")


if __name__ == "__main__":
    main()
