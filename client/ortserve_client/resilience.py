"""Retries on UNAVAILABLE and a small, optional circuit breaker.

Unary calls are retried here, not by gRPC: a call whose attempt ends UNAVAILABLE is sent
again after a backoff with full jitter under an exponential bound (gRFC A6's schedule), at
most `max_attempts` in all, and never past the call's deadline (the attempts share it). When
the refusal carries the server's `retry-after-ms` trailing metadata (ortserve sends it when a
model's latency target or a rate limit refuses a call), the retry waits exactly that long
instead, as gRFC A6 has clients honour server pushback: the server knows when it will have
room, and a client that comes back sooner is most likely refused again at the price of a round
trip for both sides; a hint that ends past the deadline is not waited for. A
successful call pays nothing for this: the retry loop starts in the `except` of a failure.
gRPC's own retries (`grpc.enable_retries` with a service-config `retryPolicy`) put a retry
filter on every call of the channel, which measured ~13 us of client CPU and 2-3% of a
small call's latency even on success; so the clients' channel has them off. Streams are not
retried: they cannot be replayed from here, and gRPC's own retry of a client stream lost the
stream's last request in about 1 % of retried streams (measured against a server refusing the
first attempt), so a failed stream is the caller's to resend.

The circuit breaker sits above the retries: after `failure_threshold` consecutive calls
that still ended UNAVAILABLE it fails fast for `reset_timeout_s`, then lets one probe call
through (half-open); the probe's outcome closes it or opens it again.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import grpc

from ortserve_client.errors import CircuitOpenError

UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Retries of every method of GRPCInferenceService, on UNAVAILABLE only."""

    max_attempts: int = 3
    """Attempts in all, the first included (1: no retry; at most 5, gRPC's own limit)."""
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

    def backoff_s(self, retry: int, uniform: Callable[[], float] = random.random) -> float:
        """The wait before retry number `retry` (1: the first): full jitter under an exponential bound."""
        return uniform() * min(self.initial_backoff_s * self.backoff_multiplier ** (retry - 1), self.max_backoff_s)

def code_of(error: grpc.RpcError) -> grpc.StatusCode:
    """The status code of a failed call (UNKNOWN if the error carries none)."""
    code = getattr(error, "code", None)
    return code() if callable(code) else grpc.StatusCode.UNKNOWN


RETRY_AFTER = "retry-after-ms"
"""Trailing metadata of a refusal: when, in milliseconds, the server expects room for the call."""


def retry_after_s(error: grpc.RpcError) -> float | None:
    """The server's retry hint on a failed call, in seconds (None: it gave none, or not a number)."""
    trailing = getattr(error, "trailing_metadata", None)
    for key, value in (trailing() if callable(trailing) else None) or ():
        if key == RETRY_AFTER:
            try:
                ms = float(value)
            except (TypeError, ValueError):
                return None
            return ms / 1000 if ms >= 0 else None
    return None


def _next_wait(policy: RetryPolicy, retry: int, deadline: float | None, failed: grpc.RpcError) -> float | None:
    """The wait before retry `retry` (the server's hint, else the backoff), or None when that
    retry would start past the deadline."""
    hint = retry_after_s(failed)
    wait = policy.backoff_s(retry) if hint is None else hint
    if deadline is not None and time.monotonic() + wait >= deadline:
        return None
    return wait


def _left(deadline: float | None) -> float | None:
    return None if deadline is None else max(deadline - time.monotonic(), 1e-6)


def retry_call(
    attempt: Callable[[float | None], R], policy: RetryPolicy, deadline: float | None, failed: grpc.RpcError
) -> R:
    """Retries of a call whose first attempt raised `failed` (UNAVAILABLE).

    `attempt(timeout_s)` makes one attempt; `deadline` (time.monotonic) bounds them all.
    Returns the first success; raises the first error other than UNAVAILABLE, or the last
    UNAVAILABLE once the attempts are spent or the next one would start past the deadline.
    """
    for retry in range(1, policy.max_attempts):
        wait = _next_wait(policy, retry, deadline, failed)
        if wait is None:
            break
        time.sleep(wait)
        try:
            return attempt(_left(deadline))
        except grpc.RpcError as exc:
            if code_of(exc) is not UNAVAILABLE:
                raise
            failed = exc
    raise failed


async def retry_call_async(
    attempt: Callable[[float | None], Awaitable[R]], policy: RetryPolicy, deadline: float | None, failed: grpc.RpcError
) -> R:
    """`retry_call` for the asyncio client: the backoff is an `asyncio.sleep`."""
    for retry in range(1, policy.max_attempts):
        wait = _next_wait(policy, retry, deadline, failed)
        if wait is None:
            break
        await asyncio.sleep(wait)
        try:
            return await attempt(_left(deadline))
        except grpc.RpcError as exc:
            if code_of(exc) is not UNAVAILABLE:
                raise
            failed = exc
    raise failed


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
