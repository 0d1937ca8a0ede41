"""One model instance's side of a batch: concatenate, run, split; a failed batch rerun in parts.

The batcher (batcher.py) forms batches and hands each to an instance's worker thread, which calls
`InstanceExecution.execute` and completes the batch's requests on the event loop with what it
returns. Per instance it keeps the blocking runner, the memory large batches are concatenated into
(tensors.BatchBuffers) and the batch shape planner (shapes.py).

When the model's run of a batch of several requests fails (the run itself, not the concatenation or
the split around it), the batch is run again in halves, and each failing half in halves again, so
that only the requests that fail on their own fail: one request whose values the model cannot take
(an index out of a table's range, a value a custom op rejects) would otherwise fail every request
batched with it, each of which would have been answered alone. That costs at most 2n - 2 more runs
for a batch of n, each at the instance's current batch shape when it holds the part (a change of
shape is what costs on CUDA). The reruns are paid from a budget (RERUN_BUDGET) that the requests the
instance answers refill, so that a model that fails whatever it is given (a broken custom op, a
device in an error state) costs one run a batch, not up to 2n - 1, once its first failed batches
have spent it.

A run every caller of which has gone away (cancelled, or past its gRPC deadline) is stopped when the
instance can (`Stoppable`: ONNX Runtime's terminate flag, checked between nodes), so that the
instance takes the next batch instead of computing answers nobody reads; its parts are not rerun.
The stop names the batch (its sequence number): the worker may already have moved on to a batch
staged behind it, which must not be stopped in its place.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from time import perf_counter_ns
from typing import Protocol, cast

import numpy as np

from ortserve.batching.queue import Pending
from ortserve.batching.shapes import ShapePlanner
from ortserve.batching.tensors import BatchBuffers, split_outputs

log = logging.getLogger("ortserve.batching")

Runner = Callable[[Mapping[str, np.ndarray]], Mapping[str, np.ndarray]]
"""Runs one batch on one model instance, blocking; called on that instance's thread."""

Part = dict[str, np.ndarray] | Exception
"""One request's outcome in a batch: its outputs, or (after a failed batch was rerun in parts) its own error."""

Done = tuple[list[Part], int, int, int, int, int, int]
"""(per-request outcomes, when the worker began the batch (monotonic ns), compute input/infer/output ns,
how many runs were made again in parts after the batch's own run failed: 0 for a batch that just ran,
how many of its requests failed with a part they shared because the rerun budget was spent):
what an instance hands back for a batch that ran."""

RERUN_BUDGET = 64
"""The most runs an instance may spend rerunning failed batches in parts ahead of what it answers:
every request it answers gives one back (up to this many), every rerun of a part takes one. With a
model that works, answered requests keep it full (a batch of n with one bad request costs about
2 log2(n) reruns and answers n - 1); with one that fails everything, a batch costs one run once the
first failed batches (at most 2n - 2 reruns each) have spent it, and each of its requests fails with
the batch's error."""


class Stoppable(Protocol):
    """A runner's way to end its run in progress early (runtime.OrtInstance has it)."""

    def stop(self) -> None:
        """End the run in progress soon (it fails); later runs fail too until `resume`. Any thread."""

    def resume(self) -> None:
        """Let runs go on again."""


