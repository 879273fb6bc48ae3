"""The planner's simulation of the tiled VAE's passes against hires' own code on meta tensors."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from diffusers import AutoencoderKL

from hires import vae_attention, vae_cost
from hires.costs import VaeShape, sdxl_shape, stage_cost, vae_flops
from hires.gpus import VAE_SHARE
from hires.sdxl import SDXL_VAE_CONFIG
from hires.strategy import Strategy
from hires.tiny import tiny_vae
from hires.vae_cost import (
    replayed_copies,
    replayed_flops,
    replayed_memo_bytes,
    tiled_cost,
    tiled_flops,
    tiled_memo_bytes,
)


def _on_meta(config: dict) -> AutoencoderKL:
    with torch.device("meta"):
        vae = AutoencoderKL(**{k: v for k, v in config.items() if not k.startswith("_")})
    return torch.nn.Module.to(vae.eval(), torch.bfloat16)


@pytest.fixture(scope="module")
def tiny():
    config = dict(tiny_vae(trained=False).config)
    return _on_meta(config), VaeShape.from_config(config)


# The meta replays by their arguments: the FLOP tests and the memo test below ask for the same
# ones of the tiny VAE (replayed_flops and replayed_memo_bytes are two views of one replay,
# 1-5 s each on a 2-core CPU).
_REPLAYS: dict[tuple, tuple[float, float, float]] = {}


def replay_once(monkeypatch) -> None:
    """This test's replays come from the module's cache, run by the real replay where not
    there. Only for replays with hires' own settings (not the context-cell cases' below)."""
    real = vae_cost._replay

    def replay(*args):
        if args not in _REPLAYS:
            _REPLAYS[args] = real(*args)
        return _REPLAYS[args]

    monkeypatch.setattr(vae_cost, "_replay", replay)


@pytest.mark.parametrize("decode", [True, False])
# Nothing kept, some, everything; the attention whole or through context cells.
@pytest.mark.parametrize("budget, cells", [(0.0, False), (3e6, False), (1e12, False),
                                           (3e6, True), (1e12, True)])
def test_simulation_counts_what_the_tiling_code_runs(tiny, monkeypatch, decode, budget, cells):
    vae, shape = tiny
    if cells:  # and blocks whose exact keys leave some of the image to the cells
        monkeypatch.setattr(vae_attention, "GLOBAL_TOKENS", 0)
        monkeypatch.setattr(vae_attention, "SWEEP_BLOCK", 16)
        monkeypatch.setattr(vae_attention, "SWEEP_REACH", 8)
    else:
        replay_once(monkeypatch)
    # Not square (4 x 3 tiles), so that rows and columns cannot be mixed up.
    replayed, _ = replayed_flops(vae, 768, 576, decode=decode, tile=256, budget=budget)
    simulated = tiled_flops(shape, 768, 576, decode=decode, tile=256, budget=budget,
                            dtype_bytes=2)
    assert simulated == pytest.approx(replayed, rel=1e-9)


@pytest.mark.parametrize("decode", [True, False])
def test_simulation_counts_the_tile_runs_the_tiling_code_makes(tiny, monkeypatch, decode):
    """The planner prices each tile run's host work, so their count is the real code's."""
    from hires import vae_memo

    vae, shape = tiny
    calls, real = [], vae_memo.Runner.__call__

    def counted(self, box):
        calls.append(box)
        return real(self, box)

    monkeypatch.setattr(vae_memo.Runner, "__call__", counted)
    replayed_flops(vae, 768, 576, decode=decode, tile=256, budget=3e6)
    runs = vae_cost.tiled_runs(shape, 768, 576, decode=decode, tile=256, budget=3e6)
    assert runs == len(calls) > 12  # 4 x 3 tiles, each run once per statistics pass and more
    # What is kept changes the work, not the runs: the planner counts them once per tile.
    assert vae_cost.tiled_runs(shape, 768, 576, decode=decode, tile=256, budget=0.0) == runs
    assert vae_cost.tiled_runs(shape, 768, 576, decode=decode, tile=768, budget=3e6) == 1


def test_simulation_matches_at_sdxl_shapes_and_one_tile():
    vae = _on_meta(SDXL_VAE_CONFIG)
    shape = VaeShape.from_config(SDXL_VAE_CONFIG)
    # 3 x 2 tiles, one shape (107 x 112 latent px) for a middle tile and a corner one alike,
    # some of their outputs kept in 2e9 bytes both ways (3 x 3 took half as long again: the
    # replay's time goes by ops); then one plain pass.
    for width, height, tile in ((2048, 1536, 1024), (1024, 1024, 1024)):
        for decode in (True, False):
            replayed, _ = replayed_flops(vae, width, height, decode=decode, tile=tile,
                                         budget=2e9)
            assert tiled_flops(shape, width, height, decode=decode, tile=tile, budget=2e9) == \
                pytest.approx(replayed, rel=1e-9)
    # The one plain pass is what the plain price says.
    assert tiled_flops(shape, 1024, 1024, decode=True, tile=1024, budget=0) == pytest.approx(
        vae_flops(shape, 1024, 1024, decode=True), rel=0.01)


# A level budget that refuses some levels and keeps others, and one that keeps every level.
@pytest.mark.parametrize("decode, budget", [(True, 3e6), (False, 2e7), (True, 1e12)])
def test_exact_simulation_follows_the_scratch_files(tiny, decode, budget):
    """`exact` keeps step outputs in level files (DiskMemo): the simulation runs the same work
    and writes, reads and holds the same bytes as the real memo does on meta tensors."""
    vae, shape = tiny
    replayed = vae_cost.replayed_exact(vae, 768, 576, decode=decode, tile=256, budget=budget)
    simulated = vae_cost.exact_cost(shape, 768, 576, decode=decode, tile=256, budget=budget)
    assert simulated.flops == pytest.approx(replayed.flops, rel=1e-9)
    assert simulated[1:] == tuple(replayed[1:]) and replayed.written > 0 and replayed.read > 0
    # Never less work than `fast` with the same bytes in memory: a resnet's mid pair never
    # goes to a file, so its first convolution runs again in the next pass.
    assert simulated.flops > tiled_flops(shape, 768, 576, decode=decode, tile=256,
                                         budget=budget)


@pytest.mark.parametrize("budget", [3e6, 1e12])  # some levels refused; none
def test_exact_simulation_writes_what_a_real_decode_writes(monkeypatch, budget):
    """The tiny VAE decoding on the CPU in exact mode, its level files real: the bytes it
    writes, reads back and holds at once are the simulation's."""
    from hires import vae as tiled
    from hires import vae_memo, vae_stats

    vae = tiny_vae(trained=False).float()
    shape = VaeShape.from_config(dict(vae.config))
    memos = []
    close = vae_memo.DiskMemo.close

    def kept_close(memo) -> None:
        memos.append(memo)
        close(memo)

    monkeypatch.setattr(vae_memo.DiskMemo, "close", kept_close)
    monkeypatch.setattr(vae_stats, "MEMO_BYTES", budget)
    z = torch.randn(1, 4, 40, 48, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        tiled.decode_float(vae, z, tile=128, stats="exact")
    (memo,) = memos
    simulated = vae_cost.exact_cost(shape, 384, 320, decode=True, tile=128, budget=budget,
                                    dtype_bytes=4)
    assert (memo.written, memo.read, memo.most) == simulated[1:] and memo.written > 0


def test_exact_simulation_leaves_half_the_free_disk(tiny, monkeypatch):
    """A level is refused once it would take more than half of what is free of the disk."""
    from collections import namedtuple

    from hires import vae_memo

    vae, shape = tiny
    disk = 6e7
    memos = []
    real_init = vae_memo.DiskMemo.__init__

    def init(self, *args):
        real_init(self, *args)
        memos.append(self)

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(vae_memo.DiskMemo, "__init__", init)
    monkeypatch.setattr(vae_memo.shutil, "disk_usage",
                        lambda folder: usage(disk, 0, disk - memos[-1].live))
    replayed = vae_cost.replayed_exact(vae, 768, 576, decode=True, tile=256, budget=1e12)
    simulated = vae_cost.exact_cost(shape, 768, 576, decode=True, tile=256, budget=1e12,
                                    disk=disk)
    assert simulated.flops == pytest.approx(replayed.flops, rel=1e-9)
    assert simulated[1:] == tuple(replayed[1:])
    roomy = vae_cost.exact_cost(shape, 768, 576, decode=True, tile=256, budget=1e12)
    assert simulated.most < disk < roomy.most and simulated.flops > roomy.flops


def test_less_memory_costs_recomputation_and_the_planner_prices_it():
    shape = sdxl_shape(linfusion=True)
    vae = shape.vae
    roomy = tiled_flops(vae, 16384, 16384, decode=True, tile=2048, budget=float("inf"))
    tight = tiled_flops(vae, 16384, 16384, decode=True, tile=2048, budget=4e9)
    plain = vae_flops(vae, 16384, 16384, decode=True)
    assert 1.0 < roomy / plain < 2.0 and tight > 5 * roomy

    def vae_tflop(gib: float) -> float:
        cost = stage_cost(shape, 16384, 16384, 4, Strategy(), base=False,
                          previous=(8192, 8192), final_decode=True, budget=int(gib * 2**30))
        return cost.tflop - cost.unet_tflop

    # The same stage on a smaller GPU keeps fewer outputs and recomputes more.
    assert vae_tflop(40) > 1.5 * vae_tflop(139) > 1.5 * plain / 1e12


@pytest.mark.parametrize("decode", [True, False])
def test_simulation_follows_outputs_spilled_to_the_cpu(tiny, decode, monkeypatch):
    """A GPU's outputs that do not fit its budget go to the CPU's memory (`spill`): the
    simulation keeps the same books as the memo, and spilling saves work for copies."""
    vae, shape = tiny
    replay_once(monkeypatch)
    replayed, _ = replayed_flops(vae, 768, 576, decode=decode, tile=256, budget=1e6, spill=3e6)
    flops, copied = tiled_cost(shape, 768, 576, decode=decode, tile=256, budget=1e6, spill=3e6)
    assert flops == pytest.approx(replayed, rel=1e-9)
    alone, none = tiled_cost(shape, 768, 576, decode=decode, tile=256, budget=1e6)
    assert none == 0 and copied > 0 and flops < alone
    # Spilled or not, a byte kept is a byte kept: the same work as one budget of both sizes.
    both, _ = tiled_cost(shape, 768, 576, decode=decode, tile=256, budget=4e6)
    assert both <= flops


@pytest.mark.parametrize("decode", [True, False])
@pytest.mark.parametrize("budget, spill", [(1e6, 3e6), (1e6, 1e12)])
def test_simulation_copies_what_the_memo_copies(tiny, decode, budget, spill, monkeypatch):
    """Each spilled output crosses the host link once out (as its tile's run settles) and once
    back per later run from it: the simulation's copies are the memo's, byte for byte."""
    vae, shape = tiny
    replay_once(monkeypatch)
    replayed = replayed_copies(vae, 768, 576, decode=decode, tile=256, budget=budget,
                               spill=spill)
    _, copied = tiled_cost(shape, 768, 576, decode=decode, tile=256, budget=budget, spill=spill)
    assert copied == replayed > 0


def test_the_planner_prices_spilled_outputs_and_their_copies():
    shape = sdxl_shape(linfusion=True)

    def vae_cost(spill: float, vae_rate: float | None = 66e12
                 ) -> tuple[float, float, bool, float]:
        rate = None if vae_rate is None else vae_rate / VAE_SHARE  # rate: the UNet's
        cost = stage_cost(replace(shape, spill=spill), 16384, 16384, 4, Strategy(), base=False,
                          previous=(8192, 8192), final_decode=True, budget=24 * 2**30,
                          rate=rate)
        return cost.tflop - cost.unet_tflop, cost.seconds, cost.vae_spill, cost.vae_spill_bytes

    (tight, slow, no, _), (roomy, fast, yes, _) = vae_cost(0.0), vae_cost(32e9)
    assert roomy < 0.6 * tight and fast < slow and yes and not no
    # The copies are priced: the time falls by less than the work's share of it.
    assert slow - fast < (tight - roomy) * 1e12 / 66e12
    # A GPU six times faster recomputes many outputs sooner than their copies come back: it
    # keeps less than it may (under half the 32 GB), and gains only a few % of its time.
    work, quick, kept, amount = vae_cost(32e9, 400e12)
    alone = vae_cost(0.0, 400e12)[1]
    assert kept and 0 < amount < 16e9 and roomy < work < tight and 0.95 * alone < quick < alone
    assert vae_cost(32e9, 1000e12)[2] is False  # and one faster still keeps none
    assert vae_cost(32e9, None)[2] is False  # nor without a rate to judge by
    off = stage_cost(replace(shape, spill=32e9, on_gpu=False), 4096, 4096, 2, Strategy(),
                     base=False, previous=(2048, 2048), final_decode=True, budget=24 * 2**30)
    on = stage_cost(replace(shape, on_gpu=False), 4096, 4096, 2, Strategy(), base=False,
                    previous=(2048, 2048), final_decode=True, budget=24 * 2**30)
    assert off.tflop == on.tflop  # a CPU has nowhere to spill to


def test_the_planner_prices_exact_mode_by_its_files():
    """`exact` recomputes what its level files refuse and copies the rest through the host
    and the disk: the plan prices both (it was priced as if it recomputed nothing and its
    files cost no time: an H200's 16K job planned faster with it than with `fast`). At a
    4090's rate, where the files pay (faster GPUs recompute: test_vae_scratch_choice)."""
    from hires.costs import DISK_RATE, HOST_LINK
    from hires.gpus import TILE_RUN_SECONDS
    from hires.vae_stats import MEMO_BYTES

    shape = replace(sdxl_shape(linfusion=True), disk=200e9)

    def stage(mode: str):
        return stage_cost(shape, 16384, 16384, 4, Strategy(), base=False,
                          previous=(8192, 8192), final_decode=True, budget=139 * 2**30,
                          rate=40e12 / VAE_SHARE, vae_stats=mode)

    fast, exact = stage("fast"), stage("exact")
    runs = [vae_cost.exact_cost(shape.vae, w, h, decode=d, tile=exact.vae_tile,
                                budget=MEMO_BYTES, disk=200e9)
            for w, h, d in ((8192, 8192, True), (16384, 16384, False), (16384, 16384, True))]
    flops, files = sum(r.flops for r in runs), sum(r.written + r.read for r in runs)
    # Each tile run's host work: its passes run the tiles as a fast decode keeping all does.
    count = sum(vae_cost.tiled_runs(shape.vae, w, h, decode=d, tile=exact.vae_tile,
                                    budget=float("inf"))
                for w, h, d in ((8192, 8192, True), (16384, 16384, False), (16384, 16384, True)))
    assert exact.tflop - exact.unet_tflop == pytest.approx(flops / 1e12)
    assert exact.vae_seconds == pytest.approx(flops / 40e12 + files / HOST_LINK
                                              + files / DISK_RATE + count * TILE_RUN_SECONDS)
    assert exact.scratch_bytes == int(max(r.most for r in runs)) > 0
    assert exact.vae_seconds > 3 * fast.vae_seconds and fast.scratch_bytes == 0


def test_the_planner_spills_the_fastest_share_of_the_budget(monkeypatch):
    # Past some point each output kept costs more in copies than its recomputation saves
    # (a 16K stage whose VAE runs at 145 TFLOP/s, with 30 GB to spill into): the planner keeps
    # less than it may,
    # the fastest amount on a ladder that every budget shares.
    from hires import costs

    shape = sdxl_shape(linfusion=True)

    def cost(spill: float):
        return stage_cost(replace(shape, spill=spill), 16384, 16384, 4, Strategy(),
                          base=False, previous=(8192, 8192), final_decode=True,
                          budget=int(44.5 * 2**30), rate=145e12 / VAE_SHARE)

    roomy = cost(30e9)
    assert roomy.vae_spill and 0 < roomy.vae_spill_bytes < 30e9
    # That share as the whole budget: the same choice, the same time.
    just = cost(roomy.vae_spill_bytes)
    assert (just.vae_spill_bytes, just.seconds) == (roomy.vae_spill_bytes, roomy.seconds)
    ladder = {spill: cost(spill).seconds for spill in (8e9, 15e9, 30e9, 60e9, 120e9)}
    assert list(ladder.values()) == sorted(ladder.values(), reverse=True)  # more RAM: faster
    monkeypatch.setattr(costs, "spill_amounts", lambda budget: [budget])  # all, or nothing
    whole = {spill: cost(spill).seconds for spill in ladder}
    assert all(ladder[s] <= whole[s] for s in ladder) and ladder[30e9] < whole[30e9]
    assert whole[60e9] > whole[30e9]  # where more RAM made the old plan slower


@pytest.mark.parametrize("decode", [True, False])
@pytest.mark.parametrize("budget, spill", [(3e6, 0.0), (1e6, 3e6), (1e12, 0.0)])
def test_simulation_counts_the_device_memory_the_kept_outputs_take(tiny, decode, budget, spill,
                                                                  monkeypatch):
    """The planner adds the memo's memory to a stage's peak (what a run takes of a big card):
    the simulation keeps the same books as the memo, up to its budget."""
    vae, shape = tiny
    replay_once(monkeypatch)  # the replays of the FLOP tests above
    replayed = replayed_memo_bytes(vae, 768, 576, decode=decode, tile=256, budget=budget,
                                   spill=spill)
    simulated = tiled_memo_bytes(shape, 768, 576, decode=decode, tile=256, budget=budget,
                                 spill=spill, dtype_bytes=2)
    assert simulated == replayed and 0 < simulated <= budget
    if budget == 3e6:
        assert simulated > 0.9 * budget  # it fills what it is given
