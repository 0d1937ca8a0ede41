"""The observability room: per-model statistics and Prometheus metrics.

Owns: the counters behind ModelStatistics (counts and nanoseconds, as Triton reports them)
and their exposition on /metrics. The hot path pays one `ModelStats.record_*` call per
request or batch; the Prometheus families are read from those counters at scrape time.

Must not import: grpc, protobuf or generated stubs, onnxruntime.
"""

from ortserve.observability.metrics import StatsCollector
from ortserve.observability.statistics import BatchSizeStats, Duration, ModelStats

__all__ = ["BatchSizeStats", "Duration", "ModelStats", "StatsCollector"]
