"""BatchHold: whether a batch that an idle instance could run now should wait for more rows.

Greedy dispatch (run what waits as soon as an instance is idle) costs nothing at low load. At
high load with a cheap model it is stuck with tiny batches: the instance finishes each batch
before the next requests reach the queue, so it is idle whenever the event loop hands it work,
and every batch pays a handoff (wake the instance's thread, the GIL, the completion back on the
loop). On the 2-core sandbox, the MLP of `benchmarks/` at concurrency 64: batches of 2.7 rows,
a handoff costs 250-300 µs of latency around 15-50 µs of compute, and the server spends 230 µs
of CPU per request against 150 µs when batches hold 20 rows (measured in docs/performance.md).

The rule, with o the handoff's cost (the time a batch spends dispatched but not computing,
measured per batch: moving average) and g the mean gap between arrivals (moving average):

- a batch waits only when requests arrive faster than handoffs cost (g < o) and the latest
  request came within QUIET x o of the one before it (no quiet spell): at low load, and for the
  first request after a quiet spell, nothing ever waits;
- while it waits it takes every arrival, and it stops as soon as o passes without one: waiting
  longer for one more request than a handoff costs never pays (ski rental, per arrival);
- it never waits more than HOLD_FACTOR x o in all, nor past `max_queue_delay_microseconds` when
  that is set, nor, in latency-target mode, past HOLD_TARGET_SHARE of the controller's setpoint
  after its first request arrived, nor closer than o to the deadline or queue timeout (REJECT) of
  a request it holds; and it stops at the batch's target rows.

The batcher task waits by yielding to the event loop (one loop iteration at a time), not by
timers: uvloop's timers tick in whole milliseconds, an order of magnitude coarser than o. A
µs-precise wakeup (a Linux timerfd watched by the loop) was measured too and lost 15-20 % of the
MLP's throughput: the loop then sleeps between arrivals, and waking it for each request's events
costs more CPU than the polling it replaces (docs/performance.md, fourth session).
"""

from __future__ import annotations

import math

HOLD_FACTOR = 12
"""A held batch waits at most this many handoff costs: the handoff then weighs at most about a
thirteenth of the batch's wait. Measured on the sandbox's MLP (docs/performance.md): first 4, 8
and 16 at concurrency 8, 32 and 64, where 8 gave the most throughput at each; then, once the
request path cost ~8 µs less, 5, 8, 10, 12, 16 and 24: at concurrency 64, 12 gave 4-8 % more than
8 (16 and 24 no more than 12) and 5 less; at 8 and 32, 12 measured as 8 within the noise (16 and
24 lost 4-5 % at 32). In open loop at 4500 requests/s it lengthens p99 from ~6.4 to ~9 ms and at
5500/s it kept up where 8 once did not."""

HOLD_TARGET_SHARE = 0.25
"""In latency-target mode a held batch also stops this share of the controller's setpoint (the
batcher's time budget, controller.SETPOINT x target) after its first request arrived: the hold
must not spend what the target leaves for queueing and running."""

QUIET = 2
"""A gap of this many handoff costs or more is a quiet spell: the request after it never waits."""

WEIGHT = 1 / 16
"""Weight of the newest sample in the moving averages."""


class BatchHold:
    """Arrival gaps and handoff costs of one batcher, and the hold they call for. Event loop only."""

    __slots__ = ("overhead_ns", "gap_ns", "last_gap_ns", "last_arrival_ns", "holds", "held_ns")

    def __init__(self) -> None:
        self.overhead_ns = 0.0
        """Moving average of a batch's handoff cost (0 until a batch has run)."""
        self.gap_ns = math.inf
        """Moving average of the gap between arrivals, each gap capped at QUIET x overhead_ns (only
        whether gaps are under overhead_ns matters, and a quiet spell must not hide a burst for
        long); inf until a gap is seen after the first batch ran."""
        self.last_gap_ns = 0
        self.last_arrival_ns: int | None = None
        self.holds = 0
        """Batches that waited for more rows (the batcher counts them; read by /metrics)."""
        self.held_ns = 0
        """Time those batches waited, in all."""

    def arrived(self, now_ns: int) -> None:
        """A request reached the queue at `now_ns` (monotonic)."""
        last = self.last_arrival_ns
        self.last_arrival_ns = now_ns
        if last is None:
            return
        gap = now_ns - last
        self.last_gap_ns = gap
        if self.overhead_ns <= 0:
            return
        sample = min(gap, QUIET * self.overhead_ns)
        if self.gap_ns == math.inf:
            self.gap_ns = sample
        else:
            self.gap_ns += (sample - self.gap_ns) * WEIGHT

    def observe(self, overhead_ns: int) -> None:
        """A batch spent `overhead_ns` dispatched but not computing (queue to its thread and back)."""
        if self.overhead_ns == 0:
            self.overhead_ns = float(max(overhead_ns, 0))
        else:
            self.overhead_ns += (max(overhead_ns, 0) - self.overhead_ns) * WEIGHT

    def period_ns(self) -> int:
        """How long a batch formed now may wait for its next request; 0 = run it now."""
        overhead = self.overhead_ns
        if overhead <= 0 or self.gap_ns >= overhead or self.last_gap_ns >= QUIET * overhead:
            return 0
        return int(overhead)

    def flowing(self, now_ns: int, period_ns: int) -> bool:
        """Whether the latest request arrived less than `period_ns` before `now_ns`."""
        return self.last_arrival_ns is not None and now_ns - self.last_arrival_ns < period_ns
