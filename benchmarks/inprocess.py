"""In-process ONNX Runtime: the suite's thread budget, and the compute ceiling.

The thread budget is the same everywhere in the suite: one session, `threads` intra-op threads
(the machine's cores by default), inter-op 1, sequential execution, thread-pool spinning off,
all graph optimisations. These are the options ortserve gives a model of one instance
(runtime/session.py `_session_options`, with `--intra-op-threads` set to the same number), and
the baseline server builds its session here.

The compute ceiling is the best rows/s of back-to-back `session.run` on batches of B rows,
B swept over powers of two: no network, no client, no Python server in the way.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort


def session_options(threads: int) -> Any:
    """The session options ortserve gives a one-instance model (runtime/session.py), copied for the ceilings."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return so


def make_session(path: Path, threads: int) -> Any:
    return ort.InferenceSession(str(path), session_options(threads), providers=["CPUExecutionProvider"])


@dataclass(slots=True)
class Throughput:
    batch: int
    rows_per_s: float
    ms_per_batch: float

    @property
    def ms_per_row(self) -> float:
        return self.ms_per_batch / self.batch


def feeds_for(session: Any, rows: int, seed: int = 1) -> dict[str, np.ndarray]:
    """Random FP32 inputs of `rows` rows for every input of the session (batch dim first)."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for arg in session.get_inputs():
        dims = [d if isinstance(d, int) else 1 for d in arg.shape[1:]]
        feeds[arg.name] = rng.standard_normal((rows, *dims)).astype(np.float32)
    return feeds


def measure(session: Any, rows: int, seconds: float) -> Throughput:
    """Rows/s of back-to-back runs of `rows`-row batches for about `seconds` (after a warm-up)."""
    feeds = feeds_for(session, rows)
    names = [o.name for o in session.get_outputs()]
    warm_end = time.perf_counter() + min(0.2, seconds / 4)
    while time.perf_counter() < warm_end:
        session.run(names, feeds)
    runs = 0
    start = time.perf_counter()
    end = start + seconds
    while runs < 3 or time.perf_counter() < end:
        session.run(names, feeds)
        runs += 1
    elapsed = time.perf_counter() - start
    return Throughput(rows, rows * runs / elapsed, elapsed * 1000 / runs)


def sweep(session: Any, batches: list[int], seconds: float) -> list[Throughput]:
    """One measurement per batch size, in order."""
    return [measure(session, b, seconds) for b in batches]
