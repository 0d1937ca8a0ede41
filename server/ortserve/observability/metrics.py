"""Prometheus exposition of the per-model statistics: Triton's families and ortserve's own.

Both collectors read the `ModelStats` counters and histograms (and the batchers' queue
lengths) at scrape time, so the request path pays nothing for metrics beyond the statistics
it keeps anyway. They are registered on an injected `CollectorRegistry` (tests never share
global state).

`StatsCollector`: Triton's families under their exact names and units, so existing dashboards
and autoscaling rules work. prometheus_client appends `_total` to anything typed counter, which
Triton's names lack, so these cumulative families are exposed untyped. `app` registers it only
while the `triton_metrics` setting is on.

`OrtserveCollector`: the `ortserve_*` families, following Prometheus conventions (seconds,
`_total` counters, histograms), including the autoscaling signal
`ortserve_pending_requests_per_instance`, the batch hold's measurements (`ortserve_batch_handoff_seconds`,
`ortserve_batch_hold{s,_seconds}_total`) and, for model versions in latency-target mode, the
controller's state (`ortserve_latency_target_*`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from ortserve.observability.histograms import Histogram
from ortserve.observability.statistics import ModelStats

StatsSource = Callable[[], Iterable[tuple[str, str, ModelStats]]]
"""Yields (model, version, stats) for every loaded model version."""


class TargetState(Protocol):
    """What a scrape reads of a latency-target controller (batching.LatencyController has these)."""

    @property
    def target_ns(self) -> float: ...

    @property
    def admit_bound_ns(self) -> float: ...

    @property
    def retry_floor_ns(self) -> float: ...

    def batch_cap(self) -> int: ...


class HoldState(Protocol):
    """What a scrape reads of a batcher's hold (batching.hold.BatchHold has these)."""

    @property
    def overhead_ns(self) -> float: ...

    @property
    def holds(self) -> int: ...

    @property
    def held_ns(self) -> int: ...


class BatcherLoad(Protocol):
    """What a scrape reads of a model version's batcher (DynamicBatcher has these)."""

    @property
    def queued_requests(self) -> int: ...

    @property
    def running_requests(self) -> int: ...

    @property
    def instances(self) -> int: ...

    @property
    def controller(self) -> TargetState | None: ...

    @property
    def hold(self) -> HoldState | None: ...

    @property
    def batches_rerun(self) -> int: ...

    @property
    def batches_stopped(self) -> int: ...


LoadSource = Callable[[], Iterable[tuple[str, str, BatcherLoad]]]
"""Yields (model, version, batcher) for every loaded model version."""

LABELS = ("model", "version")

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
    ("nv_cache_num_hits_per_model", "Number of response cache hits per model", lambda s: s.cache_hit.count),
    ("nv_cache_num_misses_per_model", "Number of response cache misses per model", lambda s: s.cache_miss.count),
    (
        "nv_cache_hit_duration_per_model",
        "Cumulative response cache hit lookup duration in microseconds",
        lambda s: s.cache_hit.ns // 1000,
    ),
    (
        "nv_cache_miss_duration_per_model",
        "Cumulative response cache miss lookup and insert duration in microseconds",
        lambda s: s.cache_miss.ns // 1000,
    ),
)

_HISTOGRAMS: tuple[tuple[str, str, Callable[[ModelStats], Histogram], float], ...] = (
    (
        "ortserve_request_duration_seconds",
        "End-to-end duration of successful inference requests in the server, in seconds.",
        lambda s: s.request_duration,
        1e9,
    ),
    (
        "ortserve_queue_duration_seconds",
        "Time successful requests waited until a worker began their batch (queue and handoff), in seconds.",
        lambda s: s.queue_duration,
        1e9,
    ),
    (
        "ortserve_compute_duration_seconds",
        "Duration of each model execution (concatenate, run, split), in seconds.",
        lambda s: s.compute_duration,
        1e9,
    ),
    ("ortserve_batch_size", "Batch rows of each model execution.", lambda s: s.batch_rows, 1.0),
)
"""(name, help, the ModelStats histogram, divisor from its unit to the exposed one)."""


class StatsCollector(Collector):
    """Triton's nv_inference_* families over the live model statistics.

    With a `load` source it also exposes the gauge `nv_inference_pending_request_count`
    (requests waiting in the queue, as Triton counts them).
    """

    def __init__(self, source: StatsSource, load: LoadSource | None = None) -> None:
        self._source = source
        self._load = load

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
        if self._load is not None:
            pending = GaugeMetricFamily(
                "nv_inference_pending_request_count",
                "Instantaneous number of pending requests awaiting execution per-model.",
                labels=LABELS,
            )
            for model, version, batcher in self._load():
                pending.add_metric((model, version), batcher.queued_requests)
            yield pending


