"""DynamicBatcher with plain-Python runners: batching policy, timing bounds, failures, shutdown.

Runners are ordinary functions run on the batcher's worker threads. Timing is controlled by
runners that block on a `threading.Event` ("held"), so that requests are known to be queued
behind a busy instance; sleeps are used only to let a deadline pass, never as assertions.
Every test drives its own event loop through `asyncio.run`.
"""

from __future__ import annotations

import asyncio
import gc
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import numpy as np
import pytest

import ortserve.batching.batcher as batcher_module
from ortserve.batching import BatchPolicy, BatchReport, BatchResult, DynamicBatcher
from ortserve.batching.execution import RERUN_BUDGET, InstanceExecution
from ortserve.batching.queue import Pending
from ortserve.errors import (
    DeadlineExceededError,
    InternalError,
    InvalidInputError,
    ModelNotReadyError,
    RequestCancelledError,
)


def make_batcher(
    name: str,
    runners: Any,
    *,
    max_batch_size: int = 0,
    max_queue_delay_us: int = 0,
    preferred_batch_sizes: Any = (),
    on_batch: Callable[[BatchReport], None] | None = None,
    **policy: Any,
) -> DynamicBatcher:
    """A batcher over `runners` with a BatchPolicy of the given knobs (dynamic batching on)."""
    return DynamicBatcher(
        name,
        runners,
        BatchPolicy(
            max_batch_size=max_batch_size,
            max_queue_delay_us=max_queue_delay_us,
            preferred_batch_sizes=tuple(preferred_batch_sizes),
            **policy,
        ),
        on_batch=on_batch,
    )

Feeds = Mapping[str, np.ndarray]
Array = np.ndarray[Any, Any]

WAIT_S = 5.0
"""Upper bound on any wait in these tests; reaching it means the batcher is stuck."""


def double(feeds: Feeds) -> dict[str, Array]:
    return {"y": feeds["x"] * 2}


class Runner:
    """A model instance in plain Python: records every batch it sees, then applies `fn`.

    With `hold=True` its first call blocks (after setting `entered`) until `release` is
    set, which keeps the instance busy while the test queues requests behind it.
    """

    def __init__(self, fn: Callable[[Feeds], Mapping[str, Array]] = double, *, hold: bool = False) -> None:
        self.fn = fn
        self.calls: list[dict[str, Array]] = []
        self.entered = threading.Event()
        self.release = threading.Event()
        self._hold = hold
        self._lock = threading.Lock()

    def __call__(self, feeds: Feeds) -> Mapping[str, Array]:
        with self._lock:
            first = not self.calls
            self.calls.append({name: np.array(value, copy=True) for name, value in feeds.items()})
        self.entered.set()
        if first and self._hold and not self.release.wait(WAIT_S):
            raise TimeoutError("the test never released the held runner")
        return self.fn(feeds)

    @property
    def rows(self) -> list[int]:
        return [len(call["x"]) for call in self.calls]

    async def wait_entered(self) -> None:
        assert await asyncio.to_thread(self.entered.wait, WAIT_S), "the runner was never called"


def x(rows: int, value: float, width: int = 2) -> Array:
    """A distinctive input: `rows` x `width` floats starting at `value`."""
    return np.arange(value, value + rows * width, dtype=np.float32).reshape(rows, width)


async def until(condition: Callable[[], bool]) -> None:
    """Yield to the loop until `condition` holds (a synchronisation point, not a timing check)."""
    stop = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < stop, "condition not reached"
        await asyncio.sleep(0.001)


def run(main: Callable[[], Awaitable[None]]) -> None:
    async def bounded() -> None:
        await asyncio.wait_for(main(), 4 * WAIT_S)

    asyncio.run(bounded())


def submit(b: DynamicBatcher, value: Array, deadline_ns: int | None = None) -> asyncio.Task[BatchResult]:
    return asyncio.create_task(b.submit({"x": value}, rows=len(value), deadline_ns=deadline_ns))


async def held_batcher(
    runner: Runner, *, max_batch_size: int = 8, **options: Any
) -> tuple[DynamicBatcher, asyncio.Task[BatchResult], Array]:
    """A started one-instance batcher whose instance is busy with a 1-row blocker request."""
    b = make_batcher("m_1", [runner], max_batch_size=max_batch_size, **options)
    b.start()
    blocker_x = x(1, -100.0)
    blocker = submit(b, blocker_x)
    await runner.wait_entered()
    return b, blocker, blocker_x


# -- the lone request -------------------------------------------------------------------


def test_lone_request_runs_at_once_and_gets_its_answer() -> None:
    async def main() -> None:
        runner = Runner()
        b = make_batcher("m_1", [runner], max_batch_size=8, max_queue_delay_us=0)
        b.start()
        value = x(3, 1.0)
        started = time.perf_counter()
        result = await b.submit({"x": value}, rows=3)
        elapsed = time.perf_counter() - started
        await b.close()
        np.testing.assert_array_equal(result.outputs["y"], value * 2)
        assert runner.rows == [3]
        np.testing.assert_array_equal(runner.calls[0]["x"], value)
        assert result.batch_rows == 3
        assert elapsed < 1.0  # no timer involved; a coarse bound for a slow machine

    run(main)


def test_a_lone_request_is_handed_to_the_worker_by_submit_itself() -> None:
    """Idle instance, nothing queued: the request is running once its own task has taken one step,
    with no loop iteration for the batcher task in between."""

    async def main() -> None:
        runner = Runner(hold=True)
        b = make_batcher("m_1", [runner], max_batch_size=8)
        b.start()
        task = submit(b, x(1, 1.0))
        await asyncio.sleep(0)  # the submitting task's first step, and nothing after it
        assert b.running_batches == 1 and b.queued_requests == 0
        runner.release.set()
        result = await task
        assert result.started_ns > result.enqueued_ns  # queue time is the handoff to the worker
        await b.close()

    run(main)


