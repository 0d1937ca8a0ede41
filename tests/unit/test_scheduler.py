"""The scheduler's knobs: priorities, queue policies, timeouts, no-dynamic mode, and the
latency-target controller (pure, on numbers) and its use by the batcher."""

from __future__ import annotations

import asyncio
import math
import random
import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import ortserve.batching.batcher as b_module
from ortserve.batching import BatchPolicy, DynamicBatcher, LatencyController, LatencyTargetError, QueuePolicy
from ortserve.batching.controller import (
    ADMIT_FRACTION,
    MIN_SCALE,
    RETRY_JITTER,
    RETRY_TARGETS,
    RETRY_TARGETS_MAX,
    SETPOINT,
    CostModel,
)
from ortserve.batching.execution import InstanceExecution
from ortserve.errors import DeadlineExceededError, InvalidInputError, ModelNotReadyError, QueueFullError
from tests.unit.test_batcher import WAIT_S, Runner, StoppableRunner, run, until, x

MS = 1_000_000


async def held(
    policy: BatchPolicy, runner: Runner | None = None, prepare: Callable[[DynamicBatcher], None] | None = None
) -> tuple[DynamicBatcher, Runner, asyncio.Task[Any]]:
    """A started one-instance batcher whose instance is busy with a blocker at the top priority
    (`prepare` sees it before it starts: to seed what the warm-up would have measured)."""
    runner = runner or Runner(hold=True)
    b = DynamicBatcher("m_1", [runner], policy)
    if prepare is not None:
        prepare(b)
    b.start()
    blocker = asyncio.create_task(b.submit({"x": x(1, -1.0)}, rows=1, priority=1 if policy.priority_levels else 0))
    await runner.wait_entered()
    return b, runner, blocker


def submit(b: DynamicBatcher, value: float, **options: Any) -> asyncio.Task[Any]:
    return asyncio.create_task(b.submit({"x": x(1, value)}, rows=1, **options))


def first_values(runner: Runner) -> list[float]:
    """The first input value of every call after the blocker, in call order."""
    return [float(call["x"][0, 0]) for call in runner.calls[1:]]


# -- priorities -------------------------------------------------------------------------


def test_higher_priority_levels_run_first_and_fifo_within_a_level() -> None:
    async def main() -> None:
        b, runner, blocker = await held(BatchPolicy(max_batch_size=1, priority_levels=3, default_priority_level=2))
        tasks = [
            submit(b, 30.0, priority=3),
            submit(b, 20.0, priority=0),  # the default level, 2
            submit(b, 10.0, priority=1),
            submit(b, 21.0, priority=2),
            submit(b, 11.0, priority=1),
        ]
        await until(lambda: b.queued_requests == 5)
        runner.release.set()
        await asyncio.gather(blocker, *tasks)
        await b.close()
        assert first_values(runner) == [10.0, 11.0, 20.0, 21.0, 30.0]

    run(main)


def test_a_batch_takes_higher_priorities_first() -> None:
    async def main() -> None:
        b, runner, blocker = await held(BatchPolicy(max_batch_size=2, priority_levels=2))
        tasks = [submit(b, 5.0, priority=2), submit(b, 6.0, priority=2), submit(b, 1.0, priority=1)]
        await until(lambda: b.queued_requests == 3)
        runner.release.set()
        await asyncio.gather(blocker, *tasks)
        await b.close()
        assert [call["x"][:, 0].tolist() for call in runner.calls[1:]] == [[1.0, 5.0], [6.0]]

    run(main)


def test_a_priority_beyond_the_levels_is_invalid() -> None:
    async def main() -> None:
        b = DynamicBatcher("m_1", [Runner()], BatchPolicy(max_batch_size=4, priority_levels=2))
        b.start()
        with pytest.raises(InvalidInputError, match=r"priority 3 is outside 1..2"):
            await b.submit({"x": x(1, 0.0)}, rows=1, priority=3)
        await b.close()

    run(main)


# -- queue policies ---------------------------------------------------------------------


def test_max_queue_size_refuses_at_once_per_level() -> None:
    async def main() -> None:
        policy = BatchPolicy(
            max_batch_size=4, priority_levels=2, queue_policies={2: QueuePolicy(max_queue_size=2)}
        )
        b, runner, blocker = await held(policy)
        kept = [submit(b, 1.0, priority=2), submit(b, 2.0, priority=2)]
        await until(lambda: b.queued_requests == 2)
        with pytest.raises(QueueFullError, match=r"priority level 2 is full \(2 requests"):
            await b.submit({"x": x(1, 3.0)}, rows=1, priority=2)
        other_level = submit(b, 4.0, priority=1)  # level 1 has no bound
        await until(lambda: b.queued_requests == 3)
        runner.release.set()
        await asyncio.gather(blocker, *kept, other_level)
        await b.close()
        assert sorted(v for call in runner.calls[1:] for v in call["x"][:, 0].tolist()) == [1.0, 2.0, 4.0]

    run(main)


