"""benchmarks/vae_work.py: the tiled VAE replayed on the meta device at SDXL shapes."""

import importlib.util
from pathlib import Path

import torch


def _module():
    path = Path(__file__).resolve().parent.parent / "benchmarks" / "vae_work.py"
    spec = importlib.util.spec_from_file_location("vae_work", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_replay_counts_the_statistics_passes_and_recomputation():
    work = _module()
    vae = work.sdxl_vae(torch.bfloat16)
    roomy = work.replay(vae, 1024, 512, 1e12, True, torch.bfloat16)
    # 3 x 3 tiles: the overlap alone makes the tiles decode more than the image.
    assert roomy["tiles"] == 9 and 1.1 < roomy["x_plain"] < 2.5
    # Everything kept: the final pass only runs what follows the last GroupNorm.
    assert 0 < roomy["pflop"] - roomy["statistics_pflop"] < 0.01 * roomy["pflop"]
    tight = work.replay(vae, 1024, 512, 0, True, torch.bfloat16)
    assert tight["pflop"] > 2 * roomy["pflop"]  # nothing kept: every pass starts afresh
    encode = work.replay(vae, 1024, 512, 1e12, False, torch.bfloat16)
    assert encode["op"] == "encode" and 1.1 < encode["x_plain"] < 2.5