@pytest.mark.parametrize("why", ["queued requests", "max_queue_delay_us"])
def test_a_request_takes_its_place_in_the_queue_when_an_instance_is_free_but(why: str) -> None:
    """With requests already queued (FIFO), or a delay that may gather more rows, a new request
    goes through the queue even when an instance is free."""

    async def main() -> None:
        runners = [Runner(hold=True), Runner()]
        delay_us = 200_000 if why == "max_queue_delay_us" else 0
        b = make_batcher("m_2", runners, max_batch_size=8, max_queue_delay_us=delay_us)
        b.start()
        if why == "queued requests":
            first = submit(b, x(1, 1.0))
            await runners[0].wait_entered()  # instance 0 busy; instance 1 free
            # The moment between an instance's completion and the batcher task's next step, made to last:
            b._free.clear()  # instance 1 taken for the moment
            second = submit(b, x(1, 2.0))
            await until(lambda: b.queued_requests == 1)
            b._free.append(1)  # free again, a request queued: the next one must queue behind it
            third = submit(b, x(1, 3.0))
            await asyncio.sleep(0)
            assert b.queued_requests == 2 and b.running_batches == 1
            runners[0].release.set()
            results = await asyncio.gather(first, second, third)
            assert [r.outputs["y"][0, 0] for r in results] == [2.0, 4.0, 6.0]
            assert runners[1].rows == [2]  # the two queued requests in one batch, in queue order
            np.testing.assert_array_equal(runners[1].calls[0]["x"][:, 0], [2.0, 3.0])
        else:
            task = submit(b, x(1, 1.0))
            await asyncio.sleep(0)
            assert b.running_batches == 0  # waiting for rows (at most the delay), not running
            runners[0].release.set()
            await task
        await b.close()

    run(main)


def test_submit_before_any_request_is_queued_reports_empty_queue() -> None:
    async def main() -> None:
        b = make_batcher("m_1", [Runner()], max_batch_size=4)
        b.start()
        assert b.queued_requests == 0
        assert b.running_batches == 0
        await b.close()

    run(main)


def test_a_batcher_needs_a_runner() -> None:
    with pytest.raises(ValueError, match="at least one runner"):
        make_batcher("m_1", [])


# -- gathering --------------------------------------------------------------------------


def test_requests_queued_behind_a_busy_instance_form_one_batch() -> None:
    async def main() -> None:
        runner = Runner(hold=True)
        b, blocker, blocker_x = await held_batcher(runner, max_batch_size=8)
        values = [x(1, 10.0), x(2, 20.0), x(3, 30.0)]
        tasks = [submit(b, v) for v in values]
        await until(lambda: b.queued_requests == 3)
        runner.release.set()
        results = await asyncio.gather(*tasks)
        np.testing.assert_array_equal((await blocker).outputs["y"], blocker_x * 2)
        await b.close()

        assert runner.rows == [1, 6]  # the blocker alone, then ONE batch of all three
        np.testing.assert_array_equal(runner.calls[1]["x"], np.concatenate(values))
        for value, result in zip(values, results, strict=True):
            # each caller gets exactly its own rows back: values, not just shapes
            np.testing.assert_array_equal(result.outputs["y"], value * 2)
            assert result.batch_rows == 6

    run(main)


def test_rows_are_counted_and_never_exceed_max_batch_size() -> None:
    async def main() -> None:
        runner = Runner(hold=True)
        b, blocker, _ = await held_batcher(runner, max_batch_size=8)
        values = [x(3, 10.0), x(3, 20.0), x(3, 30.0)]
        tasks = [submit(b, v) for v in values]
        await until(lambda: b.queued_requests == 3)
        runner.release.set()
        results = await asyncio.gather(*tasks)
        await blocker
        await b.close()

        assert runner.rows == [1, 6, 3]
        assert max(runner.rows) <= 8
        np.testing.assert_array_equal(runner.calls[1]["x"], np.concatenate(values[:2]))
        np.testing.assert_array_equal(runner.calls[2]["x"], values[2])
        assert [r.batch_rows for r in results] == [6, 6, 3]
        for value, result in zip(values, results, strict=True):
            np.testing.assert_array_equal(result.outputs["y"], value * 2)

    run(main)


def test_requests_with_different_non_batch_dims_are_never_mixed() -> None:
    async def main() -> None:
        runner = Runner(hold=True)
        b, blocker, _ = await held_batcher(runner, max_batch_size=8)
        values = [x(1, 10.0, width=2), x(2, 20.0, width=3), x(1, 30.0, width=2), x(1, 40.0, width=3)]
        tasks = [submit(b, v) for v in values]
        await until(lambda: b.queued_requests == 4)
        runner.release.set()
        results = await asyncio.gather(*tasks)
        await blocker
        await b.close()

        assert runner.rows == [1, 2, 3]
        assert [call["x"].shape[1] for call in runner.calls[1:]] == [2, 3]
        np.testing.assert_array_equal(runner.calls[1]["x"], np.concatenate([values[0], values[2]]))
        np.testing.assert_array_equal(runner.calls[2]["x"], np.concatenate([values[1], values[3]]))
        for value, result in zip(values, results, strict=True):
            np.testing.assert_array_equal(result.outputs["y"], value * 2)

    run(main)


