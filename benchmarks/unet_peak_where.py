"""Where a simulated UNet call peaks: per module, the live bytes at its entry, the peak inside it
and the live bytes after it (GiB), for the full SDXL UNet with LinFusion-XL's modules on meta
under every lever with sequential offload (what an 8-12 GB card's 16K stage runs).

    python benchmarks/unet_peak_where.py [LATENT] [DEPTH] [GIB]   # default 2048 4 5: modules
                                                                 # <= DEPTH dots, peaks > GIB
"""

from __future__ import annotations

import sys

from hires import memsim
from hires.strategy import Strategy
from hires.unet_costs import UNetShape, unet_peak_bytes

GIB = 2**30


def main() -> None:
    lat = int(sys.argv[1]) if len(sys.argv) > 1 else 2048
    depth = int(sys.argv[2]) if len(sys.argv) > 2 else 4
    floor = float(sys.argv[3]) if len(sys.argv) > 3 else 5.0
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
