"""One transport-free exception hierarchy for ortserve.

Domain code raises these; exactly one edge (`ortserve.protocol.status`) maps them to gRPC
status codes, most specific class first. No class here knows a transport code.

    OrtserveError
    ├── ModelNotFoundError          unknown model or version
    ├── RegionNotFoundError         unknown shared memory region (status)
    ├── RegionExistsError           a shared memory region of that name is registered already
    ├── InvalidInputError           a tensor's name, dtype, shape or byte size is wrong
    ├── UnavailableError            retry elsewhere or later
    │   ├── ModelNotReadyError      the model is loading, unloading or failed to load
    │   ├── ServerDrainingError     the server is shutting down
    │   ├── QueueFullError          a queue bound was hit
    │   └── LatencyTargetError      over a model's latency target (carries a retry hint)
    ├── ResourceExhaustedError      a size or rate limit was exceeded
    │   └── RateLimitedError        a client's rate limit (carries a retry hint)
    ├── AuthenticationError         credentials are missing or invalid
    ├── PermissionDeniedError       valid credentials without the scope the call needs
    ├── DeadlineExceededError       the request's deadline passed before it ran
    ├── RequestCancelledError       the caller cancelled the request
    ├── UnsupportedError            a feature this server does not offer
    ├── ModelLoadError              a model could not be loaded (reported, not served)
    └── InternalError               a fault of the server or the model's execution
"""

from __future__ import annotations


class OrtserveError(Exception):
    """Base of every error ortserve raises on purpose; the message is for the caller."""

    retry_after_ms: int | None = None
    """When set, the caller may retry after this many milliseconds: the status edge sends it
    as `retry-after-ms` trailing metadata (a hint a client that backs off can follow)."""


class ModelNotFoundError(OrtserveError):
    """The requested model or model version is not in the repository."""


class RegionNotFoundError(OrtserveError):
    """No shared memory region of the requested name is registered."""


class RegionExistsError(OrtserveError):
    """A shared memory region of that name is registered already; unregister it first."""


class InvalidInputError(OrtserveError):
    """The request is malformed or does not match the model's signature."""


class UnavailableError(OrtserveError):
    """The server cannot take the request now; the client may retry elsewhere."""


class ModelNotReadyError(UnavailableError):
    """The model exists but is not ready (loading, unloading or failed)."""


class ServerDrainingError(UnavailableError):
    """The server is draining before shutdown and refuses new work."""


class QueueFullError(UnavailableError):
    """A queue bound was reached."""


class LatencyTargetError(UnavailableError):
    """The request cannot finish within the model's latency target; retry later or elsewhere."""

    def __init__(self, message: str, *, retry_after_ms: int) -> None:
        super().__init__(message)
        self.retry_after_ms = retry_after_ms


class ResourceExhaustedError(OrtserveError):
    """The request exceeds a size or rate limit."""


class RateLimitedError(ResourceExhaustedError):
    """A client went over its rate limit; it may retry after `retry_after_ms`."""

    def __init__(self, message: str, *, retry_after_ms: int) -> None:
        super().__init__(message)
        self.retry_after_ms = retry_after_ms


class AuthenticationError(OrtserveError):
    """The call carries no credentials, or credentials that do not verify."""


class PermissionDeniedError(OrtserveError):
    """The caller is known but lacks the scope the call needs."""


class DeadlineExceededError(OrtserveError):
    """The request's deadline or timeout passed before it could be answered."""


class RequestCancelledError(OrtserveError):
    """The caller cancelled the request."""


class UnsupportedError(OrtserveError):
    """The request asks for something this server does not implement."""


class ModelLoadError(OrtserveError):
    """A model version could not be loaded; the reason is reported in the repository index."""


class InternalError(OrtserveError):
    """A fault of the server or of the model's execution, not of the request."""
