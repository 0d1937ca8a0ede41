"""Which row count a batch runs at: padding to batch shapes, and when to change shape.

A session can pay for a change of input shape. ONNX Runtime's CUDA Conv keeps the cuDNN plan of
the last input dims it saw and rebuilds it (new graph, heuristics, plan) whenever they change:
ResNet-50 on an H200 took ~94 ms for that against ~14 ms for the batch of 64 itself
(docs/performance.md), whether or not the shape had run before. A batcher under load forms
batches of neighbouring sizes (64, 72, 64, ...), so padding each batch to its nearest shape
still changes shape almost every batch. So each instance runs at a current shape and:

- when a change costs more than a run at the current shape (as on CUDA, by 5-10 times), a batch
  takes at most the current shape's rows (`cap`), the
  rest waiting for the next batch, unless the queue holds twice that or more: then it grows to
  the shape of half the queue (the backlog split between this batch and the next). Under a
  closed loop of C clients on one instance this settles at C/2 rows a batch, one batch running
  while the next forms;
- a batch that does not fit the current shape (one large request) switches to the smallest
  shape that holds it;
- a batch that fits stays at the current shape, padded, unless the time padding has wasted
  since the last batch that needed the current shape has reached what a change costs; then it
  shrinks to the largest shape those batches needed. (The ski-rental rule: never pay more than
  twice the best choice in hindsight, with no knob.)

Costs are measured on each instance: the run time of each shape (runs that kept the shape) and
what a change adds (a run that changed shape, less that shape's run time). Before a change has
been measured its cost counts as zero, so a session that pays nothing for a change (CPU) takes
whatever waits and runs it at the nearest shape. The model's warm-up seeds both (it runs each
shape twice, then changes shape twice).
"""

from __future__ import annotations

from bisect import bisect_left

_ALPHA = 0.25
"""Weight of a new measurement in the moving averages."""


class ShapePlanner:
    """One instance's batch shape: `cap` while its batch forms, `rows_for` before the run,
    `observe` after it.

    One per instance, written only by the instance's worker thread (`rows_for`, `observe`, while its
    batch runs, and its warm-up before that); the batcher task reads `cap` as a batch forms, also
    while the instance runs the one before it (the latency-target mode's staged batches): plain
    reads of numbers the worker may be updating, so an estimate at worst one batch old.
    """

    __slots__ = ("shapes", "current", "_last_run", "_run_ns", "_change_ns", "_waste_ns", "_needed")

    def __init__(self, shapes: tuple[int, ...]) -> None:
        self.shapes = shapes
        """Ascending row counts batches are padded to; empty: batches run as formed."""
        self.current = 0
        """The shape batches run at now (0: none yet)."""
        self._last_run = 0
        self._run_ns: dict[int, float] = {}
        self._change_ns = 0.0
        self._waste_ns = 0.0
        self._needed = 0
        """The largest shape the batches since the last one that needed `current` would need."""

    @property
    def change_ns(self) -> float:
        """The measured extra time of a run that changes shape (0 until measured)."""
        return self._change_ns

    def fit(self, rows: int) -> int:
        """The smallest shape that holds `rows` rows (`rows` itself past the largest)."""
        shapes = self.shapes
        index = bisect_left(shapes, rows)
        return shapes[index] if index < len(shapes) else rows

    def cap(self, queued_rows: int, max_rows: int) -> int:
        """The most rows the next batch may take when `queued_rows` rows wait (<= max_rows)."""
        current = self.current
        if not self.shapes or current == 0 or self._change_ns <= self.cost_ns(current):
            # No shape yet, or a change costs less than the extra run that leaving rows behind
            # means: take what waits.
            return max_rows
        if queued_rows >= 2 * current:
            return min(max_rows, self.fit((queued_rows + 1) // 2))
        return min(max_rows, current)

    def rows_for(self, rows: int) -> int:
        """The row count a batch of `rows` rows runs at (>= rows)."""
        if not self.shapes:
            return rows
        fit = self.fit(rows)
        current = self.current
        if fit >= current:  # needs the current shape, or more: no waste, or a forced change
            self.current = fit
            self._waste_ns, self._needed = 0.0, 0
            return fit
        self._needed = max(self._needed, fit)
        self._waste_ns += max(0.0, self.cost_ns(current) - self.cost_ns(fit))
        if self._waste_ns >= self._change_ns:
            self.current = self._needed
            self._waste_ns, self._needed = 0.0, 0
        return self.current

    def rows_for_part(self, rows: int) -> int:
        """The row count a part of a failed batch, rerun on its own, runs at: the current shape when it
        holds `rows` (no change of shape, which is what costs), else the smallest that does. Read-only."""
        if not self.shapes:
            return rows
        return self.current if rows <= self.current else self.fit(rows)

    def observe(self, rows: int, ns: int) -> None:
        """A run of `rows` rows (padded: the shape it ran at) took `ns`."""
        previous, self._last_run = self._last_run, rows
        if previous == 0:
            return  # the session's first run: one-time costs, neither a shape's time nor a change's
        if previous == rows:
            known = self._run_ns.get(rows)
            if known is None:  # a new table, never a grown one: `cost_ns` may be iterating this one (`cap`)
                self._run_ns = {**self._run_ns, rows: float(ns)}
            else:
                self._run_ns[rows] = known + _ALPHA * (ns - known)
            return
        base = self._run_ns.get(rows)
        if base is None:
            return  # no same-shape time yet to tell the change's share
        extra = max(0.0, ns - base)
        self._change_ns = extra if self._change_ns == 0 else self._change_ns + _ALPHA * (extra - self._change_ns)

    def cost_ns(self, shape: int) -> float:
        """Estimated run time at `shape`: measured, else scaled from the nearest measured shape."""
        measured = self._run_ns  # the worker replaces the table to add a shape, never grows this one
        known = measured.get(shape)
        if known is not None:
            return known
        if not measured:
            return 0.0
        nearest = min(measured, key=lambda s: abs(s - shape))
        return measured[nearest] * shape / nearest
