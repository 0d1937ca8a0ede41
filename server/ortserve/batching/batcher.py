"""DynamicBatcher: one queue per model version, greedy batches, one worker thread per instance.

The policy (the full latency-target policy is its own issue; this is the greedy core):

1. A request is appended to the queue with its future; the batcher task wakes.
2. The batcher waits for an idle instance, then for a live request (cancelled or expired
   requests are dropped here, before any compute).
3. It gathers, without waiting, every queued request that fits: same non-batch dims,
   rows counted, at most `max_batch_size` rows. While every instance is busy, requests
   accumulate, so the next free instance takes as many rows as fit.
4. Only if `max_queue_delay_us` is set and the batch is short of its target (the largest
   preferred batch size, else `max_batch_size`) does it wait, at most until the first
   request's arrival + delay. A lone request at low load never waits for a timer.
5. The batch runs on the instance's own worker thread: concatenate (the one copy),
   run, split into per-request views; each still-pending future gets its slice and the
   timings. A failed run fails only the requests of that batch.

If the batcher task dies, every waiter fails instead of hanging.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from time import monotonic_ns, perf_counter_ns

import numpy as np

from ortserve.batching.tensors import concat_inputs, split_outputs
from ortserve.errors import (
    DeadlineExceededError,
    InternalError,
    ModelNotReadyError,
    OrtserveError,
)

log = logging.getLogger("ortserve.batching")

Runner = Callable[[Mapping[str, np.ndarray]], Mapping[str, np.ndarray]]
"""Runs one batch on one model instance, blocking; called on that instance's thread."""

BatchObserver = Callable[[int, int, int, int], None]
"""Called once per executed batch: (rows, compute_input_ns, compute_infer_ns, compute_output_ns)."""


@dataclass(slots=True)
class BatchResult:
    """One request's share of a batch run."""

    outputs: dict[str, np.ndarray]
    queue_ns: int
    compute_input_ns: int
    compute_infer_ns: int
    compute_output_ns: int
    batch_rows: int


@dataclass(slots=True, eq=False)
class _Pending:
    inputs: Mapping[str, np.ndarray]
    rows: int
    key: tuple[tuple[int, ...], ...]
    future: asyncio.Future[BatchResult]
    enqueued_ns: int
    deadline_ns: int | None


