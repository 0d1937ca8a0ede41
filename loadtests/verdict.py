"""The verdict of a run: each model measured (over the run, or the knee stage) and judged against its targets.

Only the process that sees every sample judges: a local run, or the master of a distributed one
(the workers' samples reach it in their reports). Pure Python: the unit tests import it directly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from loadtests import shapes
from loadtests.recorder import Measured, Recorder
from loadtests.targets import Check, Target, Targets, judge, verdict


def target_of(targets: Targets | None, model: str) -> Target:
    return targets.for_model(model) if targets is not None else Target()


def stage_judge(recorder: Recorder, models: Sequence[str], targets: Targets | None) -> shapes.StageJudge:
    """A knee stage holds when every model answered within its p99 and error-ratio targets."""

    def judge_stage(start_ts: float, end_ts: float) -> shapes.StageResult:
        throughput, p99, misses = 0.0, {}, []
        for model in models:
            measured = recorder.measure(model, start_ts, end_ts)
            target = target_of(targets, model)
            p99[model] = measured.p99_ms
            if not math.isnan(measured.throughput_rps):
                throughput += measured.throughput_rps
            if measured.requests == 0:
                misses.append(f"{model}: no requests")
                continue
            if target.p99_ms is not None and not measured.p99_ms <= target.p99_ms:
                misses.append(f"{model}: p99 {measured.p99_ms:.3f} > {target.p99_ms:g} ms")
            if target.max_error_ratio is not None and not measured.error_ratio <= target.max_error_ratio:
                misses.append(f"{model}: error ratio {measured.error_ratio:.4f} > {target.max_error_ratio:g}")
        return shapes.StageResult(not misses, throughput, p99, "; ".join(misses))

    return judge_stage


@dataclass(frozen=True, slots=True)
class RunVerdict:
    checks: list[Check]
    passed: bool
    span: str
    """What was judged: the whole run, or the knee stage."""
    measured: dict[str, Measured]
    """Each model over the whole run (what the breakdown sets beside the server's numbers)."""
    knee: shapes.Stage | None


def judge_run(
    recorder: Recorder, models: Sequence[str], targets: Targets | None, start_ts: float, plan: shapes.Plan | None
) -> RunVerdict:
    """Judge every model over the whole run; a knee search over its knee stage (and fails without one)."""
    searched = isinstance(plan, shapes.KneeSearch)
    knee = plan.knee() if isinstance(plan, shapes.KneeSearch) else None
    whole = {model: recorder.measure(model, start_ts) for model in models}
    checks: list[Check] = []
    for model in models:
        measured = recorder.measure(model, knee.start_ts, knee.end_ts) if knee is not None else whole[model]
        checks.extend(judge(model, target_of(targets, model), measured))
    if knee is not None:
        users = f"{knee.users} user{'s' if knee.users != 1 else ''}"
        span = f"the knee stage: {users}, {knee.end_ts - knee.start_ts:g} s"
    elif searched:
        span = "the knee search found no stage within the p99 targets: judged over the whole run"
    else:
        span = "the whole run"
    return RunVerdict(checks, verdict(checks) and (knee is not None or not searched), span, whole, knee)
