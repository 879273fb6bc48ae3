"""How long the rest of a job will take: the plan's work, timed as the job runs.

The plan knows each stage's UNet and VAE work (TFLOP) but only assumes a rate, so the clock
times the work as it is done: seconds per TFLOP for the UNet and for the VAE apart (their rates
differ by device and by strategy), then prices the work still to do at those rates. Until both
have been seen, the one seen stands in for the other; until any has, the plan's own times.
Where the image is saved as a phase of its own (the CLI), its seconds per pixel are timed too
(an earlier image's, else the host's assumed rate), as a 16K save takes seconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hires.plan import Plan
    from hires.progress import Event

# The SDXL VAE's work per image pixel, decode and encode (FlopCounter, BENCHMARKS.md "GPU"):
# how a stage's VAE work is split between the decode before it, its encode and a final decode.
DECODE_PER_PX, ENCODE_PER_PX = 9.99e6, 4.65e6


@dataclass
class Phase:
    """One phase of a run, as its progress events name it, and its planned work."""

    stage: int  # the stage its events carry (a stage's first decode carries the one before)
    name: str  # "denoise", "vae-decode" or "vae-encode"
    tflop: float
    steps: tuple[float, ...] = ()  # denoise: each step's share of the work
    done: float = 0.0  # share of the work done

    @property
    def kind(self) -> str:
        return "unet" if self.name == "denoise" else "vae"

    def share(self, done: int, total: int) -> float:
        """The share of the work done after `done` of `total` progress ticks."""
        if total <= 0:
            return 0.0
        if self.steps and len(self.steps) == total:
            return sum(self.steps[:done])
        return min(1.0, done / total)


def phases(plan: Plan) -> list[Phase]:
    """The phases a run of `plan` goes through, in order (empty for a plan without costs)."""
    if any(s.cost is None for s in plan.stages):
        return []
    out: list[Phase] = []
    last = len(plan.stages) - 1
    for s in plan.stages:
        px, vae = s.width * s.height, s.cost.tflop - s.cost.unet_tflop
        parts = []  # (stage its events carry, name, relative VAE work)
        if s.kind == "upscale" and (s.decodes_previous or not s.latent_upsample):
            before = plan.stages[s.index - 1]
            parts.append((before.index, "vae-decode", DECODE_PER_PX * before.width * before.height))
        if s.kind != "base" and not s.latent_upsample:
            parts.append((s.index, "vae-encode", ENCODE_PER_PX * px))
        final = [(s.index, "vae-decode", DECODE_PER_PX * px)] if s.index == last else []
        whole = sum(w for *_, w in parts + final) or 1.0
        out += [Phase(i, name, vae * w / whole) for i, name, w in parts]
        # An upscale stage's first `global_steps` steps run the UNet twice (the global pass).
        passes = [2.0 if k < s.global_steps and s.kind != "base" else 1.0
                  for k in range(s.steps)]
        out.append(Phase(s.index, "denoise", s.cost.unet_tflop,
                         tuple(p / sum(passes) for p in passes)))
        out += [Phase(i, name, vae * w / whole) for i, name, w in final]
    return out


def save_seconds_per_px() -> float:
    """The host's assumed pace of a save (a PNG's, on this machine's cores)."""
    from hires.gpus import SAVE_PX_PER_CORE
    from hires.strips import cores

    return 1.0 / (SAVE_PX_PER_CORE * cores())


