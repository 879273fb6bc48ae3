"""The job clock: how long the rest of a job takes, from the plan's work timed as it runs."""

import io

import pytest

from hires.costs import sdxl_shape
from hires.eta import JobClock, duration, left_after, phases
from hires.plan import make_plan
from hires.progress import Event, PlainProgress

UNET_S, VAE_S = 0.002, 0.03  # seconds per TFLOP in the simulated runs: the VAE 15x slower


def plan_4k(rate=None, **kwargs):
    return make_plan(4096, 4096, model=sdxl_shape(), rate=rate, **kwargs)


def run_events(plan, skip=()):
    """(event, seconds it took) in the order the pipeline emits them, each tick's time being
    its work at UNET_S or VAE_S; phases in `skip` (stage, name) emit nothing."""
    out = []
    for p in phases(plan):
        if (p.stage, p.name) in skip:
            continue
        stage = plan.stages[p.stage]
        rate = UNET_S if p.kind == "unet" else VAE_S
        if p.name == "denoise":
            out.append((Event("denoise", p.stage, len(plan.stages), stage.width, stage.height,
                              0, len(p.steps)), 0.0))
            for k, share in enumerate(p.steps, 1):
                out.append((Event("denoise", p.stage, len(plan.stages), stage.width,
                                  stage.height, k, len(p.steps)), share * p.tflop * rate))
        else:
            for k in range(1, 11):  # ten tile runs
                out.append((Event(p.name, p.stage, len(plan.stages), 0, 0, k, 10),
                            p.tflop * rate / 10))
    return out


def test_phases_follow_the_run_and_split_the_plans_work():
    plan = plan_4k()
    ps = phases(plan)
    assert [(p.stage, p.name) for p in ps] == [
        (0, "denoise"), (0, "vae-decode"), (1, "vae-encode"), (1, "denoise"),
        (1, "vae-decode"), (2, "vae-encode"), (2, "denoise"), (2, "vae-decode")]
    assert sum(p.tflop for p in ps) == pytest.approx(sum(s.cost.tflop for s in plan.stages))
    for p, s in zip([p for p in ps if p.name == "denoise"], plan.stages, strict=True):
        assert p.tflop == s.cost.unet_tflop and sum(p.steps) == pytest.approx(1.0)
        if s.kind == "upscale":  # the steps with the global pass weigh double
            assert 0 < s.global_steps < s.steps
            assert p.steps[0] == pytest.approx(2 * p.steps[-1])
            assert p.steps[s.global_steps] == pytest.approx(p.steps[-1])
    # An upscale from an image starts with its encode; a plan without costs has no phases.
    up = make_plan(4096, 4096, model=sdxl_shape(), source=(1024, 1024))
    assert [(p.stage, p.name) for p in phases(up)][:2] == [(0, "vae-encode"), (0, "denoise")]
    assert phases(make_plan(4096, 4096)) == []


def test_the_clock_prices_the_rest_at_the_rates_it_has_seen():
    plan = plan_4k()
    events = run_events(plan)
    total = sum(dt for _, dt in events)
    now = 100.0
    clock = JobClock(plan, now)
    assert clock.remaining() is None  # no rate: the plan has no times, nothing has run
    spent, seen_vae = 0.0, False
    for e, dt in events:
        now += dt
        spent += dt
        clock.update(e, now)
        seen_vae |= e.phase.startswith("vae") and e.done > 0
        if seen_vae:  # both rates seen: the rest of the job, exactly
            assert clock.remaining() == pytest.approx(total - spent, rel=1e-9, abs=1e-9)
        elif e.done:  # only the UNet's: the VAE's work priced at the UNet's rate
            left = sum((1 - p.done) * p.tflop for p in clock.phases)
            assert clock.remaining() == pytest.approx(left * UNET_S)
    assert clock.remaining() == pytest.approx(0.0, abs=1e-9)
    assert clock.fraction(now) == pytest.approx(1.0)


def test_the_plans_times_stand_until_work_is_timed():
    plan = plan_4k(rate=400e12)
    clock = JobClock(plan, 0.0)
    assert clock.remaining() == pytest.approx(plan.seconds)
    assert clock.fraction(0.0) == 0.0


def test_phases_a_run_leaves_out_are_not_waited_for():
    plan = plan_4k()
    # Latent upsampling: no decode and encode between stages, only the final decode.
    skip = {(0, "vae-decode"), (1, "vae-encode"), (1, "vae-decode"), (2, "vae-encode")}
    clock, now = JobClock(plan, 0.0), 0.0
    for e, dt in run_events(plan, skip):
        now += dt
        clock.update(e, now)
    assert clock.remaining() == pytest.approx(0.0, abs=1e-9)


def test_a_stage_run_again_counts_its_work_again():
    plan = plan_4k()
    events = run_events(plan)
    clock, now = JobClock(plan, 0.0), 0.0
    i = next(k for k, (e, _) in enumerate(events) if e.stage == 2 and e.phase == "denoise"
             and e.done == e.total)
    for e, dt in events[:i + 1]:
        now += dt
        clock.update(e, now)
    before = clock.remaining()
    e = events[i][0]
    clock.update(Event("retry", 2, 3, e.width, e.height), now)
    clock.update(Event("denoise", 2, 3, e.width, e.height, 0, e.total), now)
    denoise = next(p for p in clock.phases if (p.stage, p.name) == (2, "denoise"))
    assert clock.remaining() == pytest.approx(before + denoise.tflop * UNET_S)


