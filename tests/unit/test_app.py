"""ortserve.app's process-level helpers."""

from __future__ import annotations

import gc
import weakref

from ortserve.app import settle_heap


class _Node:
    def __init__(self) -> None:
        self.me = self


def test_settle_heap_collects_cyclic_garbage_then_freezes_what_survives() -> None:
    garbage, alive = _Node(), _Node()
    gone = weakref.ref(garbage)
    del garbage
    try:
        frozen = settle_heap()
        assert gone() is None, "cyclic garbage must be collected before the freeze, not frozen with the rest"
        assert frozen == gc.get_freeze_count() > 0
        # Frozen objects sit in the permanent generation, out of the three the collector walks.
        assert not any(o is alive for g in range(3) for o in gc.get_objects(g))
    finally:
        gc.unfreeze()
