"""DynamicBatcher: one queue per model version, greedy batches, one worker thread per instance.

The policy, in steps:

1. `submit` checks admission (the level's `max_queue_size`; in latency-target mode, whether
   the request can still finish within the target and its deadline), queues the request at
   its priority level with its future and arms its timers (a deadline within 1 s; queue
   timeout, whose action is REJECT or DELAY).
2. A request that finds an instance idle and nothing queued or forming (and no hold or
   `max_queue_delay_us` that could keep it waiting) runs at once: `submit` hands it to the
   instance's worker itself. Otherwise the batcher task, woken when a free instance has queued
   work, takes the instance and the first live request (cancelled or expired requests never
   leave the queue for a batch).
3. It gathers every queued request that fits: same non-batch dims, rows counted, at most the
   batch cap (`max_batch_size`, or the controller's smaller cap in latency-target mode, or with
   batch shapes the instance's current shape: shapes.py), higher priorities first. While every
   instance is busy, requests accumulate, so the next free instance takes as many rows as fit
   (pipelining: instances run batches concurrently while the next one forms).
4. At high load, when requests arrive faster than a batch's handoff to its thread costs, a
   batch short of its target (the largest preferred batch size, else the cap) keeps taking
   arrivals while they keep coming (hold.py: measured, bounded; never at low load). Then, only
   if `max_queue_delay_us` is set and the batch is still short, it waits, at most until the
   first request's arrival + delay. A lone request at low load never waits.
5. The batch runs on the instance's own worker thread: concatenate (the one copy; padded, by
   repeating the last row, to the batch shape the instance's ShapePlanner chooses when the
   policy has `batch_shapes`), run, split into per-request views (padding rows dropped); each
   still-pending future gets its slice and the timings; the observer gets a BatchReport. When
   the model's run of several requests fails, they run again in halves, recursively
   (execution.py), so that only a request that fails on its own fails. In latency-target mode, a
   request that its batch would answer after the target (the batches before it ran longer than
   admission estimated) fails as the batch starts, with a retry hint, instead of being computed
   late.
6. With `preserve_ordering`, an answer (outputs or error) is handed back only once every request
   queued before it has its own: a later batch that finishes first waits for the earlier ones
   (`_release_in_order`). A request whose caller went away gives its place up at once.

Without `dynamic` batching each execution carries exactly one request, and there is nothing to
gather: a request that finds every instance busy and nothing queued is *staged*, handed to a busy
instance's worker at once to run right after its current request, and when a run completes the
next queued requests are staged in its place (while the instance's staged requests add up to less
than STAGE_AHEAD_NS of its measured compute; at least one). The worker so goes
from one request to the next without a round trip through the event loop, as an executor's thread
would. A staged request has left the queue (a request of a higher priority arriving later runs
after it, as after a request that has started); the worker checks before it runs it that its
caller is still there, and its deadline and queue timeout (REJECT) have not passed. Greedy
batching does not stage: the next free instance takes as many rows as fit, and a batch formed
early would hold fewer. The latency-target mode, which chooses its batch sizes itself, stages
batches: while every instance is busy and nothing is queued, an arrival joins the batch staged
behind a running one (before its worker begins it, up to the controller's cap) or starts one, and
each completion stages the next batch from the queue (`_stage_from_queue`); as a staged batch
begins, its worker drops the requests no longer wanted or that it would answer after the target
(`_prune`), which the loop then fails. If the batcher task dies, every waiter fails instead of
hanging.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from time import monotonic_ns
from typing import cast

import numpy as np

from ortserve.batching.controller import LatencyController
from ortserve.batching.execution import Done, InstanceExecution, Runner, Stoppable
from ortserve.batching.hold import HOLD_FACTOR, HOLD_TARGET_SHARE, BatchHold
from ortserve.batching.policy import BatchPolicy
from ortserve.batching.queue import Pending, RequestQueue
from ortserve.batching.shapes import ShapePlanner
from ortserve.errors import (
    DeadlineExceededError,
    InternalError,
    InvalidInputError,
    LatencyTargetError,
    ModelNotReadyError,
    OrtserveError,
    RequestCancelledError,
)

log = logging.getLogger("ortserve.batching")

@dataclass(slots=True)
class BatchResult:
    """One request's share of a batch run."""

    outputs: dict[str, np.ndarray]
    enqueued_ns: int
    started_ns: int
    """When the instance's worker thread began the batch: the queue time includes the handoff to it."""
    compute_input_ns: int
    compute_infer_ns: int
    compute_output_ns: int
    batch_rows: int

    @property
    def queue_ns(self) -> int:
        return self.started_ns - self.enqueued_ns


@dataclass(slots=True)
class BatchReport:
    """One execution, for observers (statistics, traces). Times on the monotonic clock."""

    model: str
    rows: int
    started_ns: int
    """When the worker thread began the batch (when it was handed over, for a failed one)."""
    finished_ns: int
    compute_input_ns: int = 0
    compute_infer_ns: int = 0
    compute_output_ns: int = 0
    contexts: list[object] = field(default_factory=list)
    """The `context` each request of the batch passed to submit(), in batch order."""
    error: BaseException | None = None


