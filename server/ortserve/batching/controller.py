"""The latency-target controller: an online batch-cost model, a batch-size cap, and admission.

Given a p99 target T for a model version, it keeps the p99 under T while throughput stays
as high as the target allows:

1. **Cost model.** Every executed batch reports (rows, wall time). An exponentially weighted
   least-squares line t(b) = fixed + per_row * b follows the model as load and machine change
   (the decay forgets old points), seeded by the warm-up runs.
2. **Batch cap.** A request can wait for the batch before it and then run in its own, and both
   must fit in the batcher's share of the target (SETPOINT * T, step 4: the rest is time outside
   the batcher), so the largest batch allowed is the largest b with 2 * t(b) <= SETPOINT * T.
3. **Admission.** A new request's completion time is estimated from the rows queued ahead of
   it at its priority and above, the instances, and t(cap). If it cannot finish within the
   admission bound (ADMIT_FRACTION * T, trimmed by feedback, step 4) or before its own
   deadline, it is rejected at once (never when nothing is queued ahead of it and an
   instance is free: then it runs at once, as fast as it ever could), instead of being
   computed late: a fast UNAVAILABLE lets the client retry elsewhere. (A queued request that the
   batches before it delayed past the target is failed the same way as its batch starts: the
   batcher's `_shed_late`, counted here by `refused_late`.) The refusal carries a
   retry hint (step 5) so that a client that follows it comes back when there is room instead
   of bouncing off a full queue.

4. **Feedback.** The cost model predicts means; the target is a p99, and time the model does
   not see (other work on the cores, the event loop) stretches the tail. So the controller
   also watches the outcome: for every answered batch, how many of its requests spent longer
   than SETPOINT * T in the batcher (queue + execution). While more than 1% do, it shrinks the
   admission bound by a few percent per batch; while fewer than half a percent do, it lets the
   bound grow back (never above ADMIT_FRACTION * T). The estimate sets the scale at once, the
   feedback trims it to what the machine actually delivers.
5. **Retry hints.** A refused request's hint is the time for what is queued now to drain, and
   at least a floor of RETRY_TARGETS targets that stretches with the refusals: every refusal is a
   full round trip for both sides, paid from the cores the model runs on. The clients parked on
   hints number about refusal rate x hint (Little's law), so the same clients spread over a
   hint k times longer come back k times less often. Every HINT_PERIOD_TARGETS targets the
   floor moves by the square root of refused / (REFUSED_SHARE x answered) (at most 2x either
   way, between RETRY_TARGETS and RETRY_TARGETS_MAX targets): refusals settle near a tenth of
   the answered requests, and without refusals the floor falls back to its least in a few periods.
   Each hint is the floor times a random factor in 1 +- RETRY_JITTER, so that clients refused in
   one burst come back spread over the floor's width instead of in one burst.

The controller holds plain numbers and uses no clock of its own, so tests drive it with a fake one.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

ADMIT_FRACTION = 0.8
"""Admit a request only if its estimated completion is within this fraction of the target:
the estimate is a mean, the target a p99."""

DECAY = 0.97
"""Weight kept by older observations at each new one (about the last 30 batches matter)."""

SETPOINT = 0.6
"""Feedback aims the p99 of batcher time (queue + execution) at this fraction of the target:
the rest is for the time outside the batcher (decoding, gRPC, the network, the client), whose
tail on a saturated 2-core machine measured 7-18 ms against a 50 ms target."""

TAIL = 0.01
"""The fraction of requests allowed over the setpoint (a p99)."""

FEEDBACK_GAIN = 0.05
"""Weight of the newest batch in the running fraction of requests over the setpoint."""

SHRINK, GROW, MIN_SCALE = 0.97, 1.01, 0.05
"""Per-batch factors on the admission bound while over / well under the tail, and its floor."""

RETRY_TARGETS, RETRY_TARGETS_MAX = 2.0, 20.0
"""The retry hint's floor, in target periods: where it starts and rests, and its ceiling."""