class RunFailed(Exception):
    """The model's run of a batch raised `error` (not the concatenation or the split around it)."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


class InstanceExecution:
    """One instance's runner, kept input memory and batch shape planner.

    Not thread-safe, except for `begin`, `end`, `stop` and `unless_begun`: used by the instance's
    worker thread while a batch runs, by the warm-up before the batcher starts, and (the planner's
    `cap`) by the batcher task while the instance is idle; `stop` and `unless_begun` are called on
    the event loop, `begin` and `end` by the worker around each batch, under one lock, so that a
    stop reaches only the batch it names and a request is withdrawn only before its run begins.
    """

    __slots__ = (
        "name",
        "runner",
        "buffers",
        "planner",
        "stopper",
        "stopped",
        "rerun_budget",
        "_spent_logged",
        "_running",
        "_begun",
        "_lock",
    )

    def __init__(self, name: str, runner: Runner, shapes: tuple[int, ...], stopper: Stoppable | None = None) -> None:
        self.name = name
        """The model version's name, for the log."""
        self.runner = runner
        self.buffers = BatchBuffers()
        self.planner = ShapePlanner(shapes)
        self.stopper = stopper
        self.stopped = False
        """Set (by `stop`) when every caller of the batch in progress went away; the worker reads it."""
        self.rerun_budget = RERUN_BUDGET
        """Reruns of failed batches' parts this instance may still make (RERUN_BUDGET; the worker's)."""
        self._spent_logged = False
        self._running: int | None = None
        """The sequence number of the batch the worker runs now (between `begin` and `end`)."""
        self._begun = 0
        """The sequence number of the last batch the worker began (they are handed over in order)."""
        self._lock = threading.Lock()

    def begin(self, seq: int, wanted: Callable[[], bool] | None = None) -> bool:
        """The worker starts batch `seq`, unless `wanted` says it is not wanted any more (then False):
        runs go on again if the batch before it was stopped."""
        with self._lock:
            if wanted is not None and not wanted():
                return False
            self._begun = self._running = seq
            if self.stopped:
                self.stopped = False
                if self.stopper is not None:
                    self.stopper.resume()
            return True

    def unless_begun(self, seq: int, withdraw: Callable[[], None]) -> bool:
        """Call `withdraw` (on the loop) if the worker has not begun batch `seq` (then, as `withdraw`
        leaves the batch unwanted, never will): whether it did."""
        with self._lock:
            if self._begun >= seq:
                return False
            withdraw()
            return True

    def end(self) -> bool:
        """The worker is done with its batch: whether it was stopped."""
        with self._lock:
            self._running = None
            return self.stopped

    def stop(self, seq: int) -> bool:
        """Stop batch `seq` if the worker runs it now, nobody waiting for it any more (on the loop):
        whether it did (nothing happens when the runner cannot be stopped, or has finished it)."""
        if self.stopper is None:
            return False
        with self._lock:
            if self._running != seq or self.stopped:
                return False
            self.stopped = True
            self.stopper.stop()
            return True

    def execute(self, live: Sequence[Pending], began: int) -> Done | BaseException:
        """Run `live` as one batch (rerun in parts if the model's run fails): the outcome, or the
        exception that failed the whole batch."""
        try:
            parts, input_ns, infer_ns, output_ns = self.run(live, self.planner.rows_for(sum(i.rows for i in live)))
        except RunFailed as failed:  # the model's run itself failed: maybe on one request's values
            if len(live) == 1:
                return failed.error
            if self.rerun_budget < 1:
                if not self._spent_logged:  # once until the budget is full again
                    self._spent_logged = True
                    log.warning(
                        "model %s: failed batches are not rerun in parts for now: the instance's rerun budget "
                        "is spent (its runs failed more than it answered); it refills as the instance answers",
                        self.name,
                    )
                return failed.error
            try:
                return self.isolate(live, began, failed.error)
            except BaseException as again:  # noqa: BLE001 - a fault of the rerun itself: fail the batch
                log.error("model %s: rerunning a failed batch in parts failed", self.name, exc_info=again)
                return failed.error
        except BaseException as exc:  # noqa: BLE001 - handed to the batch's waiters
            return exc
        self._earn(len(live))
        return cast(list[Part], parts), began, input_ns, infer_ns, output_ns, 0, 0

    def run(
        self, live: Sequence[Pending], padded: int, observe: bool = True
    ) -> tuple[list[dict[str, np.ndarray]], int, int, int]:
        """Run `live` as one batch of `padded` rows: (per-request outputs, input/infer/output ns).

        RunFailed when the runner raises; `observe` tells the planner the run's time."""
        rows = [item.rows for item in live]
        buffers = self.buffers
        t0 = perf_counter_ns()
        feeds = buffers.concat([item.inputs for item in live], padded)
        t1 = perf_counter_ns()
        try:
            outputs = self.runner(feeds)
        except Exception as exc:
            raise RunFailed(exc) from exc
        outputs = buffers.detach(outputs)
        t2 = perf_counter_ns()
        if observe:
            self.planner.observe(padded, t2 - t1)
        parts = split_outputs(outputs, rows, padded)
        t3 = perf_counter_ns()
        return parts, t1 - t0, t2 - t1, t3 - t2

    def _earn(self, answered: int) -> None:
        """`answered` requests were answered: as many reruns back, up to the budget."""
        if self.rerun_budget < RERUN_BUDGET:
            self.rerun_budget = min(RERUN_BUDGET, self.rerun_budget + answered)
            if self.rerun_budget == RERUN_BUDGET:
                self._spent_logged = False

    def isolate(self, live: Sequence[Pending], began: int, error: Exception) -> Done:
        """The run of `live` (several requests) failed with `error`: run it again in halves,
        recursively, until every request has outputs from a part that ran or its own error from
        running alone (or `error`, if the batch is stopped meanwhile; or the error of the part it was
        in, once the rerun budget is spent).

        The parts teach the planner nothing (they are not the batches the batcher forms); the times
        returned are the parts that ran."""
        planner = self.planner
        parts: list[Part | None] = [None] * len(live)
        times = [0, 0, 0]
        runs = [0]
        unsettled = [0]

        def settle(lo: int, hi: int, failure: Exception) -> None:  # live[lo:hi] failed together with `failure`
            mid = (lo + hi) // 2
            for a, b in ((lo, mid), (mid, hi)):
                if self.stopped:  # every caller went away meanwhile
                    return
                if self.rerun_budget < 1:  # spent: the part fails as the group it was in did
                    parts[a:b] = [failure] * (b - a)
                    unsettled[0] += b - a
                    continue
                self.rerun_budget -= 1
                group = live[a:b]
                runs[0] += 1
                try:
                    got, input_ns, infer_ns, output_ns = self.run(
                        group, planner.rows_for_part(sum(item.rows for item in group)), observe=False
                    )
                except RunFailed as failed:  # that part's own error, or split it further
                    if b - a == 1:
                        parts[a] = failed.error
                    else:
                        settle(a, b, failed.error)
                    continue
                parts[a:b] = got
                self._earn(b - a)
                times[0] += input_ns
                times[1] += infer_ns
                times[2] += output_ns

        settle(0, len(live), error)
        outcomes = [error if part is None else part for part in parts]
        return outcomes, began, times[0], times[1], times[2], max(runs[0], 1), unsettled[0]
