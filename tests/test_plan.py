"""The stage plan: sizes, strengths and step counts, and the strategy chosen for a budget."""

import math
from functools import lru_cache

import pytest

from hires.costs import sdxl_shape
from hires.plan import PlanError, base_size, make_plan, stage_sizes, timesteps_for, usable

GIB = 1024**3


def sizes(plan):
    return [(s.width, s.height) for s in plan.stages]


def test_1k_is_a_single_base_stage():
    p = make_plan(1024, 1024)
    assert sizes(p) == [(1024, 1024)]
    assert p.stages[0].steps == 50 and p.stages[0].strength == 1.0


def test_2k_adds_one_stage_at_full_strength():
    p = make_plan(2048, 2048)
    assert sizes(p) == [(1024, 1024), (2048, 2048)]
    assert p.stages[1].strength == pytest.approx(0.32)
    assert p.stages[1].steps == 16


def test_16k_square_ladder_matches_the_reference():
    p = make_plan(16384, 16384)
    assert sizes(p) == [(1024 << k, 1024 << k) for k in range(5)]
    assert [s.steps for s in p.stages] == [50, 16, 12, 8, 4]
    assert [round(s.strength, 6) for s in p.stages[1:]] == [0.32, 0.24, 0.16, 0.08]
    assert [s.ratio for s in p.stages] == [1, 2, 4, 8, 16]
    # Each stage runs the *last* timesteps of the same 50-step schedule.
    full = timesteps_for(50)
    for s in p.stages[1:]:
        assert s.timesteps == full[-s.steps:]
    assert p.stages[-1].timesteps == (61, 41, 21, 1)


@pytest.mark.parametrize("aspect,base", [(16 / 9, (1344, 768)), (3, (1792, 576)),
                                         (9 / 16, (768, 1344)), (1, (1024, 1024))])
def test_the_base_is_about_one_megapixel_at_the_aspect(aspect, base):
    w = 16384 if aspect >= 1 else round(16384 * aspect / 8) * 8
    h = round(16384 / aspect / 8) * 8 if aspect >= 1 else 16384
    assert base_size(w, h, 1024) == base
    assert 0.9 < base[0] * base[1] / 1024**2 < 1.1
    assert abs(base[0] / base[1] / aspect - 1) < 0.04


@pytest.mark.parametrize("w,h", [(32768, 64), (64, 32768), (20000, 64), (30000, 72)])
def test_a_base_held_at_the_grid_keeps_to_the_native_area(w, h):
    """32768x64 started at 23168x64, 1.5 MP: the short side held at 64 px, the long one
    followed the aspect past SDXL's area (QA 190)."""
    bw, bh = base_size(w, h, 1024)
    assert min(bw, bh) == 64 and bw * bh <= 1024**2 and bw * bh >= 0.9 * 1024**2


@pytest.mark.parametrize("w,h", [(20000, 20000), (16392, 16392), (3000, 1000), (16384, 9216),
                                 (5000, 700), (1500, 1500)])
def test_no_stage_is_bigger_than_the_request_and_the_last_is_the_request(w, h):
    p = make_plan(w, h)
    assert (p.stages[-1].width, p.stages[-1].height) == (w, h)
    for a, b in zip(p.stages, p.stages[1:]):
        assert b.width <= w and b.height <= h
        assert 1 < max(b.width / a.width, b.height / a.height) <= 2 + 1e-9
    # The last stage's dilation is its scale over the base, rounded.
    scale = max(w / p.stages[0].width, h / p.stages[0].height)
    assert p.stages[-1].ratio == max(1, round(scale))


def test_20000_goes_from_16k_equivalents_straight_to_the_request():
    assert stage_sizes(20000, 20000, 1024)[-2:] == [(16384, 16384, 16.0),
                                                    (20000, 20000, 20000 / 1024)]


def test_sizes_outside_the_range_are_refused_with_the_range():
    with pytest.raises(PlanError, match="64-32768"):
        make_plan(40000, 1024)


def test_small_requests_run_at_their_own_size():
    assert sizes(make_plan(512, 384)) == [(512, 384)]
    assert base_size(200, 104, 256) == (200, 104)