def test_reject_timeout_answers_deadline_exceeded_on_time_and_never_computes() -> None:
    async def main() -> None:
        b, runner, blocker = await held(
            BatchPolicy(max_batch_size=4, default_queue_policy=QueuePolicy(default_timeout_us=50_000))
        )
        started = time.monotonic()
        with pytest.raises(DeadlineExceededError, match=r"deadline passed \(its queue timeout of 50 ms\)"):
            await b.submit({"x": x(1, 7.0)}, rows=1)
        assert time.monotonic() - started < 1.0  # answered at the timeout, while the instance is still busy
        assert not runner.release.is_set()
        runner.release.set()
        await blocker
        await b.close()
        assert first_values(runner) == []

    run(main)


def test_delay_timeout_moves_the_request_behind_every_other() -> None:
    async def main() -> None:
        policy = BatchPolicy(
            max_batch_size=1,
            priority_levels=2,
            queue_policies={1: QueuePolicy(default_timeout_us=20_000, delay_on_timeout=True)},
        )
        b, runner, blocker = await held(policy)
        delayed = submit(b, 1.0, priority=1)
        await asyncio.sleep(0.1)  # its 20 ms timeout passes: it is delayed, not rejected
        later = submit(b, 2.0, priority=2)
        await until(lambda: b.queued_requests == 2)
        runner.release.set()
        await asyncio.gather(blocker, delayed, later)
        await b.close()
        assert first_values(runner) == [2.0, 1.0]

    run(main)


@pytest.mark.parametrize(
    ("policy", "expires"),
    [
        (QueuePolicy(), True),  # no default timeout: the request's own applies
        (QueuePolicy(default_timeout_us=10_000_000), False),  # a default it may not override
        (QueuePolicy(default_timeout_us=10_000_000, allow_timeout_override=True), True),
    ],
)
def test_a_request_timeout_applies_as_the_policy_allows(policy: QueuePolicy, expires: bool) -> None:
    async def main() -> None:
        b, runner, blocker = await held(BatchPolicy(max_batch_size=4, default_queue_policy=policy))
        task = submit(b, 9.0, timeout_us=30_000)
        await asyncio.sleep(0.15)
        runner.release.set()
        await blocker
        if expires:
            with pytest.raises(DeadlineExceededError):
                await task
            assert first_values(runner) == []
        else:
            await task
            assert first_values(runner) == [9.0]
        await b.close()

    run(main)


def test_a_grpc_deadline_fires_while_every_instance_is_busy() -> None:
    async def main() -> None:
        b, runner, blocker = await held(BatchPolicy(max_batch_size=4))
        started = time.monotonic()
        with pytest.raises(DeadlineExceededError, match="deadline passed"):
            await b.submit({"x": x(1, 3.0)}, rows=1, deadline_ns=time.monotonic_ns() + 40 * MS)
        assert time.monotonic() - started < 1.0
        runner.release.set()
        await blocker
        await b.close()
        assert first_values(runner) == []

    run(main)


def test_without_dynamic_batching_each_request_runs_alone() -> None:
    async def main() -> None:
        b, runner, blocker = await held(BatchPolicy(max_batch_size=8, dynamic=False))
        tasks = [submit(b, float(v)) for v in range(3)]
        await until(lambda: b.queued_requests == 3)
        runner.release.set()
        await asyncio.gather(blocker, *tasks)
        await b.close()
        assert runner.rows == [1, 1, 1, 1]

    run(main)


# -- without dynamic batching: requests staged to the worker -----------------------------


def test_without_dynamic_batching_the_worker_goes_on_to_the_next_request_without_the_loop() -> None:
    async def main() -> None:
        calls = threading.Semaphore(0)
        runner = Runner(lambda feeds: (calls.release(), {"y": feeds["x"] * 2})[1], hold=True)
        b, runner, blocker = await held(BatchPolicy(max_batch_size=8, dynamic=False), runner)
        staged = submit(b, 5.0)
        await until(lambda: b.queued_requests == 1)  # a staged request waits: counted as queued, not running
        assert (b.running_batches, b.running_requests, b.queued_rows) == (1, 1, 1)
        runner.release.set()
        # The event loop stays blocked here: the staged request runs all the same, handed over already.
        assert calls.acquire(timeout=WAIT_S) and calls.acquire(timeout=WAIT_S), "the staged request waited for the loop"
        await asyncio.gather(blocker, staged)
        np.testing.assert_array_equal(staged.result().outputs["y"], x(1, 5.0) * 2)
        await b.close()
        assert first_values(runner) == [5.0]

    run(main)


