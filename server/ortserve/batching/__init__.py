"""The batching room: per-model queues and the dynamic batcher.

Owns: gathering concurrent requests into batches (counted in rows), priorities and queue
policies, deadlines and cancellation in the queue, the latency-target controller,
dispatching each batch to an idle model instance on that instance's worker thread,
concatenating inputs once and handing every request its slice of the outputs (views).

Must not import: grpc, protobuf or generated stubs, onnxruntime. It is handed the blocking
functions that run a batch, one per model instance, and a BatchPolicy of plain values.
"""

from ortserve.batching.batcher import (
    BatchObserver,
    BatchReport,
    BatchResult,
    DynamicBatcher,
)
from ortserve.batching.controller import LatencyController
from ortserve.batching.policy import BatchPolicy, QueuePolicy
from ortserve.batching.tensors import concat_inputs, split_outputs
from ortserve.errors import LatencyTargetError

__all__ = [
    "BatchObserver",
    "BatchPolicy",
    "BatchReport",
    "BatchResult",
    "DynamicBatcher",
    "LatencyController",
    "LatencyTargetError",
    "QueuePolicy",
    "concat_inputs",
    "split_outputs",
]