def test_tiny_native_size_and_few_steps():
    p = make_plan(2048, 2048, steps=10, native=256)
    assert sizes(p) == [(256 << k, 256 << k) for k in range(4)]
    assert [s.steps for s in p.stages] == [10, 4, 3, 2]  # ceil(10 x 0.32, 0.2133, 0.1067)


def test_schedule_matches_diffusers_euler():
    from diffusers import EulerDiscreteScheduler

    from hires.tiny import tiny_scheduler

    sched: EulerDiscreteScheduler = tiny_scheduler()
    for steps in (1, 7, 30, 50):
        sched.set_timesteps(steps)
        assert timesteps_for(steps) == tuple(int(t) for t in sched.timesteps)


# The planner's choices, full SDXL + LinFusion-XL shapes on the meta device (no weights).


@lru_cache(maxsize=1)
def sdxl():
    from hires.costs import sdxl_shape

    return sdxl_shape()


def planned(size, budget_gib, offload="auto"):
    return make_plan(size, size, model=sdxl(), budget=None if budget_gib is None else
                     int(budget_gib * GIB), offload=offload, rate=400e12)


@pytest.mark.parametrize("size", [4096, 8192, 16384])
def test_every_stage_fits_its_budget_and_more_memory_is_never_slower(size):
    seconds = {}
    for budget in (8, 12, 24, 80):
        try:
            p = planned(size, budget)
        except PlanError as e:
            assert budget <= 12 and size == 16384, e  # only 16K on small cards cannot fit
            continue
        assert all(s.cost.peak_bytes <= usable(budget * GIB) for s in p.stages)
        seconds[budget] = p.seconds
    budgets = sorted(seconds)
    assert [seconds[b] for b in budgets] == sorted((seconds[b] for b in budgets), reverse=True)
    assert 80 in seconds and 24 in seconds


def test_an_80_gb_card_runs_16k_faster_than_a_24_gb_one_with_fewer_levers():
    big, small = planned(16384, 80), planned(16384, 24)
    assert big.seconds < small.seconds
    assert small.stages[-1].strategy.row_bands or small.stages[-1].strategy.weights != "resident"
    assert big.stages[0].strategy.label == "batched"  # 1K needs no lever anywhere


def test_a_plan_that_cannot_fit_says_how_much_it_needs():
    with pytest.raises(PlanError, match=r"needs at least \d+\.\d GiB"):
        planned(16384, 4)


def test_offload_choice_limits_the_weights_modes():
    p = planned(4096, 24, offload="model")
    assert {s.strategy.weights for s in p.stages} == {"model"}
    p = planned(4096, None, offload="none")
    assert {s.strategy.weights for s in p.stages} == {"resident"}


def test_costs_grow_with_size():
    p = planned(16384, 80)
    passes = [s.steps + s.global_steps for s in p.stages[1:]]  # local, and global while it counts
    tflop = [s.cost.unet_tflop / n for s, n in zip(p.stages[1:], passes)]
    assert all(b > 3.5 * a for a, b in zip(tflop, tflop[1:]))  # ~4x pixels per x2 stage
    assert math.isclose(p.seconds, sum(s.cost.seconds for s in p.stages))


def test_without_a_rate_the_plan_still_picks_the_fastest_strategy_that_fits():
    """A run on a GPU not in the table plans without a rate: strategies are still ranked by
    time (at RANK_RATE), not by memory, so an 80 GB card does not stream its weights."""
    p = make_plan(4096, 4096, model=sdxl(), budget=80 * GIB)
    assert all(s.cost.seconds is None for s in p.stages)
    assert [s.strategy.label for s in p.stages] == ["batched"] * 3
    tight = make_plan(16384, 16384, model=sdxl(), budget=12 * GIB)
    assert tight.stages[-1].strategy.weights == "sequential"  # where it must


def test_16k_fits_an_8_gb_card():
    """Transformer blocks over chunks of tokens, resnets writing their second conv over the
    first's output, smaller bands on a GPU, conv_in's output and the last up block's input
    parked on the CPU: the 16K stage's estimate went from 17.7 to 10.1 GiB (12288 px was the
    most a 12 GB card allowed before); then maps parked as they are made, every up block's
    input written to the CPU band by band and smaller token chunks: 6.9 GiB."""
    p = planned(16384, 8)
    last = p.stages[-1]
    assert last.strategy.park_skips and last.strategy.row_bands and last.strategy.ff_chunks
    assert last.cost.peak_bytes <= usable(8 * GIB)
    with pytest.raises(PlanError, match=r"needs at least 6\.\d GiB"):
        planned(16384, 6)


