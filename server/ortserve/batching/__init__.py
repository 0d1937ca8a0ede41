"""The batching room: per-model queues and the dynamic batcher.

Owns: gathering concurrent requests into batches (counted in rows), dispatching each batch
to an idle model instance on that instance's worker thread, concatenating inputs once and
handing every request its slice of the outputs (views, no copy), deadlines and
cancellation in the queue.

Must not import: grpc, protobuf or generated stubs, onnxruntime. It is handed the blocking
functions that run a batch, one per model instance.
"""

from ortserve.batching.batcher import BatchResult, DynamicBatcher
from ortserve.batching.tensors import concat_inputs, split_outputs

__all__ = ["BatchResult", "DynamicBatcher", "concat_inputs", "split_outputs"]
