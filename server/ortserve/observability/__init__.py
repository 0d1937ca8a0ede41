"""The observability room: statistics, Prometheus metrics, tracing, structured logs, input drift.

Owns: the counters and histograms behind ModelStatistics and /metrics (Triton's nv_* families
and ortserve's own), the OpenTelemetry spans of requests, queue waits and batch executions,
the log format, and the input-drift monitor of models that ship reference data. The hot path
pays one `ModelStats.record_*` call per request or batch; everything else is read at scrape
time, sampled, or computed off the event loop.

Must not import: grpc, protobuf or generated stubs, onnxruntime, or the rooms above it
(repository, batching, dataplane, protocol): they are reached through small protocols.
"""

from ortserve.observability.drift import DriftCollector, DriftMonitor, DriftOptions, run_drift_schedule
from ortserve.observability.gpu import GpuCollector
from ortserve.observability.histograms import Histogram
from ortserve.observability.logs import configure_logging
from ortserve.observability.metrics import OrtserveCollector, SharedMemoryCollector, StatsCollector
from ortserve.observability.statistics import BatchSizeStats, Duration, ModelStats
from ortserve.observability.tracing import RequestSpan, Tracing, current_request, tracing_from_env

__all__ = [
    "BatchSizeStats",
    "DriftCollector",
    "DriftMonitor",
    "DriftOptions",
    "Duration",
    "GpuCollector",
    "Histogram",
    "ModelStats",
    "OrtserveCollector",
    "SharedMemoryCollector",
    "RequestSpan",
    "StatsCollector",
    "Tracing",
    "configure_logging",
    "current_request",
    "run_drift_schedule",
    "tracing_from_env",
]
