"""Fixed-bucket histograms for the hot path, exposed as Prometheus histograms at scrape time.

A `Histogram` is a list of integer bucket counts and a running sum: one `observe` is a
`bisect` and two integer additions, with no lock and no float conversion. It is updated
only on the event loop thread (inside the `ModelStats.record_*` calls); a scrape on the HTTP
thread copies the counts once, so its buckets, `_count` and `+Inf` always agree.

Durations are observed in nanoseconds and exposed in seconds, as Prometheus wants.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass, field

LATENCY_BUCKETS_S: tuple[float, ...] = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0
)
"""Upper bounds for request, queue and compute durations: 100 us to 10 s, about 2.5x apart."""

BATCH_SIZE_BUCKETS: tuple[float, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
"""Upper bounds for rows per execution: powers of two (batch caps usually are)."""

LATENCY_BOUNDS_NS: tuple[int, ...] = tuple(round(b * 1e9) for b in LATENCY_BUCKETS_S)
BATCH_SIZE_BOUNDS: tuple[int, ...] = tuple(int(b) for b in BATCH_SIZE_BUCKETS)


@dataclass(slots=True)
class Histogram:
    """Counts of observations at or below each bound (non-cumulative) plus one overflow bucket."""

    bounds: tuple[int, ...]
    counts: list[int] = field(default_factory=list)
    total: int = 0

    def __post_init__(self) -> None:
        if list(self.bounds) != sorted(set(self.bounds)):
            raise ValueError(f"histogram bounds must be strictly increasing, got {self.bounds}")
        if not self.counts:
            self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, value: int) -> None:
        # bisect_left: a value equal to a bound belongs to that bound's bucket (Prometheus `le`).
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def snapshot(self, divisor: float = 1.0) -> tuple[list[tuple[str, float]], float]:
        """Cumulative (le, count) buckets ending with +Inf, and the sum; bounds and sum / `divisor`.

        The `_count` of the exposed histogram is the +Inf bucket.
        """
        counts = list(self.counts)  # one copy: buckets and count agree even mid-update
        total = self.total
        buckets: list[tuple[str, float]] = []
        running = 0
        for bound, count in zip(self.bounds, counts, strict=False):
            running += count
            buckets.append((repr(bound / divisor), float(running)))  # 0.0001, 2.5, 16.0: as Go writes them
        running += counts[-1]
        buckets.append(("+Inf", float(running)))
        return buckets, total / divisor

    @property
    def count(self) -> int:
        return sum(self.counts)


def latency_histogram() -> Histogram:
    return Histogram(LATENCY_BOUNDS_NS)


def batch_size_histogram() -> Histogram:
    return Histogram(BATCH_SIZE_BOUNDS)
