"""The one long-lived channel of a client: target, credentials, options and service config.

- Targets: `host:port`, `grpc://host:port`, `grpcs://host:port` (TLS with the system's roots),
  or any gRPC target, e.g. `dns:///svc.ns.svc.cluster.local:8001` for a headless Kubernetes
  service: every address the name resolves to gets a connection, and calls are spread over
  them round-robin (the service config's `loadBalancingConfig`).
- TLS and mTLS from PEM bytes or files; a bearer token or API key as call metadata.
- Keepalive pings only while calls are active, no more often than gRPC servers accept by
  default (5 min); message limits raised to 2 GiB - 1 both ways; optional gzip compression.
- Retries: gRPC's retries are off (its retry filter costs every call); the clients retry unary
  calls themselves, at no cost on success (see `resilience`). Streams are not retried: gRPC's
  retry of a client stream lost the stream's last request in about 1 % of retried streams
  (1 of 100 sync, 1 of 60 asyncio, against a server refusing the first attempt).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc import aio

from ortserve_client import __version__
from ortserve_client.resilience import RetryPolicy

Metadata = tuple[tuple[str, str], ...]
MAX_MESSAGE_BYTES = 2**31 - 1

_COMPRESSION = {"gzip": grpc.Compression.Gzip, "deflate": grpc.Compression.Deflate}


@dataclass(frozen=True, slots=True)
class TlsConfig:
    """TLS for the channel; with a client certificate and key, mutual TLS."""

    root_certificates: bytes | None = None
    """PEM of the CA(s) that signed the server's certificate (None: the system's trust store)."""
    certificate_chain: bytes | None = None
    """PEM of the client's certificate chain, for mTLS."""
    private_key: bytes | None = None
    """PEM of the client's private key, for mTLS."""
    server_name: str | None = None
    """Name to check the server's certificate against instead of the target's host."""

    def __post_init__(self) -> None:
        if (self.certificate_chain is None) != (self.private_key is None):
            raise ValueError("mTLS needs both a client certificate and its private key")

    @classmethod
    def from_files(
        cls,
        ca: str | Path | None = None,
        cert: str | Path | None = None,
        key: str | Path | None = None,
        server_name: str | None = None,
    ) -> TlsConfig:
        """Read PEM files: the CA bundle, and the client certificate and key for mTLS."""

        def read(path: str | Path | None) -> bytes | None:
            return None if path is None else Path(path).read_bytes()

        return cls(read(ca), read(cert), read(key), server_name)

    def credentials(self) -> Any:
        """The grpc.ChannelCredentials."""
        return grpc.ssl_channel_credentials(self.root_certificates, self.private_key, self.certificate_chain)


def parse_url(url: str) -> tuple[str, bool]:
    """(gRPC target, whether the scheme asks for TLS) of a client URL."""
    for scheme, tls in (("grpcs://", True), ("grpc://", False), ("https://", True), ("http://", False)):
        if url.startswith(scheme):
            return url[len(scheme) :].rstrip("/"), tls
    return url, False


def auth_metadata(
    token: str | None = None,
    api_key: str | None = None,
    api_key_header: str = "x-api-key",
    headers: Mapping[str, str] | None = None,
) -> Metadata:
    """Metadata sent with every call: `authorization: Bearer <token>`, the API key, extra headers."""
    pairs: list[tuple[str, str]] = []
    if token is not None:
        pairs.append(("authorization", f"Bearer {token}"))
    if api_key is not None:
        pairs.append((api_key_header.lower(), api_key))
    for key, value in (headers or {}).items():
        pairs.append((key.lower(), value))
    for key, value in pairs:
        if key.endswith("-bin"):
            continue
        if not value.isascii() or any(ch in value for ch in "\r\n\0"):
            raise ValueError(f"metadata {key!r}: values must be printable ASCII (or use a '-bin' key)")
    return tuple(pairs)


@dataclass(frozen=True, slots=True)
class ChannelSettings:
    """Everything the channel is made of; both clients build theirs from one of these."""

    target: str
    """gRPC target: host:port, dns:///name:port, unix:path ..."""
    tls: TlsConfig | None = None
    """TLS settings (None: a plaintext channel)."""
    retry: RetryPolicy | None = field(default_factory=RetryPolicy)
    """Retry policy on UNAVAILABLE (None: no retries)."""
    load_balancing: str = "round_robin"
    """gRPC load-balancing policy over the target's addresses ("round_robin" or "pick_first")."""
    keepalive_time_s: float = 360.0
    """Ping interval while calls are active; gRPC servers refuse pings more often than every 5 min by default."""
    keepalive_timeout_s: float = 20.0
    """A ping unanswered this long closes the connection (a peer gone without a word)."""
    max_message_bytes: int = MAX_MESSAGE_BYTES
    """Largest message sent or received."""
    compression: str | None = None
    """"gzip" or "deflate" for every request message (None: uncompressed)."""
    extra_options: Sequence[tuple[str, Any]] = ()
    """Further gRPC channel arguments; they override the ones set here."""

    def __post_init__(self) -> None:
        if self.compression is not None and self.compression not in _COMPRESSION:
            raise ValueError(f"compression must be one of {sorted(_COMPRESSION)} or None, got {self.compression!r}")
        if self.load_balancing not in ("round_robin", "pick_first"):
            raise ValueError(f"load_balancing must be 'round_robin' or 'pick_first', got {self.load_balancing!r}")

    def service_config(self) -> str:
        """The JSON service config: load balancing."""
        return json.dumps({"loadBalancingConfig": [{self.load_balancing: {}}]}, separators=(",", ":"))

    def options(self) -> list[tuple[str, Any]]:
        """The channel arguments."""
        values: dict[str, Any] = {
            "grpc.max_send_message_length": self.max_message_bytes,
            "grpc.max_receive_message_length": self.max_message_bytes,
            "grpc.keepalive_time_ms": int(self.keepalive_time_s * 1000),
            "grpc.keepalive_timeout_ms": int(self.keepalive_timeout_s * 1000),
            "grpc.keepalive_permit_without_calls": 0,
            "grpc.http2.max_pings_without_data": 0,
            "grpc.service_config": self.service_config(),
            # Ours is the service config: none looked up in DNS TXT records.
            "grpc.service_config_disable_resolution": 1,
            # gRPC's retry filter costs every call of the channel, even without a retry policy.
            "grpc.enable_retries": 0,
            "grpc.primary_user_agent": f"ortserve-client/{__version__}",
        }
        if self.tls is not None and self.tls.server_name:
            values["grpc.ssl_target_name_override"] = self.tls.server_name
        values.update(self.extra_options)
        return list(values.items())

    def compression_algorithm(self) -> Any:
        """The grpc.Compression of every call, or None."""
        return None if self.compression is None else _COMPRESSION[self.compression]

    def open(self) -> Any:
        """A new grpc.Channel."""
        options = self.options()
        if self.tls is not None:
            return grpc.secure_channel(self.target, self.tls.credentials(), options, self.compression_algorithm())
        return grpc.insecure_channel(self.target, options, self.compression_algorithm())

    def open_aio(self) -> Any:
        """A new grpc.aio.Channel, bound to the running event loop."""
        options = self.options()
        if self.tls is not None:
            return aio.secure_channel(self.target, self.tls.credentials(), options, self.compression_algorithm())
        return aio.insecure_channel(self.target, options, self.compression_algorithm())
