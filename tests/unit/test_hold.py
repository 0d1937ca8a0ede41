"""The batch hold (batching/hold.py): its measurements, and what a real DynamicBatcher does with them.

The batcher tests seed the hold's handoff cost large (tens of ms) so that the timing they check
is far above this machine's scheduling noise; requests arrive a few ms apart, as at high load.
"""

from __future__ import annotations

import asyncio
import time

from ortserve.batching import BatchPolicy, DynamicBatcher, QueuePolicy
from ortserve.batching.hold import HOLD_FACTOR, HOLD_TARGET_SHARE, QUIET, BatchHold
from tests.unit.test_batcher import Runner, run, until, x

US = 1_000
MS = 1_000_000


def busy_hold(overhead_ns: int, gap_ns: int, arrivals: int = 20, start_ns: int = 0) -> BatchHold:
    """A hold that measured `overhead_ns` a handoff and has seen `arrivals` requests `gap_ns` apart."""
    hold = BatchHold()
    hold.observe(overhead_ns)
    for k in range(arrivals):
        hold.arrived(start_ns + k * gap_ns)
    return hold


# -- measurements -----------------------------------------------------------------------


def test_no_hold_before_a_handoff_was_measured() -> None:
    hold = BatchHold()
    for k in range(20):
        hold.arrived(k * 10 * US)
    assert hold.period_ns() == 0


def test_arrivals_faster_than_a_handoff_hold_for_one_handoff() -> None:
    assert busy_hold(300 * US, 100 * US).period_ns() == 300 * US


def test_arrivals_slower_than_a_handoff_never_hold() -> None:
    assert busy_hold(300 * US, 400 * US).period_ns() == 0


def test_the_handoff_cost_is_a_moving_average() -> None:
    hold = BatchHold()
    hold.observe(300 * US)
    assert hold.overhead_ns == 300 * US
    for _ in range(200):
        hold.observe(100 * US)
    assert abs(hold.overhead_ns - 100 * US) < 1 * US


def test_the_first_request_after_a_quiet_spell_never_waits() -> None:
    hold = busy_hold(300 * US, 100 * US)
    last = hold.last_arrival_ns
    assert last is not None
    hold.arrived(last + QUIET * 300 * US)
    assert hold.gap_ns < hold.overhead_ns  # the average alone would still hold
    assert hold.period_ns() == 0


def test_a_long_idle_gap_counts_as_a_capped_sample() -> None:
    """After 10 s of silence, a burst holds again within a few arrivals (not hundreds)."""
    hold = busy_hold(300 * US, 100 * US)
    last = hold.last_arrival_ns
    assert last is not None
    burst = last + 10_000 * MS
    for k in range(8):
        hold.arrived(burst + k * 50 * US)
    assert hold.period_ns() == 300 * US


def test_flowing_until_one_period_passes_without_an_arrival() -> None:
    hold = busy_hold(300 * US, 100 * US, start_ns=0)
    last = hold.last_arrival_ns
    assert last is not None
    assert hold.flowing(last + 299 * US, 300 * US)
    assert not hold.flowing(last + 300 * US, 300 * US)
    assert not BatchHold().flowing(0, 300 * US)


# -- in the batcher -----------------------------------------------------------------------


def seed(b: DynamicBatcher, overhead_ns: int, gap_ns: int) -> None:
    """Make `b`'s hold see high load ending now: its handoffs cost `overhead_ns`, arrivals `gap_ns` apart."""
    hold = b.hold
    assert hold is not None
    now = time.monotonic_ns()
    hold.observe(overhead_ns)
    for k in range(20, 0, -1):
        hold.arrived(now - k * gap_ns)


def batcher(policy: BatchPolicy, overhead_ns: int | None = None) -> tuple[DynamicBatcher, Runner]:
    """A started one-instance batcher; with `overhead_ns`, its hold seeded to see high load (seed())."""
    runner = Runner()
    b = DynamicBatcher("m_1", [runner], policy)
    b.start()
    if overhead_ns is not None:
        seed(b, overhead_ns, 2 * MS)
    return b, runner


async def stream(b: DynamicBatcher, count: int, gap_s: float) -> list[asyncio.Task[object]]:
    """Submit `count` one-row requests `gap_s` apart; their tasks, in order."""
    tasks: list[asyncio.Task[object]] = []
    for k in range(count):
        tasks.append(asyncio.create_task(b.submit({"x": x(1, float(k))}, rows=1)))
        await asyncio.sleep(gap_s)
    return tasks