def test_on_a_cpu_the_leanest_strategy_that_fits_wins():
    """Fresh memory is what costs on a CPU (BENCHMARKS.md): the plan takes the least peak,
    where on a GPU it takes the least time."""
    cpu = make_plan(8192, 8192, model=sdxl_shape(on_gpu=False, dtype_bytes=4),
                    budget=64 * GIB, offload="none")
    for stage in cpu.stages:
        assert stage.cost.peak_bytes == min(
            o.cost.peak_bytes for o in _options(stage, cpu, on_gpu=False))
    assert cpu.stages[-1].strategy.row_bands


def _options(stage, plan, on_gpu):
    from hires.plan import _with_cost, strategies_for

    model = sdxl_shape(on_gpu=on_gpu, dtype_bytes=4)
    return [_with_cost(stage, list(plan.stages), model, s, None, "fast", None, 64 * GIB)
            for s in strategies_for(model, "none")]


def test_16k_on_a_12_gb_card_counts_the_ram_it_parks_in_and_is_refused_without_it():
    """The 16K stage parks 21.1 GB of maps and streams 7 GB of weights from the CPU's memory
    (hires.parking); a plan with less RAM free than that takes another strategy or refuses."""
    from dataclasses import replace

    p = planned(16384, 12)
    last = p.stages[-1]
    assert 27e9 < last.cost.host_bytes < 30e9
    fits = make_plan(16384, 16384, model=replace(sdxl(), host=last.cost.host_bytes),
                     budget=12 * GIB, rate=400e12)
    assert fits.stages[-1].strategy == last.strategy
    with pytest.raises(PlanError, match=r"only with 2\d\.\d GiB of the CPU's memory") as e:
        make_plan(16384, 16384, model=replace(sdxl(), host=last.cost.host_bytes - 1),
                  budget=12 * GIB, rate=400e12)
    assert e.value.host
    # With room on the GPU, a strategy that parks less is taken instead.
    roomy = make_plan(16384, 16384, model=replace(sdxl(), host=8e9), budget=24 * GIB,
                      rate=400e12)
    assert all(s.cost.host_bytes <= 8e9 for s in roomy.stages)
    assert roomy.seconds >= planned(16384, 24).seconds


def test_maps_the_ram_cannot_hold_wait_on_a_disk_priced_in_the_time():
    """A 12 GB card with 16 GB of RAM free: the 16K stage parks its maps past what RAM holds
    on the scratch disk, and its time counts writing them out and reading them back."""
    from dataclasses import replace

    from hires.costs import DISK_RATE

    full = planned(16384, 12).stages[-1]
    host = full.cost.host_bytes - 12e9
    short = replace(sdxl(), host=host, disk=100e9)
    p = make_plan(16384, 16384, model=short, budget=12 * GIB, rate=400e12)
    last = p.stages[-1]
    assert last.strategy == full.strategy
    assert last.cost.disk_bytes == pytest.approx(12e9, abs=1)
    assert last.cost.host_bytes - last.cost.disk_bytes <= host
    calls = 2 * (last.steps + last.global_steps)  # split CFG: two calls an evaluation
    assert last.strategy.row_bands  # written once, read in bands four times a call
    extra = calls * 5 * last.cost.disk_bytes / DISK_RATE
    assert last.cost.seconds == pytest.approx(full.cost.seconds + extra, rel=1e-6)
    assert all(s.cost.disk_bytes == 0 for s in p.stages[:-1])  # they fit in RAM
    # Enough RAM: nothing on disk, whatever the disk.
    roomy = make_plan(16384, 16384, model=replace(sdxl(), host=full.cost.host_bytes, disk=1e12),
                      budget=12 * GIB, rate=400e12)
    assert all(s.cost.disk_bytes == 0 for s in roomy.stages)
    # Too little disk, or weights alone beyond the RAM: refused, saying how much disk would do.
    with pytest.raises(PlanError, match=r"let the 12\.0 GB of parked maps that RAM cannot hold "
                       r"wait on a disk \(.* has room for 11\.0 GB of them; TMPDIR"):
        make_plan(16384, 16384, model=replace(short, disk=11e9), budget=12 * GIB, rate=400e12)
    with pytest.raises(PlanError, match=r"wait on a disk \(none may go there now: --disk 0, "
                       r"or .* is full or in memory; TMPDIR"):  # it said "room for 0.0 GB"
        make_plan(16384, 16384, model=replace(short, disk=0), budget=12 * GIB, rate=400e12)
    with pytest.raises(PlanError) as e:
        make_plan(16384, 16384, model=replace(short, host=5e9, disk=1e12), budget=12 * GIB,
                  rate=400e12)
    assert "TMPDIR" not in str(e.value)


