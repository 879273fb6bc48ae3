"""The time left counts the save: at 16K it takes seconds after the final decode's last tile,
where `job_left_s` said 0.0."""

import io
import json

import pytest
from test_progress_events import plan_4k, timed_events

from hires.eta import JobClock, RunPace, save_seconds_per_px
from hires.progress import JsonProgress

PACE = 1e-7  # seconds per pixel: 4096 x 4096 saves in 1.68 s


def test_the_save_is_left_after_the_final_decode_and_done_after_its_end():
    plan = plan_4k()
    clock, now = JobClock(plan, 0.0, save=PACE), 0.0
    events = timed_events(plan, save=2.0)
    for e, dt in events[:-2]:  # up to the final decode's last tile
        now += dt
        clock.update(e, now)
    assert not clock.finished
    assert clock.remaining() == pytest.approx(4096 * 4096 * PACE)
    for e, dt in events[-2:]:
        now += dt
        clock.update(e, now)
    assert clock.finished and clock.remaining() == 0.0 and clock.save_seconds == 2.0
    quiet = JobClock(plan, 0.0)  # the library's: no save phase comes, none is priced
    for e, dt in events[:-2]:
        quiet.update(e, dt)
    assert quiet.finished and quiet.remaining() == 0.0


def test_json_progress_prices_the_save_and_the_next_image_at_this_ones_pace():
    plan = plan_4k()
    pace = RunPace(2)
    pace.start(0, 4096 * 4096, [4096 * 4096])
    first = JsonProgress(io.StringIO(), every=0.0, plan=plan, image="a.png")
    first.attach(pace)
    assert first.job.save_pace == save_seconds_per_px()  # the host's assumed pace at first
    now = 0.0
    for e, dt in timed_events(plan, save=3.0):
        now += dt
        first.job.update(e, now)
    pace.end(now)
    pace.start(1, 4096 * 4096, [])
    second = JsonProgress(io.StringIO(), every=0.0, plan=plan, image="b.png")
    second.attach(pace)
    assert second.job.save_left() == pytest.approx(3.0)
    for e, _ in timed_events(plan):  # up to the final decode's last tile
        second(e)
    record = json.loads(second.stream.getvalue().splitlines()[-1])
    assert record["phase"] == "vae-decode" and record["done"] == record["total"]
    assert record["job_left_s"] == pytest.approx(3.0, abs=0.1)  # it said 0.0