async def first_batch_s(b: DynamicBatcher, runner: Runner, count: int) -> float:
    """Stream `count` requests 2 ms apart; seconds until the first batch ran. Waits for all, closes `b`."""
    started = time.monotonic()
    feeding = asyncio.create_task(stream(b, count, 0.002))
    await until(lambda: len(runner.calls) >= 1)
    first_ran = time.monotonic() - started
    await asyncio.gather(*await feeding)
    await b.close()
    return first_ran



def test_at_high_load_an_idle_instance_waits_for_the_stream_then_takes_it_in_one_batch() -> None:
    async def main() -> None:
        b, runner = batcher(BatchPolicy(max_batch_size=16), 60 * MS)
        started = time.monotonic()
        tasks = await stream(b, 5, 0.002)
        await asyncio.gather(*tasks)
        waited = time.monotonic() - started
        await b.close()
        assert runner.rows == [5]  # the first request found the instance idle, yet waited for the rest
        assert waited >= 0.060  # until one handoff's cost passed after the last arrival
        hold = b.hold
        assert hold is not None and hold.holds == 1 and 0.060e9 <= hold.held_ns <= waited * 1e9

    run(main)


def test_an_arrival_joins_a_forming_batch_rather_than_a_free_instance() -> None:
    """While the batcher task holds a batch for one instance, a new request joins that batch, even
    with a second instance free and the hold no longer seeing high load."""

    async def main() -> None:
        runners = [Runner(), Runner()]
        b = DynamicBatcher("m_2", runners, BatchPolicy(max_batch_size=16))
        b.start()
        seed(b, 300 * MS, 2 * MS)
        first = asyncio.create_task(b.submit({"x": x(1, 0.0)}, rows=1))
        await asyncio.sleep(0.005)  # the hold (until 300 ms pass without an arrival) is under way
        hold = b.hold
        assert hold is not None and b.running_batches == 0 and b.queued_requests == 0
        hold.gap_ns = 10**12  # arrivals now look slow: a request arriving alone would run at once
        second = asyncio.create_task(b.submit({"x": x(1, 1.0)}, rows=1))
        await asyncio.sleep(0)
        assert b.running_batches == 0  # it joined the forming batch
        await asyncio.gather(first, second)
        await b.close()
        assert [r.rows for r in runners] == [[2], []]

    run(main)


def test_strictly_greedy_without_the_hold() -> None:
    async def main() -> None:
        b, runner = batcher(BatchPolicy(max_batch_size=16, hold=False))
        assert b.hold is None
        tasks = await stream(b, 5, 0.002)
        await asyncio.gather(*tasks)
        await b.close()
        assert runner.rows[0] == 1  # the first request ran at once, alone

    run(main)


def test_a_hold_ends_at_the_target_rows() -> None:
    async def main() -> None:
        b, runner = batcher(BatchPolicy(max_batch_size=8, preferred_batch_sizes=(4,)), 1000 * MS)
        started = time.monotonic()
        tasks = await stream(b, 4, 0.002)
        await until(lambda: len(runner.calls) == 1)
        waited = time.monotonic() - started
        await asyncio.gather(*tasks)
        await b.close()
        assert runner.rows == [4]
        assert waited < 0.5  # not the 1 s handoff cost: four rows were the target

    run(main)


def test_a_hold_never_exceeds_its_bound_even_while_requests_keep_coming() -> None:
    async def main() -> None:
        b, runner = batcher(BatchPolicy(max_batch_size=64), 5 * MS)
        first_ran = await first_batch_s(b, runner, 60)  # a stream of 120 ms
        bound_s = HOLD_FACTOR * 5 * MS / 1e9 + 0.020  # HOLD_FACTOR x 5 ms, plus slack
        assert bound_s < 0.120  # so the bound, not the stream's end, stopped the hold
        assert first_ran < bound_s
        assert 1 < runner.rows[0] < 60
        assert sum(runner.rows) == 60

    run(main)


def test_max_queue_delay_bounds_the_hold() -> None:
    async def main() -> None:
        b, runner = batcher(BatchPolicy(max_batch_size=64, max_queue_delay_us=20_000), 500 * MS)
        first_ran = await first_batch_s(b, runner, 60)
        assert first_ran < 0.080  # the 20 ms delay (+ slack), not 8 x 500 ms

    run(main)


