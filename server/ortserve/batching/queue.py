"""RequestQueue: the waiting requests of one model version, by priority level.

Levels are served strictly in order (1 first), FIFO within a level; requests whose timeout
action is DELAY go to a last queue once timed out. Removal is lazy: a request that left
(taken, cancelled, expired) is only unmarked, and skipped when reached; the counters are
exact at all times, so admission and the controller see the live numbers.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from ortserve.batching.policy import BatchPolicy
from ortserve.errors import QueueFullError


@dataclass(slots=True, eq=False)
class Pending:
    """One request waiting for, or running in, a batch."""

    inputs: Mapping[str, np.ndarray]
    rows: int
    key: tuple[tuple[int, ...], ...]
    """Non-batch dims of every input: only requests with equal keys share a batch."""
    future: asyncio.Future[object]
    enqueued_ns: int
    deadline_ns: int | None
    level: int
    context: object
    timers: list[asyncio.TimerHandle]
    queued: bool = False
    delayed: bool = False
    reject_ns: int | None = None
    """When its queue timeout rejects it (monotonic), if it has one whose action is REJECT."""
    staged: tuple[int, int] | None = None
    """(instance, job sequence number) once staged behind a running request (batcher.py, no batching)."""


class RequestQueue:
    """Priority levels of FIFO deques with exact live counts."""

    def __init__(self, name: str, policy: BatchPolicy) -> None:
        self.name = name
        self._policy = policy
        self._levels: list[deque[Pending]] = [deque() for _ in range(policy.levels)]
        self._delayed: deque[Pending] = deque()
        self._level_requests = [0] * policy.levels
        self._level_rows = [0] * policy.levels
        self._limits = [policy.queue_policy(level).max_queue_size for level in range(1, policy.levels + 1)]
        """Each level's max_queue_size (0: unbounded)."""
        self.requests = 0
        self.rows = 0

    def push(self, item: Pending) -> None:
        """Queue a request at its level, or raise QueueFullError if the level is full."""
        index = item.level - 1
        limit = self._limits[index]
        if limit and self._level_requests[index] >= limit:
            raise QueueFullError(
                f"model {self.name}: the queue of priority level {item.level} is full "
                f"({limit} requests, its max_queue_size); retry later or on another replica"
            )
        self._levels[index].append(item)
        self._count(item, +1)
        item.queued = True

    def rows_ahead(self, level: int) -> int:
        """Rows queued at `level` and at every higher priority (what a new request waits behind)."""
        return sum(self._level_rows[:level])

    def discard(self, item: Pending) -> None:
        """The request left the queue (cancelled or expired); it is skipped when reached."""
        if item.queued:
            item.queued = False
            self._count(item, -1)

    def delay(self, item: Pending) -> None:
        """Move a timed-out request behind every other request (timeout action DELAY)."""
        if item.queued and not item.delayed:
            self._count(item, -1)
            item.delayed = True
            self._delayed.append(item)
            self._count(item, +1)

    def pop(self) -> Pending | None:
        """The first live request: highest level first, FIFO within it, delayed ones last."""
        for queue in (*self._levels, self._delayed):
            while queue:
                item = queue.popleft()
                if self._here(item, queue):
                    self._take(item)
                    return item
        return None

    def take_compatible(self, batch: list[Pending], rows: int, max_rows: int) -> int:
        """Move every queued request that fits into `batch` (same key, rows <= max_rows)."""
        key = batch[0].key
        for queue in (*self._levels, self._delayed):
            if rows >= max_rows:
                break
            if not queue:
                continue
            kept: deque[Pending] = deque()
            while queue:
                item = queue.popleft()
                if not self._here(item, queue):
                    continue  # left the queue, or lives in the delayed queue now
                if item.key == key and rows + item.rows <= max_rows:
                    self._take(item)
                    batch.append(item)
                    rows += item.rows
                    if rows >= max_rows:
                        break
                else:
                    kept.append(item)
            kept.extend(queue)
            queue.clear()
            queue.extend(kept)
        return rows

    def drain(self) -> list[Pending]:
        """Remove and return every queued request (shutdown)."""
        items: list[Pending] = []
        for queue in (*self._levels, self._delayed):
            while queue:
                item = queue.popleft()
                if item.queued:
                    self._take(item)
                    items.append(item)
        return items

    def _here(self, item: Pending, queue: deque[Pending]) -> bool:
        """Whether `queue` holds the live entry of `item` (a delayed one sits in two deques)."""
        return item.queued and item.delayed == (queue is self._delayed)

    def _take(self, item: Pending) -> None:
        item.queued = False
        self._count(item, -1)
        for timer in item.timers:
            timer.cancel()
        item.timers.clear()

    def _count(self, item: Pending, sign: int) -> None:
        self.requests += sign
        self.rows += sign * item.rows
        if not item.delayed:
            self._level_requests[item.level - 1] += sign
            self._level_rows[item.level - 1] += sign * item.rows

