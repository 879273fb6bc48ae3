"""Progress events from a run, and renderers for the CLI (rich bars, plain log lines, or JSON
lines for `--json`)."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TextIO

from hires.eta import JobClock, RunPace, duration, save_seconds_per_px, time_left

if TYPE_CHECKING:
    from hires.plan import Plan


@dataclass(frozen=True)
class Event:
    """Something happened in a run: a phase started, advanced or ended.

    `phase`, in the order a stage meets them: "vae-decode" (the stage before's latents to
    pixels, carrying that stage's number), "resize" (those pixels, or an input image, to this
    stage's size: a start with total 0, then an end with done = total = 1), "vae-encode",
    "denoise" (`total` steps), and after the last stage's denoising, its final "vae-decode",
    then "save" (the file written: a start, then an end with done = total = 1 once it is
    there; the CLI's, not the library's).
    A VAE phase starts with done = total = 0 (its tile count comes with the first tile). Phases
    a run leaves out send nothing (latent upsampling: no decode and encode between stages).
    "retry" (total 0) says that the phase before it ran out of GPU memory and runs again in a
    leaner way: that phase's events start again from 0.
    """

    phase: str  # "denoise" | "vae-decode" | "resize" | "vae-encode" | "retry" | "save"
    stage: int  # 0 = base stage
    stages: int
    width: int
    height: int
    done: int = 0
    total: int = 0


ProgressFn = Callable[[Event], None]


def _left(job: JobClock | None, run: RunPace | None,
          now: float) -> tuple[float | None, float | None]:
    """Seconds this image and the whole run still need at `now` (None where nothing says)."""
    if job is None:
        return None, None
    image = 0.0 if job.finished else job.remaining()
    if run is None:
        return image, image
    return image, run.left(image, now - job.start)


def _job_clock(plan: Plan | None, now: float, run: RunPace | None,
               planned: bool) -> JobClock | None:
    """An image's clock from its plan (None without one), its first rates from the images the
    run made before it; the run keeps it, to time its pace. Its image ends with a save (the
    CLI's "save" phase), which the clock prices: at the pace of the run's saves so far."""
    if plan is None:
        return None
    job = JobClock(plan, now, prior=run.rates() if run else None, planned=planned,
                   save=run.save_pace() if run else save_seconds_per_px())
    if run is not None:
        run.clock = job
    return job


def _label(e: Event) -> str:
    """'[2/5] stage 1 2048x2048 denoise': the count, then the stage as the plan numbers it."""
    return f"[{e.stage + 1}/{e.stages}] stage {e.stage} {e.width}x{e.height} {e.phase}"


class PlainProgress:
    """One log line per phase and every few seconds: for logs, pipes and CI."""

    def __init__(self, stream: TextIO | None = None, every: float = 5.0,
                 plan: Plan | None = None, clock: Callable[[], float] = time.monotonic):
        self.stream = stream or sys.stderr
        self.every = every
        self.clock = clock
        self._last = 0.0
        self._started: dict[tuple[int, str], float] = {}
        self.plan = plan
        self.job = _job_clock(plan, clock(), None, True)
        self.run: RunPace | None = None

    def attach(self, run: RunPace | None, planned: bool = True) -> None:
        """Before the first event: this image is `run.index` of a run of `run.images`, whose
        images made so far time this one's first estimates; `planned` False: the plan's times
        are another machine's (`--gpu`), and only this run's pace is said."""
        self.run = run
        self.job = _job_clock(self.plan, self.clock(), run, planned)

    def left(self, now: float) -> tuple[float | None, float | None]:
        return _left(self.job, self.run, now)

    def _print(self, line: str) -> None:
        if self.stream is None:
            return
        try:
            print(line, file=self.stream, flush=True)
        except OSError:  # its reader went away (`2>&1 | head`), its disk is full: the work
            self.stream = None  # goes on

    def __call__(self, e: Event) -> None:
        key = (e.stage, e.phase)
        now = self.clock()
        if self.job is not None:
            self.job.update(e, now)
        start = self._started.setdefault(key, now)
        first, last = e.done == 0, e.total and e.done >= e.total
        if not (first or last or now - self._last >= self.every):
            return
        self._last = now
        self.now = now
        self.write(e, now - start, bool(last))

    now = 0.0  # the time of the event being written

    def write(self, e: Event, elapsed: float, last: bool) -> None:
        """One line for `e`, `elapsed` seconds into its phase."""
        line = _label(e)
        if e.total:
            rate = e.done / elapsed if elapsed > 0 and e.done else 0.0
            eta = (e.total - e.done) / rate if rate else 0.0
            line += f" {e.done}/{e.total}"
            if rate and not last:
                line += f" ({rate:.2f} it/s, ETA {eta:.0f}s)"
            if last:
                line += f" done in {elapsed:.1f}s"
        left, run = self.left(self.now)
        if left is not None:
            line += f"; job {time_left(left, self.job.finished)}"
        if self.run is not None and self.run.images > 1:
            line += f"; image {self.run.index + 1} of {self.run.images}"
            if run is not None:
                line += f", run {time_left(run)}"
        self._print(line)


class JsonProgress(PlainProgress):
    """`--progress json`: the same events as JSON objects, one a line, for programs that show
    hires' progress (a GUI, a job queue); `image` is the file being made, `image_index` its
    number (0-based) of the run's `images`; `job_left_s` the seconds this image still needs,
    `run_left_s` the whole run's (None while nothing says)."""

    def __init__(self, stream: TextIO | None = None, every: float = 1.0,
                 plan: Plan | None = None, clock: Callable[[], float] = time.monotonic,
                 image: str | None = None):
        super().__init__(stream, every, plan, clock)
        self.image = image

    def write(self, e: Event, elapsed: float, last: bool) -> None:
        left, run = self.left(self.now)
        record = {"image": self.image, "phase": e.phase, "stage": e.stage, "stages": e.stages,
                  "width": e.width, "height": e.height, "done": e.done, "total": e.total,
                  "elapsed_s": round(elapsed, 3),
                  "job_left_s": None if left is None else round(left, 1),
                  "image_index": self.run.index if self.run else 0,
                  "images": self.run.images if self.run else 1,
                  "run_left_s": None if run is None else round(run, 1)}
        self._print(json.dumps(record))


# Widths in the bars' rows: the count ("16/16", "33 %", "2/3"), the time left ("ETA ~12 min",
# "~1 h 05 min left"), the rate, the time elapsed; the label takes what is left, within bounds.
COUNT_W, LEFT_W, RATE_W, ELAPSED_W = 7, 16, 10, 7
LABEL_MIN, LABEL_MAX, BAR_MIN, BAR_MAX = 10, 40, 10, 40
LEFT_MIN = 11  # '~12 s left', 'ETA ~12 min'


def layout(width: int, label: int) -> dict[str, int]:
    """The columns a row of `width` characters shows, and their widths, for labels up to
    `label` long: the label (ellipsized, LABEL_MIN at least), the count and the time left
    always; then, as room allows, the bar, the time elapsed and the rate (the first to go: a
    bar is what a glance at an 80-column terminal looks for)."""
    gap = 1
    cols = {"count": COUNT_W, "left": LEFT_W}
    room = width - COUNT_W - LEFT_W - 2 * gap  # for the label
    # Below LABEL_MIN of room the label gives way (to 3), then the time left (to its short
    # forms' width): rich would squeeze the count and the share instead ("100 %" as "10…").
    cols["label"] = max(min(LABEL_MIN, max(3, room)), min(label, LABEL_MAX, room))
    cols["left"] = max(LEFT_MIN, min(LEFT_W, width - COUNT_W - cols["label"] - 2 * gap))
    room = width - sum(cols.values()) - gap * (len(cols) - 1)
    for name, w in (("bar", BAR_MIN), ("elapsed", ELAPSED_W), ("rate", RATE_W)):
        if room >= w + gap:
            cols[name] = w
            room -= w + gap
    if "bar" in cols:
        cols["bar"] += max(0, min(room, BAR_MAX - BAR_MIN))
    return cols


class RichProgress:
    """A rich bar per phase with steps, it/s and ETA, and one for the whole job (and with
    several images, one for the run), on stderr. A phase's bar is closed (complete, its clock
    stopped) when the next phase starts; the times left count down between events."""

    def __init__(self, console=None, plan: Plan | None = None,
                 clock: Callable[[], float] = time.monotonic):
        from rich.console import Console
        from rich.progress import Progress

        self.console = console or Console(stderr=True)
        self.clock = clock
        rows = self

        class Bars(Progress):
            def make_tasks_table(self, tasks):  # the columns that fit the terminal now
                self.columns = rows.columns(rows.console.width, tasks)
                return super().make_tasks_table(tasks)

        self.bars = Bars(console=self.console, transient=False, get_time=clock)
        self._tasks: dict[tuple[int, str], int] = {}
        self._current: tuple[int, str] | None = None
        self._started: dict[int, float] = {}
        self.plan = plan
        self.job = _job_clock(plan, clock(), None, True)
        self.run: RunPace | None = None
        self._job_task: int | None = None
        self._run_task: int | None = None

    def columns(self, width: int, tasks) -> list:
        """The rows' columns for a terminal `width` wide (`layout`)."""
        from rich.progress import BarColumn, TextColumn, TimeElapsedColumn
        from rich.table import Column

        label = max((len(t.description) for t in tasks), default=LABEL_MIN)
        cols = layout(width, label)

        def fixed(name: str, justify: str = "left") -> Column:
            return Column(width=cols[name], no_wrap=True, overflow="ellipsis", justify=justify)

        out = [_label_column(fixed("label"))]
        if "bar" in cols:
            out.append(BarColumn(bar_width=cols["bar"], table_column=fixed("bar")))
        out.append(TextColumn("{task.fields[count]}", justify="right",
                              table_column=fixed("count", "right")))
        if "rate" in cols:
            out.append(TextColumn("{task.fields[rate]}", justify="right",
                                  table_column=fixed("rate", "right")))
        if "elapsed" in cols:
            out.append(TimeElapsedColumn(table_column=fixed("elapsed")))
        out.append(_left_column(self.clock, fixed("left")))
        return out

    def _fields(self, **kw):
        return {"count": "", "rate": "", "left": None, "at": 0.0, "form": "ETA {}",
                "final": "", **kw}

    def __enter__(self) -> RichProgress:
        self.bars.start()
        if self.job is not None:
            self._job_task = self.bars.add_task("job", total=1000,
                                                **self._fields(form="{} left"))
        return self

    def __exit__(self, *exc) -> None:
        self._close()
        self.bars.stop()

    def attach(self, run: RunPace | None, planned: bool = True) -> None:
        """As PlainProgress.attach; with several images, a row for the whole run too."""
        self.run = run
        self.job = _job_clock(self.plan, self.clock(), run, planned)
        if run is not None and run.images > 1 and self._run_task is None:
            self._run_task = self.bars.add_task(
                "run", total=run.images, completed=run.index,
                **self._fields(count=f"{run.index + 1}/{run.images}", form="{} left"))

    def _close(self) -> None:
        """The phase shown last is over: its bar full if it had no steps, its clock stopped."""
        if self._current is None:
            return
        task = self._tasks[self._current]
        if not next(t.total for t in self.bars.tasks if t.id == task):
            self.bars.update(task, total=1, completed=1)
        self.bars.update(task, left=None, rate="")
        self.bars.stop_task(task)
        self._current = None

    def __call__(self, e: Event) -> None:
        now = self.clock()
        key = (e.stage, e.phase)
        if key != self._current:  # a new phase, or one run again after a retry
            self._close()
            self._tasks[key] = self.bars.add_task(
                _label(e), total=e.total or None,
                **self._fields(short=f"{e.stage + 1}/{e.stages} {e.phase}"))
            self._started[self._tasks[key]] = now
            self._current = key
        task = self._tasks[key]
        elapsed = now - self._started[task]
        rate = e.done / elapsed if e.done and elapsed > 0 else 0.0
        left = (e.total - e.done) / rate if rate and e.total > e.done else None
        self.bars.update(task, completed=e.done, total=e.total or None,
                         count=f"{e.done}/{e.total}" if e.total else "",
                         rate=f"{rate:.2f} it/s" if rate else "", left=left, at=now)
        if self.job is not None and self._job_task is not None:
            self.job.update(e, now)
            share = self.job.fraction(now)
            left, run = _left(self.job, self.run, now)
            if share is not None and left is not None:
                done = self.job.finished
                self.bars.update(self._job_task, completed=round(1000 * share),
                                 count=f"{int(100 * share)} %", left=left, at=now,
                                 final="done" if done else "")
            if self._run_task is not None and self.run is not None:
                self.bars.update(self._run_task, completed=self.run.index + (share or 0.0),
                                 left=run, at=now, final="done" if run == 0 else "")


def _label_column(table_column):
    """A row's label; where the full one does not fit, its short form ('2/5 vae-decode':
    the phase, not the size, is what is cut last), ellipsized if that does not fit either."""
    from rich.progress import ProgressColumn
    from rich.text import Text

    class Label(ProgressColumn):
        def render(self, task):
            text = task.description
            if table_column.width is not None and len(text) > table_column.width:
                text = task.fields.get("short") or text
            return Text(text, no_wrap=True, overflow="ellipsis")

    return Label(table_column=table_column)


def _left_column(clock: Callable[[], float], table_column):
    """A column of the time left, counting down from the last estimate between events (never
    below 0; a step at 16K can take minutes), or a task's `final` word."""
    from rich.progress import ProgressColumn
    from rich.text import Text

    class Left(ProgressColumn):
        def render(self, task):
            f = task.fields
            if f.get("final"):
                return Text(f["final"])
            if f.get("left") is None:
                return Text("")
            rest = max(0.0, f["left"] - (clock() - f["at"]))
            return Text(f["form"].format(duration(rest)))

    return Left(table_column=table_column)
