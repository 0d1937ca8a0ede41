"""Client-side latencies of every inference, per model and per second, mergeable across processes.

Why not Locust's own statistics: Locust rounds each response time to a whole millisecond below
100 ms (to 10 ms below 1 s), too coarse for a model answering in 0.3 ms and for a p99 target of
a few ms. Here every sample falls in a log-scale bucket 1 % wide (the value reported for a bucket
is within 0.5 % of every sample in it), so percentiles carry ~0.5 % relative error at any scale.

Samples are kept in one `Window` per model and wall-clock second, so that a load shape can judge
a stage on the seconds it covered (the knee search), and so that a worker's windows merge into
the master's whatever order the reports arrive in (distributed and `--processes` runs). Latency
percentiles count successful requests only: a fast failure must not make the p99 look good.
Pure Python (no Locust, no gevent): the unit tests import it directly.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

GROWTH = 1.01
"""Each bucket is 1 % wider than the one before."""
_PER_LN = 1.0 / math.log(GROWTH)


def bucket_of(latency_ms: float) -> int:
    """The bucket of a latency: floor(log_1.01(latency in µs)); everything under 1 µs is bucket 0."""
    micros = latency_ms * 1000.0
    return int(math.log(micros) * _PER_LN) if micros > 1.0 else 0


def bucket_value_ms(bucket: int) -> float:
    """The latency a bucket stands for: the geometric middle of its bounds, in ms."""
    return math.exp((bucket + 0.5) / _PER_LN) / 1000.0


@dataclass(slots=True)
class Window:
    """The samples of one model in one second."""

    ok: int = 0
    errors: int = 0
    latency_sum_ms: float = 0.0
    """Sum of the successful requests' latencies (for the mean)."""
    first_ts: float = math.inf
    """Wall-clock time of the first and last sample (any outcome), for the throughput's duration."""
    last_ts: float = 0.0
    buckets: dict[int, int] = field(default_factory=dict)
    """Latency histogram of the successful requests: bucket -> count."""

    def add(self, latency_ms: float, ok: bool, ts: float) -> None:
        if ok:
            self.ok += 1
            self.latency_sum_ms += latency_ms
            bucket = bucket_of(latency_ms)
            self.buckets[bucket] = self.buckets.get(bucket, 0) + 1
        else:
            self.errors += 1
        self.first_ts = min(self.first_ts, ts)
        self.last_ts = max(self.last_ts, ts)

    def merge(self, other: Window) -> None:
        self.ok += other.ok
        self.errors += other.errors
        self.latency_sum_ms += other.latency_sum_ms
        self.first_ts = min(self.first_ts, other.first_ts)
        self.last_ts = max(self.last_ts, other.last_ts)
        for bucket, count in other.buckets.items():
            self.buckets[bucket] = self.buckets.get(bucket, 0) + count

    def to_wire(self) -> list[object]:
        """A msgpack-friendly list (Locust ships worker reports as msgpack)."""
        return [self.ok, self.errors, self.latency_sum_ms, self.first_ts, self.last_ts, list(self.buckets.items())]

    @classmethod
    def from_wire(cls, data: list[object]) -> Window:
        ok, errors, total, first, last, buckets = data
        return cls(
            int(ok),  # type: ignore[call-overload]
            int(errors),  # type: ignore[call-overload]
            float(total),  # type: ignore[arg-type]
            float(first),  # type: ignore[arg-type]
            float(last),  # type: ignore[arg-type]
            {int(b): int(c) for b, c in buckets},  # type: ignore[attr-defined]
        )


def percentile_ms(buckets: dict[int, int], q: float) -> float:
    """The q-quantile (0 < q <= 1) of a histogram by nearest rank; NaN when it is empty."""
    total = sum(buckets.values())
    if total == 0:
        return math.nan
    rank = max(1, math.ceil(q * total))
    seen = 0
    for bucket in sorted(buckets):
        seen += buckets[bucket]
        if seen >= rank:
            return bucket_value_ms(bucket)
    raise AssertionError("unreachable: the ranks add up to the total")


@dataclass(frozen=True, slots=True)
class Measured:
    """What one model did over a span of time, as the targets are judged."""

    requests: int
    errors: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    mean_ms: float
    throughput_rps: float
    """Successful requests per second over the span."""

    @property
    def error_ratio(self) -> float:
        return self.errors / self.requests if self.requests else math.nan

    @classmethod
    def of(cls, windows: Iterable[Window], duration_s: float) -> Measured:
        total = Window()
        for window in windows:
            total.merge(window)
        requests = total.ok + total.errors
        return cls(
            requests=requests,
            errors=total.errors,
            p50_ms=percentile_ms(total.buckets, 0.50),
            p95_ms=percentile_ms(total.buckets, 0.95),
            p99_ms=percentile_ms(total.buckets, 0.99),
            mean_ms=total.latency_sum_ms / total.ok if total.ok else math.nan,
            throughput_rps=total.ok / duration_s if duration_s > 0 else math.nan,
        )


class Recorder:
    """Windows of every model: filled by the users (local runs, workers), merged from reports (master)."""

    def __init__(self) -> None:
        self.windows: dict[str, dict[int, Window]] = {}

    def clear(self) -> None:
        self.windows = {}

    def record(self, model: str, latency_ms: float, ok: bool, ts: float) -> None:
        per_second = self.windows.get(model)
        if per_second is None:
            per_second = self.windows[model] = {}
        second = int(ts)
        window = per_second.get(second)
        if window is None:
            window = per_second[second] = Window()
        window.add(latency_ms, ok, ts)

    def drain(self) -> list[list[object]]:
        """Everything recorded since the last drain, as a report for the master; then forget it."""
        report: list[list[object]] = [
            [model, second, window.to_wire()]
            for model, per_second in self.windows.items()
            for second, window in per_second.items()
        ]
        self.windows = {}
        return report

    def merge(self, report: Iterable[list[object]]) -> None:
        """Add a worker's drained report."""
        for model, second, wire in report:
            per_second = self.windows.setdefault(str(model), {})
            window = Window.from_wire(wire)  # type: ignore[arg-type]
            existing = per_second.get(int(second))  # type: ignore[call-overload]
            if existing is None:
                per_second[int(second)] = window  # type: ignore[call-overload]
            else:
                existing.merge(window)

    def models(self) -> list[str]:
        return sorted(self.windows)

    def last_sample_ts(self) -> float:
        """Wall-clock time of the latest sample of any model (0 when there is none)."""
        return max((w.last_ts for per_second in self.windows.values() for w in per_second.values()), default=0.0)

    def measure(self, model: str, start_ts: float, end_ts: float | None = None) -> Measured:
        """One model's numbers from `start_ts` on.

        With `end_ts` (a load stage), the seconds whose middle falls in [start_ts, end_ts) count,
        and the duration is their number: each is taken whole, so a stage is judged on at most
        half a second of its neighbours at either end (`KneeSearch` keeps those its own: it
        leaves at least half a second unjudged at its start and runs on as long after its end).
        Without `end_ts`, every sample counts, over the time from `start_ts` to the run's last
        sample of any model (a whole run, as Locust reckons its rate).
        """
        per_second = self.windows.get(model, {})
        if end_ts is None:
            return Measured.of(per_second.values(), self.last_sample_ts() - start_ts)
        first, last = math.ceil(start_ts - 0.5), math.ceil(end_ts - 0.5)  # s + 0.5 in [start, end)
        return Measured.of((w for s, w in per_second.items() if first <= s < last), max(0, last - first))