def test_max_batch_size_zero_runs_one_request_per_call_untouched() -> None:
    async def main() -> None:
        seen: list[Array] = []

        def identity_plus(feeds: Feeds) -> dict[str, Array]:
            seen.append(feeds["x"])
            return {"y": feeds["x"] + 1}

        runner = Runner(identity_plus, hold=True)
        b = make_batcher("m_1", [runner], max_batch_size=0)
        b.start()
        # A model that does not batch: no batch dimension, so the shapes are the whole tensor.
        values = [np.array([1.0, 2.0, 3.0]), np.array([4.0, 5.0, 6.0]), np.array([7.0, 8.0, 9.0])]
        first = asyncio.create_task(b.submit({"x": values[0]}, rows=1))
        await runner.wait_entered()
        rest = [asyncio.create_task(b.submit({"x": v}, rows=1)) for v in values[1:]]
        await until(lambda: b.queued_requests == 2)
        runner.release.set()
        results = [await first, *await asyncio.gather(*rest)]
        await b.close()

        assert len(seen) == 3  # queued together, still one call each
        for value, array, result in zip(values, seen, results, strict=True):
            assert array is value  # no concatenation, no copy
            np.testing.assert_array_equal(result.outputs["y"], value + 1)
            assert result.batch_rows == 1

    run(main)


def test_two_runners_run_two_batches_at_the_same_time() -> None:
    async def main() -> None:
        runners = [Runner(hold=True), Runner(hold=True)]
        b = make_batcher("m_1", runners, max_batch_size=8)
        b.start()
        first_x, second_x = x(2, 1.0), x(3, 10.0)
        first = submit(b, first_x)
        entered = [asyncio.create_task(r.wait_entered()) for r in runners]
        await asyncio.wait(entered, return_when=asyncio.FIRST_COMPLETED)
        second = submit(b, second_x)  # the first instance is busy: this one goes to the other
        await asyncio.gather(*entered)
        # Both runners are inside a batch now, neither has returned.
        assert b.running_batches == 2
        for r in runners:
            r.release.set()
        a, c = await asyncio.gather(first, second)
        await b.close()

        assert sorted(r.rows[0] for r in runners) == [2, 3]
        np.testing.assert_array_equal(a.outputs["y"], first_x * 2)
        np.testing.assert_array_equal(c.outputs["y"], second_x * 2)

    run(main)


# -- preserve_ordering ------------------------------------------------------------------


async def slow_then_fast(
    preserve_ordering: bool, slow_value: float = 1.0
) -> tuple[DynamicBatcher, Runner, asyncio.Task[BatchResult], asyncio.Task[BatchResult], list[str]]:
    """Two instances: a request held in the first, then one the second answers at once.

    The held instance fails a batch holding 666.0 (`poisoned`). Returns the batcher, the held
    runner, both tasks and the order in which they finished."""
    held, free = Runner(poisoned, hold=True), Runner()
    b = make_batcher("m_1", [held, free], max_batch_size=8, preserve_ordering=preserve_ordering)
    b.start()
    finished: list[str] = []
    slow = submit(b, x(2, slow_value))
    slow.add_done_callback(lambda _: finished.append("slow"))
    await held.wait_entered()
    fast = submit(b, x(1, 10.0))
    fast.add_done_callback(lambda _: finished.append("fast"))
    await free.wait_entered()
    await until(lambda: b.running_batches == 1)  # the fast batch is computed and handed back
    return b, held, slow, fast, finished


@pytest.mark.parametrize("preserve_ordering", [False, True])
def test_preserve_ordering_holds_a_later_answer_until_the_earlier_ones_are_in(preserve_ordering: bool) -> None:
    async def main() -> None:
        b, held, slow, fast, finished = await slow_then_fast(preserve_ordering)
        for _ in range(5):  # loop turns in which an unordered answer reaches its caller
            await asyncio.sleep(0)
        assert fast.done() is not preserve_ordering
        held.release.set()
        results = await asyncio.gather(slow, fast)
        await b.close()

        assert finished == (["slow", "fast"] if preserve_ordering else ["fast", "slow"])
        np.testing.assert_array_equal(results[0].outputs["y"], x(2, 1.0) * 2)
        np.testing.assert_array_equal(results[1].outputs["y"], x(1, 10.0) * 2)

    run(main)


def test_preserve_ordering_keeps_an_error_in_its_place() -> None:
    async def main() -> None:
        b, held, slow, fast, finished = await slow_then_fast(True, 666.0)
        await asyncio.sleep(0.01)
        assert not fast.done()
        held.release.set()
        with pytest.raises(InternalError, match="choked"):
            await slow
        np.testing.assert_array_equal((await fast).outputs["y"], x(1, 10.0) * 2)
        await b.close()
        assert finished == ["slow", "fast"]

    run(main)


def test_preserve_ordering_a_cancelled_caller_gives_its_place_up() -> None:
    async def main() -> None:
        b, held, slow, fast, finished = await slow_then_fast(True)
        await asyncio.sleep(0.01)
        assert not fast.done()
        slow.cancel()  # its batch still runs; the answer behind it no longer waits for it
        np.testing.assert_array_equal((await fast).outputs["y"], x(1, 10.0) * 2)
        assert held.calls and not held.release.is_set()
        held.release.set()
        with pytest.raises(asyncio.CancelledError):
            await slow
        after = await b.submit({"x": x(1, 5.0)}, rows=1)  # the order is not stuck behind anything
        np.testing.assert_array_equal(after.outputs["y"], x(1, 5.0) * 2)
        await b.close()
        assert finished == ["slow", "fast"]  # the cancelled task ended first, then the answer

    run(main)


def test_preserve_ordering_a_cancelled_caller_with_its_answer_in_logs_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def main() -> None:
        # The second request fails at once while the first still runs; its caller goes away
        # while waiting for its turn: the unread error must not be reported as never retrieved.
        def fail_fast(feeds: Feeds) -> dict[str, Array]:
            if feeds["x"][0, 0] == 10.0:
                raise InvalidInputError("bad")
            return double(feeds)

        held, free = Runner(hold=True), Runner(fail_fast)
        b = make_batcher("m_1", [held, free], max_batch_size=8, preserve_ordering=True)
        b.start()
        slow = submit(b, x(2, 1.0))
        await held.wait_entered()
        fast = submit(b, x(1, 10.0))
        await free.wait_entered()
        await until(lambda: b.running_batches == 1)
        await asyncio.sleep(0.01)
        fast.cancel()
        with pytest.raises(asyncio.CancelledError):
            await fast
        held.release.set()
        await slow
        await b.close()

    with caplog.at_level("ERROR"):
        run(main)
        gc.collect()
    assert not [r for r in caplog.records if "never retrieved" in r.getMessage()]


