"""Pure tensor plumbing of a batch: concatenate requests' inputs, split the outputs back.

Concatenation is the one intended copy of the request path; splitting returns views.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np


def concat_inputs(items: Sequence[Mapping[str, np.ndarray]]) -> Mapping[str, np.ndarray]:
    """Stack the inputs of several requests along the batch (first) axis.

    A single request is passed through untouched (no copy). All items must have the same
    input names and the same non-batch dims; the scheduler guarantees it.
    """
    if len(items) == 1:
        return items[0]
    first = items[0]
    return {name: np.concatenate([item[name] for item in items], axis=0) for name in first}


def split_outputs(
    outputs: Mapping[str, np.ndarray], rows: Sequence[int]
) -> list[dict[str, np.ndarray]]:
    """Cut batch outputs into per-request views, request i getting the next rows[i] rows."""
    if len(rows) == 1:
        return [dict(outputs)]
    total = sum(rows)
    for name, array in outputs.items():
        if array.ndim == 0 or array.shape[0] != total:
            raise ValueError(
                f"output {name!r} has shape {list(array.shape)}: cannot split {total} batch rows from it"
            )
    parts: list[dict[str, np.ndarray]] = []
    start = 0
    for n in rows:
        stop = start + n
        parts.append({name: array[start:stop] for name, array in outputs.items()})
        start = stop
    return parts