RETRY_JITTER = 0.5
"""A refusal's hint is at least the floor times a uniform factor in [1 - this, 1 + this] (mean: the
floor). Without it the clients refused in one burst came back in one, filled the queue and were
refused together again, while the instance ran batches of one row in between (CNN at C=64, 50 ms
target, 6 interleaved fresh-server rounds on the 2-core sandbox: p99 37.3 [35.6-38.8] ms against
44.1 [42.8-45.8], 425 [415-485] against 446 [429-466] answered/s)."""

REFUSED_SHARE = 0.1
"""The floor stretches until refusals are about this share of the answered requests."""

HINT_PERIOD_TARGETS = 10.0
"""The floor is re-derived once per this many target periods of traffic (0.5 s for a 50 ms target)."""

MIN_OBSERVATIONS = 3
"""Below this many observations the controller admits everything and does not cap."""


@dataclass(slots=True)
class CostModel:
    """Exponentially weighted least squares of batch time (ns) against rows."""

    s0: float = 0.0
    s1: float = 0.0
    s2: float = 0.0
    sy: float = 0.0
    sxy: float = 0.0
    observations: int = 0

    def observe(self, rows: int, ns: int) -> None:
        d = DECAY
        self.s0 = self.s0 * d + 1.0
        self.s1 = self.s1 * d + rows
        self.s2 = self.s2 * d + rows * rows
        self.sy = self.sy * d + ns
        self.sxy = self.sxy * d + rows * ns
        self.observations += 1

    def line(self) -> tuple[float, float]:
        """(fixed ns, ns per row), both >= 0."""
        if self.s0 == 0:
            return 0.0, 0.0
        denominator = self.s0 * self.s2 - self.s1 * self.s1
        if denominator <= 1e-9 * max(self.s0 * self.s2, 1.0):
            # Every observation at one batch size: no slope to fit; take time proportional to rows.
            return 0.0, self.sy / max(self.s1, 1e-9)
        per_row = (self.s0 * self.sxy - self.s1 * self.sy) / denominator
        fixed = (self.sy - per_row * self.s1) / self.s0
        if per_row < 0:  # noise on a flat curve
            return self.sy / self.s0, 0.0
        if fixed < 0:
            return 0.0, self.sy / max(self.s1, 1e-9)
        return fixed, per_row

    def predict(self, rows: int) -> float:
        fixed, per_row = self.line()
        return fixed + per_row * rows


