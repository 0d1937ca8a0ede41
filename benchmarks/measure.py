"""One measurement of one server: the load, and what is read around it.

`Bench.perf` runs perf_analyzer (loadgen.py) at one concurrency against one server and reads,
before and after: the server's CPU time (/proc), the machine's CPU time (what else ran:
`others`), and the model's ModelStatistics counters (requests answered, batches executed).
`Bench.pyload` does the same with pyload.py for the latency-target mode. Count windows are
sized from the rate last measured for the same server, model and concurrency.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks import loadgen, servers
from benchmarks.machine import cpu_times

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True, slots=True)
class Profile:
    repeats: int
    window_s: float
    """Target length of one perf_analyzer count window; a measurement is three of them."""
    sweep_s: float
    """Seconds per batch size of the in-process sweep (one sweep per model and repeat)."""
    delays_us: tuple[int, ...]
    lt_seconds: float
    lt_warmup_s: float


FULL = Profile(3, 0.8, 0.5, (0, 1000, 2000, 5000, 10000, 20000), 3.0, 1.0)
QUICK = Profile(1, 0.3, 0.2, (0, 5000), 1.5, 0.5)


@dataclass(slots=True)
class Sample:
    infer_per_s: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    server_cpu_pct: float = 0.0
    server_cpu_us: float = 0.0
    """Server CPU time (all its threads) per request answered during the whole run."""
    client_cpu_pct: float = 0.0
    others_cpu_pct: float = 0.0
    """CPU used by everything else on the machine during the measurement (% of one core)."""
    steal_pct: float = 0.0
    mean_batch: float = 0.0
    refused_per_s: dict[str, float] = field(default_factory=dict)
    error: str = ""


class Bench:
    """Holds the running servers, the load generator, and the rate estimates that size windows."""

    def __init__(self, pa: Path, profile: Profile, threads: int) -> None:
        self.pa = pa
        self.profile = profile
        self.threads = threads
        self.cores = len(os.sched_getaffinity(0))
        self._rates: dict[tuple[str, str, int], float] = {}

    def _window(self, key: tuple[str, str, int], default_rate: float) -> int:
        rate = self._rates.get(key)
        if rate is None:  # the same server and model at the concurrency measured last, else a guess
            earlier = [r for (s, m, _c), r in self._rates.items() if (s, m) == key[:2]]
            rate = earlier[-1] if earlier else default_rate
        return int(min(max(rate * self.profile.window_s, 100), 50_000))

    def perf(
        self, proc: servers.Proc, server: str, model: str, name: str, concurrency: int, default_rate: float
    ) -> Sample:
        key = (server, model, concurrency)
        count = self._window(key, default_rate)
        counts0 = servers.counts(proc.target, name)
        cpu0, (busy0, steal0) = proc.cpu_s(), cpu_times()
        m = loadgen.measure(self.pa, proc.target, name, concurrency, count)
        cpu1, (busy1, steal1) = proc.cpu_s(), cpu_times()
        sample = Sample(error=m.error)
        if m.error:
            return sample
        self._rates[key] = m.infer_per_s
        wall = m.wall_s
        sample.infer_per_s, sample.p50_ms, sample.p99_ms = m.infer_per_s, m.p50_ms, m.p99_ms
        sample.server_cpu_pct = 100 * (cpu1 - cpu0) / wall
        sample.client_cpu_pct = 100 * m.client_cpu_s / wall
        sample.others_cpu_pct = max(0.0, 100 * ((busy1 - busy0) - (cpu1 - cpu0) - m.client_cpu_s) / wall)
        sample.steal_pct = 100 * (steal1 - steal0) / wall
        counts1 = servers.counts(proc.target, name)
        requests = counts1.inferences - counts0.inferences
        executions = counts1.executions - counts0.executions
        if requests:
            sample.server_cpu_us = 1e6 * (cpu1 - cpu0) / requests
        if executions and proc.name == "ortserve":
            sample.mean_batch = requests / executions
        return sample

    def pyload(self, proc: servers.Proc, name: str, concurrency: int, follow_hints: bool = True) -> Sample:
        """One pyload run; `follow_hints=False`: the client resends refused calls at once."""
        counts0 = servers.counts(proc.target, name)
        cpu0, (busy0, steal0), client0 = proc.cpu_s(), cpu_times(), loadgen.cpu_of_children()
        start = time.perf_counter()
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "benchmarks.pyload",
                "--target",
                proc.target,
                "--model",
                name,
                "--concurrency",
                str(concurrency),
                "--seconds",
                str(self.profile.lt_seconds),
                "--warmup-s",
                str(self.profile.lt_warmup_s),
                *([] if follow_hints else ["--ignore-retry-after"]),
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        wall = time.perf_counter() - start
        cpu1, (busy1, steal1), client1 = proc.cpu_s(), cpu_times(), loadgen.cpu_of_children()
        server_s, client_s = cpu1 - cpu0, client1 - client0
        try:
            result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
        except (IndexError, json.JSONDecodeError):
            return Sample(error=(done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1])
        if "error" in result:
            return Sample(error=str(result["error"]))
        counts1 = servers.counts(proc.target, name)
        executions = counts1.executions - counts0.executions
        requests = counts1.inferences - counts0.inferences
        return Sample(
            infer_per_s=result["infer_per_s"],
            p50_ms=result["p50_ms"],
            p99_ms=result["p99_ms"],
            server_cpu_pct=100 * server_s / wall,
            server_cpu_us=1e6 * server_s / requests if requests else 0.0,
            client_cpu_pct=100 * client_s / wall,
            others_cpu_pct=max(0.0, 100 * ((busy1 - busy0) - server_s - client_s) / wall),
            steal_pct=100 * (steal1 - steal0) / wall,
            mean_batch=(counts1.inferences - counts0.inferences) / executions if executions else 0.0,
            refused_per_s=result["refused_per_s"],
        )


def rotated(items: Sequence[str], by: int) -> list[str]:
    by %= len(items)
    return [*items[by:], *items[:by]]


def succeeded(samples: Sequence[Sample]) -> list[Sample]:
    """The samples whose measurement did not fail."""
    return [s for s in samples if not s.error]
