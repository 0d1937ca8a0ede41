"""The server table: compute ceiling, RPC ceiling, baseline and ortserve, at four concurrencies."""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks import inprocess, models, servers
from benchmarks.measure import Bench, Sample, rotated, succeeded
from benchmarks.report import median, summary

LEVELS = (1, 8, 32, 64)
BATCHES = (1, 2, 4, 8, 16, 32, 64)
MODELS = ("mlp", "cnn")
SERVERS = ("rpc-ceiling", "baseline", "ortserve", "ortserve-greedy", "ortserve-nobatch")
LABELS = {
    "inprocess": "in-process ORT",
    "rpc-ceiling": "RPC ceiling (bare echo)",
    "baseline": "baseline (no batching)",
    "ortserve": "ortserve, batching",
    "ortserve-greedy": "ortserve, batching, batch_hold off",
    "ortserve-nobatch": "ortserve, no dynamic_batching",
}


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
        "ortserve-greedy": "{m}_greedy",
        "ortserve-nobatch": "{m}_nobatch",
    }
    with (
        servers.bare(bare_repo, "echo", bench.threads) as echo,
        servers.bare(bare_repo, "ort", bench.threads) as baseline,
        servers.ortserve(ortserve_repo, bench.threads) as ortserve,
    ):
        procs = {
            "rpc-ceiling": echo,
            "baseline": baseline,
            "ortserve": ortserve,
            "ortserve-greedy": ortserve,
            "ortserve-nobatch": ortserve,
        }
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


def _paired(a: Sequence[Sample], b: Sequence[Sample], f: Any) -> list[float]:
    """f(x, y) for the repeats where both measurements succeeded."""
    return [f(x, y) for x, y in zip(a, b, strict=False) if not x.error and not y.error and y.infer_per_s]


def verdict(values: list[float], ok: Any) -> str:
    if not values:
        return "not measured"
    return "met" if ok(median(values)) else "missed"


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
                _per_item_us(ceil),
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
                good = succeeded(samples)
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


def table_targets(t: TableResults) -> list[list[str]]:
    """The issue's targets that the server table measures: [target, measured, comparison, verdict]."""
    rows: list[list[str]] = []
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
    return rows


def _per_item_us(ceiling: Sequence[inprocess.Throughput]) -> str:
    """Microseconds per row at the best batch size of each repeat (in the p50 column)."""
    values = [1000 * t.ms_per_row for t in ceiling]
    return summary(values, 2 if max(values) < 10 else 0) + " µs/item"
