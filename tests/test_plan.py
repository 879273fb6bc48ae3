"""The stage plan: sizes, strengths and step counts for the shapes users ask for."""

import pytest

from hires.plan import base_size, make_plan, schedule


def sizes(plan):
    return [(s.width, s.height) for s in plan.stages]


def test_1k_is_a_single_base_stage():
    p = make_plan(1024, 1024)
    assert sizes(p) == [(1024, 1024)]
    assert p.stages[0].steps == 50 and p.stages[0].strength == 1.0
    assert p.exact


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
    full = schedule(50)
    for s in p.stages[1:]:
        assert s.timesteps == full[-s.steps:]
    assert p.stages[-1].timesteps == (61, 41, 21, 1)


@pytest.mark.parametrize("w,h,base", [(16384, 9216, (1024, 576)), (9216, 16384, (576, 1024))])
def test_16_9_and_9_16(w, h, base):
    p = make_plan(w, h)
    assert (p.stages[0].width, p.stages[0].height) == base
    assert (p.width, p.height) == (w, h) and p.exact
    assert len(p.stages) == 5


def test_odd_sizes_are_generated_larger_then_fit_exactly():
    p = make_plan(3000, 1000)
    assert sizes(p) == [(1024, 344), (2048, 688), (4096, 1376)]
    assert (p.requested_width, p.requested_height) == (3000, 1000)
    assert not p.exact
    assert [s.steps for s in p.stages] == [50, 16, 8]  # linspace(0.32, 0, 3) = 0.32, 0.16


def test_small_requests_run_at_their_own_size():
    assert sizes(make_plan(512, 384)) == [(512, 384)]
    assert base_size(200, 100, 256) == (200, 100)


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
        assert schedule(steps) == tuple(int(t) for t in sched.timesteps)
