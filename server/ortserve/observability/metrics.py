"""Prometheus exposition of the per-model statistics, with Triton's family names.

`StatsCollector` reads the `ModelStats` counters at scrape time, so the request path pays
nothing for metrics beyond the statistics it keeps anyway. It is registered on an injected
`CollectorRegistry` (tests never share global state).

The families keep Triton's exact names so existing dashboards work. prometheus_client
appends `_total` to anything typed counter, which Triton's names lack, so these
cumulative families are exposed untyped under their exact names.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from ortserve.observability.statistics import ModelStats

StatsSource = Callable[[], Iterable[tuple[str, str, ModelStats]]]
"""Yields (model, version, stats) for every loaded model version."""

_FAMILIES: tuple[tuple[str, str, Callable[[ModelStats], int]], ...] = (
    ("nv_inference_request_success", "Number of successful inference requests", lambda s: s.success.count),
    ("nv_inference_count", "Number of inferences performed (batch rows)", lambda s: s.inference_count),
    ("nv_inference_exec_count", "Number of model executions performed", lambda s: s.execution_count),
    (
        "nv_inference_request_duration_us",
        "Cumulative end-to-end inference request duration in microseconds",
        lambda s: (s.success.ns + s.fail.ns) // 1000,
    ),
    ("nv_inference_queue_duration_us", "Cumulative queue wait in microseconds", lambda s: s.queue.ns // 1000),
    (
        "nv_inference_compute_input_duration_us",
        "Cumulative compute input duration in microseconds",
        lambda s: s.compute_input.ns // 1000,
    ),
    (
        "nv_inference_compute_infer_duration_us",
        "Cumulative compute infer duration in microseconds",
        lambda s: s.compute_infer.ns // 1000,
    ),
    (
        "nv_inference_compute_output_duration_us",
        "Cumulative compute output duration in microseconds",
        lambda s: s.compute_output.ns // 1000,
    ),
)


class StatsCollector(Collector):
    """A prometheus_client collector over the live model statistics."""

    def __init__(self, source: StatsSource) -> None:
        self._source = source

    def collect(self) -> Iterator[Metric]:
        rows = list(self._source())
        for name, doc, read in _FAMILIES:
            family = Metric(name, doc, "unknown")
            for model, version, stats in rows:
                family.add_sample(name, {"model": model, "version": version}, read(stats))
            yield family
        failures = Metric(
            "nv_inference_request_failure", "Number of failed inference requests", "unknown"
        )
        for model, version, stats in rows:
            for reason, count in sorted(stats.failures_by_reason.items()):
                failures.add_sample(
                    "nv_inference_request_failure",
                    {"model": model, "version": version, "reason": reason},
                    count,
                )
        yield failures
