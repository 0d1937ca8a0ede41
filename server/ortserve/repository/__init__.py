"""The repository room: the model repository on disk and the models loaded from it.

Owns: discovering `<repo>/<model>/<version>/model.onnx`, reading and completing
`config.pbtxt` (Triton's text format; parsed with the generated `model_config_pb2`, the
schema of that file), version policies, loading each version (sessions from `runtime`, a
batcher from `batching`, statistics from `observability`), states and reasons, and the
signature check of a request's tensors. Model management: control modes and the repository poll
(control.py), version weights (routing.py), the response cache (cache.py), warm-up samples
(warmup.py), fingerprints and uploaded files (files.py), validation records (validation.py).

Must not import: grpc, the gRPC service stubs, onnxruntime (the runtime room owns it).
"""

from ortserve.repository.model import ModelVersion
from ortserve.repository.registry import IndexEntry, ModelRegistry
from ortserve.repository.signature import Signature, TensorSpec

__all__ = ["IndexEntry", "ModelRegistry", "ModelVersion", "Signature", "TensorSpec"]
