"""The plan prices the VAE's kept outputs from the memory a run has, as the run takes them."""

from __future__ import annotations

import torch

from hires import costs, plan, vae_stats
from hires.costs import sdxl_shape, stage_cost
from hires.strategy import Strategy

H200 = int(139.9 * 2**30)  # `hires plan --gpu h200`'s budget
BATCHED = Strategy(weights="resident")


def memo_budgets(monkeypatch) -> list[float]:
    """The budgets stage_cost prices the fast mode's kept outputs at, as it calls for them."""
    seen: list[float] = []
    real = costs.tiled_memo_bytes

    def spy(*args, **kwargs):
        seen.append(kwargs["budget"])
        return real(*args, **kwargs)

    monkeypatch.setattr(costs, "tiled_memo_bytes", spy)
    return seen


def last_stage(**budgets):
    """The 16K stage of a 1K -> 16K job on SDXL, weights resident."""
    return stage_cost(sdxl_shape(), 16384, 16384, 4, BATCHED, base=False,
                      previous=(8192, 8192), final_decode=True, rate=262e12, **budgets)


def test_the_kept_outputs_take_a_share_of_what_a_run_has_free(monkeypatch):
    """A run's fast mode takes 0.8 of the free memory beyond 8 GB as a decode starts, whatever
    margin the plan keeps for its peak: on an H200, run 3's 16K decode was given 107.5 GB to
    keep outputs in while the plan priced 101.2 (its budget less the 5 % margin), so the stage
    used 119.8 GB against 114.8 planned."""
    seen = memo_budgets(monkeypatch)
    with_margin = last_stage(budget=plan.usable(H200))
    priced_old = seen[-1]
    as_run = last_stage(budget=plan.usable(H200), free=H200)
    priced = seen[-1]
    # What the run's rule (hires.vae_stats.fast_budget) gives when the resident weights and
    # the stage's latents are all that take the card.
    model = sdxl_shape()
    latents = 10 * 4 * (16384 // 8) ** 2 * 4  # latents, noise, x0, blur, eps (fp32)
    monkeypatch.setattr(vae_stats, "free_memory", lambda device: H200 - model.weights - latents)
    assert priced == vae_stats.fast_budget(torch.device("cuda"))
    assert priced - priced_old > 5e9  # 0.8 of the margin: the 6 GB the H200 kept beyond it
    assert as_run.used_bytes > with_margin.used_bytes
    # The peak the margin is for does not move, and the kept outputs still fit the card.
    assert as_run.peak_bytes == with_margin.peak_bytes
    assert as_run.used_bytes <= H200


def test_a_plan_prices_its_stages_kept_outputs_from_the_whole_budget(monkeypatch):
    seen = memo_budgets(monkeypatch)
    last_stage(budget=plan.usable(H200), free=H200)
    as_run = seen[-1]
    at_16k: list[float] = []  # the 16K stage's (the plan then prices its preview, at 1K)
    spied = costs.tiled_memo_bytes

    def spy(vae, width, *args, **kwargs):
        if width == 16384:
            at_16k.append(kwargs["budget"])
        return spied(vae, width, *args, **kwargs)

    monkeypatch.setattr(costs, "tiled_memo_bytes", spy)
    made = plan.make_plan(16384, 16384, model=sdxl_shape(), budget=H200, offload="none")
    assert made.stages[-1].strategy.weights == "resident"
    assert at_16k and at_16k[-1] == as_run  # the last stage's, fitted last


def test_an_fp32_vaes_kept_outputs_leave_room_for_its_tile_runs():
    """A T4 (no bf16: the VAE in fp32): the kept outputs took the room of bf16 tile runs, and
    the stage's figure with them passed the card's memory by 2-3 GiB at every size."""
    from hires.dry_run import dry_run
    from hires.job import Job

    for gpu in ("t4", "v100"):
        p = dry_run(Job(width=16384, height=16384, ram=64, disk=100), gpu).plan
        assert p.fp32 == ("VAE",)
        assert all(s.cost.used_bytes <= p.budget for s in p.stages), gpu


def test_a_cpus_kept_outputs_leave_room_for_its_tile_runs():
    """On a CPU the VAE runs in fp32 and its reserve is only for the rest of the machine: a
    2048 px tile's 12 GiB run beside half of the rest kept took 23.1 GiB of 23.0 free at 4K."""
    model = sdxl_shape(on_gpu=False, dtype_bytes=4)
    for gib in (20, 23, 28, 32):
        budget = gib * 2**30
        made = plan.make_plan(4096, 4096, model=model, budget=budget)
        assert all(s.cost.used_bytes <= budget for s in made.stages), gib


def test_the_run_keeps_outputs_beside_its_tile_runs(monkeypatch):
    """The fast mode's budget leaves room for one tile run: on a CPU beside the reserve for
    the rest of the machine, on a GPU within the reserve (which is for that run)."""
    cpu = torch.device("cpu")
    monkeypatch.setattr(vae_stats, "free_memory", lambda device: 22e9)
    assert vae_stats.fast_budget(cpu, torch.float32, working=1e9) == 0.5 * (22e9 - 3e9)
    assert vae_stats.fast_budget(cpu, torch.float32, working=12e9) == 0.5 * (22e9 - 14e9)
    # A GPU's reserve already holds a bf16 2048 px SDXL tile's run (6.5 GB): the same budget.
    cuda = torch.device("cuda")
    assert vae_stats.fast_budget(cuda, working=6.5e9) == vae_stats.fast_budget(cuda)
    assert vae_stats.fast_budget(cuda, working=10e9) == 0.8 * (22e9 - 10e9)
