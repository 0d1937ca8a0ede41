"""One exception class per gRPC status family, each with `.code`, `.details` and the RpcError chained.

    InferenceServerError              base: .code (grpc.StatusCode or None), .details
    ├── ModelNotFoundError            NOT_FOUND
    ├── InvalidInputError             INVALID_ARGUMENT, OUT_OF_RANGE
    ├── ServerUnavailableError        UNAVAILABLE (retried by the channel's policy first)
    │   └── CircuitOpenError          no call was made: the circuit breaker is open
    ├── DeadlineExceededError         DEADLINE_EXCEEDED
    ├── ResourceExhaustedError        RESOURCE_EXHAUSTED (a rate or size limit)
    ├── UnauthenticatedError          UNAUTHENTICATED
    ├── PermissionDeniedError         PERMISSION_DENIED
    ├── RequestCancelledError         CANCELLED
    ├── UnimplementedError            UNIMPLEMENTED
    └── InternalServerError           INTERNAL, UNKNOWN, DATA_LOSS

Any other code raises InferenceServerError itself. `error_from_rpc` is the one mapping; the
clients raise its result `from` the grpc.RpcError, so `__cause__` is the original error.
An asyncio task cancelled by its caller raises asyncio.CancelledError, as any coroutine does.
"""

from __future__ import annotations

from typing import Any

import grpc


class InferenceServerError(Exception):
    """A call failed; `.code` is its grpc.StatusCode (None when unknown), `.details` the server's message."""

    def __init__(self, details: str, code: grpc.StatusCode | None = None) -> None:
        super().__init__(details if code is None else f"{code.name}: {details}")
        self.code = code
        self.details = details


class ModelNotFoundError(InferenceServerError):
    """The model or model version does not exist on the server."""


class InvalidInputError(InferenceServerError):
    """The request does not match the model: a tensor's name, datatype, shape or size."""


class ServerUnavailableError(InferenceServerError):
    """The server (or model) cannot take the request now; another replica or a later try may."""


class CircuitOpenError(ServerUnavailableError):
    """Failed fast: after repeated UNAVAILABLE answers, no call is made until the cool-down ends."""

    def __init__(self, details: str, retry_after_s: float) -> None:
        super().__init__(details, grpc.StatusCode.UNAVAILABLE)
        self.retry_after_s = retry_after_s
        """Seconds until the breaker lets a probe call through."""


class DeadlineExceededError(InferenceServerError):
    """The call's deadline (the client's timeout) or the request's `timeout` parameter passed."""


class ResourceExhaustedError(InferenceServerError):
    """A rate limit or a message size limit was hit."""


class UnauthenticatedError(InferenceServerError):
    """Missing or invalid credentials."""


class PermissionDeniedError(InferenceServerError):
    """The credentials do not allow this call."""


class RequestCancelledError(InferenceServerError):
    """The call was cancelled."""


class UnimplementedError(InferenceServerError):
    """The server does not implement this method."""


class InternalServerError(InferenceServerError):
    """A fault of the server or of the model's execution."""


_BY_CODE: dict[Any, type[InferenceServerError]] = {
    grpc.StatusCode.NOT_FOUND: ModelNotFoundError,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidInputError,
    grpc.StatusCode.OUT_OF_RANGE: InvalidInputError,
    grpc.StatusCode.UNAVAILABLE: ServerUnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    grpc.StatusCode.UNAUTHENTICATED: UnauthenticatedError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
    grpc.StatusCode.CANCELLED: RequestCancelledError,
    grpc.StatusCode.UNIMPLEMENTED: UnimplementedError,
    grpc.StatusCode.INTERNAL: InternalServerError,
    grpc.StatusCode.UNKNOWN: InternalServerError,
    grpc.StatusCode.DATA_LOSS: InternalServerError,
}


def error_class(code: grpc.StatusCode) -> type[InferenceServerError]:
    """The exception class of a status code."""
    return _BY_CODE.get(code, InferenceServerError)


def error_from_rpc(error: grpc.RpcError) -> InferenceServerError:
    """The exception for a failed call (raise it `from error`)."""
    code = error.code() if callable(getattr(error, "code", None)) else grpc.StatusCode.UNKNOWN
    details = error.details() if callable(getattr(error, "details", None)) else str(error)
    return error_class(code)(details or "", code)
