"""The planner's cost model against a simulated GPU (full SDXL shapes on `meta`) and torch's
own FLOP counter."""

from functools import lru_cache

import pytest
import torch

from hires.costs import UNetShape, VaeShape, unet_flops, unet_peak_bytes, vae_flops
from hires.memsim import PeakTracker, module_bytes, sdxl_unet_on_meta, unet_call_peak
from hires.strategy import Strategy

EVERY = dict(split_cfg=True, ff_chunks=True, row_bands=True, park_skips=True)
STRATEGIES = {
    "batched": Strategy(),
    "split-cfg+ff-chunks": Strategy(split_cfg=True, ff_chunks=True),
    "+row-bands": Strategy(split_cfg=True, ff_chunks=True, row_bands=True),
    "every lever": Strategy(**EVERY),
    "every lever, sequential": Strategy(**EVERY, weights="sequential"),
    "parked skips, batched": Strategy(park_skips=True),
}


@lru_cache(maxsize=1)
def sdxl():
    return sdxl_unet_on_meta()


# The 1K stage under every strategy; the 4K stage under the ones a 4K stage gets on small cards
# (benchmarks/memory.py covers every pair, 16K included).
CASES = [(128, name) for name in STRATEGIES] + [
    (512, name) for name in ("+row-bands", "every lever", "every lever, sequential")]


@pytest.mark.parametrize("latent,name", CASES)
def test_estimate_within_15_percent_of_the_simulated_gpu(latent, name):
    strategy = STRATEGIES[name]
    unet = sdxl()
    simulated = unet_call_peak(unet, latent, latent, strategy)
    estimated = unet_peak_bytes(UNetShape.of(unet), latent, latent, strategy)
    assert abs(estimated / simulated - 1) <= 0.15, (estimated / 2**30, simulated / 2**30)


def test_peak_tracker_agrees_with_torch_mem_tracker():
    from torch.distributed._tools.mem_tracker import MemTracker

    first = torch.nn.Conv2d(64, 64, 3, padding=1, device="meta")
    second = torch.nn.Conv2d(64, 64, 3, padding=1, device="meta")
    x = torch.empty(2, 64, 96, 96, device="meta")

    def run():
        h = torch.nn.functional.silu(first(x))
        return second(h) + h

    # MemTracker also counts the weights of the modules that run.
    ours = PeakTracker(baseline=module_bytes(first) + module_bytes(second))
    with torch.inference_mode(), ours:
        run()
    theirs = MemTracker()
    with torch.inference_mode(), theirs:
        run()
    peak = theirs.get_tracker_snapshot("peak")[torch.device("meta")]["Total"]
    assert ours.peak == peak


def test_unet_flops_match_torch_flop_counter():
    from torch.utils.flop_counter import FlopCounterMode

    unet = sdxl()
    dt, dev = torch.bfloat16, "meta"
    added = {"text_embeds": torch.empty(1, 1280, device=dev, dtype=dt),
             "time_ids": torch.empty(1, 6, device=dev, dtype=dt)}
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        unet(torch.empty(1, 4, 48, 64, device=dev, dtype=dt), torch.ones(1, device=dev),
             encoder_hidden_states=torch.empty(1, 77, 2048, device=dev, dtype=dt),
             added_cond_kwargs=added)
    model = unet_flops(UNetShape.of(unet), 48, 64)
    assert abs(model / counter.get_total_flops() - 1) < 0.02


@pytest.mark.parametrize("decode", [True, False])
def test_vae_flops_match_torch_flop_counter(decode):
    from diffusers import AutoencoderKL
    from torch.utils.flop_counter import FlopCounterMode

    from hires.sdxl import SDXL_VAE_CONFIG

    with torch.device("meta"):
        vae = AutoencoderKL(**SDXL_VAE_CONFIG)
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        if decode:
            vae.decode(torch.empty(1, 4, 32, 48, device="meta"))
        else:
            vae.encode(torch.empty(1, 3, 256, 384, device="meta"))
    model = vae_flops(VaeShape.from_config(SDXL_VAE_CONFIG), 384, 256, decode=decode)
    assert abs(model / counter.get_total_flops() - 1) < 0.05
