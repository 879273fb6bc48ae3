"""Progress reporting: phase bars that close, a job share that never goes back, 'done' at the
end, rows that fit a narrow terminal, times left that count down, run-wide estimates over
several images, `--gpu` for another machine, and the phases the README documents."""

import io
import json
import re
from pathlib import Path

import pytest
from helpers_cli import cli, one_torch_thread

from hires.costs import sdxl_shape
from hires.eta import JobClock, RunPace, duration, phases, time_left
from hires.plan import make_plan
from hires.progress import Event, JsonProgress, PlainProgress, RichProgress, layout

TINY = ("--model", "tiny", "--size", "256", "--steps", "1", "--seed", "1")
UNET_S, VAE_S = 0.002, 0.03  # seconds per TFLOP: the VAE 15x slower than the UNet
README = Path(__file__).resolve().parents[1] / "README.md"


def plan_4k():
    return make_plan(4096, 4096, model=sdxl_shape())


def timed_events(plan, save: float | None = None):
    """(event, seconds it took), as the pipeline emits them, each phase in ten ticks; with
    `save`, the CLI's save phase after them, taking that many seconds."""
    out = []
    n = len(plan.stages)
    if save is not None:
        last = plan.stages[-1]
        return timed_events(plan) + [(Event("save", last.index, n, 64, 64), 0.0),
                                     (Event("save", last.index, n, 64, 64, 1, 1), save)]
    for p in phases(plan):
        rate = UNET_S if p.kind == "unet" else VAE_S
        ticks = len(p.steps) or 10
        out.append((Event(p.name, p.stage, n, 64, 64, 0, ticks), 0.0))
        for k in range(1, ticks + 1):
            share = p.steps[k - 1] if p.steps else 1 / ticks
            out.append((Event(p.name, p.stage, n, 64, 64, k, ticks), share * p.tflop * rate))
    return out


@pytest.fixture(autouse=True)
def _one_thread():
    yield from one_torch_thread()


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def rich(width=120, plan=None):
    from rich.console import Console

    clock = Clock()
    console = Console(file=io.StringIO(), width=width, force_terminal=False)
    return RichProgress(console, plan=plan, clock=clock), clock


def rows(progress, width):
    """The bars' rows as a terminal `width` wide shows them now."""
    from rich.console import Console

    out = Console(file=io.StringIO(), width=width, color_system=None)
    out.print(progress.bars.make_tasks_table(progress.bars.tasks))
    return out.file.getvalue().splitlines()


# 1. A finished phase's bar is complete, its clock stopped.

def test_a_phase_bar_closes_when_the_next_phase_starts():
    progress, clock = rich()
    with progress:
        progress(Event("resize", 1, 2, 512, 512))  # a start only, no steps
        clock.t += 0.02
        progress(Event("vae-encode", 1, 2, 512, 512))
        clock.t += 18.0
        progress(Event("vae-encode", 1, 2, 512, 512, 1, 1))
        resize, encode = progress.bars.tasks
        assert resize.finished and resize.completed == resize.total
        assert resize.elapsed == pytest.approx(0.02)  # not the 18 s after it
        # A retry closes the phase that failed; the phase run again gets a bar of its own.
        progress(Event("denoise", 1, 2, 512, 512, 0, 4))
        progress(Event("denoise", 1, 2, 512, 512, 2, 4))
        progress(Event("retry", 1, 2, 512, 512))
        clock.t += 1.0
        progress(Event("denoise", 1, 2, 512, 512, 0, 4))
        tasks = progress.bars.tasks
        assert [t.description.split()[-1] for t in tasks] == [
            "resize", "vae-encode", "denoise", "retry", "denoise"]
        assert tasks[2].stop_time is not None and tasks[3].finished
        assert tasks[4].stop_time is None and tasks[4].completed == 0


# 2. The job's share never goes back, and is whole only at the end.

def test_the_jobs_share_never_goes_back():
    plan = plan_4k()
    clock, now, shares = JobClock(plan, 0.0), 0.0, []
    for e, dt in timed_events(plan):
        now += dt
        clock.update(e, now)
        share = clock.fraction(now)
        if share is not None:
            shares.append(share)
            assert share < 1.0 or clock.finished
    # The first VAE tile shows it 15x slower than the UNet: the estimate jumps, the share holds.
    assert shares == sorted(shares) and shares[-1] == 1.0


# 3. A finished job says so.

