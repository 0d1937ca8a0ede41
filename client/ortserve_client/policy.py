"""What every call of both clients carries: the deadline, the metadata, retries and the circuit breaker.

`ClientBase` takes the constructor arguments shared by `InferenceClient` and
`AsyncInferenceClient` and turns them, once, into `ChannelSettings` and a `CallPolicy`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from ortserve_client.channel import ChannelSettings, Metadata, TlsConfig, auth_metadata, parse_url
from ortserve_client.resilience import CircuitBreaker, RetryPolicy
from ortserve_client.tracing import trace_metadata

DEFAULT_RETRY = RetryPolicy()


class CallPolicy:
    """Deadline, metadata, retry policy and breaker of each call."""

    __slots__ = ("default_timeout_s", "breaker", "retry", "_metadata")

    def __init__(
        self,
        default_timeout_s: float | None,
        metadata: Metadata,
        breaker: CircuitBreaker | None,
        retry: RetryPolicy | None = None,
    ) -> None:
        if default_timeout_s is not None and default_timeout_s <= 0:
            raise ValueError(f"default_timeout_s must be positive or None, got {default_timeout_s}")
        self.default_timeout_s = default_timeout_s
        self.breaker = breaker
        self.retry = retry if retry is not None and retry.max_attempts > 1 else None
        """Retries of unary calls on UNAVAILABLE (None: one attempt)."""
        self._metadata = metadata

    def timeout(self, timeout: float | None) -> float | None:
        """The call's deadline in seconds: its own, else the default; math.inf means none."""
        if timeout is None:
            return self.default_timeout_s
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        return None if timeout == math.inf else timeout

    def stream_timeout(self, timeout: float | None) -> float | None:
        """A stream's deadline: only its own (a stream lives as long as it is fed)."""
        return None if timeout is None else self.timeout(timeout)

    def metadata(self) -> Metadata | None:
        """Auth and extra headers, plus the trace context when a span is active."""
        traced = trace_metadata()
        if traced:
            return self._metadata + traced
        return self._metadata or None


class ClientBase:
    """The configuration shared by the sync and asyncio clients.

    Args:
        url: `host:port`, `grpc://host:port`, `grpcs://host:port` (TLS, system roots) or any gRPC
            target such as `dns:///svc.ns.svc.cluster.local:8001` (every address, round-robin).
        tls: TLS / mTLS settings (`TlsConfig.from_files(ca=..., cert=..., key=...)`).
        token: sent as `authorization: Bearer <token>` with every call.
        api_key: sent as `<api_key_header>: <api_key>` with every call (for gateways that want one).
        headers: further metadata sent with every call.
        default_timeout_s: deadline of every call that passes no `timeout` (None: no deadline).
            Streams have no deadline unless `infer_stream` is given one.
        retry: retries on UNAVAILABLE (None: no retries); see `resilience`.
        circuit_breaker: fail inference fast after repeated UNAVAILABLE (None: off, the default).
        compression: "gzip" or "deflate" for requests (None: off).
        load_balancing: "round_robin" (default) or "pick_first" over the target's addresses.
        keepalive_time_s / keepalive_timeout_s: keepalive pings while calls are active.
        max_message_bytes: message size limit, both ways.
        channel_options: further gRPC channel arguments, overriding these.
    """

    def __init__(
        self,
        url: str = "localhost:8001",
        *,
        tls: TlsConfig | None = None,
        token: str | None = None,
        api_key: str | None = None,
        api_key_header: str = "x-api-key",
        headers: Mapping[str, str] | None = None,
        default_timeout_s: float | None = 60.0,
        retry: RetryPolicy | None = DEFAULT_RETRY,
        circuit_breaker: CircuitBreaker | None = None,
        compression: str | None = None,
        load_balancing: str = "round_robin",
        keepalive_time_s: float = 360.0,
        keepalive_timeout_s: float = 20.0,
        max_message_bytes: int = 2**31 - 1,
        channel_options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        target, wants_tls = parse_url(url)
        if wants_tls and tls is None:
            tls = TlsConfig()
        self.url = url
        self.settings = ChannelSettings(
            target=target,
            tls=tls,
            retry=retry,
            load_balancing=load_balancing,
            keepalive_time_s=keepalive_time_s,
            keepalive_timeout_s=keepalive_timeout_s,
            max_message_bytes=max_message_bytes,
            compression=compression,
            extra_options=tuple(channel_options),
        )
        self.policy = CallPolicy(
            default_timeout_s, auth_metadata(token, api_key, api_key_header, headers), circuit_breaker, retry
        )
        self._open()

    def _open(self) -> None:
        """Open the channel (each client its own kind)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"
