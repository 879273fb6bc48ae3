"""A preview (the job's first stage alone) is priced with the decode and save it ends on,
and a plan without CFG does not call its plain strategy 'batched'."""

import json
from dataclasses import replace

import pytest
from helpers_cli import cli

from hires.costs import sdxl_shape
from hires.eta import JobClock, phases
from hires.plan import describe, make_plan, preview_of


def test_a_preview_prices_the_decode_it_ends_on():
    """The whole job's first stage decodes nothing (the next stage does): a preview priced
    as that stage said 0 s left while its image was decoded."""
    whole = make_plan(4096, 4096, model=sdxl_shape(), rate=400e12)
    first, preview = whole.stages[0], preview_of(whole).stages[0]
    assert first.cost.tflop == first.cost.unet_tflop  # as before: no VAE in the whole's
    assert preview.strategy == first.strategy  # the image is the whole job's stage 0
    assert preview.cost.unet_tflop == first.cost.unet_tflop
    assert preview.cost.tflop > preview.cost.unet_tflop and preview.cost.vae_seconds > 0
    assert preview.cost.seconds > first.cost.seconds
    decode = [p for p in phases(preview_of(whole)) if p.name == "vae-decode"]
    assert len(decode) == 1 and decode[0].tflop > 0
    # A one-stage job is its own preview, priced the same.
    alone = make_plan(1024, 1024, model=sdxl_shape(), rate=400e12)
    assert preview_of(alone).stages[0].cost == alone.stages[0].cost


def test_the_clock_leaves_time_for_a_previews_decode(tiny):
    """Fed a preview run's events up to the end of its denoising, the clock still has the
    decode to come."""
    from hires.job import Job
    from hires.pipeline import generate, plan_for

    job = Job(prompt="x", width=1024, height=1024, steps=3, seed=1, model="tiny")
    plan = preview_of(plan_for(job, tiny))
    events = []
    generate(job, components=tiny, plan=plan, progress=events.append)
    clock, now = JobClock(plan, 0.0), 0.0
    denoised = max(i for i, e in enumerate(events) if e.phase == "denoise")
    for e in events[:denoised + 1]:
        now += 1.0
        clock.update(e, now)
    assert clock.remaining() > 0.05 * now
    for e in events[denoised + 1:]:
        now += 1.0
        clock.update(e, now)
    assert clock.remaining() == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize("guidance,name", [("7.5", "batched"), ("1", "plain")])
def test_a_plan_names_its_plain_strategy_by_whether_it_pairs_prompts(guidance, name):
    result = cli("plan", "x", "--size", "2048", "--gpu", "h200", "--guidance", guidance)
    assert result.exit_code == 0, result.stderr
    stages = [line for line in result.stdout.splitlines() if "stage " in line and "peak" in line]
    assert stages and all(f", {name}, peak" in line for line in stages)
    plan = make_plan(2048, 2048, model=replace(sdxl_shape(), guided=guidance != "1"),
                     rate=400e12)
    assert all(f", {name}, peak" in line for line in describe(plan))


def test_a_preview_whose_decode_does_not_fit_beside_the_jobs_strategy_is_refitted():
    """2K on an 8 GiB 4090 with 1024 px VAE tiles: the whole job's stage 0 runs batched, and
    the preview priced that with its decode at 8.05 GiB, over the whole budget, unsaid."""
    from hires.gpus import rate_for
    from hires.plan import usable

    budget = 8 << 30
    whole = make_plan(2048, 2048, model=sdxl_shape(), budget=budget, vae_tile=1024,
                      rate=rate_for("4090"))
    preview = preview_of(whole).stages[0]
    assert preview.cost.peak_bytes <= usable(budget)
    assert preview.cost.tflop > preview.cost.unet_tflop  # its decode, priced


def test_a_memory_refusal_without_cfg_names_the_plain_strategy():
    result = cli("plan", "x", "--size", "1024", "--gpu", "4090", "--vram", "6", "--offload",
                 "none", "--guidance", "1")
    assert result.exit_code == 2
    assert "(plain)" in result.stderr and "batched" not in result.stderr, result.stderr


def test_a_preview_is_not_refused_for_a_later_stage_that_does_not_fit():
    """`--size 16384 --ram 4 --preview` was refused for stage 6's 4.1 GiB, a stage a preview
    never runs (and the README's own 16K --preview example failed on a 21 GiB machine)."""
    whole = cli("gen", "x", "--model", "tiny", "--size", "16384", "--ram", "4", "--dry-run")
    assert whole.exit_code == 2 and "stage 6 (16384x16384) needs" in whole.stderr
    preview = cli("gen", "x", "--model", "tiny", "--size", "16384", "--ram", "4", "--preview",
                  "--dry-run")
    assert preview.exit_code == 0, preview.stderr
    assert "stage 0 of 7 (--preview)" in preview.stdout
    # fitted alone, stage 0 is what the whole job's fit gives it
    fits = make_plan(16384, 16384, model=sdxl_shape(), budget=40 << 30, rate=400e12)
    alone = make_plan(16384, 16384, model=sdxl_shape(), budget=40 << 30, rate=400e12,
                      preview=True)
    assert preview_of(alone) == preview_of(fits)
    assert alone.stages[-1].cost is None  # not priced: it does not run


def test_a_preview_dry_runs_json_says_it_is_one():
    """`--preview --dry-run --json` gave the job's 4096 px and one 1024 px stage, with nothing
    saying that the stages were a preview's."""
    args = ("gen", "x", "--model", "tiny", "--size", "4096", "--dry-run", "--json")
    whole, preview = (json.loads(cli(*args, *extra).stdout.splitlines()[0])
                      for extra in ((), ("--preview",)))
    assert (whole["preview"], preview["preview"]) == (False, True)
    assert preview["width"] == whole["width"] == 4096
    assert len(preview["stages"]) == 1 < len(whole["stages"])
