"""The one edge where ortserve's exceptions become gRPC status codes.

The table is ordered most specific class first. Only server faults (INTERNAL and the
unexpected) are logged, with the request id, so that a caller's report can be matched.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
from grpc import aio

from ortserve.errors import (
    AuthenticationError,
    DeadlineExceededError,
    InternalError,
    InvalidInputError,
    ModelLoadError,
    ModelNotFoundError,
    OrtserveError,
    PermissionDeniedError,
    RegionExistsError,
    RegionNotFoundError,
    RequestCancelledError,
    ResourceExhaustedError,
    UnavailableError,
    UnsupportedError,
)

log = logging.getLogger("ortserve.protocol")

STATUS_TABLE: tuple[tuple[type[OrtserveError], grpc.StatusCode], ...] = (
    (ModelNotFoundError, grpc.StatusCode.NOT_FOUND),
    (RegionNotFoundError, grpc.StatusCode.NOT_FOUND),
    (RegionExistsError, grpc.StatusCode.ALREADY_EXISTS),
    (InvalidInputError, grpc.StatusCode.INVALID_ARGUMENT),
    (UnavailableError, grpc.StatusCode.UNAVAILABLE),
    (ModelLoadError, grpc.StatusCode.UNAVAILABLE),
    (ResourceExhaustedError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (DeadlineExceededError, grpc.StatusCode.DEADLINE_EXCEEDED),
    (RequestCancelledError, grpc.StatusCode.CANCELLED),
    (UnsupportedError, grpc.StatusCode.UNIMPLEMENTED),
    (AuthenticationError, grpc.StatusCode.UNAUTHENTICATED),
    (PermissionDeniedError, grpc.StatusCode.PERMISSION_DENIED),
    (InternalError, grpc.StatusCode.INTERNAL),
    (OrtserveError, grpc.StatusCode.INTERNAL),
)


def status_of(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status code and message for an exception raised by the core."""
    if isinstance(exc, OrtserveError):
        for cls, code in STATUS_TABLE:
            if isinstance(exc, cls):
                return code, str(exc)
    return grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}"


T = TypeVar("T")
Handler = Callable[[Any, Any, aio.ServicerContext], Awaitable[T]]


def request_id_of(request: Any) -> str:
    return getattr(request, "id", "") if not hasattr(request, "__aiter__") else ""


def mapped_errors(method: Handler[T]) -> Handler[T]:
    """Wrap a unary servicer method so core exceptions abort the RPC with their status."""

    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: aio.ServicerContext) -> T:
        try:
            return await method(self, request, context)
        except (OrtserveError, Exception) as exc:
            await abort_with(exc, context, method.__name__, request)
            raise AssertionError("unreachable: abort_with raises") from exc

    return wrapper


async def abort_with(exc: BaseException, context: aio.ServicerContext, method: str, request: Any) -> None:
    """End the RPC with the status `exc` maps to (mapped_errors' work, for a method without the
    wrapper: ModelInfer does it itself and saves a coroutine per request); always raises.

    An AbortError (the RPC already aborted) and anything not an Exception (cancellation) propagate."""
    if isinstance(exc, aio.AbortError) or not isinstance(exc, Exception):
        raise exc
    code, message = status_of(exc)
    if code is grpc.StatusCode.INTERNAL:
        log.error("%s failed (request id %r): %s", method, request_id_of(request), message, exc_info=exc)
    await context.abort(code, message, trailing_metadata=trailing_of(exc))
    raise AssertionError("unreachable: context.abort raises") from exc


RETRY_AFTER_MS = "retry-after-ms"
"""Trailing metadata key of an error's retry hint (milliseconds, decimal)."""


def trailing_of(exc: BaseException) -> tuple[tuple[str, str], ...]:
    """The trailing metadata of a failed call: the retry hint, when the error carries one."""
    retry_ms = getattr(exc, "retry_after_ms", None)
    return () if retry_ms is None else ((RETRY_AFTER_MS, str(retry_ms)),)
