"""The benchmark suite of issue 3: ortserve against its ceilings, on one machine, in one run.

    python -m benchmarks                      # full run (about 7-9 min), writes docs/performance.md
    python -m benchmarks --quick              # smoke (about 1-2 min), writes nothing unless --write
    python -m benchmarks --mode table         # only the server table
    python -m benchmarks --mode latency-target

Steps of a run (`main`):

1. Build the models in a temporary directory: a tiny MLP (RPC cost dominates) and a small CNN
   (compute dominates; about 1 ms per item at batch 1, see models.py), and three repositories of
   complete config.pbtxt files: the bare servers', ortserve's (`<model>_batching` with
   `dynamic_batching { }`, `<model>_nobatch` with max_batch_size and no scheduler), and the
   latency-target mode's.
2. The compute ceiling: in this process, one session per model with the suite's thread budget
   (inprocess.py), back-to-back runs at batch sizes 1..64; the best batch size is kept.
3. Start the servers, each its own process, all with the same ONNX Runtime thread budget:
   the RPC ceiling (bare_server echo), the baseline (bare_server ort), ortserve.
4. Table: for each repeat, model and concurrency (1, 8, 32, 64), the in-process ceiling at its
   best batch size once per model, then every server, in an order rotated between repeats,
   under the one load generator (loadgen.py: perf_analyzer, closed loop, async, three count
   windows sized to about `--window-s` each). Around each measurement the suite reads the
   server's CPU time, the machine's CPU time (to see what else ran: `others`) and, for ortserve,
   ModelStatistics (mean executed batch size).
5. Latency-target mode: the CNN at concurrency 64 on ortserve with `latency_target_ms` 50 against
   static `max_queue_delay_microseconds` values, measured with pyload.py (it survives refused
   requests, which perf_analyzer does not). When ortserve warns about the parameter or does not
   know it, the row says "not available".
6. Print the tables with medians and ranges over the repeats, the ratios to the ceilings and the
   issue's targets; write them with the machine, versions and command to docs/performance.md.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchmarks import inprocess, loadgen, models, servers
from benchmarks.report import markdown_table, median, summary, text_table, write_generated

ROOT = Path(__file__).resolve().parents[1]
LEVELS = (1, 8, 32, 64)
BATCHES = (1, 2, 4, 8, 16, 32, 64)
MODELS = ("mlp", "cnn")
SERVERS = ("rpc-ceiling", "baseline", "ortserve", "ortserve-nobatch")
LABELS = {
    "inprocess": "in-process ORT",
    "rpc-ceiling": "RPC ceiling (bare echo)",
    "baseline": "baseline (no batching)",
    "ortserve": "ortserve, batching",
    "ortserve-nobatch": "ortserve, no dynamic_batching",
}
TARGET_MS = 50
LT_CONCURRENCY = 64


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


# -- the machine ------------------------------------------------------------------------------


def _cpu_times() -> tuple[float, float]:
    """(busy seconds, steal seconds) of the whole machine, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = values[:8]
    ticks = os.sysconf("SC_CLK_TCK")
    return (user + nice + system + irq + softirq) / ticks, steal / ticks


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def idle_before(seconds: float = 1.0) -> float:
    """Percent of the machine's CPU that was idle over `seconds`."""
    busy0, steal0 = _cpu_times()
    time.sleep(seconds)
    busy1, steal1 = _cpu_times()
    cores = len(os.sched_getaffinity(0))
    return 100 * (1 - (busy1 - busy0 + steal1 - steal0) / (seconds * cores))


def busy_neighbours() -> list[str]:
    """Test runs and servers started by others (the machine is shared)."""
    found = []
    mine = {os.getpid(), os.getppid()}
    for stat in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            pid = int(stat.parent.name)
            cmd = stat.read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except (OSError, ValueError):
            continue
        if pid not in mine and ("pytest" in cmd or "ortserve serve" in cmd or "perf_analyzer " in cmd):
            found.append(f"{pid} {cmd[:100]}")
    return found


