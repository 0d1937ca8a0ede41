"""Retries (gRPC's own service-config retry policy) and a small, optional circuit breaker.

Retries happen inside the gRPC channel, on UNAVAILABLE only: gRPC retries a call only while
no response has started, with exponential backoff and full jitter (gRFC A6), and caps the
attempts at 5. The circuit breaker sits above that: after `failure_threshold` consecutive
calls that still ended UNAVAILABLE it fails fast for `reset_timeout_s`, then lets one probe
call through (half-open); the probe's outcome closes it or opens it again.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc

from ortserve_client.errors import CircuitOpenError

SERVICE = "inference.GRPCInferenceService"


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """gRPC's retry policy for every method of GRPCInferenceService, on UNAVAILABLE only."""

    max_attempts: int = 3
    """Attempts in all, the first included (1: no retry; gRPC allows at most 5)."""
    initial_backoff_s: float = 0.1
    """The first retry waits a random time in [0, initial_backoff_s]."""
    max_backoff_s: float = 2.0
    """Bound of the backoff as it grows."""
    backoff_multiplier: float = 2.0
    """Growth of the backoff bound per attempt."""

    def __post_init__(self) -> None:
        if not 1 <= self.max_attempts <= 5:
            raise ValueError(f"max_attempts must be 1..5 (gRPC's limit), got {self.max_attempts}")
        if self.initial_backoff_s <= 0 or self.max_backoff_s <= 0 or self.backoff_multiplier <= 0:
            raise ValueError("backoffs and the multiplier must be positive")

    def method_config(self) -> dict[str, Any]:
        """The `retryPolicy` entry of a service config's methodConfig."""
        return {
            "maxAttempts": self.max_attempts,
            "initialBackoff": _duration(self.initial_backoff_s),
            "maxBackoff": _duration(self.max_backoff_s),
            "backoffMultiplier": self.backoff_multiplier,
            "retryableStatusCodes": ["UNAVAILABLE"],
        }


def _duration(seconds: float) -> str:
    # The service config's JSON form of google.protobuf.Duration.
    return f"{seconds:.9f}".rstrip("0").rstrip(".") + "s"


CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


@dataclass(slots=True)
class _Circuit:
    failures: int = 0
    opened_at: float | None = None
    probing: bool = False


class CircuitBreaker:
    """Fails fast after repeated UNAVAILABLE, per circuit key (the model, or "" for server calls).

    Thread-safe; one breaker may serve several clients. `clock` is injectable for tests.
    """

    def __init__(
        self,
        failure_threshold: int = 5,
        reset_timeout_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if failure_threshold < 1:
            raise ValueError(f"failure_threshold must be >= 1, got {failure_threshold}")
        if reset_timeout_s < 0:
            raise ValueError(f"reset_timeout_s must be >= 0, got {reset_timeout_s}")
        self.failure_threshold = failure_threshold
        self.reset_timeout_s = reset_timeout_s
        self._clock = clock
        self._circuits: dict[str, _Circuit] = {}
        self._lock = threading.Lock()

    def state(self, key: str = "") -> str:
        """"closed", "open" or "half_open" (open, and the cool-down has passed or a probe is out)."""
        with self._lock:
            circuit = self._circuits.get(key)
            if circuit is None or circuit.opened_at is None:
                return CLOSED
            if circuit.probing or self._clock() - circuit.opened_at >= self.reset_timeout_s:
                return HALF_OPEN
            return OPEN

    def admit(self, key: str = "") -> None:
        """Let a call through, or raise CircuitOpenError. Each admitted call must be `record`ed."""
        with self._lock:
            circuit = self._circuits.get(key)
            if circuit is None or circuit.opened_at is None:
                return
            waited = self._clock() - circuit.opened_at
            if waited >= self.reset_timeout_s and not circuit.probing:
                circuit.probing = True  # this call is the probe
                return
            retry_after = max(0.0, self.reset_timeout_s - waited)
            failures = circuit.failures
        what = f"model {key!r}" if key else "the server"
        raise CircuitOpenError(
            f"circuit open for {what} after {failures} consecutive UNAVAILABLE answers; "
            + ("a probe call is in flight" if retry_after == 0 else f"next probe in {retry_after:.1f} s"),
            retry_after,
        )

    def record(self, key: str, code: grpc.StatusCode | None) -> None:
        """The outcome of an admitted call: its status code (OK too), or None if it never got one."""
        with self._lock:
            circuit = self._circuits.get(key)
            if code is grpc.StatusCode.UNAVAILABLE:
                if circuit is None:
                    circuit = self._circuits[key] = _Circuit()
                circuit.failures += 1
                if circuit.probing or circuit.failures >= self.failure_threshold:
                    circuit.opened_at = self._clock()
                circuit.probing = False
            elif circuit is not None:
                if code is None:  # cancelled or failed before an answer: release the probe slot
                    circuit.probing = False
                else:  # the server answered: it is reachable
                    del self._circuits[key]