class LatencyController:
    """Batch cap and admission for one model version under a p99 latency target."""

    def __init__(
        self, target_ms: float, instances: int, max_batch_size: int, rng: random.Random | None = None
    ) -> None:
        self.target_ns = target_ms * 1e6
        self.instances = max(instances, 1)
        self.max_batch_size = max(max_batch_size, 1)
        self.cost = CostModel()
        self.admit_scale = 1.0
        """Feedback's factor on the admission bound, in [MIN_SCALE, 1]."""
        self.over_rate = 0.0
        """Running fraction of answered requests whose batcher time exceeded the setpoint."""
        self.retry_floor_ns = RETRY_TARGETS * self.target_ns
        """The retry hints' floor now (step 5 of the module docstring; each hint is jittered around it)."""
        self._random = (rng or random.Random()).random
        """Uniform [0, 1) draws for the hints' jitter (tests pass a seeded generator)."""
        self._period_start_ns: int | None = None
        self._refused = 0
        self._answered = 0

    @property
    def setpoint_ns(self) -> float:
        return SETPOINT * self.target_ns

    @property
    def admit_bound_ns(self) -> float:
        """The longest estimated completion time admitted now."""
        return ADMIT_FRACTION * self.admit_scale * self.target_ns

    @property
    def ready(self) -> bool:
        return self.cost.observations >= MIN_OBSERVATIONS

    def observe(self, rows: int, ns: int) -> None:
        """Record one executed batch (rows, dispatch-to-result wall time)."""
        self.cost.observe(rows, ns)

    def observe_latencies(self, over: int, answered: int, now_ns: int) -> None:
        """Feedback from one answered batch: `over` of its `answered` requests exceeded the setpoint."""
        if answered <= 0:
            return
        self._answered += answered
        self._next_period(now_ns)
        self.over_rate += FEEDBACK_GAIN * (over / answered - self.over_rate)
        if self.over_rate > TAIL:
            self.admit_scale = max(MIN_SCALE, self.admit_scale * SHRINK)
        elif self.over_rate < TAIL / 2:
            self.admit_scale = min(1.0, self.admit_scale * GROW)

    def batch_cap(self) -> int:
        """The largest batch whose execution leaves room for one batch of waiting."""
        if not self.ready:
            return self.max_batch_size
        fixed, per_row = self.cost.line()
        budget = self.setpoint_ns / 2 - fixed
        if per_row <= 0:
            return self.max_batch_size if budget > 0 else 1
        return max(1, min(self.max_batch_size, math.floor(budget / per_row + 1e-9)))

    def estimate_ns(self, rows_ahead: int, rows: int, busy_instances: int) -> float:
        """Expected time until a request of `rows` rows, behind `rows_ahead`, is answered."""
        cap = self.batch_cap()
        batches = math.ceil((rows_ahead + rows) / cap)
        rounds = math.ceil(batches / self.instances)
        per_batch = self.cost.predict(min(cap, rows_ahead + rows))
        # If every instance is busy, on average half a batch remains before one frees up.
        running = 0.5 * per_batch if busy_instances >= self.instances else 0.0
        return running + rounds * per_batch

    def retry_after_ns(self, refused_estimate_ns: float) -> float:
        """The retry hint for a request refused with `refused_estimate_ns`.

        When what is queued now has drained, and no sooner than the floor (step 5) times a random
        factor in 1 +- RETRY_JITTER: a client refused for the target's sake that came back sooner
        would most likely be refused again, and each refusal costs both sides a round trip (in a
        closed loop at concurrency 64 on the CNN, hints of 2, 4 and 8 targets left 464, 221 and 113
        refusals/s and answered 844, 918 and 932 requests/s).
        """
        jitter = 1.0 + RETRY_JITTER * (2.0 * self._random() - 1.0)
        return max(refused_estimate_ns, self.retry_floor_ns * jitter)

    def admit(self, rows_ahead: int, rows: int, busy_instances: int, now_ns: int) -> float | None:
        """None if the request may join the queue, else the estimate (ns) that refuses it."""
        if not self.ready or (rows_ahead == 0 and busy_instances < self.instances):
            return None  # nothing ahead and an instance free: refusing would not make anything faster
        estimate = self.estimate_ns(rows_ahead, rows, busy_instances)
        if estimate <= self.admit_bound_ns:
            return None
        self._refused += 1
        self._next_period(now_ns)
        return estimate

    def refused_late(self, now_ns: int) -> float:
        """Count a queued request failed as its batch started (it would have been answered after the
        target) as a refusal; returns its retry hint (ns), the jittered floor."""
        self._refused += 1
        self._next_period(now_ns)
        return self.retry_after_ns(0.0)

    def _next_period(self, now_ns: int) -> None:
        """At the end of a hint period, move the retry floor (step 5) and start the next period."""
        if self._period_start_ns is None:
            self._period_start_ns = now_ns
            return
        if now_ns - self._period_start_ns < HINT_PERIOD_TARGETS * self.target_ns:
            return
        want = self._refused / max(REFUSED_SHARE * self._answered, 1.0)
        factor = min(2.0, max(0.5, math.sqrt(want)))  # half the step each period: hints act one hint later
        least, most = RETRY_TARGETS * self.target_ns, RETRY_TARGETS_MAX * self.target_ns
        self.retry_floor_ns = min(most, max(least, self.retry_floor_ns * factor))
        self._period_start_ns = now_ns
        self._refused = self._answered = 0
