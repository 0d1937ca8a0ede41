"""What the benchmarks read from /proc about a server's threads: CPU time and context switches."""

from __future__ import annotations

import os
import threading

from benchmarks.hotspots import switch_delta
from benchmarks.servers import Proc


def test_thread_switches_counts_a_thread_that_blocks() -> None:
    proc = Proc("self", os.getpid(), "")
    go, back, stop = threading.Event(), threading.Event(), threading.Event()
    ids: list[int] = []
    rounds = 20

    def ping() -> None:
        ids.append(threading.get_native_id())
        back.set()
        while not stop.is_set():
            go.wait()  # blocks until the main thread sets it: a voluntary switch each time
            go.clear()
            back.set()

    thread = threading.Thread(target=ping)
    thread.start()
    try:
        assert back.wait(5)
        before = proc.thread_switches()
        for _ in range(rounds):
            back.clear()
            go.set()
            assert back.wait(5)
        after = proc.thread_switches()  # the thread still runs: it waits on `go`
    finally:
        stop.set()
        go.set()
        thread.join(5)
    assert threading.get_native_id() in after
    voluntary, involuntary = switch_delta(before, after)[ids[0]]
    assert voluntary >= rounds - 1, (voluntary, involuntary)
    assert involuntary >= 0


def test_switch_delta_counts_new_threads_from_zero() -> None:
    before = {1: (10, 2), 2: (5, 0)}
    after = {1: (15, 3), 3: (4, 1)}
    assert switch_delta(before, after) == {1: (5, 1), 3: (4, 1)}