def test_a_scratch_folder_in_ram_has_no_room_for_maps(monkeypatch, tmp_path):
    from hires import memory

    assert memory.disk_room(str(tmp_path)) > 0 or memory._filesystem(str(tmp_path)) == "tmpfs"
    monkeypatch.setattr(memory, "_filesystem", lambda folder: "tmpfs")
    assert memory.disk_room(str(tmp_path)) == 0
    assert memory.disk_room(str(tmp_path / "missing")) == 0
    monkeypatch.setattr(memory, "_filesystem", lambda folder: "ext4")
    free = memory.shutil.disk_usage(tmp_path).free
    assert 0 < memory.disk_room(str(tmp_path)) < free


def test_the_global_pass_runs_only_while_its_weight_counts():
    p = make_plan(16384, 16384, model=sdxl(), rate=400e12)
    assert [s.global_steps for s in p.stages[1:]] == [12, 8, 4, 0]
    every = make_plan(16384, 16384, model=sdxl(), rate=400e12, global_floor=0.0)
    assert [s.global_steps for s in every.stages[1:]] == [16, 12, 8, 4]
    for a, b in zip(p.stages[1:], every.stages[1:], strict=True):
        passes = (a.steps + a.global_steps) / (b.steps + b.global_steps)
        assert a.cost.unet_tflop == pytest.approx(b.cost.unet_tflop * passes)
    assert p.seconds < 0.8 * every.seconds


def test_with_karras_the_plan_counts_the_global_passes_the_sampler_runs():
    from hires.plan import sdxl_alphas_cumprod
    from hires.sampling import global_steps, sigma_schedule

    karras, plain = make_plan(16384, 16384, karras=True), make_plan(16384, 16384)
    alphas = sdxl_alphas_cumprod()
    for s in karras.stages[1:]:
        assert s.global_steps == global_steps(sigma_schedule(alphas, s.timesteps, True)[1])
    # The Karras ramp spends more steps near the clean end, where the pass is skipped.
    assert [s.global_steps for s in karras.stages[1:]] == [7, 4, 2, 0]
    assert [s.global_steps for s in plain.stages[1:]] == [12, 8, 4, 0]


def test_big_temporary_files_avoid_a_tmp_in_ram(monkeypatch):
    """A tmpfs /tmp (Fedora, Arch) holds files in RAM: the scratch folder is then /var/tmp,
    on a disk, unless TMPDIR says where."""
    import tempfile

    from hires import memory

    for name in ("TMPDIR", "TEMP", "TMP"):
        monkeypatch.delenv(name, raising=False)
    here = tempfile.gettempdir()
    kinds = {here: "tmpfs", memory.BIG_TEMP: "ext4"}
    monkeypatch.setattr(memory, "_filesystem", lambda folder: kinds.get(folder, "ext4"))
    monkeypatch.setattr(memory.os.path, "isdir", lambda folder: True)
    monkeypatch.setattr(memory.os, "access", lambda folder, mode: True)
    assert memory.scratch_folder() == memory.BIG_TEMP
    kinds[memory.BIG_TEMP] = "tmpfs"  # both in RAM: nowhere better
    assert memory.scratch_folder() == here
    kinds[memory.BIG_TEMP], kinds[here] = "ext4", "ext4"  # /tmp on a disk: /tmp
    assert memory.scratch_folder() == here
    kinds[here] = "tmpfs"
    monkeypatch.setenv("TMPDIR", here)  # the user's choice stands
    assert memory.scratch_folder() == here


