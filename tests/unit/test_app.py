"""ortserve.app's process-level helpers."""

from __future__ import annotations

import gc
import subprocess
import sys
import weakref

import pytest

from ortserve.app import _glibc, settle_heap, tune_malloc


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


# Two 24 MiB buffers allocated and freed together, six times: the pattern of large messages
# arriving while others are in flight. Prints the minor page faults of each round.
_ROUNDS = """
import resource, sys
from ortserve.app import tune_malloc
if sys.argv[1] == "tuned":
    print(tune_malloc({}), file=sys.stderr)
def round_faults(n):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    a = b"x" * n
    b = b"y" * n
    del a, b
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(*[round_faults(24 << 20) for _ in range(6)])
"""


def _faults_per_round(mode: str) -> list[int]:
    done = subprocess.run([sys.executable, "-c", _ROUNDS, mode], capture_output=True, text=True, timeout=60, check=True)
    return [int(x) for x in done.stdout.split()]


@pytest.mark.skipif(not _glibc(), reason="malloc thresholds are glibc's")
def test_tune_malloc_keeps_freed_large_buffers_in_the_heap() -> None:
    # Untuned, glibc gives the freed pair back to the kernel and every round faults in every
    # page again (the control: it shows the pattern exercises the trim); tuned, only the first.
    plain, tuned = _faults_per_round("plain"), _faults_per_round("tuned")
    pages = 2 * (24 << 20) // 4096
    assert all(f > pages // 2 for f in plain[1:]), f"control: untuned rounds should refault, got {plain}"
    assert tuned[0] > pages // 2 and sum(tuned[1:]) < pages // 10, f"tuned rounds after the first refaulted: {tuned}"


@pytest.mark.parametrize(
    "environ",
    [
        {"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=1"},
        {"MALLOC_MMAP_THRESHOLD_": "131072"},
        {"MALLOC_TRIM_THRESHOLD_": "0"},
    ],
)
def test_tune_malloc_leaves_malloc_to_an_environment_that_tunes_it(environ: dict[str, str]) -> None:
    assert "left as is" in tune_malloc(environ)
