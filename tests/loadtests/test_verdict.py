"""The verdict of a run: the whole run, or the knee stage of a knee search."""

from __future__ import annotations

from loadtests.recorder import Recorder
from loadtests.shapes import KneeSearch, Stage, StageResult, Steady
from loadtests.targets import Targets
from loadtests.verdict import judge_run, stage_judge

T0 = 2_000_000.0
TARGETS = Targets.parse("[models.fast]\np99_ms = 5\nmax_error_ratio = 0.01\n[models.slow]\np99_ms = 50\n")


def fill(recorder: Recorder, model: str, seconds: range, latency_ms: float, per_second: int = 50,
         errors_every: int = 0) -> None:
    for second in seconds:
        for k in range(per_second):
            failed = errors_every > 0 and k % errors_every == 0
            recorder.record(model, latency_ms, not failed, T0 + second + k / per_second)


def test_a_stage_holds_only_when_every_model_holds() -> None:
    recorder = Recorder()
    fill(recorder, "fast", range(0, 10), 2.0)
    fill(recorder, "slow", range(0, 5), 20.0)
    fill(recorder, "slow", range(5, 10), 80.0)
    judge = stage_judge(recorder, ["fast", "slow"], TARGETS)
    early, late = judge(T0 + 1, T0 + 4), judge(T0 + 6, T0 + 9)
    assert early.holds and early.throughput_rps == 100.0 and early.p99_ms["slow"] < 50
    assert not late.holds and "slow: p99 79.9" in late.why and "fast" not in late.why


def test_a_stage_with_too_many_errors_or_no_requests_does_not_hold() -> None:
    recorder = Recorder()
    fill(recorder, "fast", range(0, 3), 1.0, errors_every=10)
    judge = stage_judge(recorder, ["fast", "slow"], TARGETS)
    result = judge(T0, T0 + 3)
    assert not result.holds
    assert "fast: error ratio 0.1000 > 0.01" in result.why and "slow: no requests" in result.why


def test_a_run_is_judged_whole() -> None:
    recorder = Recorder()
    fill(recorder, "fast", range(0, 4), 2.0)
    fill(recorder, "slow", range(0, 4), 80.0)
    result = judge_run(recorder, ["fast", "slow"], TARGETS, T0, Steady(2, 2.0, 4.0))
    assert not result.passed and result.span == "the whole run" and result.knee is None
    assert [(c.model, c.metric, c.passed) for c in result.checks] == [
        ("fast", "p99", True), ("fast", "error ratio", True), ("slow", "p99", False),
    ]
    assert result.measured["fast"].requests == 200


def test_a_knee_search_is_judged_on_its_knee_stage_and_fails_without_one() -> None:
    recorder = Recorder()
    fill(recorder, "fast", range(0, 5), 2.0)  # the knee stage: within target
    fill(recorder, "fast", range(5, 10), 40.0)  # the stage after it: far over
    plan = KneeSearch(max_users=4, judge=lambda a, b: StageResult(True, 0, {}))
    plan.stages = [
        Stage(2, T0 + 1, T0 + 5, StageResult(True, 50.0, {"fast": 2.0})),
        Stage(4, T0 + 6, T0 + 10, StageResult(False, 50.0, {"fast": 40.0}, "fast: p99")),
    ]
    result = judge_run(recorder, ["fast"], TARGETS, T0, plan)
    assert result.passed and result.knee is not None and result.knee.users == 2
    assert result.span.startswith("the knee stage: 2 users")
    assert result.measured["fast"].requests == 500  # the breakdown still sees the whole run

    plan.stages = plan.stages[1:]
    failed = judge_run(recorder, ["fast"], TARGETS, T0, plan)
    assert not failed.passed and failed.knee is None and "no stage" in failed.span
