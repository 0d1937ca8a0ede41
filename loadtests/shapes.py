"""Load shapes as plain plans: how many users, at what spawn rate, at each moment of the run.

The locustfile has one `LoadTestShape` that builds the plan named by `--shape` (or
`ORTSERVE_LOADTEST_SHAPE`) and asks it at every tick; the plans themselves import nothing of
Locust, so the unit tests drive them with a fake clock (importing Locust monkey-patches the
process). Each `tick(now)` takes the wall-clock time and answers (users, spawn rate), or None
to end the run. Locust ticks about once a second.

- `Steady`: the users of `-u` at the rate of `-r` for the run time of `-t`.
- `Step`: up to `-u` in `stages` equal steps, each `stage_s` long (the run time over the stages).
- `Spike`: a base load (`base_ratio` of the users) for 40 % of the run, every user at once for
  20 %, the base again for the last 40 %.
- `KneeSearch`: the highest throughput at which the p99 target holds. Users grow by `factor`
  per stage until a stage misses (or `-u` is reached), then bisect between the last stage that
  held and the first that missed, down to `resolution` users. A stage is judged on its seconds
  after `settle_s` (the ramp), once `lag_s` more have passed (worker reports take up to 3 s to
  reach the master); the users stay on meanwhile. `knee()` is the holding stage of the highest
  throughput.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

Tick = tuple[int, float] | None
SHAPES = ("steady", "step", "spike", "knee")


class Plan:
    """A load shape; its clock starts at its first tick."""

    started: float | None = None

    def tick(self, now: float) -> Tick:
        if self.started is None:
            self.started = now
        return self.at(now - self.started, now)

    def at(self, elapsed_s: float, now: float) -> Tick:
        raise NotImplementedError


@dataclass
class Steady(Plan):
    users: int
    spawn_rate: float
    duration_s: float | None
    """None: until stopped (Ctrl-C, SIGTERM, the web UI)."""

    def at(self, elapsed_s: float, now: float) -> Tick:
        if self.duration_s is not None and elapsed_s >= self.duration_s:
            return None
        return self.users, self.spawn_rate


@dataclass
class Step(Plan):
    users: int
    spawn_rate: float
    stages: int
    stage_s: float

    def at(self, elapsed_s: float, now: float) -> Tick:
        stage = int(elapsed_s // self.stage_s)
        if stage >= self.stages:
            return None
        return max(1, math.ceil(self.users * (stage + 1) / self.stages)), self.spawn_rate


@dataclass
class Spike(Plan):
    users: int
    spawn_rate: float
    duration_s: float
    base_ratio: float = 0.25

    def at(self, elapsed_s: float, now: float) -> Tick:
        if elapsed_s >= self.duration_s:
            return None
        at_once = float(max(self.users, self.spawn_rate))
        base = max(1, round(self.users * self.base_ratio))
        if elapsed_s < 0.4 * self.duration_s:
            return base, self.spawn_rate
        if elapsed_s < 0.6 * self.duration_s:
            return self.users, at_once  # the spike: every user at once
        return base, at_once  # and gone at once


@dataclass(frozen=True, slots=True)
class StageResult:
    holds: bool
    """Every model met its p99 (and error ratio) target over the stage."""
    throughput_rps: float
    """Successful requests per second, all models."""
    p99_ms: dict[str, float]
    why: str = ""
    """What missed, when it did not hold."""


@dataclass(frozen=True, slots=True)
class Stage:
    users: int
    start_ts: float
    """The judged span: after the settle time, to the stage's end."""
    end_ts: float
    result: StageResult


StageJudge = Callable[[float, float], StageResult]
"""(start, end) wall-clock times -> how the stage did over that span."""


@dataclass
class KneeSearch(Plan):
    max_users: int
    judge: StageJudge
    start_users: int = 1
    factor: float = 2.0
    stage_s: float = 10.0
    settle_s: float = 2.0
    lag_s: float = 0.5
    resolution: int = 1
    spawn_rate: float | None = None
    """None: each stage's users at once."""
    stages: list[Stage] = field(default_factory=list)
    _users: int = 0
    _stage_start: float = 0.0
    _held: int = 0
    _missed: int | None = None
    _done: bool = False

    def __post_init__(self) -> None:
        if self.stage_s <= self.settle_s:
            raise ValueError(f"stage_s ({self.stage_s}) must be longer than settle_s ({self.settle_s})")
        if self.settle_s < 0.5 or self.lag_s < 0.5:
            # A stage is judged on whole seconds of samples (Recorder.measure): half a second at
            # either end must still belong to it.
            raise ValueError(f"settle_s and lag_s must be >= 0.5, got {self.settle_s} and {self.lag_s}")
        if self.factor <= 1:
            raise ValueError(f"factor must be > 1, got {self.factor}")
        self._users = max(1, min(self.start_users, self.max_users))

    def _rate(self) -> float:
        return float(self.spawn_rate or max(self._users, 1))

    def at(self, elapsed_s: float, now: float) -> Tick:
        if self._done:
            return None
        if not self.stages and self._stage_start == 0.0:
            self._stage_start = now
        if now < self._stage_start + self.stage_s + self.lag_s:
            return self._users, self._rate()
        start, end = self._stage_start + self.settle_s, self._stage_start + self.stage_s
        result = self.judge(start, end)
        self.stages.append(Stage(self._users, start, end, result))
        if result.holds:
            self._held = max(self._held, self._users)
        else:
            self._missed = self._users if self._missed is None else min(self._missed, self._users)
        following = self._next()
        if following is None:
            self._done = True
            return None
        self._users, self._stage_start = following, now
        return self._users, self._rate()

    def _next(self) -> int | None:
        if self._missed is None:  # still growing
            if self._users >= self.max_users:
                return None
            return min(self.max_users, max(self._users + 1, math.ceil(self._users * self.factor)))
        low, high = self._held, self._missed
        middle = (low + high) // 2
        if high - low <= self.resolution or middle <= low or middle < 1:
            return None
        return middle

    def knee(self) -> Stage | None:
        """The stage of the highest throughput that held its targets."""
        held = [s for s in self.stages if s.result.holds]
        return max(held, key=lambda s: s.result.throughput_rps) if held else None
