"""benchmarks/vae_work.py: the tiled VAE replayed on the meta device at SDXL shapes."""

import torch
from helpers_bench import benchmark


def _module():
    return benchmark("vae_work")


def test_replay_counts_the_statistics_passes_and_recomputation():
    work = _module()
    vae = work.sdxl_vae(torch.bfloat16)
    # 768 px in 2 x 2 tiles (the replay's time goes by ops, not pixels: 3 x 3 took twice as long).
    roomy = work.replay(vae, 768, 512, 1e12, True, torch.bfloat16)
    # The overlap alone makes the tiles decode more than the image.
    assert roomy["tiles"] == 4 and 1.1 < roomy["x_plain"] < 2.5
    # Everything kept: the final pass only runs what follows the last GroupNorm.
    assert 0 < roomy["pflop"] - roomy["statistics_pflop"] < 0.01 * roomy["pflop"]
    # 100 MB kept (all of them fit in 1 GB): the passes recompute what is not kept (about
    # 4x the work; with nothing kept, 16x, and its replay took twice as long again).
    tight = work.replay(vae, 768, 512, 1e8, True, torch.bfloat16)
    assert tight["pflop"] > 2 * roomy["pflop"]
    encode = work.replay(vae, 768, 512, 1e12, False, torch.bfloat16)
    assert encode["op"] == "encode" and 1.1 < encode["x_plain"] < 2.5
