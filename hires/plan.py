"""The stage list of a job: sizes, SDEdit strengths and timesteps, as a pure function."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Stage:
    """One sampling stage; index 0 is the base (text-to-image) stage."""

    index: int
    width: int
    height: int
    ratio: int  # scale relative to the base stage: 1, 2, 4, ...
    strength: float  # 1.0 for the base stage
    timesteps: tuple[int, ...]  # the timesteps this stage runs, high to low

    @property
    def steps(self) -> int:
        return len(self.timesteps)


@dataclass(frozen=True)
class Plan:
    """All stages, the size they generate and the size the user asked for."""

    stages: tuple[Stage, ...]
    width: int  # generated: base x 2^n
    height: int
    requested_width: int
    requested_height: int

    @property
    def exact(self) -> bool:
        return (self.width, self.height) == (self.requested_width, self.requested_height)


def schedule(steps: int, train_steps: int = 1000, spacing: str = "leading", offset: int = 1):
    """The timesteps of an `steps`-step Euler schedule, as diffusers spaces them for SDXL."""
    if spacing == "leading":
        ratio = train_steps // steps
        return tuple(i * ratio + offset for i in reversed(range(steps)))
    if spacing == "trailing":
        ratio = train_steps / steps
        return tuple(round(train_steps - i * ratio) - 1 for i in range(steps))
    if spacing == "linspace":
        return tuple(
            round((train_steps - 1) * (steps - 1 - i) / max(steps - 1, 1)) for i in range(steps)
        )
    raise ValueError(f"unknown timestep spacing '{spacing}'")


def base_size(width: int, height: int, native: int) -> tuple[int, int]:
    """The base stage's size: long side `native` (or the request if smaller), aspect kept."""
    long_side = max(width, height)
    if long_side <= native:
        return width, height
    short = max(8, round(min(width, height) * native / long_side / 8) * 8)
    return (native, short) if width >= height else (short, native)


def stage_strengths(strength: float, n: int) -> list[float]:
    """linspace(strength, 0, n+1)[:n]: stage k (1-based) gets entry k-1."""
    return [strength * (n - k) / n for k in range(n)] if n else []


def make_plan(
    width: int,
    height: int,
    *,
    steps: int = 50,
    strength: float = 0.32,
    native: int = 1024,
    spacing: str = "leading",
    train_steps: int = 1000,
    offset: int = 1,
) -> Plan:
    """Stages for a `width` x `height` request on a model of `native` px."""
    bw, bh = base_size(width, height, native)
    n = max(0, math.ceil(math.log2(max(width, height) / max(bw, bh)) - 1e-9))
    full = schedule(steps, train_steps, spacing, offset)
    stages = [Stage(0, bw, bh, 1, 1.0, full)]
    for k, s in enumerate(stage_strengths(strength, n), start=1):
        # The small epsilon keeps 50 x 0.24 = 12.000000000000002 at 12 steps.
        count = min(steps, math.ceil(steps * s - 1e-9))
        stages.append(Stage(k, bw << k, bh << k, 1 << k, s, full[steps - count :]))
    last = stages[-1]
    return Plan(tuple(stages), last.width, last.height, width, height)


def describe(plan: Plan) -> list[str]:
    """One line per stage, for logs and `hires plan`."""
    lines = []
    for s in plan.stages:
        kind = "base" if s.index == 0 else f"x{s.ratio}"
        lines.append(
            f"stage {s.index} ({kind}): {s.width}x{s.height}, strength {s.strength:.2f}, "
            f"{s.steps} steps"
        )
    if not plan.exact:
        lines.append(
            f"final: {plan.width}x{plan.height} resized/cropped to "
            f"{plan.requested_width}x{plan.requested_height}"
        )
    return lines
