"""Client for ortserve and any KServe V2 / Triton gRPC inference server.

What this package owns: the generated stubs (`ortserve_client.proto`, package `inference`,
generated from the repository's `protos/` by `scripts/generate_stubs.py`) and, over them,
the numpy-friendly clients:

- `InferenceClient` (sync, thread-safe) and `AsyncInferenceClient` (asyncio), both thin over
  one sans-IO request builder (`request`), one response decoder (`result`) and one call
  policy (`policy`: deadline, metadata, circuit breaker);
- `channel`: one long-lived channel per client (targets, TLS/mTLS, auth metadata, keepalive,
  message limits, compression, the service config with round-robin and retries);
- `shared_memory`: inputs in POSIX shared memory regions, for clients on the server's host;
- `errors`: one exception class per status family; `tracing`: W3C trace context injection
  when OpenTelemetry is importable; `cli`: the `ortserve-client` command.

It must import nothing beyond grpcio, protobuf and numpy (OpenTelemetry lazily, if present),
and never the server. Note: protobuf registers every message name once per process, so this
package cannot be imported in the same process as `tritonclient.grpc`, which registers the
same `inference.*` names from its own copy of the protocol.
"""

__version__ = "0.1.0"

from ortserve_client.aio import AsyncInferenceClient
from ortserve_client.channel import TlsConfig
from ortserve_client.client import InferenceClient
from ortserve_client.errors import (
    CircuitOpenError,
    DeadlineExceededError,
    InferenceServerError,
    InternalServerError,
    InvalidInputError,
    ModelNotFoundError,
    PermissionDeniedError,
    RequestCancelledError,
    ResourceExhaustedError,
    ServerUnavailableError,
    UnauthenticatedError,
    UnimplementedError,
)
from ortserve_client.metadata import ModelMetadata, RepositoryModel, ServerMetadata, TensorMetadata
from ortserve_client.request import InferRequest
from ortserve_client.resilience import CircuitBreaker, RetryPolicy
from ortserve_client.result import InferResult
from ortserve_client.shared_memory import SharedMemoryRegion, SharedOutput, SharedTensor

__all__ = [
    "AsyncInferenceClient",
    "CircuitBreaker",
    "CircuitOpenError",
    "DeadlineExceededError",
    "InferRequest",
    "InferResult",
    "InferenceClient",
    "InferenceServerError",
    "InternalServerError",
    "InvalidInputError",
    "ModelMetadata",
    "ModelNotFoundError",
    "PermissionDeniedError",
    "RepositoryModel",
    "RequestCancelledError",
    "ResourceExhaustedError",
    "RetryPolicy",
    "ServerMetadata",
    "ServerUnavailableError",
    "SharedMemoryRegion",
    "SharedOutput",
    "SharedTensor",
    "TensorMetadata",
    "TlsConfig",
    "UnauthenticatedError",
    "UnimplementedError",
    "__version__",
]
