"""The observability edge of the gRPC server: a server span per RPC and the sampled access log.

`ObservabilityInterceptor.instrument(servicer)` wraps the servicer's GRPCInferenceService
methods in place before they are registered (as a grpc.aio interceptor, `intercept_service`,
it wraps each method's handler once, on its first call; the app uses `instrument`, because
grpc.aio's interceptor chain costs each RPC more than the wrapping itself, about 20 us on the
2-core machine, and grpc.health is left alone either way). ModelInfer, the hot method, is not
wrapped: `instrument` hands the interceptor to `InferenceServicer.observer`, and ModelInfer calls
`begin_infer` / `end_infer` itself (no coroutine layer, no reset of the current request: each
grpc.aio call runs in a task of its own, and the status edge around ModelInfer logs a failure
while the request is still current). Either way, every call:

1. takes its parent from the caller's W3C `traceparent` (and `tracestate`, `baggage`) in the
   gRPC metadata, through the propagators OTEL_PROPAGATORS names (W3C by default);
2. runs inside a server span named `inference.GRPCInferenceService/<Method>` with the model,
   version and request id, made current as a `RequestSpan` (the dataplane hands it to the
   batcher, and the log records of the call carry its ids);
3. ends with `rpc.grpc.status_code` set and status ERROR only for server faults (INTERNAL,
   UNAVAILABLE, DEADLINE_EXCEEDED, UNKNOWN), never for the client's mistakes;
4. is written to the access log (logger `ortserve.access`, INFO) when it is one of every
   `access_log_every` calls.

`app` installs it only when tracing or the access log is on: otherwise the request path has
nothing of it at all. A call refused by the security interceptor never reaches the servicer
and is neither traced nor access-logged (the audit log and the security log record it).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from time import monotonic_ns
from typing import Any, TypeVar

import grpc
from grpc import aio
from opentelemetry import propagate
from opentelemetry.trace import Status, StatusCode

from ortserve.observability import RequestSpan, Tracing
from ortserve.protocol.status import status_of
from ortserve_client.proto import grpc_service_pb2 as pb

access_log = logging.getLogger("ortserve.access")
S = TypeVar("S")

SERVICE = "/inference.GRPCInferenceService/"
INFER = "inference.GRPCInferenceService/ModelInfer"
SERVER_FAULTS = frozenset(
    {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNKNOWN}
)
"""Codes that mark a span as an error (as OpenTelemetry's gRPC instrumentation does)."""


def _identity(request: Any) -> tuple[str, str, str]:
    """(model, version, request id) of an inference or model request message, else empty strings."""
    message = getattr(request, "message", request)  # protocol.wire's WireInferRequest wraps the message
    if type(message) is pb.ModelInferRequest:  # every call: its fields directly (a missing one costs a raise)
        return message.model_name, message.model_version, message.id
    model = getattr(message, "model_name", "") or getattr(message, "name", "")
    version = getattr(message, "model_version", "") or getattr(message, "version", "")
    return str(model), str(version), str(getattr(message, "id", ""))


def _parent(context: aio.ServicerContext) -> Any:
    """The caller's context from the gRPC metadata, or None when it sends no `traceparent`.

    grpc.aio offers no lookup of one key: `invocation_metadata()` builds the whole tuple
    (about 1.3 us for two entries on the 2-core machine), so it is built once and scanned;
    the propagators of OTEL_PROPAGATORS run only when there is a parent to extract.
    """
    metadata = context.invocation_metadata()
    if metadata:
        for key, _ in metadata:
            if key == "traceparent":
                return propagate.extract({k: v for k, v in metadata if isinstance(v, str)})
    return None


def _code_of(context: aio.ServicerContext, failure: BaseException | None) -> grpc.StatusCode:
    code = context.code()
    if isinstance(code, grpc.StatusCode) and code is not grpc.StatusCode.OK:
        return code
    if failure is None:
        return grpc.StatusCode.OK
    if isinstance(failure, asyncio.CancelledError):
        return grpc.StatusCode.CANCELLED
    return status_of(failure)[0]


class ObservabilityInterceptor(aio.ServerInterceptor):  # type: ignore[misc]  # grpc ships no type hints
    """Traces and access-logs the calls of a grpc.aio server (module docstring)."""

    def __init__(self, tracing: Tracing | None, access_log_every: int = 0) -> None:
        self._tracing = tracing
        self._every = max(access_log_every, 0)
        self._calls = 0
        self._wrapped: dict[str, tuple[Any, Any]] = {}

    def instrument(self, servicer: S) -> S:
        """Wrap the servicer's GRPCInferenceService methods (instance attributes) and return it.

        A servicer with an `observer` attribute (InferenceServicer) is given this interceptor
        there instead of a wrapped ModelInfer (module docstring)."""
        for method in pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods:
            if method.name == "ModelInfer" and hasattr(servicer, "observer"):
                setattr(servicer, "observer", self)  # noqa: B010 - S is any servicer type
                continue
            inner = getattr(servicer, method.name)
            name = f"{SERVICE[1:]}{method.name}"
            streaming = method.client_streaming and method.server_streaming
            setattr(servicer, method.name, self._stream(inner, name) if streaming else self._unary(inner, name))
        return servicer

    async def intercept_service(
        self, continuation: Callable[[Any], Awaitable[Any]], handler_call_details: Any
    ) -> Any:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method: str = handler_call_details.method
        cached = self._wrapped.get(method)
        if cached is None or cached[0] is not handler:
            cached = self._wrapped[method] = (handler, self._wrap(method, handler))
        return cached[1]

    def _wrap(self, method: str, handler: Any) -> Any:
        if not method.startswith(SERVICE):
            return handler
        name = method[1:]  # the span name: inference.GRPCInferenceService/ModelInfer
        if handler.request_streaming and handler.response_streaming:
            return handler._replace(stream_stream=self._stream(handler.stream_stream, name))
        if not handler.request_streaming and not handler.response_streaming:
            return handler._replace(unary_unary=self._unary(handler.unary_unary, name))
        return handler  # the service has no other kinds of method

    def _start(self, name: str, request: Any, context: aio.ServicerContext) -> RequestSpan:
        model, version, request_id = _identity(request)
        tracing = self._tracing
        if tracing is None:
            return RequestSpan(model, version, request_id)
        return tracing.start_request(name, _parent(context), model, version, request_id)

    def begin_infer(self, request: Any, context: aio.ServicerContext) -> RequestSpan:
        """Start a ModelInfer call (a WireInferRequest) and make it current; `end_infer` ends it.

        The current request is left set: the call's task ends with the call."""
        tracing = self._tracing
        message = request.message
        if tracing is None:
            current = RequestSpan(message=message)
        else:
            current = tracing.start_request(INFER, _parent(context), message=message)
        if self._every:
            current.started_ns = monotonic_ns()
        current.activate()
        return current

    def end_infer(self, current: RequestSpan, context: aio.ServicerContext, failure: BaseException | None) -> None:
        """End a call `begin_infer` started: its span's status, the access log (if either is due)."""
        if current.span is not None or self._every:
            self._finish(INFER, current, context, failure, current.started_ns)

    def _finish(
        self, name: str, request: RequestSpan, context: aio.ServicerContext, failure: BaseException | None,
        started_ns: int,
    ) -> None:
        code = _code_of(context, failure)
        span = request.span
        if span is not None and span.is_recording():
            span.set_attribute("rpc.grpc.status_code", code.value[0])
            if code in SERVER_FAULTS:
                span.set_status(Status(StatusCode.ERROR, str(context.details() or code.name)))
            span.end()
        if self._every:
            self._calls += 1
            if self._calls >= self._every:
                self._calls = 0
                duration_ms = round((monotonic_ns() - started_ns) / 1e6, 3)
                access_log.info(
                    "%s %s %.3f ms", name.rsplit("/", 1)[-1], code.name, duration_ms,
                    extra={"method": name, "grpc_code": code.name, "duration_ms": duration_ms},
                )

    def _unary(self, inner: Any, name: str) -> Any:
        async def observed(request: Any, context: aio.ServicerContext) -> Any:
            started_ns = monotonic_ns()
            current = self._start(name, request, context)
            token = current.activate()
            if current.span is None and not self._every:
                # Not sampled, no access log (99 % of calls at 1 %): nothing to finish.
                try:
                    return await inner(request, context)
                finally:
                    RequestSpan.deactivate(token)
            failure: BaseException | None = None
            try:
                return await inner(request, context)
            except BaseException as exc:
                failure = exc
                raise
            finally:
                self._finish(name, current, context, failure, started_ns)  # still current: the log carries its ids
                RequestSpan.deactivate(token)

        return observed

    def _stream(self, inner: Any, name: str) -> Any:
        async def observed(requests: AsyncIterator[Any], context: aio.ServicerContext) -> AsyncIterator[Any]:
            # One span for the stream; each of its requests is handed the stream's RequestSpan.
            started_ns = monotonic_ns()
            current = self._start(name, None, context)
            current.activate()  # left set: an async generator may be finalised in another context
            failure: BaseException | None = None
            try:
                async for response in inner(requests, context):
                    yield response
            except BaseException as exc:
                failure = exc
                raise
            finally:
                self._finish(name, current, context, failure, started_ns)

        return observed
