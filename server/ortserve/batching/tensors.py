"""Pure tensor plumbing of a batch: concatenate requests' inputs, split the outputs back.

Concatenation is the one intended copy of the request path; splitting returns views.
BatchBuffers concatenates large batches into memory kept from one batch to the next.

The copy holds the GIL from start to end. `np.concatenate` releases it around each piece it
copies once the piece has a few hundred elements, and the batch worker must then take it back
from the event loop, which, busy, keeps it for Python's switch interval (5 ms) each time. Beside
a thread spinning in Python (benchmarks/runpaths.py's stand-in for a loaded event loop), on the
2-core sandbox: 20 CNN rows (12 KiB each) 5.5 us alone, 5.1 ms beside it; 64 ResNet-50 images
(602 KiB each) 1.3 ms alone, 329 ms beside it. Copied piece by piece through memoryviews with the
GIL held: 7.7 us and 1.6 ms beside the same thread. Pieces under GIL_FREE_BYTES, which numpy
copies without releasing the GIL, and object (BYTES) arrays still go through `np.concatenate`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

GIL_FREE_BYTES = 1024
"""Average piece size from which a batch is copied with the GIL held rather than by np.concatenate."""


def concat_inputs(items: Sequence[Mapping[str, np.ndarray]]) -> Mapping[str, np.ndarray]:
    """Stack the inputs of several requests along the batch (first) axis.

    A single request is passed through untouched (no copy). All items must have the same
    input names and the same non-batch dims; the scheduler guarantees it.
    """
    if len(items) == 1:
        return items[0]
    return {name: gather([item[name] for item in items]) for name in items[0]}


def gather(arrays: Sequence[np.ndarray], out: np.ndarray | None = None, rows: int = 0) -> np.ndarray:
    """`arrays` stacked along axis 0 into `out` (C-contiguous, the right shape) or a new array.

    Same dtype and non-batch dims throughout. With `rows` larger than the pieces' rows, the
    result has `rows` rows, the extra ones copies of the last piece's last row (padding to a
    batch shape: a real input row is valid input for the model, zeros might not be). Copied with
    the GIL held unless the pieces are small or hold Python objects (module docstring).
    """
    first = arrays[0]
    have = sum(a.shape[0] for a in arrays)
    pad = max(rows - have, 0)
    pieces = len(arrays) + (pad > 0)
    if first.dtype.hasobject or (out is not None and not out.flags.c_contiguous):
        return np.concatenate(_padded(arrays, pad), axis=0, out=out)
    if out is None:
        out = np.empty((have + pad, *first.shape[1:]), first.dtype)
    if out.nbytes < GIL_FREE_BYTES * pieces:
        return np.concatenate(_padded(arrays, pad), axis=0, out=out)
    target = out.reshape(-1).view(np.uint8).data
    offset = 0
    for array in arrays:
        if not array.flags.c_contiguous:
            array = np.ascontiguousarray(array)
        size = array.nbytes
        # A slice assignment between byte memoryviews: one memcpy, and the GIL stays held.
        target[offset : offset + size] = array.reshape(-1).view(np.uint8).data
        offset += size
    if pad:  # the last row, copied from where it now is in `out`
        row = out.nbytes // (have + pad)
        last = target[offset - row : offset]
        for _ in range(pad):
            target[offset : offset + row] = last
            offset += row
    return out


def _padded(arrays: Sequence[np.ndarray], pad: int) -> Sequence[np.ndarray]:
    """`arrays` and, when pad > 0, a broadcast view of `pad` copies of the last row (no copy yet)."""
    if not pad:
        return arrays
    last = arrays[-1][-1:]
    return [*arrays, np.broadcast_to(last, (pad, *last.shape[1:]))]


class BatchBuffers:
    """One instance's reusable input memory: large batches are concatenated into it.

    A batch of 64 ResNet-50 images is 38 MB. A new array that size is mmap'ed fresh each time
    (glibc's mmap threshold is at most 32 MB) and every page faults in while the copy writes
    it: on the 2-core sandbox `np.concatenate` of 64 one-image arrays takes 3.3 ms into a new
    array and 1.5 ms into reused memory (6.8 and 3.2 at 128). Inputs of at least MIN_BYTES per
    batch are concatenated into a buffer per input name that grows (by half again at least) to
    the largest batch seen; smaller ones and object (BYTES) arrays into a new array.

    Not thread-safe: one per instance, used by that instance's worker only, and a batch's
    inputs must be consumed (the session has run) before the next `concat`. `detach` copies any
    output that could share memory with a buffer (an Identity from input to output may alias),
    so that what goes back to the requests outlives the next batch.
    """

    MIN_BYTES = 1 << 20

    __slots__ = ("_buffers",)

    def __init__(self) -> None:
        self._buffers: dict[str, np.ndarray] = {}

    @property
    def nbytes(self) -> int:
        """Bytes held (for tests and accounting)."""
        return sum(b.nbytes for b in self._buffers.values())

    def concat(self, items: Sequence[Mapping[str, np.ndarray]], rows: int = 0) -> Mapping[str, np.ndarray]:
        """concat_inputs, into the kept memory where an input's batch has MIN_BYTES or more.

        `rows` larger than the items' rows pads the batch to that many rows (gather).
        """
        if len(items) == 1 and rows <= next(iter(items[0].values())).shape[0]:
            return items[0]
        feeds: dict[str, np.ndarray] = {}
        for name in items[0]:
            arrays = [item[name] for item in items]
            first = arrays[0]
            total = max(rows, sum(a.shape[0] for a in arrays))
            shape = (total, *first.shape[1:])
            nbytes = math.prod(shape) * first.itemsize
            if nbytes < self.MIN_BYTES or first.dtype.hasobject:
                feeds[name] = gather(arrays, rows=total)
                continue
            buffer = self._buffers.get(name)
            if buffer is None or buffer.nbytes < nbytes:
                grown = nbytes if buffer is None else max(nbytes, buffer.nbytes * 3 // 2)
                buffer = self._buffers[name] = np.empty(grown, np.uint8)
            feeds[name] = gather(arrays, buffer[:nbytes].view(first.dtype).reshape(shape), total)
        return feeds

    def detach(self, outputs: Mapping[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        """`outputs`, with a copy of each one that may share memory with a buffer."""
        if not self._buffers:
            return outputs
        buffers = self._buffers.values()
        if not any(np.may_share_memory(a, b) for a in outputs.values() for b in buffers):
            return outputs
        return {
            name: a.copy() if any(np.may_share_memory(a, b) for b in buffers) else a for name, a in outputs.items()
        }


def split_outputs(
    outputs: Mapping[str, np.ndarray], rows: Sequence[int], padded: int = 0
) -> list[dict[str, np.ndarray]]:
    """Cut batch outputs into per-request views, request i getting the next rows[i] rows.

    `padded`: the batch ran padded to that many rows; the rows past sum(rows) are dropped.
    """
    total = sum(rows)
    padded = max(padded, total)
    if len(rows) == 1 and padded == total:
        return [dict(outputs)]
    for name, array in outputs.items():
        if array.ndim == 0 or array.shape[0] != padded:
            raise ValueError(
                f"output {name!r} has shape {list(array.shape)}: cannot split {padded} batch rows from it"
            )
    parts: list[dict[str, np.ndarray]] = []
    start = 0
    for n in rows:
        stop = start + n
        parts.append({name: array[start:stop] for name, array in outputs.items()})
        start = stop
    return parts