class JobClock:
    """Fed a run's progress events with the time each came, says how long the rest takes.

    `prior`: seconds per TFLOP of each kind of work ("unet", "vae") measured on the images an
    earlier part of the run made: they stand for a kind until this image has timed its own.
    `planned`: False ignores the plan's times (they are another machine's: `--gpu`).
    `save`: seconds per pixel of the image's save, a phase of its own after the final decode
    (an earlier image's pace, else `save_seconds_per_px`); None: no save phase comes."""

    def __init__(self, plan: Plan, now: float, prior: dict[str, float] | None = None,
                 planned: bool = True, save: float | None = None):
        self.phases = phases(plan)
        last = plan.stages[-1]
        self.save_px = last.width * last.height if save is not None and self.phases else 0
        self.save_pace = save or 0.0  # seconds per pixel
        self.save_started: float | None = None
        self.save_seconds: float | None = None  # the save's, once its end came
        self.planned = plan.seconds if planned else None  # None without a rate
        self.tflop = sum(p.tflop for p in self.phases)
        self.start = self.last = now
        self.current: Phase | None = None
        self.seconds = {"unet": 0.0, "vae": 0.0}  # spent on each kind of work
        self.work = {"unet": 0.0, "vae": 0.0}  # TFLOP of it done
        self.prior = dict(prior or {})
        self._shown = 0.0  # the largest share `fraction` has said: it never goes back

    def update(self, e: Event, now: float) -> None:
        if e.phase == "save":
            self._saving(e, now)
            return
        index = next((i for i, p in enumerate(self.phases)
                      if (p.stage, p.name) == (e.stage, e.phase)), None)
        if index is None:  # a resize, a retry: the time goes to the next phase's work
            return
        phase = self.phases[index]
        for skipped in self.phases[:index]:  # phases a run leaves out (latent upsampling)
            skipped.done = 1.0
        # The time since the last tick went to this phase's work, unless this tick only says
        # that it starts: then to the one before (its end), or before any, to the set-up.
        owner = phase if e.done > 0 else self.current
        if owner is not None:
            self.seconds[owner.kind] += now - self.last
        self.last = now
        share = phase.share(e.done, e.total)
        if share > phase.done:
            self.work[phase.kind] += (share - phase.done) * phase.tflop
        phase.done = share  # lower again when a stage is run again (out of memory)
        self.current = phase

    def _saving(self, e: Event, now: float) -> None:
        """The save's start (the time since the last tick ends the phase before it) or end."""
        if e.done == 0:
            if self.current is not None:
                self.seconds[self.current.kind] += now - self.last
            self.current, self.save_started = None, now
        elif self.save_started is not None:
            self.save_seconds = now - self.save_started
        self.last = now

    def save_left(self) -> float:
        """Seconds the save still needs: its estimate until it ends."""
        return 0.0 if self.save_seconds is not None else self.save_px * self.save_pace

    def remaining(self) -> float | None:
        """Seconds the job still needs, or None while nothing says."""
        if not self.phases:
            return None
        own = self.rates()
        rates = {**self.prior, **own}
        left = {"unet": 0.0, "vae": 0.0}
        for p in self.phases:
            left[p.kind] += (1.0 - p.done) * p.tflop
        if not rates:
            if self.planned is None or not self.tflop:
                return None
            return self.planned * sum(left.values()) / self.tflop + self.save_left()
        if own:
            overall = sum(self.seconds[k] for k in own) / sum(self.work[k] for k in own)
        else:  # only earlier images' rates
            overall = sum(rates.values()) / len(rates)
        return sum(left[k] * rates.get(k, overall) for k in left) + self.save_left()

    def rates(self) -> dict[str, float]:
        """Seconds per TFLOP of each kind of work this image has timed."""
        return _rates(self.seconds, self.work)

    @property
    def finished(self) -> bool:
        """Whether every phase's work is done (the last tile of the final decode came), and
        the save, where one comes, ended."""
        saved = not self.save_px or self.save_seconds is not None
        return saved and bool(self.phases) and all(p.done >= 1.0 - 1e-9 for p in self.phases)

    def fraction(self, now: float) -> float | None:
        """The share of the job's time behind it. It never goes back, though the estimate of
        the rest may rise (a slower phase, a retry): it waits until the time catches it up;
        and it is 1.0 only when the job is done."""
        left = self.remaining()
        if left is None:
            return None
        if self.finished:
            self._shown = 1.0
            return 1.0
        spent = now - self.start
        share = spent / (spent + left) if spent + left > 0 else 0.0
        self._shown = max(self._shown, min(share, 0.999))
        return self._shown


