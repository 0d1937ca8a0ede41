"""The protocol room: the only place that imports grpc and the generated service stubs.

Owns: the GRPCInferenceService servicer (KServe V2 / Triton), the tensor codec between
protobuf messages and numpy, Triton's system shared memory regions (tensors that skip the
wire), the exception -> status code table, the standard grpc.health.v1 service, and the HTTP
side port for probes and metrics.

Calls into the DataPlane only; holds no policy.
"""

from ortserve.protocol.http import HealthMetricsServer
from ortserve.protocol.servicer import InferenceServicer, add_inference_service
from ortserve.protocol.shared_memory import SharedMemoryRegistry

__all__ = ["HealthMetricsServer", "InferenceServicer", "SharedMemoryRegistry", "add_inference_service"]