# -- max_queue_delay_us -----------------------------------------------------------------


@pytest.mark.parametrize(("preferred", "second_rows"), [((), 3), ((2,), 1)])
def test_delay_waits_for_rows_and_dispatches_when_the_target_is_reached(
    preferred: tuple[int, ...], second_rows: int
) -> None:
    async def main() -> None:
        runner = Runner()
        delay_s = 10.0
        b = make_batcher(
            "m_1",
            [runner],
            max_batch_size=4,
            max_queue_delay_us=int(delay_s * 1e6),
            preferred_batch_sizes=preferred,
        )
        b.start()
        started = time.perf_counter()
        first_x, second_x = x(1, 1.0), x(second_rows, 10.0)
        first = submit(b, first_x)
        await until(lambda: b.queued_requests == 0)  # taken out of the queue, the batch is forming
        await asyncio.sleep(0.01)
        assert not first.done()  # short of its target: waiting for more rows
        second = submit(b, second_x)
        a, c = await asyncio.gather(first, second)
        elapsed = time.perf_counter() - started
        await b.close()

        assert runner.rows == [1 + second_rows]  # waited, and gathered both
        assert elapsed < delay_s / 2  # dispatched on reaching the target, not at the delay
        np.testing.assert_array_equal(a.outputs["y"], first_x * 2)
        np.testing.assert_array_equal(c.outputs["y"], second_x * 2)

    run(main)


def test_delay_is_an_upper_bound_on_the_wait() -> None:
    async def main() -> None:
        runner = Runner()
        delay_s = 0.1
        b = make_batcher("m_1", [runner], max_batch_size=8, max_queue_delay_us=int(delay_s * 1e6))
        b.start()
        value = x(1, 1.0)
        started = time.perf_counter()
        result = await b.submit({"x": value}, rows=1)
        elapsed = time.perf_counter() - started
        await b.close()

        np.testing.assert_array_equal(result.outputs["y"], value * 2)
        assert runner.rows == [1]
        assert delay_s * 0.9 <= elapsed < delay_s + 1.0  # coarse bounds: waited, but not much longer
        assert result.queue_ns >= delay_s * 0.9 * 1e9

    run(main)


def test_delay_does_not_apply_to_a_model_that_does_not_batch() -> None:
    async def main() -> None:
        runner = Runner()
        b = make_batcher("m_1", [runner], max_batch_size=0, max_queue_delay_us=10_000_000)
        b.start()
        started = time.perf_counter()
        result = await b.submit({"x": np.array([1.0, 2.0])}, rows=1)
        assert time.perf_counter() - started < 5.0
        await b.close()
        np.testing.assert_array_equal(result.outputs["y"], [2.0, 4.0])

    run(main)


# -- deadlines and cancellation -----------------------------------------------------------


def test_request_past_its_deadline_is_refused_and_never_computed() -> None:
    async def main() -> None:
        runner = Runner()
        b = make_batcher("m_1", [runner], max_batch_size=8)
        b.start()
        late = x(1, 666.0)
        with pytest.raises(DeadlineExceededError, match="m_1"):
            await b.submit({"x": late}, rows=1, deadline_ns=time.monotonic_ns() - 1)
        # The batcher is unharmed.
        ok = x(1, 1.0)
        result = await b.submit({"x": ok}, rows=1, deadline_ns=time.monotonic_ns() + 60 * 10**9)
        await b.close()
        np.testing.assert_array_equal(result.outputs["y"], ok * 2)
        assert runner.rows == [1]
        np.testing.assert_array_equal(runner.calls[0]["x"], ok)

    run(main)


def test_deadline_passing_in_the_queue_fails_the_request_before_compute() -> None:
    async def main() -> None:
        runner = Runner(hold=True)
        b, blocker, _ = await held_batcher(runner, max_batch_size=8)
        deadline_ns = time.monotonic_ns() + 20_000_000
        late = submit(b, x(1, 666.0), deadline_ns=deadline_ns)
        ok_x = x(2, 1.0)
        ok = submit(b, ok_x)
        await until(lambda: b.queued_requests == 2)
        while time.monotonic_ns() <= deadline_ns:  # let the deadline pass while it is queued
            await asyncio.sleep(0.005)
        runner.release.set()
        with pytest.raises(DeadlineExceededError, match="deadline"):
            await late
        result = await ok
        await blocker
        await b.close()

        np.testing.assert_array_equal(result.outputs["y"], ok_x * 2)
        assert runner.rows == [1, 2]  # the late request's rows were never seen
        np.testing.assert_array_equal(runner.calls[1]["x"], ok_x)

    run(main)


def test_a_deadline_beyond_the_timer_horizon_is_checked_when_the_batch_forms(monkeypatch: pytest.MonkeyPatch) -> None:
    """No timer for a far deadline: the request stays queued past it and fails at dispatch, uncomputed."""
    monkeypatch.setattr(batcher_module, "DEADLINE_TIMER_HORIZON_NS", 50_000_000)

    async def main() -> None:
        runner = Runner(hold=True)
        b, blocker, _ = await held_batcher(runner, max_batch_size=8)
        deadline_ns = time.monotonic_ns() + 80_000_000  # beyond the (patched) 50 ms horizon
        late = submit(b, x(1, 666.0), deadline_ns=deadline_ns)
        await until(lambda: b.queued_requests == 1)
        while time.monotonic_ns() <= deadline_ns + 20_000_000:
            await asyncio.sleep(0.005)
        assert not late.done() and b.queued_requests == 1  # no timer failed it
        runner.release.set()
        with pytest.raises(DeadlineExceededError, match="deadline"):
            await late
        await blocker
        await b.close()
        assert runner.rows == [1]  # only the blocker ran

    run(main)