def test_a_finished_job_says_done_not_a_second_left():
    assert time_left(0.0) == "done" and time_left(3.0, finished=True) == "done"
    assert time_left(0.2) == "~1 s left" and time_left(None) == ""
    plan = plan_4k()
    times = iter(range(10_000))
    stream = io.StringIO()
    progress = PlainProgress(stream, every=1e9, plan=plan, clock=lambda: float(next(times)))
    for e, _ in timed_events(plan, save=0.5):
        progress(e)
    decoded, saved = stream.getvalue().splitlines()[-3:][::2]
    assert decoded.endswith(" left")  # the final decode's end: the save is still to come
    assert saved.endswith("; job done") and " left" not in saved
    bars, clock = rich(plan=plan)
    with bars:
        for e, dt in timed_events(plan, save=0.5):
            clock.t += dt
            bars(e)
    job = rows(bars, 120)[0]
    assert job.rstrip().endswith("done") and "100 %" in job and "left" not in job


# 4. A narrow terminal keeps the count, the share and the time left.

@pytest.mark.parametrize("width", [24, 30, 40, 60, 80, 120])
def test_narrow_rows_keep_the_count_the_share_and_the_time_left(width):
    """Under 35 columns the label gives way: rich squeezed the count ('100 %' as '10…')."""
    plan = plan_4k()
    progress, clock = rich(width, plan)
    with progress:
        for e, dt in timed_events(plan)[:3]:
            clock.t += 1.0 + dt
            progress(e)
        job, phase = rows(progress, width)
    assert all(len(row) <= width for row in (job, phase))
    assert re.search(r"\d+ % +(\S+ )?~\d+ (s|min) left", job), job
    assert re.search(r"2/\d+ +(\S+ )*ETA ~\d+ (s|min)", phase), phase
    assert ("denoise" in phase) == (width >= 40) and bool(re.search("[━╸]", phase)) == (width >= 80)
    cols = layout(width, 34)
    assert sum(cols.values()) + len(cols) - 1 <= width
    assert ("bar" in cols) == (width >= 80)  # an 80-column terminal shows the bar
    if width < 100:  # the rate goes first
        assert "rate" not in cols


# 5. The time left counts down between events.

def test_times_left_count_down_between_events():
    plan = plan_4k()
    progress, clock = rich(120, plan)
    with progress:
        progress(Event("denoise", 0, 3, 1024, 1024, 0, 60))
        clock.t += 10.0
        progress(Event("denoise", 0, 3, 1024, 1024, 10, 60))  # 50 steps at 1 it/s: ~50 s
        assert "ETA ~50 s" in rows(progress, 120)[1]
        clock.t += 30.0  # no event since
        assert "ETA ~20 s" in rows(progress, 120)[1]
        job = progress.bars.tasks[0].fields
        assert f"{duration(job['left'] - 30)} left" in rows(progress, 120)[0]
        clock.t += 1000.0  # past the estimate: never below nothing
        assert "ETA ~1 s" in rows(progress, 120)[1]


# 6. The run's images: their number and count, and the run's time left.

def test_the_run_prices_the_images_left_by_the_pace_of_those_made():
    plan = plan_4k()
    pace = RunPace(3)
    pace.start(0, 4096 * 4096, [4096 * 4096] * 2)
    first = JsonProgress(io.StringIO(), every=0.0, plan=plan, clock=Clock())
    first.attach(pace)
    assert pace.left(None, 0.0) is None and pace.left(10.0, 20.0) == pytest.approx(70.0)
    now = 0.0
    for e, dt in timed_events(plan, save=3.0):
        now += dt
        first.job.update(e, now)
    pace.end(now)
    pace.start(1, 4096 * 4096, [4096 * 4096])
    second = JsonProgress(io.StringIO(), every=0.0, plan=plan, clock=Clock(), image="b.png")
    second.attach(pace)
    # Image 2's first estimate: image 1's rates, not nothing.
    assert second.job.remaining() == pytest.approx(now)
    second(timed_events(plan)[0][0])
    record = json.loads(second.stream.getvalue())
    assert (record["image"], record["image_index"], record["images"]) == ("b.png", 1, 3)
    assert record["job_left_s"] == pytest.approx(now, abs=0.1)
    assert record["run_left_s"] == pytest.approx(2 * now, abs=0.1)


def test_gen_n_events_carry_the_image_and_the_runs_time_left(tmp_path, asked):
    result = cli("gen", "a fox", *TINY, "--n", "2", "-o", tmp_path / "{index}.png",
                 "--progress", "json")
    assert result.exit_code == 0, result.stderr
    records = [r for r in map(json.loads, result.stderr.splitlines()) if "phase" in r]
    assert {(r["image_index"], r["images"]) for r in records} == {(0, 2), (1, 2)}
    second = [r for r in records if r["image_index"] == 1]
    assert second[0]["job_left_s"] is not None and second[0]["run_left_s"] is not None
    assert records[-1]["job_left_s"] == records[-1]["run_left_s"] == 0.0
    for key in ("image", "phase", "stage", "stages", "width", "height", "done", "total",
                "elapsed_s", "job_left_s"):  # the fields scripts read, as they were
        assert key in records[0]


