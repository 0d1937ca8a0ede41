"""The latency-target controller: an online batch-cost model, a batch-size cap, and admission.

Given a p99 target T for a model version, it keeps the p99 under T while throughput stays
as high as the target allows:

1. **Cost model.** Every executed batch reports (rows, wall time). An exponentially weighted
   least-squares line t(b) = fixed + per_row * b follows the model as load and machine change
   (the decay forgets old points), seeded by the warm-up runs.
2. **Batch cap.** A request can wait for the batch before it and then run in its own, so the
   largest batch allowed is the largest b with 2 * t(b) <= T.
3. **Admission.** A new request's completion time is estimated from the rows queued ahead of
   it at its priority and above, the instances, and t(cap). If it cannot finish within
   ADMIT_FRACTION * T (or before its own deadline) it is rejected at once, instead of being
   computed late: a fast UNAVAILABLE lets the client retry elsewhere.

The controller holds plain numbers and uses no clock of its own, so tests drive it with a fake one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

ADMIT_FRACTION = 0.8
"""Admit a request only if its estimated completion is within this fraction of the target:
the estimate is a mean, the target a p99."""

DECAY = 0.97
"""Weight kept by older observations at each new one (about the last 30 batches matter)."""

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

    def __init__(self, target_ms: float, instances: int, max_batch_size: int) -> None:
        self.target_ns = target_ms * 1e6
        self.instances = max(instances, 1)
        self.max_batch_size = max(max_batch_size, 1)
        self.cost = CostModel()

    @property
    def ready(self) -> bool:
        return self.cost.observations >= MIN_OBSERVATIONS

    def observe(self, rows: int, ns: int) -> None:
        """Record one executed batch (rows, dispatch-to-result wall time)."""
        self.cost.observe(rows, ns)

    def batch_cap(self) -> int:
        """The largest batch whose execution leaves room for one batch of waiting."""
        if not self.ready:
            return self.max_batch_size
        fixed, per_row = self.cost.line()
        budget = self.target_ns / 2 - fixed
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

    def admit(self, rows_ahead: int, rows: int, busy_instances: int) -> float | None:
        """None if the request may join the queue, else the estimate (ns) that refuses it."""
        if not self.ready:
            return None
        estimate = self.estimate_ns(rows_ahead, rows, busy_instances)
        return None if estimate <= ADMIT_FRACTION * self.target_ns else estimate