def test_plain_progress_says_how_long_the_job_has_left():
    plan = plan_4k()
    times = iter(range(1000))
    stream = io.StringIO()
    progress = PlainProgress(stream, every=0.0, plan=plan, clock=lambda: float(next(times)))
    for e, _ in run_events(plan)[:3]:
        progress(e)
    lines = stream.getvalue().splitlines()
    assert "job" not in lines[0]  # the start: nothing timed yet, and no plan times
    assert lines[-1].startswith("[1/3] stage 0 1024x1024 denoise 2/") and "; job ~" in lines[-1]
    assert " left" in lines[-1]


def test_plain_progress_says_the_job_is_done_once_its_file_is_saved_not_before():
    """The save's start line said '; job done' while the file was being written; now the
    save's own time is left then."""
    plan = plan_4k()
    times = iter(range(1000))
    stream = io.StringIO()
    progress = PlainProgress(stream, every=0.0, plan=plan, clock=lambda: float(next(times)))
    for e, _ in run_events(plan):
        progress(e)
    last = plan.stages[-1]
    for done in (0, 1):
        progress(Event("save", last.index, len(plan.stages), last.width, last.height, done,
                       done))
    start, end = stream.getvalue().splitlines()[-2:]
    assert start.startswith(f"[3/3] stage 2 {last.width}x{last.height} save; job ~")
    assert start.endswith(" left")
    assert end.startswith(f"[3/3] stage 2 {last.width}x{last.height} save 1/1 done in ")
    assert end.endswith("; job done")


def test_json_progress_is_one_object_a_line_with_the_same_events():
    import json

    from hires.progress import JsonProgress

    plan = plan_4k()
    times = iter(range(1000))
    stream = io.StringIO()
    progress = JsonProgress(stream, every=0.0, plan=plan, clock=lambda: float(next(times)),
                            image="out/x.png")
    events = [e for e, _ in run_events(plan)[:3]]
    for e in events:
        progress(e)
    records = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [(r["phase"], r["stage"], r["done"], r["total"]) for r in records] == [
        (e.phase, e.stage, e.done, e.total) for e in events]
    assert {r["image"] for r in records} == {"out/x.png"} and records[-1]["job_left_s"] > 0
    assert records[0]["elapsed_s"] == 0 and records[-1]["elapsed_s"] > 0


@pytest.mark.parametrize("seconds, text", [(0.2, "~1 s"), (42, "~42 s"), (89, "~89 s"),
                                           (700, "~12 min"), (3900, "~1 h 05 min")])
def test_durations_read_as_people_say_them(seconds, text):
    assert duration(seconds) == text


@pytest.mark.parametrize("upsample,images", [("pixel", False), ("latent", False),
                                             ("latent", True)])
def test_a_run_goes_through_the_phases_the_clock_expects(tiny, upsample, images):
    from hires.job import Job
    from hires.pipeline import generate, plan_for

    job = Job(prompt="x", width=512, height=512, steps=3, seed=1, model="tiny",
              upsample=upsample)
    plan = plan_for(job, tiny, stage_images=images)
    events = []
    generate(job, components=tiny, plan=plan, progress=events.append,
             on_stage_image=(lambda i, image: None) if images else None)
    expected = [(p.stage, p.name) for p in phases(plan)]
    seen = list(dict.fromkeys((e.stage, e.phase) for e in events if e.phase != "resize"))
    assert seen == expected
    if upsample == "latent":  # the final decode; with the stage images, stage 0's too
        assert [(i, name) for i, name in expected if name != "denoise"] == [
            *([(0, "vae-decode")] if images else []), (1, "vae-decode")]
    clock, now = JobClock(plan, 0.0), 0.0
    for e in events:
        now += 1.0
        clock.update(e, now)
    assert clock.remaining() == pytest.approx(0.0, abs=1e-9)


def test_a_plan_with_latent_upsampling_prices_no_vae_between_stages():
    pixel, latent = plan_4k(rate=400e12), plan_4k(rate=400e12, upsample="latent")
    for a, b in zip(pixel.stages, latent.stages, strict=True):
        assert b.cost.unet_tflop == a.cost.unet_tflop
        assert b.latent_upsample == (b.kind == "upscale")
    for s in latent.stages[:-1]:
        assert s.cost.tflop == s.cost.unet_tflop and not s.cost.vae_seconds
    # The last stage keeps its final decode, not the decode and encode before it.
    vae = [s.cost.tflop - s.cost.unet_tflop for s in (pixel.stages[-1], latent.stages[-1])]
    assert 0 < vae[1] < 0.75 * vae[0]
    assert latent.seconds < pixel.seconds
    # Stage images wanted: the stage before each is decoded, still without an encode.
    shown = plan_4k(rate=400e12, upsample="latent", stage_images=True)
    assert [s.decodes_previous for s in shown.stages] == [False, True, True]
    for a, b, c in zip(latent.stages[1:], shown.stages[1:], pixel.stages[1:], strict=True):
        vae = [s.cost.tflop - s.cost.unet_tflop for s in (a, b, c)]
        assert vae[0] < vae[1] < vae[2]
    assert latent.seconds < shown.seconds < pixel.seconds


def test_the_images_left_take_the_pace_of_those_made_by_their_pixels():
    assert left_after([], [1000]) is None  # nothing made: nothing to say
    made = [(4096 * 4096, 30.0), (4096 * 4096, 34.0)]
    assert left_after(made, []) == 0
    assert left_after(made, [4096 * 4096] * 3) == pytest.approx(96.0)
    assert left_after(made, [8192 * 8192]) == pytest.approx(128.0)
