"""The scheduling policy of one model version, as plain values (built from Triton's config).

`dynamic_batching` in a model's config maps onto `BatchPolicy`; its priority queue policies
onto `QueuePolicy`. Priorities follow Triton: levels 1..priority_levels, 1 the highest; a
request without a priority gets `default_priority_level`.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class QueuePolicy:
    """Admission and timeout rules of one priority level's queue."""

    max_queue_size: int = 0
    """Most requests waiting at this level; 0 = unbounded."""
    default_timeout_us: int = 0
    """Timeout of a request that sets none (or may not override); 0 = none."""
    allow_timeout_override: bool = False
    """Whether a request's own `timeout` parameter replaces default_timeout_us."""
    delay_on_timeout: bool = False
    """Triton's timeout_action DELAY: a timed-out request is not rejected but moved behind every
    other request; False is REJECT (DEADLINE_EXCEEDED)."""


@dataclass(frozen=True, slots=True)
class BatchPolicy:
    """How requests of one model version are queued and gathered into batches."""

    max_batch_size: int = 0
    """Most rows in one execution; 0 = the model takes no batch dimension (one request per run)."""
    dynamic: bool = True
    """Gather several requests into one execution; False runs each request alone (Triton's
    default scheduler: a model without `dynamic_batching`)."""
    preferred_batch_sizes: tuple[int, ...] = ()
    """Row counts a waiting batch aims for (only matters with a queue delay)."""
    max_queue_delay_us: int = 0
    """Upper bound on how long a batch may wait for more rows; 0 = never wait (greedy)."""
    priority_levels: int = 0
    """Number of priority levels (1 = highest); 0 = a single level."""
    default_priority_level: int = 0
    """Level of a request that sets no priority; 0 = the lowest level."""
    default_queue_policy: QueuePolicy = field(default_factory=QueuePolicy)
    queue_policies: dict[int, QueuePolicy] = field(default_factory=dict)
    """Per-level overrides of default_queue_policy."""
    latency_target_ms: float = 0.0
    """p99 latency target; > 0 turns on the latency-target controller (batch cap + admission)."""
    batch_shapes: tuple[int, ...] = ()
    """Ascending row counts a batch is padded up to before it runs (shapes.ShapePlanner chooses
    which); empty = run batches as formed."""
    preserve_ordering: bool = False
    """Answer accepted requests in the order they entered the queue (Triton's preserve_ordering):
    a request whose batch finishes early waits until every request before it is answered; errors
    keep their place too, a request whose caller went away gives its place up at once."""
    hold: bool = True
    """At high load, let a batch that an idle instance could run wait briefly for more rows
    (hold.BatchHold: measured, never at low load); False = strictly greedy."""

    @property
    def levels(self) -> int:
        return max(self.priority_levels, 1)

    def level_of(self, priority: int) -> int:
        """The queue level (1..levels) of a request's priority (0 = default)."""
        if priority <= 0:
            level = self.default_priority_level or self.levels
        else:
            level = priority
        return min(max(level, 1), self.levels)

    def queue_policy(self, level: int) -> QueuePolicy:
        return self.queue_policies.get(level, self.default_queue_policy)

    @property
    def batching(self) -> bool:
        """True when several requests may share one execution."""
        return self.max_batch_size > 0 and self.dynamic
