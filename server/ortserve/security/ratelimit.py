"""Token buckets per (client identity, scope): a sustained rate with a burst.

A unary call takes one token or is refused with the time until one is there (the caller turns
that into RESOURCE_EXHAUSTED and a `retry-after-ms` hint). A stream's messages are paced
instead (`reserve`): each waits for its token, and HTTP/2 flow control holds the client back.
Buckets are kept for at most `max_clients` identities, least recently used first out; a bucket
left alone refills to full, so forgetting an idle one loses nothing.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from time import monotonic

from ortserve.errors import RateLimitedError
from ortserve.security.principal import Scope


@dataclass(frozen=True, slots=True)
class Limit:
    rate_per_s: float
    burst: int

    def __post_init__(self) -> None:
        if not (self.rate_per_s > 0 and math.isfinite(self.rate_per_s)) or self.burst < 1:
            raise ValueError(f"a rate limit needs a finite rate > 0 and a burst >= 1, got {self}")


@dataclass(slots=True)
class TokenBucket:
    limit: Limit
    tokens: float
    updated_s: float

    def _refill(self, now_s: float) -> None:
        elapsed = now_s - self.updated_s
        if elapsed > 0:
            self.tokens = min(self.limit.burst, self.tokens + elapsed * self.limit.rate_per_s)
            self.updated_s = now_s

    def take(self, now_s: float) -> float:
        """Take a token: 0.0, or the seconds until one is there (nothing taken)."""
        self._refill(now_s)
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.limit.rate_per_s

    def reserve(self, now_s: float) -> float:
        """Take a token now or in the future: the seconds to wait before using it."""
        self._refill(now_s)
        self.tokens -= 1
        return 0.0 if self.tokens >= 0 else -self.tokens / self.limit.rate_per_s


class RateLimiter:
    """Token buckets per (identity, scope), with a limit per scope (a scope without one is free)."""

    def __init__(
        self,
        limits: Mapping[Scope, Limit],
        *,
        max_clients: int = 100_000,
        clock: Callable[[], float] = monotonic,
    ) -> None:
        self.limits = dict(limits)
        self._max_clients = max_clients
        self._clock = clock
        self._buckets: OrderedDict[tuple[str, Scope], TokenBucket] = OrderedDict()

    def limits_scope(self, scope: Scope) -> bool:
        return scope in self.limits

    def acquire(self, identity: str, scope: Scope) -> None:
        """Take a token for a call, or raise RateLimitedError with the time until one is there."""
        bucket = self._bucket(identity, scope)
        if bucket is None:
            return
        wait_s = bucket.take(self._clock())
        if wait_s:
            limit = bucket.limit
            retry_ms = max(1, math.ceil(wait_s * 1000))
            raise RateLimitedError(
                f"rate limit for {scope.value} exceeded by {identity}: {limit.rate_per_s:g} requests/s, "
                f"burst {limit.burst}; retry in {retry_ms} ms",
                retry_after_ms=retry_ms,
            )

    def reserve(self, identity: str, scope: Scope) -> float:
        """Take a token for one message of a stream: the seconds to wait before handling it."""
        bucket = self._bucket(identity, scope)
        return 0.0 if bucket is None else bucket.reserve(self._clock())

    def _bucket(self, identity: str, scope: Scope) -> TokenBucket | None:
        key = (identity, scope)
        bucket = self._buckets.get(key)
        if bucket is not None:
            self._buckets.move_to_end(key)
            return bucket
        limit = self.limits.get(scope)
        if limit is None:
            return None
        if len(self._buckets) >= self._max_clients:
            self._buckets.popitem(last=False)
        bucket = self._buckets[key] = TokenBucket(limit, float(limit.burst), self._clock())
        return bucket

    def __len__(self) -> int:
        return len(self._buckets)