def test_a_runs_disk_cap_never_exceeds_what_is_free(monkeypatch):
    """`--disk` plans another machine in a dry run; in a run it only lowers what is free."""
    from dataclasses import replace

    from hires import pipeline
    from hires.job import Job

    free = replace(sdxl(), disk=10e9)
    monkeypatch.setattr(pipeline, "model_shape", lambda components, controlnet=None: free)
    assert pipeline.shape_for(Job(disk=50), None).disk == 10e9
    assert pipeline.shape_for(Job(disk=5), None).disk == 5e9
    assert pipeline.shape_for(Job(disk=0), None).disk == 0
    assert pipeline.shape_for(Job(), None).disk == 10e9


def test_more_free_ram_never_makes_a_plan_slower():
    """A T4 at 16K: with 26-28 GiB of RAM free the plan kept its maps off the disk by dropping
    model offload, and took 17 h instead of the 11 h it took with 24 GiB (maps on the disk)."""
    from hires.dry_run import dry_run
    from hires.job import Job

    times = [dry_run(Job(width=16384, height=16384, ram=ram, disk=100), "t4").plan.seconds
             for ram in (16, 24, 26, 28, 32, 64)]
    assert times == sorted(times, reverse=True), times


def test_more_gpu_memory_never_makes_a_plan_slower():
    """A T4 at 4K with 32 GiB of RAM: with 9 GiB the planner took a 1536 px VAE tile, whose FLOPs
    were within 15 % of the 1024 px one's but whose copies of kept outputs were not, and the
    plan took ~1033 s against ~976 s with 8 GiB. The tile is picked by the estimate's time."""
    from hires.dry_run import dry_run
    from hires.job import Job

    times = [dry_run(Job(width=4096, height=4096, ram=32, vram=vram, disk=100), "t4").plan.seconds
             for vram in (8, 9, 12, 14)]
    assert times == sorted(times, reverse=True), times


@pytest.mark.parametrize("size, vram", [(4096, 8), (16384, 24)])
def test_an_out_of_memory_retry_is_another_leaner_strategy_priced_as_the_plan_was(size, vram):
    """`cheaper` priced the options without the plan's budget: a stage's own strategy came
    out leaner than its planned cost (4096 on 8 GiB, stage 1; 16384 on 24 GiB, stages 1-2),
    so the retry ran the stage again as it was ("retried with model-offload")."""
    from hires.plan import cheaper

    model, budget = sdxl_shape(), vram * GIB
    plan = make_plan(size, size, model=model, budget=budget, rate=400e12)
    found = 0
    for stage in plan.stages:
        fallback = cheaper(stage, list(plan.stages), model, budget=budget)
        if fallback is None:
            continue
        found += 1
        assert fallback.strategy != stage.strategy
        assert (fallback.cost.peak_bytes, fallback.cost.denoise_peak_bytes) < (
            stage.cost.peak_bytes, stage.cost.denoise_peak_bytes)
        assert fallback.cost.peak_bytes <= usable(budget)  # its VAE tile fits, as the plan's
    assert found >= 2


@pytest.mark.parametrize("rate", [None, 6e13])
def test_an_out_of_memory_retry_never_needs_more_than_the_stage_planned(rate):
    """With an fp32 VAE and RAM for its kept outputs, the rate picks the VAE tile: priced
    without the plan's rate, the stage's own strategy needed 7.38 GiB against the 6.22
    planned, and the retry took a strategy needing more than the stage that ran out."""
    from dataclasses import replace

    from hires.plan import cheaper

    model = replace(sdxl_shape(vae_dtype_bytes=4), spill=32 * GIB, fp32_share=0.5)
    plan = make_plan(12288, 9216, model=model, budget=10 * GIB, rate=6e13)
    assert plan.rate == 6e13
    for stage in plan.stages:
        fallback = cheaper(stage, list(plan.stages), model, rate=rate, budget=plan.budget)
        if fallback is not None:
            assert (fallback.cost.peak_bytes, fallback.cost.denoise_peak_bytes) < (
                stage.cost.peak_bytes, stage.cost.denoise_peak_bytes), stage.index
