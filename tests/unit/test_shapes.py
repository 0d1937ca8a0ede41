"""The batch shape planner (batching/shapes.py): padding, and when a change of shape pays off."""

from __future__ import annotations

import sys
import threading

import pytest

from ortserve.batching.shapes import ShapePlanner

MS = 1_000_000
LADDER = (1, 2, 4, 8, 16, 24, 32, 40, 48, 56, 64, 72)


def seeded(change_ms: float, per_row_ms: float = 0.2) -> ShapePlanner:
    """A planner that has measured every shape at `per_row_ms` a row and a change at `change_ms`."""
    planner = ShapePlanner(LADDER)
    planner.observe(1, 50 * MS)  # the session's first run: ignored
    planner.observe(1, int(0.2 * MS))
    for shape in LADDER[1:]:  # as the warm-up: each shape twice (a change with no time for it yet, then the same)
        planner.observe(shape, int((shape * per_row_ms + change_ms) * MS))
        planner.observe(shape, int(shape * per_row_ms * MS))
    for shape in (64, 72):  # then changes between shapes whose own time is known
        planner.observe(shape, int((shape * per_row_ms + change_ms) * MS))
    return planner


def test_costs_come_from_same_shape_runs_and_a_change_from_the_difference() -> None:
    planner = seeded(change_ms=90)
    assert planner.cost_ns(64) == 64 * 0.2 * MS
    assert abs(planner.change_ns - 90 * MS) < 1e-3 * MS
    assert planner.cost_ns(100) == planner.cost_ns(72) * 100 / 72  # scaled from the nearest measured


def test_the_first_run_of_a_session_teaches_nothing() -> None:
    planner = ShapePlanner(LADDER)
    planner.observe(8, 500 * MS)
    assert planner.cost_ns(8) == 0 and planner.change_ns == 0


def test_without_a_change_cost_batches_run_at_their_nearest_shape() -> None:
    planner = seeded(change_ms=0)
    assert [planner.rows_for(n) for n in (60, 68, 60, 5, 1, 64)] == [64, 72, 64, 8, 1, 64]


def test_neighbouring_batch_sizes_keep_one_shape_when_a_change_is_dear() -> None:
    """Under load batches alternate around a mean: 60, 68, 60, ... must not change shape each time."""
    planner = seeded(change_ms=90)
    shapes = [planner.rows_for(n) for n in (60, 68, 60, 68, 62, 66, 57, 70) * 5]
    assert shapes[0] == 64 and set(shapes[1:]) == {72}


def test_a_batch_that_does_not_fit_changes_shape_at_once() -> None:
    planner = seeded(change_ms=90)
    assert planner.rows_for(8) == 8
    assert planner.rows_for(40) == 40
    assert planner.rows_for(130) == 130  # past the largest shape: as formed


def test_small_batches_shrink_the_shape_once_their_waste_reaches_a_change() -> None:
    """Ski rental: at 72 rows a 4-row batch wastes (72 - 4) * 0.2 = 13.6 ms; 90 ms of waste buys
    the change, after 7 batches, to the largest shape those batches needed."""
    planner = seeded(change_ms=90)
    assert planner.rows_for(70) == 72
    shapes = [planner.rows_for(n) for n in (3, 4, 2, 4, 3, 1, 4, 4, 4)]
    assert shapes == [72] * 6 + [4, 4, 4]


def test_a_batch_that_needs_the_current_shape_resets_the_waste() -> None:
    planner = seeded(change_ms=90)
    planner.rows_for(70)
    for _ in range(5):
        assert planner.rows_for(4) == 72
    assert planner.rows_for(71) == 72  # needed it: the waste so far is forgiven
    assert [planner.rows_for(4) for _ in range(7)] == [72] * 6 + [4]


def test_a_batch_takes_at_most_the_current_shape_until_the_queue_holds_twice_that() -> None:
    planner = seeded(change_ms=90)
    assert planner.cap(100, 128) == 128  # no shape yet: whatever waits
    planner.rows_for(64)
    assert [planner.cap(q, 128) for q in (1, 50, 64, 100, 127)] == [64] * 5
    assert planner.cap(128, 128) == 64  # half the queue: 64, this shape
    assert planner.cap(140, 128) == 72 and planner.cap(400, 128) == 128 and planner.cap(400, 60) == 60


def test_without_shapes_or_without_a_change_cost_the_cap_is_the_batchers() -> None:
    assert ShapePlanner(()).cap(500, 32) == 32
    free = seeded(change_ms=0)
    free.rows_for(8)
    assert free.cap(12, 72) == 72  # changing shape costs nothing: no reason to leave rows behind
    cheap = seeded(change_ms=1)  # less than a run at 8 rows (1.6 ms): leaving rows behind costs more
    cheap.rows_for(8)
    assert cheap.cap(12, 72) == 72


def test_a_part_of_a_failed_batch_runs_at_the_current_shape_and_changes_nothing() -> None:
    planner = seeded(change_ms=90)
    assert planner.rows_for(30) == 32
    waste = planner._waste_ns
    assert [planner.rows_for_part(n) for n in (1, 15, 32, 33, 80)] == [32, 32, 32, 40, 80]
    assert planner.current == 32 and planner._waste_ns == waste  # read-only: the next batch decides as before
    assert ShapePlanner(()).rows_for_part(5) == 5  # no shapes (CPU): parts run as they are


def test_the_cost_of_a_shape_can_be_read_while_the_worker_records_runs() -> None:
    """The batcher reads `cap` (and so `cost_ns`) for a latency-target batch staged behind a running
    one while the instance's worker records that run (`observe`): the table of measured shapes may
    grow under the read, which must still answer."""
    shapes = tuple(range(1, 3001))
    planner = ShapePlanner(shapes)
    planner.observe(1, MS)  # the session's first run: ignored

    def worker() -> None:
        for rows in shapes:  # each shape twice in a row: the second run is its time
            planner.observe(rows, rows * MS)
            planner.observe(rows, rows * MS)

    thread = threading.Thread(target=worker)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # hand the GIL over as often as Python allows
    try:
        thread.start()
        while thread.is_alive():
            planner.cost_ns(10_000)  # a shape never measured: the nearest measured one's time, scaled
    finally:
        sys.setswitchinterval(interval)
        thread.join()
    assert planner.cost_ns(10_000) == pytest.approx(10_000 * MS)
