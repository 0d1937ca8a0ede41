"""The runtime room: ONNX Runtime sessions, execution providers and thread division.

Owns:
- loading an ONNX model file as one InferenceSession per instance (OnnxModel.load, blocking:
  the caller runs it in a thread) and reading its signature (TensorInfo: KServe datatype names,
  -1 for symbolic dims);
- the blocking run of one instance (OrtInstance.run), used by exactly one worker thread at a
  time, with BYTES <-> ONNX string conversion done here and nowhere else;
- the choice of execution providers (CUDA or CPU) and the truth about which one a session
  really got, from the session itself;
- how many intra-op threads each instance gets, honouring CPU affinity and cgroup quotas.

Raises only ortserve.errors: ModelLoadError while loading, InternalError (and InvalidInputError
for BYTES that are not UTF-8) while running.

This is the only room that imports onnxruntime. It must not import grpc, protobuf, asyncio or
the model-configuration proto: the repository room translates a model's config into
InstanceSpec and RuntimeOptions, and the batching room is handed OrtInstance.run.
"""

from ortserve.runtime.providers import choose_providers
from ortserve.runtime.session import InstanceSpec, OnnxModel, OrtInstance, RuntimeOptions, TensorInfo
from ortserve.runtime.threads import available_cores, threads_per_instance

__all__ = [
    "InstanceSpec",
    "OnnxModel",
    "OrtInstance",
    "RuntimeOptions",
    "TensorInfo",
    "available_cores",
    "choose_providers",
    "threads_per_instance",
]