def test_deadline_passing_while_the_batch_forms_fails_the_request_before_compute() -> None:
    async def main() -> None:
        runner = Runner()
        b = make_batcher("m_1", [runner], max_batch_size=8, max_queue_delay_us=100_000)
        b.start()
        with pytest.raises(DeadlineExceededError):
            await b.submit({"x": x(1, 666.0)}, rows=1, deadline_ns=time.monotonic_ns() + 10_000_000)
        await b.close()
        assert runner.calls == []

    run(main)


def test_cancelled_waiter_is_never_computed() -> None:
    async def main() -> None:
        runner = Runner(hold=True)
        b, blocker, _ = await held_batcher(runner, max_batch_size=8)
        cancelled = submit(b, x(1, 666.0))
        ok_x = x(1, 1.0)
        ok = submit(b, ok_x)
        await until(lambda: b.queued_requests == 2)
        cancelled.cancel()
        runner.release.set()
        result = await ok
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        await blocker
        await b.close()

        np.testing.assert_array_equal(result.outputs["y"], ok_x * 2)
        assert runner.rows == [1, 1]
        np.testing.assert_array_equal(runner.calls[1]["x"], ok_x)

    run(main)


def test_waiter_cancelled_while_its_batch_runs_does_not_upset_the_batcher() -> None:
    async def main() -> None:
        runner = Runner(hold=True)
        b, blocker, _ = await held_batcher(runner, max_batch_size=8)
        blocker.cancel()
        await asyncio.sleep(0)
        runner.release.set()
        with pytest.raises(asyncio.CancelledError):
            await blocker
        ok_x = x(2, 1.0)
        result = await b.submit({"x": ok_x}, rows=2)
        await b.close()
        np.testing.assert_array_equal(result.outputs["y"], ok_x * 2)

    run(main)


# -- failures -----------------------------------------------------------------------------


def poisoned(feeds: Feeds) -> dict[str, Array]:
    if (feeds["x"] == 666.0).any():
        raise RuntimeError("the model choked on 666")
    return double(feeds)


def test_a_failed_batch_is_rerun_in_parts_so_that_only_the_failing_request_fails() -> None:
    async def main() -> None:
        runner = Runner(poisoned, hold=True)
        b, blocker, blocker_x = await held_batcher(runner, max_batch_size=8)
        bad = submit(b, x(1, 666.0))
        neighbour_x = x(2, 1.0)
        neighbour = submit(b, neighbour_x)  # shares the failing batch
        await until(lambda: b.queued_requests == 2)
        runner.release.set()
        with pytest.raises(InternalError) as caught:
            await bad
        assert "m_1" in str(caught.value)
        assert "the model choked on 666" in str(caught.value)
        np.testing.assert_array_equal((await neighbour).outputs["y"], neighbour_x * 2)
        # The batch before and the batch after are unaffected.
        np.testing.assert_array_equal((await blocker).outputs["y"], blocker_x * 2)
        after_x = x(3, 5.0)
        after = await b.submit({"x": after_x}, rows=3)
        await b.close()
        np.testing.assert_array_equal(after.outputs["y"], after_x * 2)
        # blocker; the batch of 3 rows that failed; its halves, each alone; the batch after
        assert runner.rows == [1, 3, 1, 2, 3]

    run(main)


def test_a_failed_batch_is_split_until_each_failing_request_is_alone() -> None:
    """Eight requests, two of them poisoned: every good one is answered with its own rows, each bad
    one fails with the error of a run that held only itself, in at most 2n - 2 reruns."""

    async def main() -> None:
        runner = Runner(poisoned, hold=True)
        b, blocker, _ = await held_batcher(runner, max_batch_size=8)
        values = [x(1, 666.0) if i in (2, 7) else x(1, 10.0 * i + 1) for i in range(8)]
        tasks = [submit(b, v) for v in values]
        await until(lambda: b.queued_requests == 8)
        runner.release.set()
        await blocker
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        await b.close()
        for i, (value, outcome) in enumerate(zip(values, outcomes, strict=True)):
            if i in (2, 7):
                assert isinstance(outcome, InternalError) and "choked" in str(outcome)
            else:
                assert isinstance(outcome, BatchResult)
                np.testing.assert_array_equal(outcome.outputs["y"], value * 2)
        reruns = runner.calls[2:]
        assert 2 <= len(reruns) <= 2 * 8 - 2
        # Each request is answered from exactly one run that succeeded, and each bad one ran alone last.
        good_runs = [c["x"] for c in reruns if not (c["x"] == 666.0).any()]
        assert sorted(float(v) for run_x in good_runs for v in run_x[:, 0]) == sorted(
            float(v[0, 0]) for i, v in enumerate(values) if i not in (2, 7)
        )
        assert sum(1 for c in reruns if len(c["x"]) == 1 and c["x"][0, 0] == 666.0) == 2

    run(main)


def test_parts_of_a_failed_padded_batch_run_at_its_shape() -> None:
    async def main() -> None:
        runner = Runner(poisoned, hold=True)
        b, blocker, _ = await held_batcher(runner, max_batch_size=8, batch_shapes=(4, 8))
        bad, good_x = submit(b, x(1, 666.0)), x(2, 1.0)
        good = submit(b, good_x)
        await until(lambda: b.queued_requests == 2)
        runner.release.set()
        await blocker
        with pytest.raises(InternalError):
            await bad
        np.testing.assert_array_equal((await good).outputs["y"], good_x * 2)
        await b.close()
        assert runner.rows == [4, 4, 4, 4]  # the blocker, the batch of 3 rows, then each part: padded to 4

    run(main)


