"""Progress events from a run, and renderers for the CLI (rich bars, or plain log lines)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO


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
    return f"stage {e.stage + 1}/{e.stages} {e.width}x{e.height} {e.phase}"


class PlainProgress:
    """One log line per phase and every few seconds: for logs, pipes and CI."""

    def __init__(self, stream: TextIO | None = None, every: float = 5.0):
        self.stream = stream or sys.stderr
        self.every = every
        self._last = 0.0
        self._started: dict[tuple[int, str], float] = {}

    def __call__(self, e: Event) -> None:
        key = (e.stage, e.phase)
        now = time.monotonic()
        start = self._started.setdefault(key, now)
        first, last = e.done == 0, e.total and e.done >= e.total
        if not (first or last or now - self._last >= self.every):
            return
        self._last = now
        line = _label(e)
        if e.total:
            rate = e.done / (now - start) if now > start and e.done else 0.0
            eta = (e.total - e.done) / rate if rate else 0.0
            line += f" {e.done}/{e.total}"
            if rate and not last:
                line += f" ({rate:.2f} it/s, ETA {eta:.0f}s)"
            if last:
                line += f" done in {now - start:.1f}s"
        print(line, file=self.stream, flush=True)


class RichProgress:
    """A rich bar per phase with steps, it/s and ETA, on stderr."""

    def __init__(self, console=None):
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.console = console or Console(stderr=True)
        self.bars = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TextColumn("ETA"),
            TimeRemainingColumn(), console=self.console, transient=False,
        )
        self._tasks: dict[tuple[int, str], int] = {}
        self._started: dict[int, float] = {}

    def __enter__(self) -> RichProgress:
        self.bars.start()
        return self

    def __exit__(self, *exc) -> None:
        self.bars.stop()

    def __call__(self, e: Event) -> None:
        key = (e.stage, e.phase)
        if key not in self._tasks:
            self._tasks[key] = self.bars.add_task(_label(e), total=e.total or None, rate="")
            self._started[self._tasks[key]] = time.monotonic()
        task = self._tasks[key]
        elapsed = time.monotonic() - self._started[task]
        rate = f"{e.done / elapsed:.2f} it/s" if e.done and elapsed > 0 else ""
        self.bars.update(task, completed=e.done, total=e.total or None, rate=rate)
