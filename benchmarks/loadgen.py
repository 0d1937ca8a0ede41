"""The one load generator of the suite: Triton's perf_analyzer, closed loop, async, count windows.

Why perf_analyzer: it is C++, so at the RPC-bound end (a few thousand requests/s) it takes far
less of the 2 shared cores than a Python gRPC client would (a grpc.aio client costs about as
much CPU per call as a grpc.aio server), and it is the tool Triton users measure with; it is
the same binary for every server. `--async` keeps the concurrency with one worker thread
(`--max-threads 1`: on the quiet 2-core machine it gave the highest rate at concurrency 64
against the RPC ceiling and the least client CPU, against 2, 4 and the default 16). Count
windows give every measurement the same number of samples per window whatever the server's
speed; the stability threshold is set out of reach, so that each
measurement is exactly three windows, reported merged (perf_analyzer's rule), and the suite
takes medians and ranges over repeats itself.

Installed by `.ci/setup-perf-analyzer.sh` (which `./scripts/test.sh` runs) at
`.ci/venvs/perf-analyzer/bin/perf_analyzer_wrapped`; `$PERF_ANALYZER` overrides the path.
"""

from __future__ import annotations

import csv
import os
import resource
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PATH = ROOT / ".ci" / "venvs" / "perf-analyzer" / "bin" / "perf_analyzer_wrapped"


def find_perf_analyzer() -> Path:
    path = Path(os.environ.get("PERF_ANALYZER") or DEFAULT_PATH)
    if not os.access(path, os.X_OK):
        raise SystemExit(
            f"perf_analyzer not found at {path}: run `bash .ci/setup-perf-analyzer.sh` "
            "(./scripts/test.sh does) or set PERF_ANALYZER to its wrapper"
        )
    return path


def version(path: Path) -> str:
    done = subprocess.run([str(path), "--version"], capture_output=True, text=True, timeout=30)
    return (done.stdout + done.stderr).strip().splitlines()[0]


@dataclass(slots=True)
class Measurement:
    """One perf_analyzer run at one concurrency: three merged count windows."""

    infer_per_s: float
    p50_ms: float
    p99_ms: float
    client_cpu_s: float
    """CPU time perf_analyzer used (user + system), whole run."""
    wall_s: float
    error: str = ""


def cpu_of_children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure(
    path: Path,
    target: str,
    model: str,
    concurrency: int,
    requests_per_window: int,
    timeout_s: float = 300,
    max_threads: int = 1,
    batch: int = 1,
    rate: float = 0,
    extra: Sequence[str] = (),
) -> Measurement:
    """Closed loop: `concurrency` requests of `batch` rows always in flight, until three windows are done.

    With `rate` > 0 instead an open loop: requests sent at `rate` a second, Poisson-spaced, however
    fast the server answers (`concurrency` is then ignored; perf_analyzer needs more than one
    thread to keep a schedule: give `max_threads`). `extra` is appended to perf_analyzer's
    arguments (e.g. `--shared-memory system`)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "pa.csv"
        command = [
            str(path),
            "-m",
            model,
            "-i",
            "grpc",
            "-u",
            target,
            "-b",
            str(batch),
            "--async",
            *(
                ["--request-rate-range", f"{rate:g}:{rate:g}", "--request-distribution", "poisson"]
                if rate > 0
                else ["--concurrency-range", f"{concurrency}:{concurrency}"]
            ),
            "--measurement-mode",
            "count_windows",
            "--measurement-request-count",
            str(requests_per_window),
            # Out of reach: every measurement is the first three windows (the suite repeats).
            "-s",
            "100000",
            "-r",
            "3",
            "--max-threads",
            str(max_threads),
            "-f",
            str(out),
            *extra,
        ]
        cpu_before = cpu_of_children()
        start = time.perf_counter()
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return Measurement(0, 0, 0, 0, timeout_s, f"perf_analyzer ran past {timeout_s:.0f} s")
        wall = time.perf_counter() - start
        cpu = cpu_of_children() - cpu_before
        if done.returncode != 0 or not out.exists():
            text = (done.stdout + done.stderr).strip().splitlines()
            return Measurement(0, 0, 0, cpu, wall, " | ".join(text[-3:]) or f"exit {done.returncode}")
        with out.open() as f:
            row = next(csv.DictReader(f))
    return Measurement(
        infer_per_s=float(row["Inferences/Second"]),
        p50_ms=float(row["p50 latency"]) / 1000,
        p99_ms=float(row["p99 latency"]) / 1000,
        client_cpu_s=cpu,
        wall_s=wall,
    )
