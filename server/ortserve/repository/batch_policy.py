"""From a completed model config to the batching room's BatchPolicy (plain values)."""

from __future__ import annotations

import math

from ortserve.batching import BatchPolicy, QueuePolicy
from ortserve.errors import ModelLoadError
from ortserve_client.proto import model_config_pb2 as mc

LATENCY_TARGET_PARAMETER = "latency_target_ms"
"""Model config parameter setting the model's p99 latency target in ms (0: greedy batching)."""


def _queue_policy(policy: mc.ModelQueuePolicy) -> QueuePolicy:
    return QueuePolicy(
        max_queue_size=policy.max_queue_size,
        default_timeout_us=policy.default_timeout_microseconds,
        allow_timeout_override=policy.allow_timeout_override,
        delay_on_timeout=policy.timeout_action == mc.ModelQueuePolicy.DELAY,
    )


def latency_target_ms(config: mc.ModelConfig, default_ms: float) -> float:
    """The model's latency target: its config parameter, else the server-wide default."""
    parameter = config.parameters.get(LATENCY_TARGET_PARAMETER)
    if parameter is None:
        return default_ms
    text = parameter.string_value
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise ModelLoadError(
            f"model {config.name!r}: parameter {LATENCY_TARGET_PARAMETER} must be a number of milliseconds >= 0 "
            f"(0 turns the latency-target mode off), got {text!r}"
        )
    return value


def batch_policy(config: mc.ModelConfig, default_latency_target_ms: float = 0.0) -> BatchPolicy:
    """The BatchPolicy of a completed config; without dynamic_batching each request runs alone."""
    dynamic = config.HasField("dynamic_batching")
    batching = config.dynamic_batching
    return BatchPolicy(
        max_batch_size=config.max_batch_size,
        dynamic=dynamic,
        preferred_batch_sizes=tuple(batching.preferred_batch_size),
        max_queue_delay_us=batching.max_queue_delay_microseconds,
        priority_levels=batching.priority_levels,
        default_priority_level=batching.default_priority_level,
        default_queue_policy=_queue_policy(batching.default_queue_policy),
        queue_policies={level: _queue_policy(p) for level, p in batching.priority_queue_policy.items()},
        latency_target_ms=latency_target_ms(config, default_latency_target_ms) if dynamic else 0.0,
    )
