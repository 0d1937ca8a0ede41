"""The latency-target mode: the CNN at concurrency 64, `latency_target_ms` vs static delays."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from benchmarks import models, servers
from benchmarks.measure import Bench, Sample, rotated, succeeded
from benchmarks.report import median, summary

TARGET_MS = 50
LT_CONCURRENCY = 64
NO_BACKOFF = "_nobackoff"


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
    # The same config as its own model (its controller state apart), loaded by a client that
    # ignores the retry hints: the worst case, shown beside the verdict's row.
    blunt = target + NO_BACKOFF
    models.write_model(repo, blunt, spec, "dynamic_batching { }", {"latency_target_ms": str(TARGET_MS)})
    rows: dict[str, list[Sample]] = defaultdict(list)
    with servers.ortserve(repo, bench.threads) as proc:
        available, reason = latency_target_support(proc.lines)
        measured = [*names, target, blunt] if available else names
        for r in range(profile.repeats):
            for name in rotated(measured, r):
                sample = bench.pyload(proc, name, LT_CONCURRENCY, follow_hints=not name.endswith(NO_BACKOFF))
                rows[name].append(sample)
                refused = sum(sample.refused_per_s.values())
                shown = sample.error or (
                    f"{sample.infer_per_s:7.0f}/s p50 {sample.p50_ms:6.1f} p99 {sample.p99_ms:6.1f} ms "
                    f"refused {refused:5.0f}/s batch {sample.mean_batch:5.1f} server {sample.server_cpu_pct:3.0f}%"
                )
                print(f"  [{r + 1}/{profile.repeats}] {name:<16} {shown}", flush=True)
    return LatencyResults(dict(rows), available, reason)


def best_static(lt: LatencyResults) -> tuple[str, float, bool] | None:
    """(name, median answered/s, whether its median p99 meets the target) of the best static delay.

    The best is the highest throughput among the delays that meet the target, or among all of
    them when none does (at concurrency 64 none can unless throughput exceeds 64 / 50 ms = 1280/s:
    in a closed loop the mean latency is the concurrency divided by the throughput).
    """
    scored = []
    for name, samples in lt.rows.items():
        good = succeeded(samples)
        if name.startswith("cnn_delay") and good:
            scored.append((median([s.p99_ms for s in good]) <= TARGET_MS, median([s.infer_per_s for s in good]), name))
    if not scored:
        return None
    within = [x for x in scored if x[0]] or scored
    met, rate, name = max(within, key=lambda x: x[1])
    return name, rate, met


def latency_target_verdict(lt: LatencyResults) -> list[str]:
    label = f"CNN, C={LT_CONCURRENCY}, latency target {TARGET_MS} ms: p99 < target, ≥ 0.90 × best static delay"
    if not lt.available:
        return [label, "not available", lt.reason, "not measured"]
    good = succeeded(lt.rows.get(f"cnn_target{TARGET_MS}", []))
    best = best_static(lt)
    if not good or best is None:
        return [label, "no data", "", "not measured"]
    p99 = median([s.p99_ms for s in good])
    ratio = median([s.infer_per_s for s in good]) / best[1]
    return [
        label,
        f"p99 {p99:.1f} ms, {ratio:.2f} × {best[0]}",
        "" if best[2] else f"no static delay met the target; best by throughput: {best[0]}",
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
        good = succeeded(samples)
        label = (
            name.replace("cnn_delay", "max_queue_delay_microseconds ")
            .replace(NO_BACKOFF, ", client ignores retry-after-ms")
            .replace(f"cnn_target{TARGET_MS}", f"latency_target_ms {TARGET_MS}")
        )
        if best is not None and name == best[0]:
            label += " (best static)" if best[2] else " (best static; none met the target)"
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
