"""The load shapes as plans, on a fake clock (no Locust in this process)."""

from __future__ import annotations

import pytest

from loadtests.shapes import KneeSearch, Spike, StageResult, Steady, Step, Tick

T0 = 1_000_000.0


def ticks(plan: Steady | Step | Spike | KneeSearch, seconds: int) -> list[Tick]:
    """What the plan answers at each whole second from T0 (Locust ticks about once a second)."""
    return [plan.tick(T0 + s) for s in range(seconds)]


def test_steady_holds_the_users_for_the_run_time() -> None:
    assert ticks(Steady(8, 2.0, 3.0), 5) == [(8, 2.0), (8, 2.0), (8, 2.0), None, None]
    assert ticks(Steady(8, 2.0, None), 100)[-1] == (8, 2.0)


def test_step_climbs_to_the_users_in_equal_stages() -> None:
    got = ticks(Step(10, 5.0, stages=4, stage_s=2.0), 9)
    assert [t[0] if t else None for t in got] == [3, 3, 5, 5, 8, 8, 10, 10, None]


def test_spike_is_a_base_load_with_every_user_at_once_in_the_middle() -> None:
    got = ticks(Spike(20, 2.0, duration_s=10.0, base_ratio=0.25), 11)
    assert got[:4] == [(5, 2.0)] * 4
    assert got[4:6] == [(20, 20.0)] * 2  # all at once
    assert got[6:10] == [(5, 20.0)] * 4  # and gone at once
    assert got[10] is None


class Capacity:
    """A server that holds the p99 target up to `limit` users, serving 100 req/s per user."""

    def __init__(self, plan_users: list[int], limit: int) -> None:
        self.users, self.limit = plan_users, limit
        self.spans: list[tuple[float, float]] = []

    def __call__(self, start: float, end: float) -> StageResult:
        self.spans.append((start, end))
        users = self.users[-1]
        holds = users <= self.limit
        return StageResult(holds, 100.0 * users, {"m": 1.0 if holds else 99.0}, "" if holds else "m: p99")


def run_knee(limit: int, max_users: int, **kwargs: float) -> tuple[KneeSearch, Capacity, list[int]]:
    seen: list[int] = []
    capacity = Capacity(seen, limit)
    plan = KneeSearch(max_users=max_users, judge=capacity, **kwargs)  # type: ignore[arg-type]
    for s in range(10_000):
        tick = plan.tick(T0 + s)
        if tick is None:
            break
        if not seen or seen[-1] != tick[0]:
            seen.append(tick[0])
    return plan, capacity, seen


def test_knee_grows_then_bisects_to_the_most_users_that_hold() -> None:
    plan, _, users = run_knee(limit=6, max_users=64, stage_s=3, settle_s=1)
    assert users == [1, 2, 4, 8, 6, 7]  # doubling until 8 misses, then between 4 and 8
    knee = plan.knee()
    assert knee is not None and knee.users == 6 and knee.result.throughput_rps == 600.0
    assert [s.result.holds for s in plan.stages] == [True, True, True, False, True, False]


def test_knee_stops_at_the_user_cap_when_everything_holds() -> None:
    plan, _, users = run_knee(limit=1000, max_users=10, stage_s=2, settle_s=0.5)
    assert users == [1, 2, 4, 8, 10]
    assert plan.knee() is not None and plan.knee().users == 10  # type: ignore[union-attr]


def test_knee_with_no_stage_holding_has_no_knee() -> None:
    plan, _, users = run_knee(limit=0, max_users=10, stage_s=2, settle_s=0.5, start_users=4)
    assert users == [4, 2, 1] and plan.knee() is None


def test_knee_judges_each_stage_after_its_settle_time_once_the_reports_are_in() -> None:
    plan, capacity, _ = run_knee(limit=1000, max_users=2, stage_s=5, settle_s=2, lag_s=3)
    first, second = capacity.spans
    assert first == (T0 + 2, T0 + 5)  # judged over [start + settle, start + stage)
    # ... at start + stage + lag = T0 + 8, when the next stage starts
    assert second == (T0 + 8 + 2, T0 + 8 + 5)
    assert [s.users for s in plan.stages] == [1, 2]


def test_knee_refuses_a_stage_shorter_than_its_settle_time() -> None:
    with pytest.raises(ValueError, match="longer than settle_s"):
        KneeSearch(max_users=4, judge=lambda a, b: StageResult(True, 0, {}), stage_s=2, settle_s=2)