def test_a_lone_request_after_a_quiet_spell_runs_at_once() -> None:
    async def main() -> None:
        b, runner = batcher(BatchPolicy(max_batch_size=16))
        hold = b.hold
        assert hold is not None
        hold.observe(100 * MS)
        now = time.monotonic_ns()
        for k in range(20, 0, -1):  # a burst that ended 300 ms ago: longer than QUIET x 100 ms
            hold.arrived(now - 300 * MS - k * MS)
        started = time.monotonic()
        await b.submit({"x": x(1, 1.0)}, rows=1)
        waited = time.monotonic() - started
        await b.close()
        assert waited < 0.050  # not the 100 ms of a hold

    run(main)


def test_the_batcher_measures_its_handoffs() -> None:
    async def main() -> None:
        b = DynamicBatcher("m_1", [Runner()], BatchPolicy(max_batch_size=4))
        b.start()
        for k in range(3):
            await b.submit({"x": x(1, float(k))}, rows=1)
        await b.close()
        hold = b.hold
        assert hold is not None
        assert 0 < hold.overhead_ns < 1_000 * MS

    run(main)


def test_a_request_cancelled_during_a_hold_is_never_computed() -> None:
    async def main() -> None:
        b, runner = batcher(BatchPolicy(max_batch_size=16), 80 * MS)
        tasks = await stream(b, 3, 0.002)
        tasks[1].cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        await b.close()
        assert isinstance(results[1], asyncio.CancelledError)
        assert [call["x"][:, 0].tolist() for call in runner.calls] == [[0.0, 2.0]]

    run(main)


def test_closing_during_a_hold_answers_the_held_requests() -> None:
    async def main() -> None:
        b, runner = batcher(BatchPolicy(max_batch_size=16), 80 * MS)
        tasks = await stream(b, 3, 0.002)
        assert runner.calls == []  # still held
        await b.close(timeout_s=5)
        results = await asyncio.gather(*tasks)
        assert [float(r.outputs["y"][0, 0]) for r in results] == [0.0, 2.0, 4.0]  # type: ignore[attr-defined]
        assert runner.rows == [3]

    run(main)


def test_in_latency_target_mode_a_hold_spends_only_a_share_of_the_target() -> None:
    async def main() -> None:
        b, runner = batcher(BatchPolicy(max_batch_size=64, latency_target_ms=40), 500 * MS)
        controller = b.controller
        assert controller is not None
        budget_s = HOLD_TARGET_SHARE * controller.setpoint_ns / 1e9  # 6 ms
        first_ran = await first_batch_s(b, runner, 40)
        assert first_ran < budget_s + 0.030  # not 8 x 500 ms
        assert runner.rows[0] < 40

    run(main)


def test_a_held_requests_deadline_ends_the_hold_in_time_to_answer_it() -> None:
    async def main() -> None:
        b, runner = batcher(BatchPolicy(max_batch_size=16), 80 * MS)
        started = time.monotonic()
        first = asyncio.create_task(b.submit({"x": x(1, 0.0)}, rows=1))
        await asyncio.sleep(0.002)
        tight = asyncio.create_task(b.submit({"x": x(1, 1.0)}, rows=1, deadline_ns=time.monotonic_ns() + 60 * MS))
        results = await asyncio.gather(first, tight)
        waited = time.monotonic() - started
        await b.close()
        assert float(results[1].outputs["y"][0, 0]) == 2.0  # answered, not DEADLINE_EXCEEDED
        assert runner.rows == [2] and waited < 0.060  # a hold of one 80 ms handoff would have missed it

    run(main)


def test_a_held_requests_queue_timeout_ends_the_hold_in_time_to_answer_it() -> None:
    async def main() -> None:
        policy = BatchPolicy(max_batch_size=16, default_queue_policy=QueuePolicy(default_timeout_us=50_000))
        b, runner = batcher(policy, 40 * MS)
        started = time.monotonic()
        results = await asyncio.gather(*await stream(b, 2, 0.002))
        waited = time.monotonic() - started
        await b.close()
        assert [float(r.outputs["y"][0, 0]) for r in results] == [0.0, 2.0]  # type: ignore[attr-defined]
        # Stopped 40 ms (one handoff) before the first request's 50 ms timeout, not 40 ms after the last arrival.
        assert runner.rows == [2] and waited < 0.030

    run(main)