def test_a_failed_batch_is_logged_once_not_once_per_request(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        runner = Runner(poisoned, hold=True)
        b, blocker, _ = await held_batcher(runner, max_batch_size=8)
        tasks = [submit(b, x(1, 666.0)), submit(b, x(1, 1.0)), submit(b, x(1, 666.0))]
        await until(lambda: b.queued_requests == 3)
        runner.release.set()
        await blocker
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        await b.close()
        assert [type(o) for o in outcomes] == [InternalError, BatchResult, InternalError]

    with caplog.at_level("ERROR", logger="ortserve.batching"):
        run(main)
    failures = [r for r in caplog.records if "failed" in r.getMessage()]
    assert len(failures) == 1
    assert "2 of them failed on their own" in failures[0].getMessage()
    assert failures[0].exc_info is not None


def test_values_a_model_rejects_are_no_error_of_the_server_in_the_log(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        def picky(feeds: Feeds) -> dict[str, Array]:
            if (feeds["x"] == 666.0).any():
                raise InvalidInputError("instance 'm_1_0': the model cannot take the request's input values: 666")
            return double(feeds)

        runner = Runner(picky, hold=True)
        b, blocker, _ = await held_batcher(runner, max_batch_size=8)
        tasks = [submit(b, x(1, 666.0)), submit(b, x(1, 1.0))]
        await until(lambda: b.queued_requests == 2)
        runner.release.set()
        await blocker
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        await b.close()
        assert [type(o) for o in outcomes] == [InvalidInputError, BatchResult]

    with caplog.at_level("INFO", logger="ortserve.batching"):
        run(main)
    reruns = [r for r in caplog.records if "rerun in parts" in r.getMessage()]
    assert [r.levelname for r in reruns] == ["INFO"]


def test_a_batch_every_request_of_which_fails_alone_fails_each_with_its_own_error() -> None:
    async def main() -> None:
        def broken(feeds: Feeds) -> dict[str, Array]:
            raise RuntimeError(f"cannot take {feeds['x'][:, 0].tolist()}")

        runner = Runner(broken, hold=True)
        reports: list[BatchReport] = []
        b = make_batcher("m_1", [runner], max_batch_size=8, on_batch=reports.append)
        b.start()
        blocker = submit(b, x(1, -1.0))
        await runner.wait_entered()
        tasks = [submit(b, x(1, 10.0)), submit(b, x(1, 20.0)), submit(b, x(1, 30.0))]
        await until(lambda: b.queued_requests == 3)
        runner.release.set()
        outcomes = await asyncio.gather(blocker, *tasks, return_exceptions=True)
        await b.close()
        assert all(isinstance(o, InternalError) for o in outcomes)
        assert [str(o).rsplit("cannot take ", 1)[1] for o in outcomes[1:]] == ["[10.0]", "[20.0]", "[30.0]"]
        assert [r.error is not None for r in reports] == [True, True]  # the blocker's batch and the three's

    run(main)


def pending(value: Array) -> Pending:
    """A request as the batcher hands it to an instance (only its inputs and rows are read there)."""
    return Pending({"x": value}, len(value), (value.shape[1:],), None, 0, None, 1, None, [])  # type: ignore[arg-type]


def test_reruns_are_paid_from_a_budget_that_the_answered_requests_refill() -> None:
    """A model that fails everything has its first failed batches rerun in parts (2n - 2 runs each)
    until the budget is spent; then a batch costs one run and fails whole. Answers refill it."""
    broken = True

    def model(feeds: Feeds) -> dict[str, Array]:
        if broken:
            raise RuntimeError("the device is in an error state")
        return double(feeds)

    runner = Runner(model)
    execution = InstanceExecution("m_1", runner, ())
    batch = [pending(x(1, float(i))) for i in range(8)]
    for spent in (14, 28, 42, 56):  # four batches of 8: 1 run + 14 reruns each
        done = execution.execute(batch, 0)
        assert not isinstance(done, BaseException)
        parts, reruns, unsettled = done[0], done[5], done[6]
        assert reruns == 14 and unsettled == 0
        assert all(isinstance(p, RuntimeError) for p in parts)
        assert execution.rerun_budget == RERUN_BUDGET - spent
    # The fifth runs out half-way: the first half is split down to single requests (7 reruns), then
    # the second half's failure is the last rerun; its two quarters fail with it, unrun.
    before = len(runner.calls)
    done = execution.execute(batch, 0)
    assert not isinstance(done, BaseException)
    assert done[5] == 8 and done[6] == 4 and execution.rerun_budget == 0
    assert len(runner.calls) - before == 1 + 8
    assert all(isinstance(p, RuntimeError) for p in done[0])
    # From now on a failed batch costs its one run.
    for _ in range(3):
        before = len(runner.calls)
        failed = execution.execute(batch, 0)
        assert isinstance(failed, RuntimeError) and len(runner.calls) - before == 1
    # The model works again: each answered request gives one rerun back, up to the budget.
    broken = False
    done = execution.execute(batch, 0)
    assert not isinstance(done, BaseException) and done[5] == 0 and execution.rerun_budget == 8
    for _ in range(10):
        execution.execute(batch, 0)
    assert execution.rerun_budget == RERUN_BUDGET


def test_a_bad_request_among_good_traffic_never_spends_the_rerun_budget() -> None:
    """Batch after batch with one poisoned request: each costs 2 log2(n) reruns and answers n - 1,
    so every good request is answered every time, however long it goes on."""
    runner = Runner(poisoned)
    execution = InstanceExecution("m_1", runner, ())
    for round_ in range(200):
        bad = round_ % 8
        values = [x(1, 666.0) if i == bad else x(1, 10.0 * i + 1) for i in range(8)]
        done = execution.execute([pending(v) for v in values], 0)
        assert not isinstance(done, BaseException)
        assert done[5] == 6 and done[6] == 0
        for i, (value, part) in enumerate(zip(values, done[0], strict=True)):
            if i == bad:
                assert isinstance(part, RuntimeError) and "choked" in str(part)
            else:
                assert isinstance(part, dict)
                np.testing.assert_array_equal(part["y"], value * 2)
    assert execution.rerun_budget >= RERUN_BUDGET - 6  # spent and given back within each batch


def test_a_model_that_fails_everything_costs_a_bounded_number_of_reruns(caplog: pytest.LogCaptureFixture) -> None:
    """Through the batcher: 200 requests to a model that fails every run, batched as they queue
    behind its slow failures: every caller gets the error, and the runs beyond one per batch are at
    most the rerun budget (without it: up to 2n - 2 more for every batch of n)."""

    async def main() -> None:
        def broken(feeds: Feeds) -> dict[str, Array]:
            time.sleep(0.002)
            raise RuntimeError("the device is in an error state")

        runner = Runner(broken)
        reports: list[BatchReport] = []
        b = make_batcher("m_1", [runner], max_batch_size=8, on_batch=reports.append)
        b.start()
        outcomes = await asyncio.gather(*(submit(b, x(1, float(i))) for i in range(200)), return_exceptions=True)
        await b.close()
        assert all(isinstance(o, InternalError) and "error state" in str(o) for o in outcomes)
        assert sum(r.rows for r in reports) == 200
        assert len(reports) < 100  # they did queue and batch
        assert len(runner.calls) <= len(reports) + RERUN_BUDGET

    with caplog.at_level("WARNING", logger="ortserve.batching"):
        run(main)
    assert sum("rerun budget is spent" in r.getMessage() for r in caplog.records) == 1  # once, not per batch


class StoppableRunner:
    """A runner whose run lasts until the test releases it or the batcher stops it (then it fails,
    as ONNX Runtime's run does when its terminate flag is set)."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.stops = 0
        self.resumes = 0
        self.batches: list[list[float]] = []
        self._stopped = threading.Event()

    def __call__(self, feeds: Feeds) -> dict[str, Array]:
        self.batches.append(feeds["x"][:, 0].tolist())
        if self._stopped.is_set():
            raise RuntimeError("stopped before it began")
        self.entered.set()
        while not self.release.wait(0.001):
            if self._stopped.is_set():
                raise RuntimeError("Exiting due to terminate flag being set to true.")
        self.release.clear()
        self.entered.clear()
        return double(feeds)

    def stop(self) -> None:
        self.stops += 1
        self._stopped.set()

    def resume(self) -> None:
        self.resumes += 1
        self._stopped.clear()


def test_a_run_all_of_whose_callers_went_away_is_stopped_and_the_instance_runs_the_next() -> None:
    async def main() -> None:
        runner = StoppableRunner()
        reports: list[BatchReport] = []
        b = DynamicBatcher("m_1", [runner], BatchPolicy(max_batch_size=8), on_batch=reports.append, stoppers=[runner])
        b.start()
        abandoned = submit(b, x(1, 1.0))
        assert await asyncio.to_thread(runner.entered.wait, WAIT_S)
        abandoned.cancel()
        with pytest.raises(asyncio.CancelledError):
            await abandoned
        assert runner.stops == 1
        await until(lambda: b.running_batches == 0)  # stopped: the instance is free long before a release
        assert isinstance(reports[-1].error, RequestCancelledError)
        value = x(2, 5.0)
        after = submit(b, value)
        assert await asyncio.to_thread(runner.entered.wait, WAIT_S)
        runner.release.set()
        np.testing.assert_array_equal((await after).outputs["y"], value * 2)
        await b.close()
        assert runner.resumes == 1 and runner.batches == [[1.0], [5.0, 7.0]]

    run(main)


async def two_running_as_one_batch(
    runner: StoppableRunner,
) -> tuple[DynamicBatcher, asyncio.Task[BatchResult], asyncio.Task[BatchResult]]:
    """A started batcher over `runner` (its stopper too) running requests x(1, 1.0) and x(1, 2.0) as one
    batch, after a blocker that kept the instance busy while they queued."""
    b = DynamicBatcher("m_1", [runner], BatchPolicy(max_batch_size=8), stoppers=[runner])
    b.start()
    blocker = submit(b, x(1, -1.0))
    assert await asyncio.to_thread(runner.entered.wait, WAIT_S)
    first, second = submit(b, x(1, 1.0)), submit(b, x(1, 2.0))
    await until(lambda: b.queued_requests == 2)
    runner.release.set()
    await blocker
    await until(lambda: runner.entered.is_set())
    return b, first, second


def test_a_run_is_not_stopped_while_one_caller_of_its_batch_still_waits() -> None:
    async def main() -> None:
        runner = StoppableRunner()
        b, first, second = await two_running_as_one_batch(runner)
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        assert runner.stops == 0
        runner.release.set()
        np.testing.assert_array_equal((await second).outputs["y"], x(1, 2.0) * 2)
        await b.close()
        assert runner.batches == [[-1.0], [1.0, 2.0]]

    run(main)


def test_a_stopped_batch_is_not_rerun_in_parts(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        runner = StoppableRunner()
        b, *tasks = await two_running_as_one_batch(runner)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await until(lambda: b.running_batches == 0)
        await b.close()
        assert runner.stops == 1 and runner.batches == [[-1.0], [1.0, 2.0]]

    with caplog.at_level("INFO", logger="ortserve.batching"):
        run(main)
    assert not [r for r in caplog.records if "rerun in parts" in r.getMessage()]  # stopped, not failed


def test_a_batcher_takes_one_stopper_per_runner_or_none() -> None:
    with pytest.raises(ValueError, match="one stopper per runner"):
        DynamicBatcher("m_1", [Runner(), Runner()], BatchPolicy(max_batch_size=8), stoppers=[StoppableRunner()])


def test_ortserve_error_from_a_runner_keeps_its_class() -> None:
    async def main() -> None:
        def refuse(feeds: Feeds) -> dict[str, Array]:
            raise InvalidInputError("model 'm' input 'x': values out of range")

        b = make_batcher("m_1", [refuse], max_batch_size=8)
        b.start()
        with pytest.raises(InvalidInputError, match="values out of range"):
            await b.submit({"x": x(1, 1.0)}, rows=1)
        await b.close()

    run(main)


def test_outputs_that_cannot_be_split_fail_the_batch() -> None:
    async def main() -> None:
        runner = Runner(lambda feeds: {"y": feeds["x"][:1]}, hold=True)
        b, blocker, _ = await held_batcher(runner, max_batch_size=8)
        tasks = [submit(b, x(2, 1.0)), submit(b, x(2, 10.0))]
        await until(lambda: b.queued_requests == 2)
        runner.release.set()
        await blocker
        for task in tasks:
            with pytest.raises(InternalError, match="cannot split 4 batch rows"):
                await task
        await b.close()

    run(main)


def test_observer_failure_does_not_cost_the_requests_their_answers() -> None:
    async def main() -> None:
        def broken_observer(rows: int, input_ns: int, infer_ns: int, output_ns: int) -> None:
            raise RuntimeError("statistics broke")

        b = make_batcher("m_1", [Runner()], max_batch_size=8, on_batch=broken_observer)
        b.start()
        value = x(2, 1.0)
        result = await asyncio.wait_for(b.submit({"x": value}, rows=2), WAIT_S)
        await b.close()
        np.testing.assert_array_equal(result.outputs["y"], value * 2)

    run(main)


# -- shutdown -----------------------------------------------------------------------------


def test_close_finishes_queued_requests_then_refuses_new_ones() -> None:
    async def main() -> None:
        runner = Runner(hold=True)
        b, blocker, blocker_x = await held_batcher(runner, max_batch_size=8)
        values = [x(1, 10.0), x(2, 20.0)]
        tasks = [submit(b, v) for v in values]
        await until(lambda: b.queued_requests == 2)
        closing = asyncio.create_task(b.close())
        await asyncio.sleep(0)
        with pytest.raises(ModelNotReadyError, match="m_1"):
            await b.submit({"x": x(1, 0.0)}, rows=1)
        assert not closing.done()  # still waiting for the queued work
        runner.release.set()
        await closing
        assert all(task.done() for task in tasks)
        for value, task in zip(values, tasks, strict=True):
            np.testing.assert_array_equal(task.result().outputs["y"], value * 2)
        np.testing.assert_array_equal((await blocker).outputs["y"], blocker_x * 2)
        with pytest.raises(ModelNotReadyError):
            await b.submit({"x": x(1, 0.0)}, rows=1)
        assert runner.rows == [1, 3]

    run(main)


def test_close_with_a_timeout_fails_what_is_still_queued() -> None:
    async def main() -> None:
        runner = Runner(hold=True)
        b, blocker, blocker_x = await held_batcher(runner, max_batch_size=8)
        stranded = submit(b, x(1, 666.0))
        await until(lambda: b.queued_requests == 1)
        await b.close(timeout_s=0.05)
        with pytest.raises(ModelNotReadyError, match="m_1"):
            await stranded
        runner.release.set()  # the batch that was running still answers
        np.testing.assert_array_equal((await blocker).outputs["y"], blocker_x * 2)
        assert runner.rows == [1]

    run(main)


# -- observer and timings -----------------------------------------------------------------


def test_on_batch_is_called_once_per_batch_with_rows_and_timings() -> None:
    async def main() -> None:
        observed: list[tuple[int, int, int, int]] = []
        runner = Runner(hold=True)
        b, blocker, _ = await held_batcher(
            runner,
            max_batch_size=8,
            on_batch=lambda r: observed.append((r.rows, r.compute_input_ns, r.compute_infer_ns, r.compute_output_ns)),
        )
        tasks = [submit(b, x(2, 10.0)), submit(b, x(3, 20.0))]
        await until(lambda: b.queued_requests == 2)
        await asyncio.sleep(0.02)  # the held batch's compute time becomes measurable
        runner.release.set()
        results = await asyncio.gather(*tasks)
        blocked = await blocker
        await b.close()

        assert [rows for rows, *_ in observed] == [1, 5]
        assert all(ns >= 0 for _, *timings in observed for ns in timings)
        assert observed[0][2] >= 10_000_000  # the held run's infer time covers the hold
        assert blocked.compute_infer_ns == observed[0][2]
        for result in results:
            assert result.batch_rows == 5
            assert result.queue_ns > 0  # they waited behind the blocker
            assert (result.compute_input_ns, result.compute_infer_ns, result.compute_output_ns) == (
                observed[1][1:]
            )
        assert blocked.queue_ns >= 0
        assert blocked.batch_rows == 1

    run(main)


# -- the concurrency property ------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_many_concurrent_requests_each_get_their_own_answer(seed: int) -> None:
    rng = np.random.default_rng(seed)
    values = [rng.standard_normal((int(rng.integers(1, 6)), 3)).astype(np.float32) for _ in range(200)]
    lock = threading.Lock()
    batches: list[int] = []

    def affine(feeds: Feeds) -> dict[str, Array]:
        with lock:
            batches.append(len(feeds["x"]))
        time.sleep(0.0005)  # long enough for requests to pile up behind a busy instance
        return {"y": feeds["x"] * 3 + 1, "first": feeds["x"][:, :1].copy()}

    async def main() -> None:
        b = make_batcher("m_1", [affine, affine], max_batch_size=16)
        b.start()
        results = await asyncio.gather(*(b.submit({"x": v}, rows=len(v)) for v in values))
        await b.close()
        for value, result in zip(values, results, strict=True):
            np.testing.assert_array_equal(result.outputs["y"], value * 3 + 1)
            np.testing.assert_array_equal(result.outputs["first"], value[:, :1])
            assert len(value) <= result.batch_rows <= 16

    run(main)
    assert max(batches) <= 16
    assert sum(batches) == sum(len(v) for v in values)  # every row computed exactly once
    assert len(batches) < len(values)  # and requests were actually batched