BatchObserver = Callable[[BatchReport], None]

STAGE_AHEAD_NS = 1_000_000
"""Without batching, an instance's worker is handed requests to run after its current one while
they add up to less than this much compute (at least one): enough to cover the loop's delay in
handing over the next one, little for a request of a higher priority to wait behind."""

DEADLINE_TIMER_HORIZON_NS = 1_000_000_000
"""A queued request gets a timer for its deadline only if the deadline is this close (1 s).

A timer per request costs every request (most clients set a deadline, ortserve_client 60 s
by default) for what almost never happens. A farther deadline is checked when the request's
batch forms, and over gRPC the caller's deadline also cancels the call, which withdraws the
request from the queue (the dataplane counts a call cancelled at or after its deadline as a
deadline failure)."""

_Job = tuple[int, list[Pending], int, int, bool]
"""(instance, the batch's live requests, dispatch time, sequence number, staged): one unit of work for
a worker thread; a staged one was handed over while the instance ran another (module docstring)."""
class DynamicBatcher:
    """Gathers concurrent requests of one model version into batches and runs them."""

    def __init__(
        self,
        name: str,
        runners: Sequence[Runner],
        policy: BatchPolicy | None = None,
        *,
        on_batch: BatchObserver | None = None,
        stoppers: Sequence[Stoppable] | None = None,
    ) -> None:
        """`stoppers[i]`, when given, can end instance i's run in progress (execution.Stoppable): a
        batch whose callers all went away is then stopped instead of computed to the end."""
        if not runners:
            raise ValueError("a batcher needs at least one runner")
        if stoppers is not None and len(stoppers) != len(runners):
            raise ValueError("a batcher needs one stopper per runner, or none")
        self.name = name
        self.policy = policy or BatchPolicy()
        self._instances = [
            InstanceExecution(name, runner, self.policy.batch_shapes, None if stoppers is None else stoppers[index])
            for index, runner in enumerate(runners)
        ]
        """Per instance: its runner, kept input memory and batch shape planner (execution.py)."""
        self._delay_ns = self.policy.max_queue_delay_us * 1000
        self._batching = self.policy.batching
        self._priority_levels = self.policy.priority_levels
        self._default_level = self.policy.level_of(0)
        self._queue_timeouts = any(
            p.default_timeout_us for p in (self.policy.default_queue_policy, *self.policy.queue_policies.values())
        )
        """Whether some level's policy gives requests a queue timeout (else only their own can)."""
        self._hold = BatchHold() if self.policy.batching and self.policy.hold else None
        self._on_batch = on_batch
        self._queue = RequestQueue(name, self.policy)
        self._controller = (
            LatencyController(self.policy.latency_target_ms, len(runners), self.policy.max_batch_size)
            if self.policy.batching and self.policy.latency_target_ms > 0
            else None
        )
        self._order: deque[tuple[asyncio.Future[object], asyncio.Future[None]]] | None = (
            deque() if self.policy.preserve_ordering else None
        )
        """With preserve_ordering: each queued request's (answer, turn to hand it back), in queue order."""
        self._wakeup = asyncio.Event()
        """Set when a free instance may have queued work (and by each arrival, for a forming batch)."""
        self._free: list[int] = []
        """Idle instances that no batch is forming for; the last freed is used first."""
        self._jobs: list[queue.SimpleQueue[_Job | None]] = []
        self._threads: list[threading.Thread] = []
        self._running = 0  # batches handed to the workers: executing, or staged behind one
        self._batches: list[_Job | None] = [None] * len(self._instances)
        """Per instance, the batch it runs now (None when free)."""
        self._staged: list[deque[_Job]] = [deque() for _ in self._instances]
        """Per instance, the requests handed to its worker to run after the current one, in order (no
        batching only: module docstring)."""
        self._run_ns = [float(STAGE_AHEAD_NS)] * len(self._instances)
        """Per instance, a running mean of its runs' compute time (what a staged request waits per request ahead)."""
        self._stage = not self._batching
        self._stage_batches = self._controller is not None and not self._delay_ns
        """Latency-target mode: arrivals while every instance is busy join an open staged batch (module docstring)."""
        self._seq = 0
        self.batches_rerun = 0
        """Batches run again in parts after their run failed (execution.py), since start."""
        self.batches_stopped = 0
        """Runs stopped because every caller of their batch went away, since start."""
        self._forming: list[Pending] = []  # gathered, out of the queue, not yet running
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._accepting = False
        self._broken: BaseException | None = None

    @property
    def queued_requests(self) -> int:
        """Requests waiting: in the queue, or staged behind a running one (not yet in a batch that started)."""
        return self._queue.requests + sum(len(job[1]) for staged in self._staged for job in staged)

    @property
    def queued_rows(self) -> int:
        """Rows of the waiting requests (as queued_requests counts them)."""
        return self._queue.rows + self._staged_rows()

    def _staged_rows(self) -> int:
        return sum(item.rows for staged in self._staged for job in staged for item in job[1])

    @property
    def running_batches(self) -> int:
        """Batches executing now."""
        return self._running - sum(len(staged) for staged in self._staged)

    @property
    def running_requests(self) -> int:
        """Requests in the batches executing now."""
        return sum(len(job[1]) for job in self._batches if job is not None)

    @property
    def instances(self) -> int:
        return len(self._instances)

    @property
    def controller(self) -> LatencyController | None:
        """The latency-target controller, when the policy sets a target."""
        return self._controller

    def observe_cost(self, rows: int, ns: int) -> None:
        """Feed the cost model a measured execution (warm-up runs seed it before traffic)."""
        if self._controller is not None:
            self._controller.observe(rows, ns)

    def observe_run(self, instance: int, rows: int, ns: int) -> None:
        """Tell instance `instance`'s shape planner that a run of `rows` rows took `ns` (warm-up,
        before the batcher starts: it seeds the shapes' run times and the cost of a change)."""
        self._instances[instance].planner.observe(rows, ns)

    @property
    def hold(self) -> BatchHold | None:
        """The hold's measurements (hold.py); None when the policy is strictly greedy or does not batch."""
        return self._hold

    def planner(self, instance: int) -> ShapePlanner:
        """Instance `instance`'s shape planner (read-only use outside its worker)."""
        return self._instances[instance].planner

    def start(self) -> None:
        """Start the worker threads and the batcher task on the running event loop."""
        self._loop = asyncio.get_running_loop()
        for index in range(len(self._instances)):
            jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
            thread = threading.Thread(
                target=self._work, args=(self._loop, index, jobs), name=f"{self.name}-{index}", daemon=True
            )
            thread.start()
            self._jobs.append(jobs)
            self._threads.append(thread)
        self._free = list(reversed(range(len(self._instances))))
        self._task = self._loop.create_task(self._dispatch(), name=f"batcher-{self.name}")
        self._task.add_done_callback(self._on_loop_done)
        self._accepting = True

    async def submit(
        self,
        inputs: Mapping[str, np.ndarray],
        *,
        rows: int,
        deadline_ns: int | None = None,
        priority: int = 0,
        timeout_us: int = 0,
        context: object = None,
    ) -> BatchResult:
        """Queue one request of `rows` batch rows and wait for its outputs.

        `inputs` must already be validated against the model (names in signature order,
        dtypes, dims, rows <= max_batch_size). `deadline_ns` (monotonic) is the caller's hard
        deadline; `timeout_us` the request's own queue timeout, used as the level's queue
        policy allows (it always applies when the policy sets no default timeout).
        Cancelling the awaiting task withdraws the request if it has not run yet.
        """
        if self._broken is not None:
            raise InternalError(f"model {self.name}: the batcher stopped: {self._broken}")
        if not self._accepting or self._loop is None:
            raise ModelNotReadyError(f"model {self.name} is unloading and takes no new requests")
        loop = self._loop
        now = monotonic_ns()
        if priority:
            if self._priority_levels and priority > self._priority_levels:
                raise InvalidInputError(
                    f"model {self.name}: priority {priority} is outside 1..{self._priority_levels} "
                    "(the model's priority_levels; 0 means its default level)"
                )
            level = self.policy.level_of(priority)
        else:
            level = self._default_level
        if self._controller is not None:
            self._admit(level, rows, now, deadline_ns)
        key = tuple([a.shape[1:] for a in inputs.values()]) if self._batching else ()
        future: asyncio.Future[object] = loop.create_future()
        item = Pending(inputs, rows, key, future, now, deadline_ns, level, context, [])
        hold = self._hold
        # The greedy rule with nothing to gather: an instance is idle and nothing waits (no batch
        # forming, no delay that could gather rows), so the request runs at once, handed to the
        # worker from here rather than via the batcher task.
        alone = bool(self._free) and not (self._queue.requests or self._forming or self._delay_ns)
        if alone and deadline_ns is not None and now >= deadline_ns:
            alone = False  # the queue's path fails it, counted as a deadline failure
        counted = False
        if alone and hold is not None:
            hold.arrived(now)
            counted = True
            alone = not hold.period_ns()  # arrivals flowing fast enough to hold for: the batcher task gathers
        if alone:
            self._launch(self._free.pop(), [item], now)
        elif self._stage and not (self._queue.requests or self._delay_ns) and (busy := self._stage_room()) >= 0:
            self._set_reject(item, timeout_us, now)
            self._launch(busy, [item], now, staged=True)
        elif (
            self._stage_batches
            and not (self._queue.requests or self._forming or self._free)
            and self._join_staged(item, timeout_us, now)
        ):
            pass
        else:
            self._queue.push(item)  # QueueFullError when the level is full
            if timeout_us or self._queue_timeouts or (
                deadline_ns is not None and deadline_ns - now <= DEADLINE_TIMER_HORIZON_NS
            ):
                self._arm_timers(loop, item, now, timeout_us)
            if hold is not None and not counted:
                hold.arrived(now)  # after push: a refused request is no arrival
            if self._batching or self._free:  # else the completion of a run takes it (it runs one at a time)
                self._wakeup.set()
        turn: asyncio.Future[None] | None = None
        if self._order is not None:
            turn = loop.create_future()
            self._order.append((future, turn))
            future.add_done_callback(self._release_in_order)
        try:
            if turn is None:
                return cast(BatchResult, await future)
            await turn
            return cast(BatchResult, future.result())
        except asyncio.CancelledError:
            self._queue.discard(item)
            if turn is not None:  # awaiting its turn, the answer's future was not cancelled with the caller
                if not future.done():
                    future.cancel()  # gives its place in the order up
                elif not future.cancelled():
                    future.exception()  # an answer nobody will read: retrieved, so asyncio does not log it
            if self._running and not item.queued:
                self._abandoned(item)
            raise
        finally:
            for timer in item.timers:
                timer.cancel()

    def _release_in_order(self, _: asyncio.Future[object]) -> None:
        """preserve_ordering: let the callers at the front of the order, whose answers are in, return."""
        order = self._order
        assert order is not None
        while order and order[0][0].done():
            turn = order.popleft()[1]
            if not turn.done():
                turn.set_result(None)

    async def close(self, timeout_s: float | None = None) -> None:
        """Refuse new requests, finish the queued and running ones, then stop the threads.

        Requests still queued when `timeout_s` passes fail with ModelNotReadyError.
        """
        self._accepting = False
        loop = asyncio.get_running_loop()
        stop_at = None if timeout_s is None else loop.time() + timeout_s
        # Shutdown only: a short poll keeps the hot path free of bookkeeping for it.
        while (self._queue.requests or self._forming or self._running) and self._broken is None:
            if stop_at is not None and loop.time() >= stop_at:
                break
            await asyncio.sleep(0.005)
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._fail_all(ModelNotReadyError(f"model {self.name} was unloaded before the request ran"))
        for jobs in self._jobs:
            jobs.put(None)  # each worker thread ends after its current batch

    # -- admission and timers -----------------------------------------------------------

    def _admit(self, level: int, rows: int, now: int, deadline_ns: int | None) -> None:
        controller = self._controller
        assert controller is not None
        if not controller.ready:
            return
        ahead = self._queue.rows_ahead(level) + sum(item.rows for item in self._forming)
        if self._stage_batches:
            ahead += self._staged_rows()
        estimate = controller.estimate_ns(ahead, rows, self._running)
        if deadline_ns is not None and now + estimate > deadline_ns:
            raise DeadlineExceededError(
                f"model {self.name}: the request cannot finish before its deadline "
                f"(estimated {estimate / 1e6:.1f} ms, {max(deadline_ns - now, 0) / 1e6:.1f} ms left); not queued"
            )
        refused = controller.admit(ahead, rows, self._running, now)
        if refused is not None:
            retry_ms = max(round(controller.retry_after_ns(refused) / 1e6), 1)
            raise LatencyTargetError(
                f"model {self.name}: overloaded: the request would take about {refused / 1e6:.1f} ms, over the "
                f"latency target of {self.policy.latency_target_ms:g} ms; retry after {retry_ms} ms "
                "(trailing metadata retry-after-ms) or on another replica",
                retry_after_ms=retry_ms,
            )

    def _shed_late(self, live: list[Pending], now: int, controller: LatencyController) -> list[Pending]:
        """Latency-target mode, as a batch starts: fail the requests it would answer after the target.

        Admission estimated them in time, but the batches before them ran longer than estimated;
        computed now, they would be answered late because of that wait. Each gets UNAVAILABLE with a
        retry hint, like a refusal at admission, and is never computed; the rest of the batch runs.
        A batch predicted to take longer than the target by itself runs whole (no wait made it late).
        """
        if not controller.ready:
            return live
        run_ns = controller.cost.predict(sum(item.rows for item in live))
        target = controller.target_ns
        if run_ns >= target:
            return live  # late without any wait: run as fast as it can, as admission lets it
        finish = now + run_ns
        if finish - min(item.enqueued_ns for item in live) <= target:
            return live
        kept = []
        for item in live:
            if finish - item.enqueued_ns <= target:
                kept.append(item)
                continue
            retry_ms = max(round(controller.refused_late(now) / 1e6), 1)
            item.future.set_exception(
                LatencyTargetError(
                    f"model {self.name}: overloaded: the request waited {(now - item.enqueued_ns) / 1e6:.1f} ms in the "
                    f"queue and would be answered after the latency target of {self.policy.latency_target_ms:g} ms; "
                    f"not computed; retry after {retry_ms} ms (trailing metadata retry-after-ms) or on another replica",
                    retry_after_ms=retry_ms,
                )
            )
        return kept

    def _queue_timeout_us(self, level: int, timeout_us: int) -> int:
        """A request's queue timeout at `level`: the level's default, or its own `timeout_us` where
        the level's policy lets it (always when the policy sets none); 0 = none."""
        policy = self.policy.queue_policy(level)
        queue_timeout_us = policy.default_timeout_us
        if timeout_us > 0 and (policy.allow_timeout_override or not queue_timeout_us):
            queue_timeout_us = timeout_us
        return queue_timeout_us

    def _arm_timers(self, loop: asyncio.AbstractEventLoop, item: Pending, now: int, timeout_us: int) -> None:
        policy = self.policy.queue_policy(item.level)
        queue_timeout_us = self._queue_timeout_us(item.level, timeout_us)
        if queue_timeout_us > 0:
            action = self._delay if policy.delay_on_timeout else self._expire
            if not policy.delay_on_timeout:
                item.reject_ns = now + queue_timeout_us * 1000
            why = f" (its queue timeout of {queue_timeout_us / 1000:g} ms)"
            item.timers.append(loop.call_later(queue_timeout_us / 1e6, action, item, why))
        if item.deadline_ns is not None and item.deadline_ns - now <= DEADLINE_TIMER_HORIZON_NS:
            item.timers.append(loop.call_later(max(item.deadline_ns - now, 0) / 1e9, self._expire, item, ""))

    def _expire(self, item: Pending, why: str) -> None:
        if not item.queued or item.future.done():
            return
        self._queue.discard(item)
        self._fail_expired(item, why)

    def _fail_expired(self, item: Pending, why: str) -> None:
        waited_ms = (monotonic_ns() - item.enqueued_ns) / 1e6
        item.future.set_exception(
            DeadlineExceededError(
                f"model {self.name}: the request's deadline passed{why} after {waited_ms:.1f} ms in the queue; "
                "it was not computed"
            )
        )

    def _past_deadline(self, item: Pending, now: int) -> bool:
        """Fail a request whose deadline passed while its batch formed; True if it did."""
        if item.deadline_ns is None or now < item.deadline_ns:
            return False
        waited_ms = (now - item.enqueued_ns) / 1e6
        item.future.set_exception(
            DeadlineExceededError(
                f"model {self.name}: the request's deadline passed after {waited_ms:.1f} ms in the queue; "
                "it was not computed"
            )
        )
        return True

    def _delay(self, item: Pending, why: str) -> None:
        self._queue.delay(item)

    # -- the batcher task ---------------------------------------------------------------

    async def _dispatch(self) -> None:
        while True:
            if not (self._free and self._queue.requests):
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            instance = self._free.pop()
            batch = await self._next_batch(instance)
            now = monotonic_ns()
            live = [
                item
                for item in batch
                if not item.future.done()
                and (item.deadline_ns is None or now < item.deadline_ns or not self._past_deadline(item, now))
            ]
            if self._controller is not None and live:
                live = self._shed_late(live, now, self._controller)
            if not live:
                self._free.append(instance)
                continue
            self._launch(instance, live, now)

    def _launch(self, instance: int, live: list[Pending], now: int, staged: bool = False) -> None:
        """Hand a batch to instance `instance`'s worker thread (the instance is no longer free); a
        staged one runs after the batch the instance runs now."""
        self._running += 1
        self._seq += 1
        job = (instance, live, now, self._seq, staged)
        if staged:
            self._staged[instance].append(job)
            for item in live:
                item.staged = (instance, self._seq)
                self._arm_staged_timer(item, now)
        else:
            self._batches[instance] = job
        self._jobs[instance].put(job)

    def _arm_staged_timer(self, item: Pending, now: int) -> None:
        """A staged request's deadline (within the timer horizon) or REJECT queue timeout still answers
        its caller on time: `_withdraw` fails it then, if its run has not begun."""
        when, why = None, ""
        if item.reject_ns is not None:
            when, why = item.reject_ns, f" (its queue timeout of {(item.reject_ns - item.enqueued_ns) / 1e6:g} ms)"
        if item.deadline_ns is not None and item.deadline_ns - now <= DEADLINE_TIMER_HORIZON_NS:
            if when is None or item.deadline_ns < when:
                when, why = item.deadline_ns, ""
        if when is not None and self._loop is not None:
            item.timers.append(self._loop.call_later(max(when - now, 0) / 1e9, self._withdraw, item, why))

    def _withdraw(self, item: Pending, why: str) -> None:
        """A staged request's deadline or queue timeout passed: fail it, unless its run has begun."""
        assert item.staged is not None
        instance, seq = item.staged
        if not item.future.done():
            self._instances[instance].unless_begun(seq, partial(self._fail_expired, item, why))

    def _set_reject(self, item: Pending, timeout_us: int, now: int) -> None:
        """A request about to be staged: when its REJECT queue timeout passes (checked as it starts; the
        action DELAY has nobody to let by)."""
        if timeout_us or self._queue_timeouts:
            policy = self.policy.queue_policy(item.level)
            if not policy.delay_on_timeout and (queue_timeout_us := self._queue_timeout_us(item.level, timeout_us)):
                item.reject_ns = now + queue_timeout_us * 1000

    def _join_staged(self, item: Pending, timeout_us: int, now: int) -> bool:
        """Latency-target mode, every instance busy and nothing queued: add `item` to a busy instance's
        staged batch while its worker has not begun it and it has room (the controller's cap and the
        instance's batch shape, same non-batch dims), or stage it as a new batch behind an instance that
        has none. False: queue it."""
        controller = self._controller
        assert controller is not None
        cap = controller.batch_cap()
        for instance, staged in enumerate(self._staged):
            if self._batches[instance] is None:
                continue
            if not staged:
                self._set_reject(item, timeout_us, now)
                self._launch(instance, [item], now, staged=True)
                return True
            job = staged[-1]
            live = job[1]
            rows = sum(other.rows for other in live) + item.rows
            if live[0].key != item.key or rows > self._instances[instance].planner.cap(rows, cap):
                continue
            self._set_reject(item, timeout_us, now)
            if self._instances[instance].unless_begun(job[3], partial(live.append, item)):
                item.staged = (instance, job[3])
                self._arm_staged_timer(item, now)
                return True
            item.reject_ns = None
        return False

    def _stage_from_queue(self, instance: int, now: int, running: _Job) -> None:
        """Latency-target mode, as instance `instance` goes on to its staged batch `running`: stage the
        next batch from the queue (up to the controller's cap), without the requests it would answer
        after the target once `running` is done (`_shed_late`)."""
        controller = self._controller
        assert controller is not None
        first = self._next_queued(now)
        if first is None:
            return
        batch = [first]
        cap = self._instances[instance].planner.cap(first.rows + self._queue.rows, controller.batch_cap())
        self._queue.take_compatible(batch, first.rows, cap)
        start = now + int(controller.cost.predict(sum(item.rows for item in running[1])))
        live = self._shed_late(batch, start, controller)
        if live:
            self._launch(instance, live, now, staged=True)

    def _stage_room(self) -> int:
        """The busy instance with the least staged behind its batch, if that is under STAGE_AHEAD_NS; else -1."""
        best, least = -1, float(STAGE_AHEAD_NS)
        for instance, staged in enumerate(self._staged):
            if self._batches[instance] is None:
                continue
            if not staged:
                return instance
            ahead = len(staged) * self._run_ns[instance]
            if ahead < least:
                best, least = instance, ahead
        return best

    def _next_queued(self, now: int) -> Pending | None:
        """The first queued request still wanted (expired ones fail on the way), or None."""
        while (item := self._queue.pop()) is not None:
            if item.future.done() or self._past_deadline(item, now):
                continue
            return item
        return None

    def _abandoned(self, item: Pending) -> None:
        """`item`'s caller went away: if its batch is running and no caller of it is left, stop the run."""
        for instance, job in enumerate(self._batches):
            if job is not None and any(other is item for other in job[1]):
                # Answers are set only once the run ends, so a done future here is a caller that went away.
                if all(other.future.done() for other in job[1]) and self._instances[instance].stop(job[3]):
                    self.batches_stopped += 1
                return

    async def _next_batch(self, instance: int) -> list[Pending]:
        first = await self._pop_live()
        batch = [first]
        if not self.policy.batching:
            return batch
        cap = self._controller.batch_cap() if self._controller is not None else self.policy.max_batch_size
        # The instance is idle, so its worker does not touch the planner now.
        cap = self._instances[instance].planner.cap(first.rows + self._queue.rows, cap)
        rows = self._queue.take_compatible(batch, first.rows, cap) if self._queue.requests else first.rows
        target = min(max(self.policy.preferred_batch_sizes, default=cap), cap)
        if self._hold is not None and rows < target and (period := self._hold.period_ns()):
            rows = await self._hold_for_rows(batch, rows, target, period)
        if self._delay_ns and rows < target:
            # Held here while waiting, so that close() can see and, if cancelled, fail them.
            self._forming = batch
            expire_ns = first.enqueued_ns + self._delay_ns
            while rows < target:
                remaining_ns = expire_ns - monotonic_ns()
                if remaining_ns <= 0:
                    break
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), remaining_ns / 1e9)
                except TimeoutError:
                    pass
                rows = self._queue.take_compatible(batch, rows, cap)
            self._forming = []
        return batch

    async def _hold_for_rows(self, batch: list[Pending], rows: int, target: int, period_ns: int) -> int:
        """Take arrivals into `batch` while they keep coming (hold.py); returns its rows."""
        hold = self._hold
        assert hold is not None
        now = monotonic_ns()
        stop = now + HOLD_FACTOR * period_ns
        if self._delay_ns:
            stop = min(stop, batch[0].enqueued_ns + self._delay_ns)
        if self._controller is not None:  # a small share of the latency target's budget, whatever o is
            stop = min(stop, batch[0].enqueued_ns + int(HOLD_TARGET_SHARE * self._controller.setpoint_ns))
        # Held here while waiting, so that close() can see and, if cancelled, fail them.
        self._forming = batch
        start = now
        checked = 0
        while True:
            if len(batch) > checked:  # a request's deadline or queue timeout ends the hold a handoff before it
                for item in batch[checked:]:
                    if item.deadline_ns is not None:
                        stop = min(stop, item.deadline_ns - period_ns)
                    if item.reject_ns is not None:
                        stop = min(stop, item.reject_ns - period_ns)
                checked = len(batch)
            if rows >= target or now >= stop or not hold.flowing(now, period_ns):
                break
            await asyncio.sleep(0)  # one loop iteration: requests being read reach the queue
            if self._queue.requests:
                rows = self._queue.take_compatible(batch, rows, target)
            now = monotonic_ns()
        self._forming = []
        if now > start:  # ended before it began (a deadline, the target rows): not a hold
            hold.holds += 1
            hold.held_ns += now - start
        return rows

    async def _pop_live(self) -> Pending:
        while True:
            item = self._queue.pop()
            if item is not None:
                return item
            self._wakeup.clear()
            await self._wakeup.wait()

    def _work(self, loop: asyncio.AbstractEventLoop, instance: int, jobs: queue.SimpleQueue[_Job | None]) -> None:
        """One instance's worker thread: run its batches in turn, complete each on the loop."""
        execution = self._instances[instance]
        while (job := jobs.get()) is not None:
            began = monotonic_ns()
            done: Done | BaseException | None = None
            stopped = False
            # A staged batch's requests are checked as it starts (under the lock `_withdraw` takes too).
            dropped: list[Pending] = []
            wanted = partial(self._prune, job[1], dropped, began) if job[4] else None
            if execution.begin(job[3], wanted):
                done = execution.execute(job[1], began)
                stopped = execution.end()
            try:
                loop.call_soon_threadsafe(self._complete, job, done, stopped, dropped)
            except RuntimeError:  # the loop closed during shutdown: nobody is waiting any more
                return

    def _complete(
        self, job: _Job, done: Done | BaseException | None, stopped: bool, dropped: Sequence[Pending] = ()
    ) -> None:
        """On the loop: hand each request its slice (or the error), report, free the instance.

        `dropped`: requests of a staged batch its worker did not run (`_prune`); `done` None: none of
        it ran; `stopped`: the batch was stopped (`_abandoned`)."""
        instance, live, started = job[0], job[1], job[2]
        finished = monotonic_ns()
        total = sum(item.rows for item in live)
        contexts = [item.context for item in live]
        self._running -= 1
        staged = self._staged[instance]
        following = staged.popleft() if staged else None  # the worker has gone on to it
        self._batches[instance] = following
        try:
            for item in dropped:
                self._fail_unrun(item, finished)
            if done is None:
                return
            if isinstance(done, BaseException):
                if stopped:  # every caller had gone: that, not the run, ended it
                    error: OrtserveError = RequestCancelledError(
                        f"model {self.name}: the batch was stopped: the callers of all its requests went away"
                    )
                else:
                    error = self._batch_error(done)
                for item in live:
                    if not item.future.done():
                        item.future.set_exception(type(error)(str(error)))
                self._report(BatchReport(self.name, total, started, finished, error=error, contexts=contexts))
                return
            parts, began, input_ns, infer_ns, output_ns, reruns, unsettled = done
            if job[4]:  # staged: handed over before the batch ahead of it ended; its run began at `began`
                started = began
            if self._stage:
                self._run_ns[instance] += 0.1 * (input_ns + infer_ns + output_ns - self._run_ns[instance])
            failed = sum(1 for part in parts if isinstance(part, Exception)) if reruns else 0
            if reruns:
                self.batches_rerun += 1
            controller = self._controller
            if not reruns:  # a batch rerun in parts after a failure times nothing the models should learn
                if self._hold is not None:
                    self._hold.observe(finished - started - input_ns - infer_ns - output_ns)
                if controller is not None:
                    controller.observe(total, finished - started)
                    setpoint = controller.setpoint_ns
                    over = sum(1 for item in live if finished - item.enqueued_ns > setpoint)
                    controller.observe_latencies(over, len(live), finished)
            first: OrtserveError | None = None
            for item, outputs in zip(live, parts, strict=True):
                if isinstance(outputs, Exception):
                    failure = self._batch_error(outputs, log_it=False)
                    first = first or failure
                    if not item.future.done():
                        item.future.set_exception(failure)
                elif not item.future.done():
                    item.future.set_result(
                        BatchResult(outputs, item.enqueued_ns, began, input_ns, infer_ns, output_ns, total)
                    )
            if failed and not stopped:
                failures = [p for p in parts if isinstance(p, Exception)]
                unexpected = next((p for p in failures if not isinstance(p, OrtserveError)), None)
                # Values the model rejected are the callers' to fix (INVALID_ARGUMENT): no error of the server.
                rejected = all(isinstance(p, InvalidInputError) for p in failures)
                log.log(
                    logging.INFO if rejected else logging.ERROR,
                    "model %s: a batch of %d requests failed; rerun in parts, %d of them failed on their own%s "
                    "and the others were answered",
                    self.name,
                    len(live),
                    failed - unsettled,
                    f", {unsettled} with the part they were in (the rerun budget ran out)" if unsettled else "",
                    exc_info=unexpected,
                )
            self._report(
                BatchReport(
                    self.name,
                    total,
                    began,
                    finished,
                    input_ns,
                    infer_ns,
                    output_ns,
                    contexts,
                    error=first if failed == len(live) else None,
                )
            )
        finally:
            if self._stage_batches and following is not None and not staged and self._queue.requests:
                self._stage_from_queue(instance, finished, following)
            if self._stage and self._queue.requests:
                if following is None and (queued := self._next_queued(finished)) is not None:
                    self._launch(instance, [queued], finished)
                    following = self._batches[instance]
                while (
                    following is not None
                    and self._queue.requests
                    and len(staged) * self._run_ns[instance] < STAGE_AHEAD_NS
                    and (queued := self._next_queued(finished)) is not None
                ):
                    self._launch(instance, [queued], finished, staged=True)
            if following is None:
                self._free.append(instance)
                if self._queue.requests:
                    self._wakeup.set()

    def _fail_unrun(self, item: Pending, now: int) -> None:
        """A staged request the worker did not run: fail it by its deadline or queue timeout (unless its
        timer did, or its caller went away), or as late for the latency target (`_prune`)."""
        if item.future.done() or self._past_deadline(item, now):
            return
        if item.reject_ns is not None and now >= item.reject_ns:
            self._fail_expired(item, f" (its queue timeout of {(item.reject_ns - item.enqueued_ns) / 1e6:g} ms)")
            return
        controller = self._controller
        assert controller is not None
        retry_ms = max(round(controller.refused_late(now) / 1e6), 1)
        item.future.set_exception(
            LatencyTargetError(
                f"model {self.name}: overloaded: the request waited {(now - item.enqueued_ns) / 1e6:.1f} ms and would "
                f"be answered after the latency target of {self.policy.latency_target_ms:g} ms; not computed; "
                f"retry after {retry_ms} ms (trailing metadata retry-after-ms) or on another replica",
                retry_after_ms=retry_ms,
            )
        )

    def _prune(self, live: list[Pending], dropped: list[Pending], now: int) -> bool:
        """On the worker, under the instance's lock, as a staged batch begins: move the requests no longer
        wanted (`_still_wanted`; in latency-target mode also those the batch would answer after the
        target, as `_shed_late`) from `live` to `dropped`; whether any is left to run."""
        keep: list[Pending] = []
        for item in live:
            (keep if _still_wanted(item, now) else dropped).append(item)
        controller = self._controller
        if controller is not None and controller.ready and keep:
            # Reads the cost model's numbers while the loop may update them: an estimate either way.
            run_ns = controller.cost.predict(sum(item.rows for item in keep))
            if run_ns < controller.target_ns:
                late_ns = controller.target_ns - run_ns
                dropped.extend(item for item in keep if now - item.enqueued_ns > late_ns)
                keep = [item for item in keep if now - item.enqueued_ns <= late_ns]
        if len(keep) != len(live):
            live[:] = keep
        return bool(keep)

    def _report(self, report: BatchReport) -> None:
        if self._on_batch is None:
            return
        try:
            self._on_batch(report)
        except Exception:  # an observer must never strand the batch's waiters
            log.exception("model %s: batch observer failed", self.name)

    def _batch_error(self, exc: BaseException, log_it: bool = True) -> OrtserveError:
        if isinstance(exc, OrtserveError):
            return exc
        if log_it:
            log.error("model %s: batch execution failed", self.name, exc_info=exc)
        return InternalError(f"model {self.name}: batch execution failed: {exc}")

    def _on_loop_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log.critical("model %s: batcher task died", self.name, exc_info=exc)
            self._broken = exc
            self._fail_all(InternalError(f"model {self.name}: the batcher stopped: {exc}"))

    def _fail_all(self, error: OrtserveError) -> None:
        # Staged requests too: their worker skips requests whose future is done.
        staged = [item for jobs in self._staged for job in jobs for item in job[1]]
        stranded = [*self._forming, *self._queue.drain(), *staged]
        self._forming = []
        for item in stranded:
            if not item.future.done():
                item.future.set_exception(type(error)(str(error)))


def _still_wanted(item: Pending, now: int) -> bool:
    """On a worker thread, as a staged request starts: its caller is there, its deadline and queue
    timeout (REJECT) have not passed. (Reads the loop's future, under the instance's lock; a caller
    that leaves after this costs the run, which `_abandoned` stops once the loop knows it runs.)"""
    return (
        not item.future.done()
        and (item.deadline_ns is None or now < item.deadline_ns)
        and (item.reject_ns is None or now < item.reject_ns)
    )