def test_with_two_instances_busy_each_gets_a_request_staged_behind_it() -> None:
    async def main() -> None:
        runners = [Runner(hold=True), Runner(hold=True)]
        b = DynamicBatcher("m_1", runners, BatchPolicy(max_batch_size=8, dynamic=False))
        b.start()
        blockers = [submit(b, -1.0), submit(b, -2.0)]
        for r in runners:
            await r.wait_entered()
        staged = [submit(b, 1.0), submit(b, 2.0)]
        await until(lambda: b.queued_requests == 2)
        assert b.running_batches == 2
        for r in runners:
            r.release.set()
        await asyncio.gather(*blockers, *staged)
        await b.close()
        assert sorted(len(r.calls) for r in runners) == [2, 2]  # one staged behind each, not both behind one

    run(main)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_without_dynamic_batching_survivors_get_their_own_answer_and_nothing_dead_runs(seed: int) -> None:
    rng = random.Random(seed)
    runners = [Runner(hold=True), Runner(hold=True)]

    async def main() -> None:
        b = DynamicBatcher("m_1", runners, BatchPolicy(max_batch_size=8, dynamic=False))
        b.start()
        blockers = [submit(b, -1.0), submit(b, -2.0)]
        for r in runners:
            await r.wait_entered()
        kinds = [rng.choice(["live", "live", "live", "cancel", "deadline"]) for _ in range(60)]
        tasks = []
        for i, kind in enumerate(kinds):
            deadline = time.monotonic_ns() + 30 * MS if kind == "deadline" else None
            tasks.append(asyncio.create_task(b.submit({"x": x(1, float(i))}, rows=1, deadline_ns=deadline)))
            if rng.random() < 0.3:
                await asyncio.sleep(0)  # some staged at once, some queued behind them
        await asyncio.sleep(0)  # every submit has run up to its wait: staged (one per instance) or queued
        for kind, task in zip(kinds, tasks, strict=True):
            if kind == "cancel":
                task.cancel()
        await asyncio.sleep(0.08)  # the deadlines pass while every instance is still busy
        for r in runners:
            r.release.set()
        outcomes = await asyncio.gather(*blockers, *tasks, return_exceptions=True)
        await b.close()
        for i, (kind, outcome) in enumerate(zip(kinds, outcomes[2:], strict=True)):
            if kind == "live":
                np.testing.assert_array_equal(outcome.outputs["y"], x(1, float(i)) * 2)
            elif kind == "cancel":
                assert isinstance(outcome, asyncio.CancelledError)
            else:
                assert isinstance(outcome, DeadlineExceededError)
        computed = sorted(float(call["x"][0, 0]) for r in runners for call in r.calls[1:])
        assert computed == [float(i) for i, kind in enumerate(kinds) if kind == "live"]

    run(main)


def test_a_request_of_a_higher_priority_waits_behind_the_staged_request_only() -> None:
    async def main() -> None:
        b, runner, blocker = await held(BatchPolicy(max_batch_size=8, dynamic=False, priority_levels=2))
        tasks = [submit(b, 20.0, priority=2)]  # staged: it runs right after the blocker
        await until(lambda: b.queued_requests == 1)
        tasks += [submit(b, 21.0, priority=2), submit(b, 10.0, priority=1)]  # queued: by priority
        await until(lambda: b.queued_requests == 3)
        runner.release.set()
        await asyncio.gather(blocker, *tasks)
        await b.close()
        assert first_values(runner) == [20.0, 10.0, 21.0]

    run(main)


@pytest.mark.parametrize("why", ["cancelled", "deadline", "queue timeout"])
def test_a_staged_request_whose_caller_left_or_whose_time_passed_is_never_computed(why: str) -> None:
    async def main() -> None:
        policy = BatchPolicy(
            max_batch_size=8,
            dynamic=False,
            default_queue_policy=QueuePolicy(default_timeout_us=40_000 if why == "queue timeout" else 0),
        )
        b, runner, blocker = await held(policy)
        deadline = time.monotonic_ns() + 40 * MS if why == "deadline" else None
        started = time.monotonic()
        staged = asyncio.create_task(b.submit({"x": x(1, 5.0)}, rows=1, deadline_ns=deadline))
        await until(lambda: b.queued_requests == 1)
        if why == "cancelled":
            staged.cancel()
            with pytest.raises(asyncio.CancelledError):
                await staged
        else:
            timeout = r"deadline passed \(its queue timeout of 40 ms\)"
            match = timeout if why == "queue timeout" else "deadline passed after"
            with pytest.raises(DeadlineExceededError, match=match):
                await staged
            assert time.monotonic() - started < 1.0  # answered on time, while the instance is still busy
        assert not runner.release.is_set()
        runner.release.set()
        await blocker
        after = await submit(b, 6.0)  # the instance goes on with the next request
        np.testing.assert_array_equal(after.outputs["y"], x(1, 6.0) * 2)
        await b.close()
        assert first_values(runner) == [6.0]

    run(main)