def test_batch_events_carry_the_job_and_the_runs_time_left(tmp_path, asked):
    """A batch's events said image 0 of 1 for every job, and each job's first estimate was
    none, though the jobs before it had measured the pace."""
    jobs = tmp_path / "jobs.toml"
    jobs.write_text('[defaults]\nmodel = "tiny"\nsize = 256\nsteps = 1\nseed = 1\n'
                    '[[job]]\nprompt = "a"\n[[job]]\nprompt = "b"\n')
    result = cli("batch", jobs, "-o", tmp_path / "out", "--progress", "json")
    assert result.exit_code == 0, result.stderr
    records = [r for r in map(json.loads, result.stderr.splitlines()) if "phase" in r]
    assert {(r["image_index"], r["images"]) for r in records} == {(0, 2), (1, 2)}
    second = [r for r in records if r["image_index"] == 1]
    assert second[0]["run_left_s"] is not None
    assert records[-1]["run_left_s"] == 0.0


# 7. --gpu for another machine: said, and the times come from this run's pace.

def test_gpu_for_another_machine_is_said_and_not_used_for_the_times(tmp_path, asked):
    result = cli("gen", "a fox", *TINY, "--gpu", "h100", "-o", tmp_path / "x.png",
                 "--progress", "json", "--device", "cpu")
    assert result.exit_code == 0, result.stderr
    lines = [json.loads(x) for x in result.stderr.splitlines()]
    notes = [r["log"] for r in lines if "--gpu h100" in r.get("log", "")]
    assert len(notes) == 1 and "this run's" not in notes[0] and "own pace" in notes[0]
    first = next(r for r in lines if "phase" in r)
    assert first["job_left_s"] is None  # not an H100's ~0 s


# 1 and 8. The pipeline ends each resize it starts; the phases the README documents are those
# a run emits.

def test_a_usage_error_found_as_the_options_are_read_is_an_object_with_progress_json():
    """`--steps abc` was a plain `error:` line under --progress json, `--steps 0` an object:
    a program parsing stderr met both (QA 189)."""
    for args in (("--steps", "abc"), ("--quality", "0"), ("--bogus",), ("--n", "0")):
        result = cli("gen", "x", "--progress", "json", *args)
        assert result.exit_code == 2
        (line,) = result.stderr.strip().splitlines()
        assert list(json.loads(line)) == ["error"], line
        plain = cli("gen", "x", *args)  # the text form, without it
        assert plain.exit_code == 2 and plain.stderr.startswith("error: "), plain.stderr
    for args in (("--progress=json", "--steps", "abc"), ("--progress", "json", "--progress",
                                                           "plain", "--steps", "abc")):
        said = cli("gen", "x", *args).stderr
        assert said.startswith("{" if "--progress=json" in args else "error: "), said
    # a command without --progress, or the option before the command, says it as text (QA 191)
    for args in (("plan", "--progress", "json", "--steps", "abc"),
                 ("info", "--progress", "json", "x"),
                 ("--progress", "json", "gen", "x", "--steps", "abc"),
                 ("-q", "gen", "x", "--progress", "json")):
        said = cli(*args)
        assert said.exit_code == 2 and said.stderr.startswith("error: "), said.stderr


def test_the_phases_emitted_are_those_documented(tiny, tmp_path):
    from PIL import Image

    from hires.job import Job
    from hires.pipeline import generate

    events = []
    generate(Job(prompt="x", width=512, height=512, steps=1, seed=1, model="tiny"),
             components=tiny, progress=events.append)  # a base stage and an x2 one
    source = tmp_path / "in.png"
    Image.new("RGB", (64, 64), "gray").save(source)
    generate(Job(prompt="x", width=128, height=128, steps=1, seed=1, model="tiny",
                 image=str(source)), components=tiny, progress=events.append)
    assert [(e.done, e.total) for e in events if e.phase == "resize"] == [(0, 0), (1, 1)] * 2
    emitted = {e.phase for e in events}
    documented = set(re.findall(r'"([a-z-]+)"', Event.__doc__))
    assert emitted <= documented and "retry" in documented
    assert emitted >= {"denoise", "vae-decode", "vae-encode", "resize"}
    text = " ".join(README.read_text().split())
    for word in sorted(documented) + ["image_index", "run_left_s", '"images"']:
        assert f"`{word}`" in text or word in text, word
