"""Progress events from a run, and renderers for the CLI (rich bars, or plain log lines)."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TextIO

from hires.eta import JobClock, duration

if TYPE_CHECKING:
    from hires.plan import Plan


@dataclass(frozen=True)
class Event:
    """Something happened in a run: a phase started, advanced or ended."""

    phase: str  # "encode-prompt" | "denoise" | "vae-decode" | "resize" | "vae-encode" | "save"
    stage: int  # 0 = base stage
    stages: int
    width: int
    height: int
    done: int = 0
    total: int = 0


ProgressFn = Callable[[Event], None]


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
        self.job = JobClock(plan, clock()) if plan is not None else None

    def _print(self, line: str) -> None:
        if self.stream is None:
            return
        try:
            print(line, file=self.stream, flush=True)
        except BrokenPipeError:  # its reader went away (`2>&1 | head`): the work goes on
            self.stream = None

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
        self.write(e, now - start, bool(last))

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
        left = self.job.remaining() if self.job is not None else None
        if left is not None:
            line += f"; job {duration(left)} left"
        self._print(line)


class JsonProgress(PlainProgress):
    """`--progress json`: the same events as JSON objects, one a line, for programs that show
    hires' progress (a GUI, a job queue); `image` is the file being made."""

    def __init__(self, stream: TextIO | None = None, every: float = 1.0,
                 plan: Plan | None = None, clock: Callable[[], float] = time.monotonic,
                 image: str | None = None):
        super().__init__(stream, every, plan, clock)
        self.image = image

    def write(self, e: Event, elapsed: float, last: bool) -> None:
        left = self.job.remaining() if self.job is not None else None
        record = {"image": self.image, "phase": e.phase, "stage": e.stage, "stages": e.stages,
                  "width": e.width, "height": e.height, "done": e.done, "total": e.total,
                  "elapsed_s": round(elapsed, 3),
                  "job_left_s": None if left is None else round(left, 1)}
        self._print(json.dumps(record))


class RichProgress:
    """A rich bar per phase with steps, it/s and ETA, and one for the whole job, on stderr."""

    def __init__(self, console=None, plan: Plan | None = None):
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        self.console = console or Console(stderr=True)
        # Our own count and ETA columns: rich's would read the job's bar as steps per second.
        self.bars = Progress(
            TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[count]}"),
            TextColumn("{task.fields[rate]}"), TimeElapsedColumn(),
            TextColumn("{task.fields[eta]}"), console=self.console, transient=False,
        )
        self._tasks: dict[tuple[int, str], int] = {}
        self._started: dict[int, float] = {}
        self.job = JobClock(plan, time.monotonic()) if plan is not None else None
        self._job_task: int | None = None

    def __enter__(self) -> RichProgress:
        self.bars.start()
        if self.job is not None:
            self._job_task = self.bars.add_task("job", total=1000, count="", rate="", eta="")
        return self

    def __exit__(self, *exc) -> None:
        self.bars.stop()

    def __call__(self, e: Event) -> None:
        now = time.monotonic()
        key = (e.stage, e.phase)
        if key not in self._tasks:
            self._tasks[key] = self.bars.add_task(_label(e), total=e.total or None, count="",
                                                  rate="", eta="")
            self._started[self._tasks[key]] = now
        task = self._tasks[key]
        elapsed = now - self._started[task]
        rate = e.done / elapsed if e.done and elapsed > 0 else 0.0
        eta = f"ETA {duration((e.total - e.done) / rate)}" if rate and e.total > e.done else ""
        self.bars.update(task, completed=e.done, total=e.total or None,
                         count=f"{e.done}/{e.total}" if e.total else "",
                         rate=f"{rate:.2f} it/s" if rate else "", eta=eta)
        if self.job is not None and self._job_task is not None:
            self.job.update(e, now)
            share, left = self.job.fraction(now), self.job.remaining()
            if share is not None and left is not None:
                self.bars.update(self._job_task, completed=round(1000 * share),
                                 count=f"{100 * share:.0f} %", eta=f"{duration(left)} left")