class OrtserveCollector(Collector):
    """The ortserve_* families (module docstring); the load source feeds the autoscaling gauge."""

    def __init__(self, source: StatsSource, load: LoadSource | None = None) -> None:
        self._source = source
        self._load = load

    def collect(self) -> Iterator[Metric]:
        rows = list(self._source())
        requests = CounterMetricFamily(
            "ortserve_requests", "Inference requests answered, successful or not.", labels=LABELS
        )
        failures = CounterMetricFamily(
            "ortserve_request_failures",
            "Failed inference requests by reason (REJECTED: invalid input, including values the model "
            "rejects as it runs, queue full, deadline passed; CANCELED: by the client; BACKEND: the model "
            "run failed; OTHER).",
            labels=(*LABELS, "reason"),
        )
        rows_total = CounterMetricFamily(
            "ortserve_inference_rows", "Batch rows inferred by successful requests.", labels=LABELS
        )
        histograms = [
            (HistogramMetricFamily(name, doc, labels=LABELS), read, divisor) for name, doc, read, divisor in _HISTOGRAMS
        ]
        for model, version, stats in rows:
            labels = (model, version)
            requests.add_metric(labels, stats.success.count + stats.fail.count)
            rows_total.add_metric(labels, stats.inference_count)
            for reason, count in sorted(stats.failures_by_reason.items()):
                failures.add_metric((model, version, reason), count)
            for family, read, divisor in histograms:
                buckets, total = read(stats).snapshot(divisor)
                family.add_metric(labels, buckets, total)
        yield requests
        yield failures
        yield rows_total
        for family, _, _ in histograms:
            yield family
        pending = GaugeMetricFamily(
            "ortserve_pending_requests_per_instance",
            "Requests queued or in running batches, divided by the model version's instances "
            "(the autoscaling signal: it rises before latency does).",
            labels=LABELS,
        )
        targets = [
            GaugeMetricFamily(name, doc, labels=LABELS)
            for name, doc in (
                ("ortserve_latency_target_seconds", "The p99 latency target of a model version (latency-target mode)."),
                (
                    "ortserve_latency_target_admission_bound_seconds",
                    "The longest estimated completion a request is admitted with now (below the target; "
                    "shrinks while the measured tail is over the setpoint).",
                ),
                ("ortserve_latency_target_batch_cap", "The largest batch (rows) the controller lets run now."),
                (
                    "ortserve_latency_target_retry_after_seconds",
                    "The retry-after-ms hints' floor now: a refusal's hint is at least the floor times a random factor "
                    "in 0.5-1.5 (the floor stretches while refusals are many).",
                ),
            )
        ]
        handoff = GaugeMetricFamily(
            "ortserve_batch_handoff_seconds",
            "What handing a batch to its instance's thread and its answers back to the event loop costs, "
            "measured (moving average); the batch hold waits only while requests arrive faster than this.",
            labels=LABELS,
        )
        holds = CounterMetricFamily(
            "ortserve_batch_holds",
            "Batches that waited for more rows at high load (the batch hold; batch_hold auto).",
            labels=LABELS,
        )
        held = CounterMetricFamily(
            "ortserve_batch_hold_seconds", "Time batches spent waiting for more rows (the batch hold).", labels=LABELS
        )
        rerun = CounterMetricFamily(
            "ortserve_batches_rerun",
            "Batches whose run failed and that were run again in parts, so that only the requests the model "
            "fails on alone fail (one caller's bad values, e.g. an index out of range).",
            labels=LABELS,
        )
        stopped = CounterMetricFamily(
            "ortserve_batches_stopped",
            "Runs stopped before their end because the callers of all their requests went away "
            "(cancelled, or past their deadline).",
            labels=LABELS,
        )
        for model, version, batcher in self._load() if self._load is not None else ():
            labels = (model, version)
            pending.add_metric(labels, (batcher.queued_requests + batcher.running_requests) / max(batcher.instances, 1))
            rerun.add_metric(labels, batcher.batches_rerun)
            stopped.add_metric(labels, batcher.batches_stopped)
            hold = batcher.hold
            if hold is not None:
                handoff.add_metric(labels, hold.overhead_ns / 1e9)
                holds.add_metric(labels, hold.holds)
                held.add_metric(labels, hold.held_ns / 1e9)
            controller = batcher.controller
            if controller is not None:
                for gauge, reading in zip(
                    targets,
                    (
                        controller.target_ns / 1e9,
                        controller.admit_bound_ns / 1e9,
                        controller.batch_cap(),
                        controller.retry_floor_ns / 1e9,
                    ),
                    strict=True,
                ):
                    gauge.add_metric(labels, reading)
        yield pending
        yield rerun
        yield stopped
        yield handoff
        yield holds
        yield held
        yield from targets


class SharedMemoryCollector(Collector):
    """ortserve_shared_memory_{regions,bytes}: what same-host clients have registered (read at scrape)."""

    def __init__(self, usage: Callable[[], tuple[int, int]]) -> None:
        self._usage = usage
        """() -> (regions, bytes) currently registered."""

    def collect(self) -> Iterator[Metric]:
        regions, size = self._usage()
        yield GaugeMetricFamily(
            "ortserve_shared_memory_regions", "System shared memory regions registered by clients.", value=regions
        )
        yield GaugeMetricFamily(
            "ortserve_shared_memory_bytes", "Bytes of the registered system shared memory regions.", value=size
        )
