"""The security edge of the gRPC server: the AccessPolicy and the audit log applied to each call.

`SecurityInterceptor` maps each method to the Scope it needs (METHOD_SCOPES; grpc.health,
ServerLive and ServerReady need none and pass untouched), and wraps the method's handler once,
on its first call, so that every call:

1. is identified, authorized and rate-limited by the policy (UNAUTHENTICATED, PERMISSION_DENIED,
   or RESOURCE_EXHAUSTED with `retry-after-ms` in the trailing metadata) before its handler runs;
   a stream is admitted once and its messages are then paced by the client's token bucket;
2. for model control (load, unload), leaves an audit entry: who, what, when, the result.

`app` installs it only when the settings ask for authentication, a rate limit or an audit
file: without them the request path has no interceptor at all.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from time import monotonic
from typing import Any

import grpc
from grpc import aio

from ortserve.errors import OrtserveError
from ortserve.protocol.status import status_of, trailing_of
from ortserve.security import AccessPolicy, AuditEntry, AuditLog, Principal, Scope, peer_host

SERVICE = "/inference.GRPCInferenceService/"
OPEN_PREFIXES = ("/grpc.health.v1.Health/",)
"""Services that stay open to everyone (probes)."""

METHOD_SCOPES: dict[str, Scope | None] = {
    SERVICE + "ServerLive": None,
    SERVICE + "ServerReady": None,
    SERVICE + "ModelReady": Scope.METADATA,
    SERVICE + "ServerMetadata": Scope.METADATA,
    SERVICE + "ModelMetadata": Scope.METADATA,
    SERVICE + "ModelConfig": Scope.METADATA,
    SERVICE + "ModelStatistics": Scope.METADATA,
    SERVICE + "RepositoryIndex": Scope.METADATA,
    SERVICE + "ModelInfer": Scope.INFERENCE,
    SERVICE + "ModelStreamInfer": Scope.INFERENCE,
    # Shared memory regions are how an inference client sends its tensors: the same scope.
    SERVICE + "SystemSharedMemoryStatus": Scope.INFERENCE,
    SERVICE + "SystemSharedMemoryRegister": Scope.INFERENCE,
    SERVICE + "SystemSharedMemoryUnregister": Scope.INFERENCE,
    SERVICE + "CudaSharedMemoryStatus": Scope.INFERENCE,
    SERVICE + "CudaSharedMemoryRegister": Scope.INFERENCE,
    SERVICE + "CudaSharedMemoryUnregister": Scope.INFERENCE,
    SERVICE + "RepositoryModelLoad": Scope.MODEL_CONTROL,
    SERVICE + "RepositoryModelUnload": Scope.MODEL_CONTROL,
}
"""The scope each method needs (None: open). A method missing here needs model_control: deny by default."""

AUDITED = {SERVICE + "RepositoryModelLoad": "load", SERVICE + "RepositoryModelUnload": "unload"}

def scope_of(method: str) -> Scope | None:
    if method.startswith(OPEN_PREFIXES):
        return None
    return METHOD_SCOPES.get(method, Scope.MODEL_CONTROL)


def _authorization(context: aio.ServicerContext) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == "authorization":
            return str(value)
    return None


class SecurityInterceptor(aio.ServerInterceptor):  # type: ignore[misc]  # grpc ships no type hints
    """Applies an AccessPolicy and an AuditLog to the calls of a grpc.aio server (module docstring)."""

    def __init__(self, policy: AccessPolicy | None, audit: AuditLog | None) -> None:
        self._policy = policy
        self._audit = audit
        self._wrapped: dict[str, tuple[Any, Any]] = {}

    async def intercept_service(
        self, continuation: Callable[[Any], Awaitable[Any]], handler_call_details: Any
    ) -> Any:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None  # an unknown method: UNIMPLEMENTED
        method: str = handler_call_details.method
        cached = self._wrapped.get(method)
        if cached is None or cached[0] is not handler:
            cached = self._wrapped[method] = (handler, self._wrap(method, handler))
        return cached[1]

    def _wrap(self, method: str, handler: Any) -> Any:
        scope = scope_of(method)
        if scope is None:
            return handler
        action = AUDITED.get(method) if self._audit is not None else None
        guarded = self._policy is not None and self._policy.guards(scope)
        if not guarded and action is None:
            return handler
        name = method.rsplit("/", 1)[-1]
        if handler.request_streaming and handler.response_streaming:
            return handler._replace(stream_stream=self._stream_stream(handler.stream_stream, scope, name))
        if handler.request_streaming:
            return handler._replace(stream_unary=self._unary(handler.stream_unary, scope, name, None))
        if handler.response_streaming:
            return handler._replace(unary_stream=self._unary_stream(handler.unary_stream, scope, name))
        return handler._replace(unary_unary=self._unary(handler.unary_unary, scope, name, action))

    async def _admit(
        self,
        context: aio.ServicerContext,
        scope: Scope,
        name: str,
        *,
        rate_limited: bool = True,
        identified: list[Principal] | None = None,
    ) -> Principal:
        """The call's principal, or abort the call; `identified` receives it even if it is then refused."""
        peer = context.peer() or ""
        policy = self._policy
        if policy is None:  # only auditing
            anonymous = Principal(f"peer:{peer_host(peer)}", frozenset())
            if identified is not None:
                identified.append(anonymous)
            return anonymous
        try:
            principal = policy.identify(_authorization(context), peer)
            if identified is not None:
                identified.append(principal)
            policy.authorize(principal, scope, name)
            if rate_limited and policy.limiter is not None:
                policy.limiter.acquire(principal.identity, scope)
            return principal
        except OrtserveError as exc:
            code, message = status_of(exc)
            await context.abort(code, message, trailing_metadata=trailing_of(exc))
            raise AssertionError("unreachable: context.abort raises") from exc

    def _unary(self, inner: Any, scope: Scope, name: str, action: str | None) -> Any:
        if action is None:

            async def checked(request: Any, context: aio.ServicerContext) -> Any:
                await self._admit(context, scope, name)
                return await inner(request, context)

            return checked

        async def audited(request: Any, context: aio.ServicerContext) -> Any:
            started = monotonic()
            identified: list[Principal] = []
            failure: BaseException | None = None
            try:
                await self._admit(context, scope, name, identified=identified)
                return await inner(request, context)
            except BaseException as exc:
                failure = exc
                raise
            finally:
                who = identified[0].identity if identified else "unauthenticated"
                self._record(action, who, request, context, started, failure)

        return audited

    def _record(
        self, action: str, who: str, request: Any, context: aio.ServicerContext, started: float,
        exc: BaseException | None,
    ) -> None:
        assert self._audit is not None
        if exc is None:
            result, message = "OK", ""
        else:
            code = context.code()
            if code is None or code is grpc.StatusCode.OK:
                code = grpc.StatusCode.CANCELLED if isinstance(exc, asyncio.CancelledError) else status_of(exc)[0]
            result, message = code.name, str(context.details() or "")
        self._audit.record(
            AuditEntry(
                who=who,
                peer=context.peer() or "",
                action=action,
                model=str(getattr(request, "model_name", "")),
                result=result,
                message=message,
                parameters=sorted(getattr(request, "parameters", {})),
                duration_ms=round((monotonic() - started) * 1000, 3),
            )
        )

    def _unary_stream(self, inner: Any, scope: Scope, name: str) -> Any:
        async def checked(request: Any, context: aio.ServicerContext) -> AsyncIterator[Any]:
            await self._admit(context, scope, name)
            async for response in inner(request, context):
                yield response

        return checked

    def _stream_stream(self, inner: Any, scope: Scope, name: str) -> Any:
        policy = self._policy

        async def checked(requests: AsyncIterator[Any], context: aio.ServicerContext) -> AsyncIterator[Any]:
            principal = await self._admit(context, scope, name, rate_limited=False)
            if policy is not None and policy.limiter is not None and policy.limiter.limits_scope(scope):
                requests = _paced(requests, policy, principal.identity, scope)
            async for response in inner(requests, context):
                yield response

        return checked


async def _paced(requests: AsyncIterator[Any], policy: AccessPolicy, identity: str, scope: Scope) -> AsyncIterator[Any]:
    """The stream's messages, each let through when the client's bucket has a token for it."""
    assert policy.limiter is not None
    async for request in requests:
        wait_s = policy.limiter.reserve(identity, scope)
        if wait_s > 0:
            await asyncio.sleep(wait_s)
        yield request
