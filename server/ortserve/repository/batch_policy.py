"""From a completed model config to the batching room's BatchPolicy (plain values)."""

from __future__ import annotations

import math

from ortserve.batching import BatchPolicy, QueuePolicy
from ortserve.errors import ModelLoadError
from ortserve_client.proto import model_config_pb2 as mc

LATENCY_TARGET_PARAMETER = "latency_target_ms"
"""Model config parameter setting the model's p99 latency target in ms (0: greedy batching)."""
BATCH_SHAPES_PARAMETER = "batch_shapes"
"""Model config parameter: "auto" (the default), "off", or the row counts batches are padded up to."""
BATCH_HOLD_PARAMETER = "batch_hold"
"""Model config parameter: "auto" (the default: hold batches at high load, batching/hold.py) or "off"."""


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


def shape_ladder(max_batch_size: int) -> tuple[int, ...]:
    """The batch shapes "auto" pads to: powers of two below a step, then multiples of the step.

    The step is 8, doubled until max_batch_size needs at most 16 of them: for 128, 1 2 4 8 16 24
    ... 128 (19 shapes; a batch gains at most 7 rows); for 1024, 1 2 4 ... 64 128 192 ... 1024.
    """
    if max_batch_size <= 1:
        return ()
    step = 8
    while step * 16 < max_batch_size:
        step *= 2
    small = [1 << k for k in range(step.bit_length()) if (1 << k) < min(step, max_batch_size)]
    return tuple(sorted({*small, *range(step, max_batch_size, step), max_batch_size}))


def batch_shapes(config: mc.ModelConfig, device: str) -> tuple[int, ...]:
    """The row counts a batch is padded up to (BatchPolicy.batch_shapes).

    A CUDA session pays for every change of input shape (ONNX Runtime rebuilds its cuDNN plans),
    and a batcher forms every batch size from 1 to max_batch_size; batching/shapes.py pads batches
    to a few shapes and keeps each instance on one of them. Parameter `batch_shapes`:
    "auto" (or absent): shape_ladder(max_batch_size) when the model runs on CUDA, none on CPU
    (where a new shape costs nothing and padding would waste compute); "off": none; or a comma
    list of row counts in 1..max_batch_size (max_batch_size is added, so that every batch has one).
    """
    parameter = config.parameters.get(BATCH_SHAPES_PARAMETER)
    text = parameter.string_value.strip().lower() if parameter is not None else "auto"
    if config.max_batch_size <= 0 or text in ("off", "none"):
        return ()
    if text == "auto":
        return shape_ladder(config.max_batch_size) if device == "cuda" else ()
    try:
        sizes = {int(part) for part in text.replace(" ", "").split(",") if part}
    except ValueError:
        sizes = set()
    if not sizes or not all(1 <= n <= config.max_batch_size for n in sizes):
        raise ModelLoadError(
            f"model {config.name!r}: parameter {BATCH_SHAPES_PARAMETER} must be \"auto\", \"off\" or a comma "
            f"list of batch sizes in 1..{config.max_batch_size} (max_batch_size), e.g. \"1,8,32,64\"; "
            f"got {parameter.string_value if parameter is not None else ''!r}"
        )
    return tuple(sorted({*sizes, config.max_batch_size}))


def batch_hold(config: mc.ModelConfig) -> bool:
    """Whether a batch may wait for more rows at high load (BatchPolicy.hold; parameter `batch_hold`)."""
    parameter = config.parameters.get(BATCH_HOLD_PARAMETER)
    text = parameter.string_value.strip().lower() if parameter is not None else "auto"
    if text not in ("auto", "off"):
        raise ModelLoadError(
            f"model {config.name!r}: parameter {BATCH_HOLD_PARAMETER} must be \"auto\" (hold batches for more "
            f"rows at high load) or \"off\" (strictly greedy), got {parameter.string_value if parameter else ''!r}"
        )
    return text == "auto"


def batch_policy(config: mc.ModelConfig, default_latency_target_ms: float = 0.0, device: str = "cpu") -> BatchPolicy:
    """The BatchPolicy of a completed config; without dynamic_batching each request runs alone.

    `device` is where the model's instances run ("cuda" if any does): it decides batch_shapes' "auto".
    """
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
        batch_shapes=batch_shapes(config, device),
        preserve_ordering=dynamic and batching.preserve_ordering,
        hold=batch_hold(config),
    )