class RunPace:
    """The images of one run (`--n`, several inputs, prompts on stdin): how many, which one
    is being made, and the pace of those made so far, which prices the rest (`left_after`)
    and gives the next image's clock its first rates."""

    def __init__(self, images: int):
        self.images = images
        self.index = 0  # the image being made, 0-based, of `images`
        self.made: list[tuple[int, float]] = []  # (pixels, seconds) of each image made
        self.todo: list[int] = []  # pixels of the images still to make after this one
        self.pixels = 0  # this image's
        self._seconds = {"unet": 0.0, "vae": 0.0}  # the UNet's and VAE's time and work in
        self._work = {"unet": 0.0, "vae": 0.0}  # the images made so far
        self._saved = [0.0, 0]  # the seconds and pixels of their saves

        self.clock: JobClock | None = None  # the image's, once its progress shows it

    def start(self, index: int, pixels: int, todo: list[int]) -> None:
        """Image `index` (of `pixels`) starts; `todo`: the images still to make after it."""
        self.index, self.pixels, self.todo, self.clock = index, pixels, list(todo), None

    def end(self, seconds: float) -> None:
        """This image took `seconds`; its clock, if any, timed its UNet and VAE work."""
        self.made.append((self.pixels, seconds))
        if self.clock is not None:
            for k in self._work:
                self._seconds[k] += self.clock.seconds[k]
                self._work[k] += self.clock.work[k]
            if self.clock.save_seconds is not None:
                self._saved[0] += self.clock.save_seconds
                self._saved[1] += self.clock.save_px
        self.clock = None

    def save_pace(self) -> float:
        """Seconds per pixel of the saves so far, else the host's assumed pace."""
        seconds, pixels = self._saved
        return seconds / pixels if pixels else save_seconds_per_px()

    def rates(self) -> dict[str, float]:
        """Seconds per TFLOP of the UNet's and the VAE's work on the images made so far."""
        return _rates(self._seconds, self._work)

    def left(self, image_left: float | None, image_spent: float) -> float | None:
        """Seconds the whole run still needs, this image's `image_left` included (after
        `image_spent` seconds on it); None while nothing says. The images after this one go
        at the pace of those made (`left_after`), before any, at this one's as estimated."""
        if image_left is None:
            return None
        rest = left_after(self.made, self.todo)
        if rest is None and self.pixels:
            rest = left_after([(self.pixels, image_spent + image_left)], self.todo)
        return image_left + (rest or 0.0)


def _rates(seconds: dict[str, float], work: dict[str, float]) -> dict[str, float]:
    """Seconds per TFLOP of each kind of work that some was timed of."""
    return {k: seconds[k] / work[k] for k in work if work[k] > 0}


def left_after(done: list[tuple[int, float]], todo: list[int]) -> float | None:
    """Seconds the images still to make need, at the pace of those made so far (`done`: each
    one's pixels and seconds; `todo`: each one's pixels), or None before any was made. An image
    takes time in proportion to its pixels: the last stage's work, most of it, grows so."""
    pixels, seconds = sum(p for p, _ in done), sum(s for _, s in done)
    if not pixels:
        return None
    return seconds / pixels * sum(todo)


def time_left(seconds: float | None, finished: bool = False) -> str:
    """'~40 s left', or 'done' for a finished job or no time left; '' while nothing says."""
    if finished or (seconds is not None and seconds <= 0):
        return "done"
    return "" if seconds is None else f"{duration(seconds)} left"


def duration(seconds: float) -> str:
    """'~40 s', '~12 min', '~1 h 05 min'."""
    if seconds < 90:
        return f"~{max(1, round(seconds))} s"
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"~{minutes} min"
    return f"~{minutes // 60} h {minutes % 60:02d} min"
