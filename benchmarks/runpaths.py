"""The ways one batch can reach ONNX Runtime, timed in one process (benchmarks.gpu's diagnosis).

On an H200 (2026-11-26) ortserve's `session.run` of a 64-image ResNet-50 batch took ~143 ms in the
server while in-process ONNX Runtime ran 64 images in ~14 ms. Each path below adds one thing the
server does, so that one run on a GPU says which of them costs the difference:

1. `iobinding`: run_with_iobinding, input bound from host memory each run, output on the device
   (the ceiling's path).
2. `run`: InferenceSession.run on the same host array (outputs copied to the host).
3. `run, fresh batch`: InferenceSession.run on a batch concatenated from one-image arrays for each
   run, as the batcher builds it (a new 38 MB buffer every time at batch 64).
4. `ortserve instance`: ortserve's own OnnxModel.load (its session options and providers) and
   OrtInstance.run, the batch concatenated as the batcher does (BatchBuffers: into kept memory
   from 1 MiB up).
5. `ortserve instance, busy GIL`: (4) from a worker thread while the main thread runs Python code
   without pause, as the event loop does under load. Each time the worker re-takes the GIL (after
   session.run, and, before tensors.gather held the GIL, after each piece np.concatenate copied)
   it waits out the busy thread's switch interval, 5 ms by default.
6. `... switch 0.5 ms`: (5) with sys.setswitchinterval(0.0005) (`ortserve serve
   --gil-switch-interval-ms 0.5`).

On the 2-core CPU sandbox with the tiny ResNet at batch 64 (2026-11-26), rows 4 / 5 / 6: with the
batch concatenated by np.concatenate 4.0 / 55.7 / 8.8 ms; with the copy that holds the GIL
(batching/tensors.py) 4.1 / 9.6 / 4.7 ms.

The printed line per path is milliseconds per batch, median of the timed runs, and what the
session holds (get_providers()).

`new_shapes` times what a batch size the session has not run before costs: the first run at each
of a few unseen sizes against the second. A batcher forms batches of every size from 1 to
max_batch_size, and on CUDA each new input shape makes ONNX Runtime choose cuDNN algorithms and
allocate for it; the server's `batch_shapes` (padding to a few sizes, warmed up at load) exists
because of it.
"""

from __future__ import annotations

import statistics
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(slots=True)
class PathTime:
    name: str
    ms_per_batch: float
    runs: int
    providers: str


def _timed(run: Callable[[], object], seconds: float) -> tuple[float, int]:
    for _ in range(2):  # first runs of a shape pay one-time costs
        run()
    times: list[float] = []
    end = time.perf_counter() + seconds
    while len(times) < 3 or time.perf_counter() < end:
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times), len(times)


def _fresh_batch(rows: list[np.ndarray]) -> Callable[[], np.ndarray]:
    return lambda: np.concatenate(rows, axis=0)


def measure(
    session: Any, model_path: Path, device: str, batch: int, threads: int, cudnn_search: str, seconds: float
) -> list[PathTime]:
    """Time each path at `batch` rows on `session` (built as the ceiling's) and on ortserve's own load."""
    from ortserve.batching.tensors import BatchBuffers
    from ortserve.runtime import InstanceSpec, OnnxModel, RuntimeOptions

    arg = session.get_inputs()[0]
    out_names = [o.name for o in session.get_outputs()]
    rng = np.random.default_rng(batch)
    rows = [rng.standard_normal((1, *arg.shape[1:])).astype(np.float32) for _ in range(batch)]
    x = np.concatenate(rows, axis=0)
    fresh = _fresh_batch(rows)
    held = ", ".join(session.get_providers())
    where = "cuda" if device == "cuda" else "cpu"
    results: list[PathTime] = []

    binding = session.io_binding()
    for name in out_names:
        binding.bind_output(name, where, 0)

    def iobinding() -> None:
        binding.bind_cpu_input(arg.name, x)
        session.run_with_iobinding(binding)
        binding.synchronize_outputs()

    for name, run in (
        ("iobinding", iobinding),
        ("run", lambda: session.run(out_names, {arg.name: x})),
        ("run, fresh batch", lambda: session.run(out_names, {arg.name: fresh()})),
    ):
        ms, n = _timed(run, seconds)
        results.append(PathTime(name, ms, n, held))

    options = dict([("cudnn_conv_algo_search", cudnn_search)] if cudnn_search else [])
    spec = InstanceSpec(kind="gpu" if device == "cuda" else "cpu", gpu_id=0, cuda_options=tuple(options.items()))
    model = OnnxModel.load(
        model_path, [spec], RuntimeOptions(device=device, intra_op_threads=threads), name="diagnosis"
    )
    try:
        instance = model.instances[0]
        mine = ", ".join(instance.providers)
        buffers = BatchBuffers()
        items = [{arg.name: row} for row in rows]

        def batch() -> object:
            return buffers.detach(instance.run(buffers.concat(items)))

        ms, n = _timed(batch, seconds)
        results.append(PathTime("ortserve instance", ms, n, mine))
        results.append(_with_busy_gil(batch, seconds, mine))
        default = sys.getswitchinterval()
        sys.setswitchinterval(0.0005)
        try:
            short = _with_busy_gil(batch, seconds, mine)
        finally:
            sys.setswitchinterval(default)
        short.name += ", switch 0.5 ms"
        results.append(short)
    finally:
        model.close()
    return results