def environment(pa: Path) -> dict[str, str]:
    import google.protobuf
    import grpc
    import numpy
    import onnxruntime

    import ortserve

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
        return done.stdout.strip()

    commit = git("rev-parse", "--short=12", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--", "server", "client")
    try:
        import uvloop

        uvloop_version = str(getattr(uvloop, "__version__", "unknown"))
    except ImportError:
        uvloop_version = "not installed"
    return {
        "cpu": cpu_model(),
        "cores": f"{len(os.sched_getaffinity(0))} (os.cpu_count {os.cpu_count()})",
        "kernel": platform.release(),
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
        "grpcio": grpc.__version__,
        "protobuf": google.protobuf.__version__,
        "numpy": numpy.__version__,
        "uvloop": uvloop_version,
        "perf_analyzer": loadgen.version(pa),
        "ortserve": f"{ortserve.__version__} at commit {commit}"
        + (" plus uncommitted changes in server/ or client/ (the working tree was measured)" if dirty else ""),
    }


# -- measurements -----------------------------------------------------------------------------


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
        cpu0, (busy0, steal0) = proc.cpu_s(), _cpu_times()
        m = loadgen.measure(self.pa, proc.target, name, concurrency, count)
        cpu1, (busy1, steal1) = proc.cpu_s(), _cpu_times()
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

    def pyload(self, proc: servers.Proc, name: str, concurrency: int) -> Sample:
        counts0 = servers.counts(proc.target, name)
        cpu0, (busy0, steal0), client0 = proc.cpu_s(), _cpu_times(), loadgen.cpu_of_children()
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
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        wall = time.perf_counter() - start
        cpu1, (busy1, steal1), client1 = proc.cpu_s(), _cpu_times(), loadgen.cpu_of_children()
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


@dataclass
class TableResults:
    sweeps: dict[str, list[list[inprocess.Throughput]]]
    """Per model, one sweep over BATCHES per repeat."""
    cells: dict[tuple[str, str, int], list[Sample]]
    nobatch_note: str = ""

    def ceiling(self, model: str) -> list[inprocess.Throughput]:
        """The compute ceiling of each repeat: the best batch size of that repeat's sweep."""
        return [max(sweep, key=lambda t: t.rows_per_s) for sweep in self.sweeps[model]]

    def best_batch(self, model: str) -> int:
        """The batch size with the highest median rows/s over the repeats."""
        by_batch = zip(*self.sweeps[model], strict=True)
        return max(by_batch, key=lambda ts: median([t.rows_per_s for t in ts]))[0].batch


def run_table(
    bench: Bench, specs: dict[str, models.ModelSpec], paths: dict[str, Path], bare_repo: Path, ortserve_repo: Path
) -> TableResults:
    profile = bench.profile
    sessions = {m: inprocess.make_session(paths[m], bench.threads) for m in MODELS}
    sweeps: dict[str, list[list[inprocess.Throughput]]] = defaultdict(list)
    cells: dict[tuple[str, str, int], list[Sample]] = defaultdict(list)
    names = {
        "rpc-ceiling": "{m}",
        "baseline": "{m}",
        "ortserve": "{m}_batching",
        "ortserve-nobatch": "{m}_nobatch",
    }
    with (
        servers.bare(bare_repo, "echo", bench.threads) as echo,
        servers.bare(bare_repo, "ort", bench.threads) as baseline,
        servers.ortserve(ortserve_repo, bench.threads) as ortserve,
    ):
        procs = {"rpc-ceiling": echo, "baseline": baseline, "ortserve": ortserve, "ortserve-nobatch": ortserve}
        turn = itertools.count()
        for r in range(profile.repeats):
            for m in MODELS:
                sweep = inprocess.sweep(sessions[m], list(BATCHES), profile.sweep_s)
                sweeps[m].append(sweep)
                print(
                    f"  [{r + 1}/{profile.repeats}] {m} in-process: "
                    + ", ".join(f"b{t.batch} {t.rows_per_s:.0f}/s" for t in sweep),
                    flush=True,
                )
                default_rate = 2500.0 if m == "mlp" else 0.5 * max(t.rows_per_s for t in sweep)
                for c in LEVELS:
                    for server in rotated(SERVERS, next(turn)):
                        sample = bench.perf(procs[server], server, m, names[server].format(m=m), c, default_rate)
                        cells[(m, server, c)].append(sample)
                        shown = sample.error or (
                            f"{sample.infer_per_s:8.0f}/s p50 {sample.p50_ms:6.2f} p99 {sample.p99_ms:6.2f} ms"
                            f"  server {sample.server_cpu_pct:3.0f}% {sample.server_cpu_us:4.0f}us/req"
                            f" client {sample.client_cpu_pct:3.0f}%"
                            f" others {sample.others_cpu_pct:3.0f}%"
                            + (f" batch {sample.mean_batch:.1f}" if sample.mean_batch else "")
                        )
                        print(f"  [{r + 1}/{profile.repeats}] {m} C={c:<2} {server:<17} {shown}", flush=True)
        warnings = [line.strip() for line in ortserve.lines if " WARNING " in line or " ERROR " in line]
    results = TableResults(dict(sweeps), dict(cells))
    batches = [
        s.mean_batch for (m, server, c), ss in cells.items() for s in ss if server == "ortserve-nobatch" and c > 1
    ]
    if batches and max(batches) > 1.05:
        results.nobatch_note = (
            f"ortserve still batched the models without `dynamic_batching` (mean executed batch up to "
            f"{max(batches):.1f}): 'no dynamic_batching means one request per execution' was not in yet "
            "when this was measured, so the 'no dynamic_batching' rows are a second batching run."
        )
    if warnings:
        results.nobatch_note += ("\n\n" if results.nobatch_note else "") + "ortserve warned: " + "; ".join(warnings[:5])
    return results


@dataclass
class LatencyResults:
    rows: dict[str, list[Sample]]
    available: bool
    reason: str


def latency_target_support(lines: Sequence[str]) -> tuple[bool, str]:
    """Whether the ortserve under test acts on the `latency_target_ms` model parameter.

    Not available when its log has a warning or error naming the parameter (unknown, ignored,
    refused), or when the package does not mention the name at all (a version that accepts any
    `parameters` silently and does nothing with them).
    """
    for line in lines:
        if "latency_target_ms" in line and (" WARNING " in line or " ERROR " in line):
            return False, f"ortserve: {line.strip()}"
    import ortserve

    package = Path(ortserve.__file__).parent
    if not any("latency_target_ms" in p.read_text() for p in package.rglob("*.py") if "demo" not in p.parts):
        return False, "this ortserve does not know the model parameter latency_target_ms"
    return True, ""


def run_latency_target(bench: Bench, spec: models.ModelSpec, repo: Path) -> LatencyResults:
    profile = bench.profile
    names = [f"cnn_delay{d}" for d in profile.delays_us]
    for d, name in zip(profile.delays_us, names, strict=True):
        models.write_model(repo, name, spec, f"dynamic_batching {{ max_queue_delay_microseconds: {d} }}")
    target = f"cnn_target{TARGET_MS}"
    models.write_model(repo, target, spec, "dynamic_batching { }", {"latency_target_ms": str(TARGET_MS)})
    rows: dict[str, list[Sample]] = defaultdict(list)
    with servers.ortserve(repo, bench.threads) as proc:
        available, reason = latency_target_support(proc.lines)
        measured = [*names, target] if available else names
        for r in range(profile.repeats):
            for name in rotated(measured, r):
                sample = bench.pyload(proc, name, LT_CONCURRENCY)
                rows[name].append(sample)
                refused = sum(sample.refused_per_s.values())
                shown = sample.error or (
                    f"{sample.infer_per_s:7.0f}/s p50 {sample.p50_ms:6.1f} p99 {sample.p99_ms:6.1f} ms "
                    f"refused {refused:5.0f}/s batch {sample.mean_batch:5.1f} server {sample.server_cpu_pct:3.0f}%"
                )
                print(f"  [{r + 1}/{profile.repeats}] {name:<16} {shown}", flush=True)
    return LatencyResults(dict(rows), available, reason)


# -- rendering --------------------------------------------------------------------------------


def _ok(samples: Sequence[Sample]) -> list[Sample]:
    return [s for s in samples if not s.error]


def _paired(a: Sequence[Sample], b: Sequence[Sample], f: Any) -> list[float]:
    """f(x, y) for the repeats where both measurements succeeded."""
    return [f(x, y) for x, y in zip(a, b, strict=False) if not x.error and not y.error and y.infer_per_s]


def table_rows(t: TableResults) -> tuple[list[str], list[list[str]]]:
    header = [
        "model",
        "server",
        "C",
        "infer/s",
        "p50 ms",
        "p99 ms",
        "÷ compute ceiling",
        "÷ RPC ceiling",
        "mean batch",
        "server CPU µs/req",
        "server CPU %",
        "others CPU %",
    ]
    rows = []
    for m in MODELS:
        ceil = t.ceiling(m)
        rows.append(
            [
                m,
                f"{LABELS['inprocess']}, best batch ({t.best_batch(m)})",
                "-",
                summary([x.rows_per_s for x in ceil]),
                summary([x.ms_per_batch for x in ceil], 2) + " per batch",
                "",
                "1",
                "",
                "",
                "",
                "",
                "",
            ]
        )
        for c in LEVELS:
            rpc = t.cells.get((m, "rpc-ceiling", c), [])
            for server in SERVERS:
                samples = t.cells.get((m, server, c), [])
                good = _ok(samples)
                if not good:
                    error = samples[0].error if samples else "not measured"
                    rows.append([m, LABELS[server], str(c), f"error: {error[:80]}", *[""] * 8])
                    continue
                vs_compute = [s.infer_per_s / x.rows_per_s for s, x in zip(samples, ceil, strict=False) if not s.error]
                vs_rpc = _paired(samples, rpc, lambda s, e: s.infer_per_s / e.infer_per_s)
                rows.append(
                    [
                        m,
                        LABELS[server],
                        str(c),
                        summary([s.infer_per_s for s in good]),
                        summary([s.p50_ms for s in good], 2),
                        summary([s.p99_ms for s in good], 2),
                        summary(vs_compute, 2) if m == "cnn" else "-",
                        summary(vs_rpc, 2) if server != "rpc-ceiling" else "1",
                        summary([s.mean_batch for s in good], 1) if server.startswith("ortserve") else "",
                        summary([s.server_cpu_us for s in good]),
                        summary([s.server_cpu_pct for s in good]),
                        summary([s.others_cpu_pct for s in good]),
                    ]
                )
    return header, rows


def target_rows(t: TableResults | None, lt: LatencyResults | None) -> list[list[str]]:
    rows: list[list[str]] = []

    def verdict(values: list[float], ok: Any) -> str:
        if not values:
            return "not measured"
        return "met" if ok(median(values)) else "missed"

    if t is not None:
        cnn = t.cells.get(("cnn", "ortserve", 32), [])
        ratios = [s.infer_per_s / x.rows_per_s for s, x in zip(cnn, t.ceiling("cnn"), strict=False) if not s.error]
        base_cnn = t.cells.get(("cnn", "baseline", 32), [])
        base_ratios = [
            s.infer_per_s / x.rows_per_s for s, x in zip(base_cnn, t.ceiling("cnn"), strict=False) if not s.error
        ]
        rows.append(
            [
                "CNN, C=32: ortserve ≥ 0.85 × compute ceiling",
                summary(ratios, 2),
                f"baseline {summary(base_ratios, 2)}",
                verdict(ratios, lambda v: v >= 0.85),
            ]
        )
        mlp = _paired(
            t.cells.get(("mlp", "ortserve", 64), []),
            t.cells.get(("mlp", "rpc-ceiling", 64), []),
            lambda s, e: s.infer_per_s / e.infer_per_s,
        )
        base_mlp = _paired(
            t.cells.get(("mlp", "baseline", 64), []),
            t.cells.get(("mlp", "rpc-ceiling", 64), []),
            lambda s, e: s.infer_per_s / e.infer_per_s,
        )
        rows.append(
            [
                "MLP, C=64: ortserve ≥ 0.90 × RPC ceiling",
                summary(mlp, 2),
                f"baseline {summary(base_mlp, 2)}",
                verdict(mlp, lambda v: v >= 0.90),
            ]
        )
        delta = _paired(
            t.cells.get(("mlp", "ortserve", 1), []),
            t.cells.get(("mlp", "rpc-ceiling", 1), []),
            lambda s, e: s.p50_ms - e.p50_ms,
        )
        base_delta = _paired(
            t.cells.get(("mlp", "baseline", 1), []),
            t.cells.get(("mlp", "rpc-ceiling", 1), []),
            lambda s, e: s.p50_ms - e.p50_ms,
        )
        rows.append(
            [
                "MLP, C=1: ortserve p50 − RPC ceiling p50 ≤ 0.25 ms",
                summary(delta, 3) + " ms",
                f"baseline {summary(base_delta, 3)} ms",
                verdict(delta, lambda v: v <= 0.25),
            ]
        )
    if lt is not None:
        rows.append(latency_target_verdict(lt))
    return rows


def best_static(lt: LatencyResults) -> tuple[str, float] | None:
    """The static delay with the highest median throughput among those whose median p99 meets the target."""
    scored = []
    for name, samples in lt.rows.items():
        good = _ok(samples)
        if name.startswith("cnn_delay") and good:
            scored.append((median([s.p99_ms for s in good]) <= TARGET_MS, median([s.infer_per_s for s in good]), name))
    if not scored:
        return None
    within = [x for x in scored if x[0]] or scored
    _, rate, name = max(within, key=lambda x: x[1])
    return name, rate


def latency_target_verdict(lt: LatencyResults) -> list[str]:
    label = f"CNN, C={LT_CONCURRENCY}, latency target {TARGET_MS} ms: p99 < target, ≥ 0.90 × best static delay"
    if not lt.available:
        return [label, "not available", lt.reason, "not measured"]
    good = _ok(lt.rows.get(f"cnn_target{TARGET_MS}", []))
    best = best_static(lt)
    if not good or best is None:
        return [label, "no data", "", "not measured"]
    p99 = median([s.p99_ms for s in good])
    ratio = median([s.infer_per_s for s in good]) / best[1]
    return [
        label,
        f"p99 {p99:.1f} ms, {ratio:.2f} × {best[0]}",
        "",
        "met" if p99 < TARGET_MS and ratio >= 0.90 else "missed",
    ]


def latency_rows(lt: LatencyResults) -> tuple[list[str], list[list[str]]]:
    header = [
        "ortserve config (CNN, C=64)",
        "answered/s",
        "p50 ms",
        "p99 ms",
        "refused/s",
        "mean batch",
        "server CPU %",
        "client CPU %",
        "others CPU %",
    ]
    rows = []
    best = best_static(lt)
    for name, samples in lt.rows.items():
        good = _ok(samples)
        label = name.replace("cnn_delay", "max_queue_delay_microseconds ").replace(
            f"cnn_target{TARGET_MS}", f"latency_target_ms {TARGET_MS}"
        )
        if best is not None and name == best[0]:
            label += " (best static)"
        if not good:
            rows.append([label, f"error: {(samples[0].error if samples else '')[:80]}", *[""] * 7])
            continue
        rows.append(
            [
                label,
                summary([s.infer_per_s for s in good]),
                summary([s.p50_ms for s in good], 1),
                summary([s.p99_ms for s in good], 1),
                summary([sum(s.refused_per_s.values()) for s in good])
                + "".join(f" {code}" for code in sorted({c for s in good for c in s.refused_per_s})),
                summary([s.mean_batch for s in good], 1),
                summary([s.server_cpu_pct for s in good]),
                summary([s.client_cpu_pct for s in good]),
                summary([s.others_cpu_pct for s in good]),
            ]
        )
    if not lt.available:
        rows.append([f"latency_target_ms {TARGET_MS}", "not available", *[""] * 7])
    return header, rows


def render(
    args: argparse.Namespace,
    argv: Sequence[str],
    env: dict[str, str],
    specs: dict[str, models.ModelSpec],
    notes: list[str],
    t: TableResults | None,
    lt: LatencyResults | None,
    elapsed_s: float,
    profile: Profile,
) -> tuple[str, str]:
    """(text for the terminal, markdown for docs/performance.md)."""
    command = " ".join(["python -m benchmarks", *argv])
    text: list[str] = []
    md: list[str] = [
        f"Measured {time.strftime('%Y-%m-%d %H:%M %Z')} by `{command}` in {elapsed_s / 60:.1f} min.",
        "",
        markdown_table(["", ""], [[k, v] for k, v in env.items()], "ll"),
        "",
        "Models: " + "; ".join(f"`{k}` {s.description}" for k, s in specs.items()) + ".",
        f"ONNX Runtime thread budget everywhere: one session, {args.threads} intra-op threads, inter-op 1, "
        "sequential, spinning off (in-process ceiling, baseline, ortserve `--intra-op-threads "
        f"{args.threads}` with one CPU instance). Load: perf_analyzer `--async`, one-row requests, "
        f"three count windows of about {profile.window_s} s per measurement; numbers are "
        f"`median [min-max]` over {profile.repeats} repeat(s).",
        "",
    ]
    md += [f"> {n}" for n in notes]
    if notes:
        md.append("")
    if t is not None:
        header, rows = table_rows(t)
        text += ["", text_table(header, rows)]
        md += ["### Servers (perf_analyzer)", "", markdown_table(header, rows, "llr" + "r" * (len(header) - 3)), ""]
        sweep_header = ["model"] + [f"b{b}" for b in BATCHES]
        sweep_rows = []
        for m in MODELS:
            by_batch = list(zip(*t.sweeps[m], strict=True))
            sweep_rows.append([f"{m} rows/s"] + [summary([x.rows_per_s for x in ts]) for ts in by_batch])
            sweep_rows.append([f"{m} ms/item"] + [f"{median([x.ms_per_row for x in ts]):.3f}" for ts in by_batch])
        md += [
            "### In-process ONNX Runtime by batch size (the compute ceiling is the best of each repeat)",
            "",
            markdown_table(sweep_header, sweep_rows),
            "",
        ]
        text += ["", text_table(sweep_header, sweep_rows)]
        if t.nobatch_note:
            md += [f"> {t.nobatch_note}", ""]
            text += ["", t.nobatch_note]
    if lt is not None:
        header, rows = latency_rows(lt)
        md += ["### Latency-target mode (pyload, CNN at concurrency 64)", "", markdown_table(header, rows), ""]
        text += ["", text_table(header, rows)]
        if not lt.available:
            md += [f"> latency_target_ms: not available: {lt.reason}", ""]
            text += [f"latency_target_ms: not available: {lt.reason}"]
    targets = target_rows(t, lt)
    if targets:
        header = ["target (issue 3)", "measured", "for comparison", "verdict (median)"]
        md += ["### Targets", "", markdown_table(header, targets, "llll"), ""]
        text += ["", text_table(header, targets)]
    return "\n".join(text), "\n".join(md)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a 1-2 minute smoke: one repeat, short windows")
    parser.add_argument("--mode", choices=["all", "table", "latency-target"], default="all")
    parser.add_argument("--repeats", type=int, help="repeats of every measurement (full 3, quick 1)")
    parser.add_argument("--window-s", type=float, help="target seconds per count window (full 0.8, quick 0.3)")
    parser.add_argument(
        "--threads",
        type=int,
        default=len(os.sched_getaffinity(0)),
        help="ONNX Runtime intra-op threads everywhere (default: the cores)",
    )
    parser.add_argument(
        "--cnn-width",
        default=str(models.CNN_DEFAULT_WIDTH),
        help=f"CNN channels of the first stage, or 'auto' to calibrate ~1 ms/item (default {models.CNN_DEFAULT_WIDTH})",
    )
    parser.add_argument(
        "--write",
        type=Path,
        nargs="?",
        const=ROOT / "docs" / "performance.md",
        help="write the results into this markdown file (default for a full run: docs/performance.md)",
    )
    parser.add_argument("--no-write", action="store_true", help="do not write docs/performance.md")
    parser.add_argument("--json", type=Path, help="also dump every sample as JSON here")
    args = parser.parse_args(argv)
    base = QUICK if args.quick else FULL
    profile = Profile(
        args.repeats if args.repeats is not None else base.repeats,
        args.window_s or base.window_s,
        base.sweep_s,
        base.delays_us,
        base.lt_seconds,
        base.lt_warmup_s,
    )
    write_to = None if args.no_write else args.write or (None if args.quick else ROOT / "docs" / "performance.md")

    started = time.perf_counter()
    pa = loadgen.find_perf_analyzer()
    notes = []
    idle = idle_before()
    neighbours = busy_neighbours()
    load_start = os.getloadavg()
    if idle < 90 or neighbours:
        notes.append(
            f"The machine was not quiet at the start: {idle:.0f}% idle over 1 s"
            + (f"; running: {'; '.join(neighbours)}" if neighbours else "")
            + "."
        )
    env = environment(pa)
    print("\n".join(f"{k}: {v}" for k, v in env.items()), flush=True)
    if notes:
        print("note: " + notes[0], flush=True)

    width = models.calibrate_cnn(args.threads) if args.cnn_width == "auto" else int(args.cnn_width)
    specs = {"mlp": models.mlp(), "cnn": models.cnn(width)}
    bench = Bench(pa, profile, args.threads)
    table = latency = None
    with tempfile.TemporaryDirectory(prefix="ortserve-bench-") as tmp:
        root = Path(tmp)
        paths = {m: models.write_model(root / "bare", m, specs[m]) for m in MODELS}
        for m in MODELS:
            models.write_model(root / "ortserve", f"{m}_batching", specs[m], "dynamic_batching { }")
            models.write_model(root / "ortserve", f"{m}_nobatch", specs[m])
        if args.mode in ("all", "table"):
            print("table: in-process sweep, then the servers", flush=True)
            table = run_table(bench, specs, paths, root / "bare", root / "ortserve")
        if args.mode in ("all", "latency-target"):
            print("latency-target mode", flush=True)
            latency = run_latency_target(bench, specs["cnn"], root / "latency")
    elapsed = time.perf_counter() - started
    load_end = os.getloadavg()
    notes.append(
        f"Load average (1 min) {load_start[0]:.2f} at the start, {load_end[0]:.2f} at the end; "
        "`others CPU %` is what the rest of the machine used during each measurement (100 = one core)."
    )
    text, md = render(args, argv, env, specs, notes, table, latency, elapsed, profile)
    print(text, flush=True)
    print(f"\n{elapsed:.0f} s", flush=True)
    if args.json:
        dump = {
            "env": env,
            "table": None
            if table is None
            else {
                "sweeps": {m: [[asdict(x) for x in sweep] for sweep in v] for m, v in table.sweeps.items()},
                "cells": {f"{m}/{s}/{c}": [asdict(x) for x in v] for (m, s, c), v in table.cells.items()},
            },
            "latency_target": None if latency is None else {k: [asdict(x) for x in v] for k, v in latency.rows.items()},
        }
        args.json.write_text(json.dumps(dump, indent=1))
    if write_to is not None:
        write_generated(write_to, md)
        print(f"wrote {write_to}", flush=True)
    return 0