class DynamicBatcher:
    """Gathers concurrent requests of one model version into batches and runs them."""

    def __init__(
        self,
        name: str,
        runners: Sequence[Runner],
        *,
        max_batch_size: int = 0,
        max_queue_delay_us: int = 0,
        preferred_batch_sizes: Sequence[int] = (),
        on_batch: BatchObserver | None = None,
    ) -> None:
        if not runners:
            raise ValueError("a batcher needs at least one runner")
        self.name = name
        self._runners = list(runners)
        self._max_batch_size = max_batch_size
        self._delay_ns = max_queue_delay_us * 1000
        self._target_rows = max(preferred_batch_sizes, default=max_batch_size) or 1
        self._on_batch = on_batch
        self._pending: deque[_Pending] = deque()
        self._forming: list[_Pending] = []  # the batch being gathered, out of the queue, not yet running
        self._wakeup = asyncio.Event()
        self._idle: asyncio.Queue[int] = asyncio.Queue()
        self._executors: list[ThreadPoolExecutor] = []
        self._running: set[asyncio.Task[None]] = set()
        self._task: asyncio.Task[None] | None = None
        self._accepting = False
        self._broken: BaseException | None = None

    @property
    def queued_requests(self) -> int:
        """Requests waiting in the queue (not yet in a running batch)."""
        return len(self._pending)

    @property
    def running_batches(self) -> int:
        """Batches executing now."""
        return len(self._running)

    def start(self) -> None:
        """Start the worker threads and the batcher task on the running event loop."""
        for index in range(len(self._runners)):
            self._executors.append(
                ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{self.name}-{index}")
            )
            self._idle.put_nowait(index)
        self._task = asyncio.get_running_loop().create_task(self._loop(), name=f"batcher-{self.name}")
        self._task.add_done_callback(self._on_loop_done)
        self._accepting = True

    async def submit(
        self, inputs: Mapping[str, np.ndarray], *, rows: int, deadline_ns: int | None = None
    ) -> BatchResult:
        """Queue one request of `rows` batch rows and wait for its outputs.

        `inputs` must already be validated against the model (names in signature order,
        dtypes, dims, rows <= max_batch_size). `deadline_ns` is on the monotonic clock.
        Cancelling the awaiting task withdraws the request if it has not run yet.
        """
        if self._broken is not None:
            raise InternalError(f"model {self.name}: the batcher stopped: {self._broken}")
        if not self._accepting:
            raise ModelNotReadyError(f"model {self.name} is unloading and takes no new requests")
        key = tuple(a.shape[1:] for a in inputs.values()) if self._max_batch_size else ()
        future: asyncio.Future[BatchResult] = asyncio.get_running_loop().create_future()
        self._pending.append(_Pending(inputs, rows, key, future, monotonic_ns(), deadline_ns))
        self._wakeup.set()
        return await future

    async def close(self, timeout_s: float | None = None) -> None:
        """Refuse new requests, finish the queued and running ones, then stop the threads.

        Requests still queued when `timeout_s` passes fail with ModelNotReadyError.
        """
        self._accepting = False
        loop = asyncio.get_running_loop()
        stop_at = None if timeout_s is None else loop.time() + timeout_s
        # Shutdown only: a short poll keeps the hot path free of bookkeeping for it.
        while (self._pending or self._forming or self._running) and self._broken is None:
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
        for executor in self._executors:
            executor.shutdown(wait=False, cancel_futures=True)

    # -- the batcher task ---------------------------------------------------------------

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            instance = await self._idle.get()
            batch = await self._next_batch()
            task = loop.create_task(self._execute(loop, instance, batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _next_batch(self) -> list[_Pending]:
        first = await self._pop_live()
        batch = [first]
        if not self._max_batch_size:
            return batch
        rows = self._gather(batch, first.rows)
        if self._delay_ns and rows < self._target_rows:
            # Held here while waiting, so that close() can see and, if cancelled, fail them.
            self._forming = batch
            expire_ns = first.enqueued_ns + self._delay_ns
            while rows < self._target_rows:
                remaining_ns = expire_ns - monotonic_ns()
                if remaining_ns <= 0:
                    break
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), remaining_ns / 1e9)
                except TimeoutError:
                    pass
                rows = self._gather(batch, rows)
            self._forming = []
        return batch

    async def _pop_live(self) -> _Pending:
        while True:
            while not self._pending:
                self._wakeup.clear()
                await self._wakeup.wait()
            item = self._pending.popleft()
            if self._alive(item, monotonic_ns()):
                return item

    def _gather(self, batch: list[_Pending], rows: int) -> int:
        """Move every queued request that fits into `batch`; return the batch's rows."""
        if not self._pending or rows >= self._max_batch_size:
            return rows
        key = batch[0].key
        now = monotonic_ns()
        kept: deque[_Pending] = deque()
        while self._pending:
            item = self._pending.popleft()
            if not self._alive(item, now):
                continue
            if item.key == key and rows + item.rows <= self._max_batch_size:
                batch.append(item)
                rows += item.rows
                if rows >= self._max_batch_size:
                    break
            else:
                kept.append(item)
        kept.extend(self._pending)
        self._pending = kept
        return rows

    def _alive(self, item: _Pending, now_ns: int) -> bool:
        if item.future.done():  # cancelled by its caller
            return False
        if item.deadline_ns is not None and now_ns >= item.deadline_ns:
            waited_ms = (now_ns - item.enqueued_ns) / 1e6
            item.future.set_exception(
                DeadlineExceededError(
                    f"model {self.name}: the request's deadline passed after {waited_ms:.1f} ms in the queue"
                )
            )
            return False
        return True

    async def _execute(
        self, loop: asyncio.AbstractEventLoop, instance: int, batch: list[_Pending]
    ) -> None:
        try:
            start_ns = monotonic_ns()
            live = [item for item in batch if self._alive(item, start_ns)]
            if not live:
                return
            rows = [item.rows for item in live]
            try:
                parts, input_ns, infer_ns, output_ns = await loop.run_in_executor(
                    self._executors[instance],
                    self._compute,
                    instance,
                    [item.inputs for item in live],
                    rows,
                )
            except Exception as exc:  # noqa: BLE001 - every failure is handed to the waiters
                error = self._batch_error(exc)  # once per batch: one log line, not one per request
                for item in live:
                    if not item.future.done():
                        item.future.set_exception(type(error)(str(error)))
                return
            total = sum(rows)
            if self._on_batch is not None:
                try:
                    self._on_batch(total, input_ns, infer_ns, output_ns)
                except Exception:  # an observer's fault must not leave the waiters hanging
                    log.exception("model %s: the batch observer failed", self.name)
            for item, outputs in zip(live, parts, strict=True):
                if not item.future.done():
                    item.future.set_result(
                        BatchResult(
                            outputs, start_ns - item.enqueued_ns, input_ns, infer_ns, output_ns, total
                        )
                    )
        finally:
            self._idle.put_nowait(instance)

    def _compute(
        self, instance: int, inputs: list[Mapping[str, np.ndarray]], rows: list[int]
    ) -> tuple[list[dict[str, np.ndarray]], int, int, int]:
        t0 = perf_counter_ns()
        feeds = concat_inputs(inputs)
        t1 = perf_counter_ns()
        outputs = self._runners[instance](feeds)
        t2 = perf_counter_ns()
        parts = split_outputs(outputs, rows) if self._max_batch_size else [dict(outputs)]
        t3 = perf_counter_ns()
        return parts, t1 - t0, t2 - t1, t3 - t2

    def _batch_error(self, exc: Exception) -> OrtserveError:
        if isinstance(exc, OrtserveError):
            return type(exc)(str(exc))
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
        stranded = [*self._forming, *self._pending]
        self._forming = []
        self._pending.clear()
        for item in stranded:
            if not item.future.done():
                item.future.set_exception(type(error)(str(error)))
