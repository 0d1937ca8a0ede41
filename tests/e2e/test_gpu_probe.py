"""`python -m benchmarks.gpu_probe` on CPU with a tiny ResNet, and its py-spy dump filter."""

from __future__ import annotations

import re
import subprocess
import sys

from benchmarks.gpu_probe import worker_stacks
from tests.e2e import ROOT, need_perf_analyzer


def test_probe_reports_both_loads_for_each_server_variant() -> None:
    need_perf_analyzer()
    done = subprocess.run(
        [
            sys.executable, "-m", "benchmarks.gpu_probe", "--device", "cpu", "--tiny", "--quick", "--threads", "1",
            "--py-spy=", "--variant=", "--variant=--intra-op-threads=1",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    servers = out.split("== server ")[1:]
    assert [s.splitlines()[0] for s in servers] == ["(plain)", "--intra-op-threads=1"]
    assert "intra_op_threads 1" in servers[1] and "warmed up at batch sizes" in servers[0]
    for server in servers:
        for load in ("C=1, 64-row requests (measured)", "C=128, one-row requests (measured)"):
            line = next(x for x in server.splitlines() if load in x)
            rate = float(re.search(r": (\d+) images/s", line).group(1))  # type: ignore[union-attr]
            run_ms = float(re.search(r"run ([\d.]+) ms/batch", line).group(1))  # type: ignore[union-attr]
            assert rate > 0 and run_ms > 0 and "threads: " in line and "loop " in line, line
            assert "GPU not sampled" in line or "GPU util" in line


DUMP = """--- py-spy dump 1 (exit 0)
Process 7: python -m ortserve serve
Thread 7 (active+gil): "MainThread"
    f1 (a.py:1)
    f2 (a.py:2)
    f3 (a.py:3)
    f4 (a.py:4)
    f5 (a.py:5)
    f6 (a.py:6)
    f7 (a.py:7)
Thread 9 (idle): "Thread-1 (_poll_wrapper)"
    epoll_wait (libc.so.6)
Thread 11 (active): "resnet_1-0"
    cudnnBackendGetAttribute (libcudnn_graph.so.9)
    Session.run (onnxruntime/capi/onnxruntime_inference_collection.py:395)
    DynamicBatcher._work (ortserve/batching/batcher.py:384)
"""


def test_dump_filter_keeps_the_batch_workers_whole_and_the_loops_top_frames() -> None:
    kept = worker_stacks(DUMP, lines=3)
    assert kept[0] == "--- py-spy dump 1 (exit 0)"
    assert 'Thread 7 (active+gil): "MainThread"' in kept and "    f6 (a.py:6)" in kept and "    f7 (a.py:7)" not in kept
    assert not any("_poll_wrapper" in line for line in kept)
    worker = kept[kept.index('Thread 11 (active): "resnet_1-0"') :]
    assert worker == ['Thread 11 (active): "resnet_1-0"', "    cudnnBackendGetAttribute (libcudnn_graph.so.9)",
                      "    Session.run (onnxruntime/capi/onnxruntime_inference_collection.py:395)"]