def test_a_staged_request_past_its_time_is_not_run_even_before_its_timer_fires(monkeypatch: pytest.MonkeyPatch) -> None:
    # A deadline beyond the timer horizon gets no timer; the worker checks it as the request starts.
    monkeypatch.setattr(b_module, "DEADLINE_TIMER_HORIZON_NS", 0)

    async def main() -> None:
        b, runner, blocker = await held(BatchPolicy(max_batch_size=8, dynamic=False))
        staged = asyncio.create_task(b.submit({"x": x(1, 5.0)}, rows=1, deadline_ns=time.monotonic_ns() + 30 * MS))
        await until(lambda: b.queued_requests == 1)
        await asyncio.sleep(0.08)
        assert not staged.done()
        runner.release.set()
        with pytest.raises(DeadlineExceededError, match="deadline passed after"):
            await staged
        await blocker
        await b.close()
        assert first_values(runner) == []

    run(main)


def test_close_with_a_timeout_fails_a_staged_request_too() -> None:
    async def main() -> None:
        b, runner, blocker = await held(BatchPolicy(max_batch_size=8, dynamic=False))
        staged, queued = submit(b, 5.0), submit(b, 6.0)
        await until(lambda: b.queued_requests == 2)
        await b.close(timeout_s=0.05)
        for task in (staged, queued):
            with pytest.raises(ModelNotReadyError, match="m_1"):
                await task
        runner.release.set()  # the request that was running still answers
        await blocker
        await until(lambda: b.running_batches == 0)
        assert first_values(runner) == []

    run(main)


def test_stopping_a_run_leaves_the_request_staged_behind_it_alone() -> None:
    async def main() -> None:
        runner = StoppableRunner()
        b = DynamicBatcher("m_1", [runner], BatchPolicy(max_batch_size=8, dynamic=False), stoppers=[runner])
        b.start()
        abandoned = submit(b, 1.0)
        assert await asyncio.to_thread(runner.entered.wait, WAIT_S)
        staged = submit(b, 2.0)
        await until(lambda: b.queued_requests == 1)
        abandoned.cancel()
        with pytest.raises(asyncio.CancelledError):
            await abandoned
        await until(lambda: b.queued_requests == 0)  # the worker has begun the staged one
        assert await asyncio.to_thread(runner.entered.wait, WAIT_S)
        runner.release.set()
        np.testing.assert_array_equal((await staged).outputs["y"], x(1, 2.0) * 2)
        await b.close()
        assert runner.stops == 1 and runner.resumes == 1 and runner.batches == [[1.0], [2.0]]

    run(main)


def test_a_stop_reaches_only_the_batch_it_names() -> None:
    runner = StoppableRunner()
    execution = InstanceExecution("m_1", runner, (), runner)
    assert execution.begin(1)
    assert not execution.stop(2)  # not the batch the worker runs
    assert execution.stop(1) and not execution.stop(1)
    assert execution.end()
    assert not execution.stop(1)  # over
    assert execution.begin(2) and runner.resumes == 1
    assert not execution.end() and runner.stops == 1


def test_a_staged_request_is_withdrawn_only_before_its_run_begins() -> None:
    execution = InstanceExecution("m_1", Runner(), ())
    withdrawn: list[int] = []
    assert execution.unless_begun(1, lambda: withdrawn.append(1))
    assert not execution.begin(1, lambda: not withdrawn)  # the worker sees it withdrawn and skips it
    assert execution.begin(2, lambda: True)
    assert not execution.unless_begun(2, lambda: withdrawn.append(2))
    assert withdrawn == [1]


# -- the latency-target controller ------------------------------------------------------


