"""Splitting inputs into row batches and joining the results back, for `infer_many` (no I/O)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ortserve_client.codec import Array
from ortserve_client.metadata import ModelMetadata


def named_inputs(inputs: Mapping[str, Any] | Array, metadata: ModelMetadata | None) -> dict[str, Array]:
    """The inputs by name; a lone array goes to the model's only input."""
    if isinstance(inputs, Mapping):
        return {name: np.asarray(value) for name, value in inputs.items()}
    if metadata is None or len(metadata.inputs) != 1:
        count = "?" if metadata is None else len(metadata.inputs)
        raise ValueError(f"a single array needs a model with exactly one input ({count} here): pass a mapping")
    return {metadata.inputs[0].name: np.asarray(inputs)}


def rows_of(inputs: Mapping[str, Array]) -> int:
    """The first dimension of the inputs (0 without any)."""
    return max((a.shape[0] for a in inputs.values() if a.ndim), default=0)


def split_rows(inputs: Mapping[str, Array], batch_size: int) -> list[dict[str, Array]]:
    """Consecutive slices of at most `batch_size` rows of every input (views, no copy)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    rows = {name: (a.shape[0] if a.ndim else -1) for name, a in inputs.items()}
    if not rows:
        raise ValueError("no inputs to split")
    if len(set(rows.values())) != 1 or -1 in rows.values():
        raise ValueError(f"every input needs the same number of rows (first dimension), got {rows}")
    total = next(iter(rows.values()))
    starts = range(0, total, batch_size)
    return [{name: a[start : start + batch_size] for name, a in inputs.items()} for start in starts]


def join_rows(results: Sequence[Mapping[str, Array]]) -> dict[str, Array]:
    """Each output concatenated along the first dimension, in the order of `results`."""
    if not results:
        return {}
    return {name: np.concatenate([r[name] for r in results]) for name in results[0]}