@dataclass(slots=True)
class ShapeCost:
    name: str
    sizes: list[int]
    first_ms: list[float]
    second_ms: list[float]
    alternating_ms: list[float] = field(default_factory=list)
    """Runs alternating between the last two sizes, both run before: what a change of shape costs
    when the shape is not new (ONNX Runtime's CUDA Conv keeps only the last shape's cuDNN plan)."""


def new_shapes(name: str, run_at: Callable[[int], object], sizes: list[int], alternations: int = 6) -> ShapeCost:
    """First and second run times (ms) of `run_at(rows)` at each of `sizes`, none run before; then
    `alternations` runs alternating between the last two sizes."""
    cost = ShapeCost(name, list(sizes), [], [])

    def timed(rows: int) -> float:
        t0 = time.perf_counter()
        run_at(rows)
        return 1000 * (time.perf_counter() - t0)

    for rows in sizes:
        cost.first_ms.append(timed(rows))
        cost.second_ms.append(timed(rows))
    if len(sizes) > 1:
        cost.alternating_ms = [timed(sizes[-2 + i % 2]) for i in range(alternations)]
    return cost


def unseen_sizes(batch: int, count: int = 4) -> list[int]:
    """`count` batch sizes just under `batch` (the sizes a batcher forms around it) and two small odd
    ones, none of the sweep's sizes (powers of two)."""
    below = [b for b in range(batch - 1, 2, -1) if b & (b - 1)][:count]
    return sorted({*below, 3, 5} - {batch})


def measure_new_shapes(
    session: Any, model_path: Path, device: str, batch: int, threads: int, cudnn_search: str
) -> list[ShapeCost]:
    """new_shapes for the in-process session and for a fresh ortserve instance, at unseen sizes."""
    from ortserve.runtime import InstanceSpec, OnnxModel, RuntimeOptions

    arg = session.get_inputs()[0]
    out_names = [o.name for o in session.get_outputs()]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, *arg.shape[1:])).astype(np.float32)
    sizes = unseen_sizes(batch)
    costs = [new_shapes("in-process session.run", lambda rows: session.run(out_names, {arg.name: x[:rows]}), sizes)]
    options = dict([("cudnn_conv_algo_search", cudnn_search)] if cudnn_search else [])
    spec = InstanceSpec(kind="gpu" if device == "cuda" else "cpu", gpu_id=0, cuda_options=tuple(options.items()))
    model = OnnxModel.load(model_path, [spec], RuntimeOptions(device=device, intra_op_threads=threads), name="shapes")
    try:
        instance = model.instances[0]
        instance.run({arg.name: x[:1]})  # the session's own first run, whatever the shape
        # A session of its own: the same sizes are new to it.
        costs.append(new_shapes("ortserve instance", lambda rows: instance.run({arg.name: x[:rows]}), sizes))
    finally:
        model.close()
    return costs


def render_shapes(costs: list[ShapeCost]) -> list[str]:
    lines = [
        "first run at a batch size not run before vs the second run, and runs alternating between two sizes "
        "run before (ms):"
    ]
    for c in costs:
        pairs = ", ".join(f"{b}: {f:.1f}/{s:.1f}" for b, f, s in zip(c.sizes, c.first_ms, c.second_ms, strict=True))
        alternating = (
            f", alternating {c.sizes[-2]}/{c.sizes[-1]} median {statistics.median(c.alternating_ms):.1f}"
            if c.alternating_ms
            else ""
        )
        lines.append(
            f"  {c.name:<24} first median {statistics.median(c.first_ms):8.1f}, second median "
            f"{statistics.median(c.second_ms):7.1f}{alternating}  ({pairs})"
        )
    return lines


def _with_busy_gil(run: Callable[[], object], seconds: float, providers: str) -> PathTime:
    """Time `run` in a worker thread while this thread spins in Python (holding the GIL between switches)."""
    done = threading.Event()
    result: list[tuple[float, int]] = []

    def worker() -> None:
        try:
            result.append(_timed(run, seconds))
        finally:
            done.set()

    thread = threading.Thread(target=worker, name="runpaths-worker", daemon=True)
    thread.start()
    spins = 0
    while not done.is_set():
        spins += sum(range(200))  # pure Python work, as an event loop parsing requests
    thread.join()
    ms, n = result[0] if result else (float("nan"), 0)
    return PathTime("ortserve instance, busy GIL", ms, n, providers)


def render(results: list[PathTime], batch: int) -> list[str]:
    base = results[0].ms_per_batch if results else float("nan")
    lines = [f"session.run paths at batch {batch} (median ms per batch; x the iobinding path):"]
    for r in results:
        ratio = r.ms_per_batch / base
        lines.append(f"  {r.name:<44} {r.ms_per_batch:9.2f} ms  x{ratio:6.2f}  ({r.runs} runs; {r.providers})")
    return lines