def test_cost_model_fits_fixed_and_per_row_cost() -> None:
    model = CostModel()
    for rows in [1, 2, 4, 8, 16, 32] * 5:
        model.observe(rows, 1 * MS + rows * MS // 2)
    fixed, per_row = model.line()
    assert fixed == pytest.approx(1 * MS, rel=1e-6)
    assert per_row == pytest.approx(0.5 * MS, rel=1e-6)


def test_cost_model_follows_a_change_of_machine_speed() -> None:
    model = CostModel()
    for rows in [1, 8, 32] * 20:
        model.observe(rows, rows * MS)
    for rows in [1, 8, 32] * 40:  # the machine got twice as slow
        model.observe(rows, 2 * rows * MS)
    assert model.predict(10) == pytest.approx(20 * MS, rel=0.05)


def test_cost_model_with_one_batch_size_is_proportional() -> None:
    model = CostModel()
    for _ in range(5):
        model.observe(4, 8 * MS)
    assert model.predict(4) == pytest.approx(8 * MS) and model.predict(8) == pytest.approx(16 * MS)


def test_batch_cap_leaves_room_for_one_batch_of_waiting() -> None:
    controller = LatencyController(target_ms=10, instances=1, max_batch_size=64)
    assert controller.batch_cap() == 64  # not calibrated yet: no cap
    for rows in (1, 4, 16, 32):
        controller.observe(rows, 1 * MS + rows * MS // 2)
    # The largest b with 2 * (1 + 0.5 * b) ms within the batcher's share of 10 ms (4 at SETPOINT 0.6).
    assert controller.batch_cap() == math.floor((SETPOINT * 10 / 2 - 1) / 0.5)
    assert LatencyController(10, 1, 4).batch_cap() == 4


def test_admission_rejects_what_cannot_make_the_target() -> None:
    controller = LatencyController(target_ms=20, instances=2, max_batch_size=8)
    assert controller.admit(rows_ahead=10_000, rows=1, busy_instances=2, now_ns=0) is None  # uncalibrated: admit
    for rows in (1, 2, 4, 8):
        controller.observe(rows, rows * MS)  # 1 ms per row
    assert controller.batch_cap() == 6  # 2 * 6 ms within 0.6 * 20 ms
    assert controller.admit(rows_ahead=0, rows=1, busy_instances=0, now_ns=0) is None
    estimate = controller.estimate_ns(rows_ahead=40, rows=1, busy_instances=2)
    assert estimate > ADMIT_FRACTION * 20 * MS
    assert controller.admit(rows_ahead=40, rows=1, busy_instances=2, now_ns=0) == pytest.approx(estimate)


def calibrated(target_ms: float = 20, instances: int = 1) -> LatencyController:
    controller = LatencyController(target_ms=target_ms, instances=instances, max_batch_size=8, rng=random.Random(0))
    for rows in (1, 2, 4, 8):
        controller.observe(rows, rows * MS)  # 1 ms per row
    return controller


def test_a_request_with_nothing_ahead_and_a_free_instance_is_always_admitted() -> None:
    controller = calibrated(target_ms=1)  # even a single row (1 ms) is over 0.8 ms
    assert controller.admit(rows_ahead=0, rows=4, busy_instances=0, now_ns=0) is None
    assert controller.admit(rows_ahead=0, rows=4, busy_instances=1, now_ns=0) is not None  # behind a running batch
    assert controller.admit(rows_ahead=1, rows=4, busy_instances=0, now_ns=0) is not None


def test_feedback_shrinks_admission_while_the_tail_is_over_the_setpoint_and_relaxes_after() -> None:
    controller = calibrated(target_ms=20)
    assert controller.setpoint_ns == pytest.approx(SETPOINT * 20 * MS)
    # An estimate of 12.5 ms (half a running 8-row batch, then one more): inside 0.8 * 20 ms.
    assert controller.admit(rows_ahead=7, rows=1, busy_instances=1, now_ns=0) is None
    for _ in range(30):  # every batch, a tenth of its requests over the setpoint: p99 far over
        controller.observe_latencies(over=1, answered=10, now_ns=0)
    assert controller.admit_scale < 0.5
    refused = controller.admit(rows_ahead=7, rows=1, busy_instances=1, now_ns=0)
    assert refused is not None and refused > controller.admit_bound_ns
    for _ in range(500):  # the tail back under the setpoint: the bound grows back, up to its ceiling
        controller.observe_latencies(over=0, answered=10, now_ns=0)
    assert controller.admit_scale == 1.0 and controller.admit_bound_ns == pytest.approx(ADMIT_FRACTION * 20 * MS)
    assert controller.admit(rows_ahead=7, rows=1, busy_instances=1, now_ns=0) is None


def test_feedback_within_the_tail_budget_leaves_the_bound_alone_and_has_a_floor() -> None:
    controller = calibrated()
    for _ in range(200):  # one request in 150 over the setpoint: within a p99
        controller.observe_latencies(over=0, answered=10, now_ns=0)
        controller.observe_latencies(over=1 if _ % 15 == 0 else 0, answered=10, now_ns=0)
    assert controller.admit_scale == 1.0
    for _ in range(1000):
        controller.observe_latencies(over=10, answered=10, now_ns=0)
    assert controller.admit_scale == pytest.approx(MIN_SCALE)
    controller.observe_latencies(over=0, answered=0, now_ns=0)  # an empty report changes nothing
    assert controller.admit_scale == pytest.approx(MIN_SCALE)


def test_the_retry_hint_is_when_the_queue_drains_and_at_least_two_targets_jittered() -> None:
    controller = calibrated(target_ms=20)
    floor = RETRY_TARGETS * 20 * MS
    hints = [controller.retry_after_ns(5 * MS) for _ in range(2000)]
    low, high = (1 - RETRY_JITTER) * floor, (1 + RETRY_JITTER) * floor
    assert all(low <= h <= high for h in hints)
    # Spread over the whole width (refused together, back apart), centred on the floor.
    assert min(hints) < low + 0.05 * floor and max(hints) > high - 0.05 * floor
    assert statistics.mean(hints) == pytest.approx(floor, rel=0.05)
    # A queue that takes longer to drain than any jittered floor sets the hint itself.
    assert controller.retry_after_ns(90 * MS) == pytest.approx(90 * MS)


def test_the_retry_jitter_comes_from_the_given_generator() -> None:
    hints = []
    for _ in range(2):
        controller = LatencyController(20, 1, 8, rng=random.Random(7))
        hints.append([controller.retry_after_ns(0) for _ in range(5)])
    assert hints[0] == hints[1] and len(set(hints[0])) == 5


def test_the_retry_floor_stretches_until_refusals_are_a_tenth_of_the_answered_then_falls_back() -> None:
    # A closed loop past the target: 50 clients parked on hints, each refused again whenever it
    # comes back (the queue stays full of the clients being answered, 900 a second).
    target = 50 * MS
    controller = calibrated(target_ms=50)
    parked = [i * MS for i in range(50)]  # when each comes back
    now = 0

    def run_for(seconds: float, full: bool) -> tuple[int, int]:
        nonlocal now, parked
        counts = [0, 0]
        for _ in range(int(seconds * 100)):  # 10 ms steps
            now += 10 * MS
            controller.observe_latencies(over=0, answered=9, now_ns=now)
            counts[1] += 9
            back = [t for t in parked if t <= now]
            parked = [t for t in parked if t > now]
            for _ in back:
                estimate = controller.admit(rows_ahead=40 if full else 0, rows=1, busy_instances=1, now_ns=now)
                if estimate is None:
                    continue  # admitted: it joins the answered clients (and leaves the simulation)
                counts[0] += 1
                parked.append(now + int(controller.retry_after_ns(estimate)))
        return counts[0], counts[1]

    assert controller.retry_floor_ns == pytest.approx(RETRY_TARGETS * target)
    run_for(5, full=True)  # settle
    refused, answered = run_for(5, full=True)
    assert 0.05 < refused / answered < 0.2  # REFUSED_SHARE: a tenth, against 50 clients x (1 / 0.1 s) at the start
    assert 6 * target < controller.retry_floor_ns <= RETRY_TARGETS_MAX * target
    run_for(3, full=False)  # room again: every returning client is admitted, no refusals
    assert controller.retry_floor_ns == pytest.approx(RETRY_TARGETS * target)


def test_the_batcher_caps_batches_and_sheds_load_under_a_target() -> None:
    per_row_s = 0.002

    def slow(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        time.sleep(per_row_s * len(feeds["x"]))
        return {"y": feeds["x"] * 2}

    async def main() -> None:
        runner = Runner(slow)
        b = DynamicBatcher("m_1", [runner], BatchPolicy(max_batch_size=64, latency_target_ms=20))
        for rows in (1, 4, 8, 16):
            b.observe_cost(rows, int(rows * per_row_s * 1e9))
        assert b.controller is not None and b.controller.batch_cap() == 3  # 2 * 2 ms * 3 = 12 ms = 0.6 * 20 ms
        b.start()
        results = await asyncio.gather(
            *(b.submit({"x": x(1, float(i))}, rows=1) for i in range(40)), return_exceptions=True
        )
        await b.close()
        shed = [r for r in results if isinstance(r, LatencyTargetError)]
        served = [r for r in results if not isinstance(r, BaseException)]
        assert shed and served, results
        assert "over the latency target of 20 ms" in str(shed[0])
        assert all(r.retry_after_ms is not None and r.retry_after_ms >= (1 - RETRY_JITTER) * 40 for r in shed)
        assert max(runner.rows) <= 3
        assert sum(runner.rows) == len(served)  # nothing shed was computed

    run(main)


@pytest.mark.parametrize("late", [True, False])
def test_a_queued_request_that_would_be_answered_after_the_target_is_never_computed(late: bool) -> None:
    """Admitted in time, then the batch before it ran long: failed as its batch starts, with a hint."""

    async def main() -> None:
        runner = Runner(hold=True)
        b = DynamicBatcher("m_1", [runner], BatchPolicy(max_batch_size=8, latency_target_ms=50))
        for rows in (1, 2, 4, 8):
            b.observe_cost(rows, rows * MS)  # 1 ms per row: a queued row looks well within 50 ms
        b.start()
        blocker = asyncio.create_task(b.submit({"x": x(1, -1.0)}, rows=1))
        await runner.wait_entered()
        waiting = asyncio.create_task(b.submit({"x": x(2, 1.0)}, rows=2))
        await until(lambda: b.queued_requests == 1)  # admitted behind the running batch
        if late:
            await asyncio.sleep(0.08)  # the running batch overruns the whole target
        runner.release.set()
        await blocker
        if late:
            with pytest.raises(LatencyTargetError, match="would be answered after the latency target of 50 ms") as err:
                await waiting
            assert err.value.retry_after_ms is not None and err.value.retry_after_ms >= (1 - RETRY_JITTER) * 100
            assert runner.rows == [1]  # never computed
        else:
            np.testing.assert_array_equal((await waiting).outputs["y"], x(2, 1.0) * 2)
            assert runner.rows == [1, 2]
        after = await b.submit({"x": x(1, 5.0)}, rows=1)  # the batcher goes on
        np.testing.assert_array_equal(after.outputs["y"], x(1, 5.0) * 2)
        await b.close()

    run(main)


async def latency_target_held(runner: Runner) -> tuple[DynamicBatcher, asyncio.Task[Any]]:
    """A started latency-target batcher (50 ms, a cost model of 1 ms a row: cap 8) busy with a blocker."""
    b = DynamicBatcher("m_1", [runner], BatchPolicy(max_batch_size=8, latency_target_ms=50))
    for rows in (1, 2, 4, 8):
        b.observe_cost(rows, rows * MS)
    b.start()
    blocker = asyncio.create_task(b.submit({"x": x(1, -1.0)}, rows=1))
    await runner.wait_entered()
    return b, blocker


def test_latency_target_arrivals_while_busy_join_one_staged_batch_that_runs_without_the_loop() -> None:
    async def main() -> None:
        calls = threading.Semaphore(0)
        runner = Runner(lambda feeds: (calls.release(), {"y": feeds["x"] * 2})[1], hold=True)
        b, blocker = await latency_target_held(runner)
        tasks = [submit(b, float(v)) for v in (1.0, 2.0, 3.0)]
        await until(lambda: b.queued_requests == 3)
        assert (b.running_batches, b.queued_rows) == (1, 3)
        runner.release.set()
        # The event loop stays blocked here: the staged batch runs all the same, handed over already.
        assert calls.acquire(timeout=WAIT_S) and calls.acquire(timeout=WAIT_S), "the staged batch waited for the loop"
        await asyncio.gather(blocker, *tasks)
        await b.close()
        assert runner.rows == [1, 3]
        for value, task in zip((1.0, 2.0, 3.0), tasks, strict=True):
            np.testing.assert_array_equal(task.result().outputs["y"], x(1, value) * 2)

    run(main)


def test_latency_target_a_staged_batch_runs_without_the_requests_whose_callers_left() -> None:
    async def main() -> None:
        runner = Runner(hold=True)
        b, blocker = await latency_target_held(runner)
        tasks = [submit(b, float(v)) for v in (1.0, 2.0, 3.0)]
        await until(lambda: b.queued_requests == 3)
        tasks[1].cancel()
        runner.release.set()
        outcomes = await asyncio.gather(blocker, *tasks, return_exceptions=True)
        await b.close()
        assert isinstance(outcomes[2], asyncio.CancelledError)
        assert first_values(runner) == [1.0] and runner.rows == [1, 2]  # 2.0 never computed

    run(main)


def test_latency_target_a_request_past_the_staged_batchs_cap_is_queued_for_the_next() -> None:
    async def main() -> None:
        runner = Runner(hold=True)
        b, blocker = await latency_target_held(runner)
        tasks = [asyncio.create_task(b.submit({"x": x(3, float(v))}, rows=3)) for v in (10, 20, 30)]
        await until(lambda: b.queued_requests == 3)  # 3 + 3 rows staged; 3 more would pass the cap of 8
        runner.release.set()
        await asyncio.gather(blocker, *tasks)
        await b.close()
        assert runner.rows == [1, 6, 3]

    run(main)


def seed_a_costly_change_of_shape(b: DynamicBatcher) -> None:
    """Instance 0's planner as the warm-up of shapes (2, 4, 8) leaves it: 1 ms a run at 2 rows, 2 ms at
    4, and a change of shape measured to cost 50 ms."""
    for rows, ms in ((2, 1), (2, 1), (2, 1), (4, 2), (4, 2), (2, 51)):
        b.observe_run(0, rows, ms * MS)


def test_latency_target_staged_batches_keep_to_the_instances_batch_shape() -> None:
    """Shapes (2, 4, 8) and a change of shape measured to cost 50 ms: the blocker ran at shape 2, so
    of five arrivals two join the batch staged behind it, and of the three queued the next staged
    batch takes two: every batch at shape 2, none of three rows padded to 4 (a change of shape)."""

    async def main() -> None:
        def prepare(b: DynamicBatcher) -> None:
            for rows in (1, 2, 4, 8):
                b.observe_cost(rows, rows * MS)  # the controller's cap: 8
            seed_a_costly_change_of_shape(b)

        policy = BatchPolicy(max_batch_size=8, latency_target_ms=50, batch_shapes=(2, 4, 8))
        b, runner, blocker = await held(policy, prepare=prepare)
        tasks = [submit(b, float(v)) for v in (1.0, 2.0, 3.0, 4.0, 5.0)]
        await until(lambda: b.queued_requests == 5)
        runner.release.set()
        await asyncio.gather(blocker, *tasks)
        await b.close()
        assert runner.rows == [2, 2, 2, 2]
        assert [call["x"][:, 0].tolist() for call in runner.calls[1:]] == [[1.0, 2.0], [3.0, 4.0], [5.0, 5.0]]

    run(main)


def test_latency_target_admission_counts_the_staged_rows_ahead() -> None:
    async def main() -> None:
        runner = Runner(hold=True)
        b = DynamicBatcher("m_1", [runner], BatchPolicy(max_batch_size=8, latency_target_ms=50))
        for rows in (1, 2, 4, 8):
            b.observe_cost(rows, 10 * rows * MS)  # 10 ms a row: cap 1, admitted within 40 ms
        b.start()
        blocker = asyncio.create_task(b.submit({"x": x(1, -1.0)}, rows=1))
        await runner.wait_entered()
        # Estimates 15, 25 and 35 ms (half the running batch, then one 10 ms batch per row ahead and its own).
        admitted = [submit(b, float(v)) for v in (1.0, 2.0, 3.0)]
        await until(lambda: b.queued_requests == 3)
        with pytest.raises(LatencyTargetError, match="would take about 45.0 ms"):
            await b.submit({"x": x(1, 4.0)}, rows=1)  # 1 staged + 2 queued rows ahead
        runner.release.set()
        await asyncio.gather(blocker, *admitted)
        await b.close()
        assert first_values(runner) == [1.0, 2.0, 3.0]

    run(main)


def test_a_batch_too_slow_for_the_target_by_itself_still_runs() -> None:
    """No wait made it late: it runs as fast as it can, as admission lets it (nothing ahead, instance free)."""

    async def main() -> None:
        runner = Runner()
        b = DynamicBatcher("m_1", [runner], BatchPolicy(max_batch_size=8, latency_target_ms=50))
        for rows in (1, 2, 4, 8):
            b.observe_cost(rows, rows * 100 * MS)  # one row alone is predicted at twice the target
        b.start()
        result = await b.submit({"x": x(1, 3.0)}, rows=1)
        np.testing.assert_array_equal(result.outputs["y"], x(1, 3.0) * 2)
        assert runner.rows == [1]
        await b.close()

    run(main)


def test_a_deadline_that_cannot_be_met_is_refused_before_queueing() -> None:
    async def main() -> None:
        b = DynamicBatcher("m_1", [Runner()], BatchPolicy(max_batch_size=8, latency_target_ms=1000))
        for rows in (1, 2, 4, 8):
            b.observe_cost(rows, rows * 50 * MS)  # 50 ms per row
        b.start()
        with pytest.raises(DeadlineExceededError, match="cannot finish before its deadline"):
            await b.submit({"x": x(4, 0.0)}, rows=4, deadline_ns=time.monotonic_ns() + 20 * MS)
        assert b.queued_requests == 0
        await b.close()

    run(main)


# -- batch shapes ----------------------------------------------------------------------------


def test_with_batch_shapes_a_batch_is_padded_and_capped_at_the_instances_shape() -> None:
    """Shapes (2, 4, 8), a change of shape measured to cost 50 ms. The blocker (1 row) runs padded
    to 2, so the instance's shape is 2. Five rows then wait, at least twice 2: the next batch grows
    to the shape of half of them (3 -> 4) and takes 4; the last row runs alone, padded to 4 (the
    waste of one small batch is far from a change's cost)."""

    async def main() -> None:
        policy = BatchPolicy(max_batch_size=8, batch_shapes=(2, 4, 8))
        b, runner, blocker = await held(policy, prepare=seed_a_costly_change_of_shape)
        assert b.planner(0).change_ns == 50 * MS
        rest = [submit(b, float(v)) for v in (10, 11, 12, 13, 14)]
        await until(lambda: b.queued_requests == 5)
        runner.release.set()
        answers = await asyncio.gather(blocker, *rest)
        await b.close()
        batches = [call["x"][:, 0].tolist() for call in runner.calls]
        assert batches == [[-1.0, -1.0], [10.0, 11.0, 12.0, 13.0], [14.0, 14.0, 14.0, 14.0]]
        assert [float(a.outputs["y"][0, 0]) for a in answers] == [-2.0, 20.0, 22.0, 24.0, 26.0, 28.0]
        assert all(a.outputs["y"].shape == (1, 2) for a in answers)  # each its own row, no padding

    run(main)


def test_with_batch_shapes_and_free_changes_a_batch_takes_what_waits() -> None:
    async def main() -> None:
        b, runner, blocker = await held(BatchPolicy(max_batch_size=8, batch_shapes=(2, 4, 8)))
        rest = [submit(b, float(v)) for v in (10, 11, 12, 13, 14)]
        await until(lambda: b.queued_requests == 5)
        runner.release.set()
        await asyncio.gather(blocker, *rest)
        await b.close()
        assert runner.rows == [2, 8]  # 1 row padded to 2, then all 5 waiting padded to 8

    run(main)
