"""Cumulative inference statistics of one model version, in Triton's terms, and its histograms.

Updated only on the event loop thread (the batcher reports on it), so no lock is needed;
a scrape reading them from another thread sees each integer whole. The same `record_*`
call that adds to Triton's counters also fills the Prometheus histograms, so the request
path makes one call per request and one per batch for all of its metrics.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from ortserve.observability.histograms import Histogram, batch_size_histogram, latency_histogram


@dataclass(slots=True)
class Duration:
    """A count of events and their total duration in nanoseconds."""

    count: int = 0
    ns: int = 0

    def add(self, ns: int, count: int = 1) -> None:
        self.count += count
        self.ns += ns


@dataclass(slots=True)
class BatchSizeStats:
    """Executions of one batch size and their compute durations."""

    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)


@dataclass(slots=True)
class ModelStats:
    """What ModelStatistics reports for one model version.

    Per request (as Triton counts them): success/fail with end-to-end duration, queue
    wait, and the compute durations of the batch the request ran in. Per execution:
    execution_count and the per-batch-size breakdown. inference_count counts rows.
    Histograms (ns, rows): end-to-end and queue time of each successful request; compute
    time (input + infer + output) and rows of each execution.
    """

    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)
    inference_count: int = 0
    execution_count: int = 0
    last_inference_ms: int = 0
    failures_by_reason: dict[str, int] = field(default_factory=dict)
    batch_sizes: dict[int, BatchSizeStats] = field(default_factory=dict)
    request_duration: Histogram = field(default_factory=latency_histogram)
    queue_duration: Histogram = field(default_factory=latency_histogram)
    compute_duration: Histogram = field(default_factory=latency_histogram)
    batch_rows: Histogram = field(default_factory=batch_size_histogram)
    cache_hit: Duration = field(default_factory=Duration)
    """Response-cache hits and their lookup time (the request counts in success, not in inference_count)."""
    cache_miss: Duration = field(default_factory=Duration)
    """Response-cache misses and their lookup + insert time."""

    def record_success(
        self,
        rows: int,
        duration_ns: int,
        queue_ns: int,
        compute_input_ns: int,
        compute_infer_ns: int,
        compute_output_ns: int,
    ) -> None:
        """One request answered: its end-to-end, queue and compute times."""
        self.success.add(duration_ns)
        self.queue.add(queue_ns)
        self.compute_input.add(compute_input_ns)
        self.compute_infer.add(compute_infer_ns)
        self.compute_output.add(compute_output_ns)
        self.inference_count += rows
        self.last_inference_ms = time.time_ns() // 1_000_000
        self.request_duration.observe(duration_ns)
        self.queue_duration.observe(queue_ns)

    def record_cache_hit(self, duration_ns: int, lookup_ns: int) -> None:
        """One request answered from the response cache (Triton: no queue, compute or inference_count)."""
        self.success.add(duration_ns)
        self.cache_hit.add(lookup_ns)
        self.last_inference_ms = time.time_ns() // 1_000_000
        self.request_duration.observe(duration_ns)

    def record_failure(self, duration_ns: int, reason: str) -> None:
        """One request failed; `reason` is a short label (REJECTED, CANCELED, BACKEND, OTHER)."""
        self.fail.add(duration_ns)
        self.failures_by_reason[reason] = self.failures_by_reason.get(reason, 0) + 1
        self.last_inference_ms = time.time_ns() // 1_000_000

    def record_batch(
        self, rows: int, compute_input_ns: int, compute_infer_ns: int, compute_output_ns: int
    ) -> None:
        """One model execution of `rows` rows."""
        self.execution_count += 1
        stats = self.batch_sizes.get(rows)
        if stats is None:
            stats = self.batch_sizes[rows] = BatchSizeStats()
        stats.compute_input.add(compute_input_ns)
        stats.compute_infer.add(compute_infer_ns)
        stats.compute_output.add(compute_output_ns)
        self.compute_duration.observe(compute_input_ns + compute_infer_ns + compute_output_ns)
        self.batch_rows.observe(rows)
