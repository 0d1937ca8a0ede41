"""The end-of-run tables (target vs measured, server-side breakdown, knee stages) and their CSV files."""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path

from loadtests.server_stats import Breakdown
from loadtests.shapes import KneeSearch, Plan, Stage
from loadtests.targets import Check


def _numeric(cell: str) -> bool:
    head = cell.split(" ")[0].split("/")[0].rstrip("%")
    try:
        float(head)
    except ValueError:
        return head == "-"
    return True


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain aligned table: columns of numbers right-aligned, the others left-aligned."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=True)]
    right = [bool(rows) and all(_numeric(str(r[i])) for r in rows) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            str(c).rjust(w) if r else str(c).ljust(w) for c, w, r in zip(cells, widths, right, strict=True)
        ).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), rule, *(line(r) for r in rows)])


def _ms(value: float) -> str:
    if math.isnan(value):
        return "-"
    return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"


def _num(value: float, digits: int = 1) -> str:
    return "-" if math.isnan(value) else f"{value:.{digits}f}"


RESULT = {True: "ok", False: "MISS", None: "-"}


def targets_table(checks: Sequence[Check], passed: bool, source: str, span: str) -> str:
    title = f"ortserve latency targets ({source}; {span}): {'PASSED' if passed else 'MISSED'}"
    rows = [(c.model, c.metric, c.target, c.measured, RESULT[c.passed]) for c in checks]
    return title + "\n" + table(("model", "metric", "target", "measured", "result"), rows)


BREAKDOWN_HEADER = (
    "model",
    "client req",
    "server req",
    "server fail",
    "batches",
    "avg batch rows",
    "req/batch",
    "client mean ms",
    "client p99 ms",
    "server ms",
    "queue ms",
    "compute ms",
    "other server ms",
    "outside server ms",
)


def breakdown_rows(rows: Sequence[Breakdown]) -> list[tuple[str, ...]]:
    return [
        (
            b.model,
            str(b.client_requests),
            str(b.requests),
            str(b.failures),
            str(b.batches),
            _num(b.rows_per_batch, 2),
            _num(b.requests_per_batch, 2),
            _ms(b.client_mean_ms),
            _ms(b.client_p99_ms),
            _ms(b.server_ms),
            _ms(b.queue_ms),
            _ms(b.compute_ms),
            _ms(b.other_server_ms),
            _ms(b.outside_server_ms),
        )
        for b in rows
    ]


def _share(part: float, whole: float) -> str:
    if math.isnan(part) or math.isnan(whole) or whole <= 0:
        return f"{_ms(part)} ms"
    return f"{_ms(part)} ms {100 * part / whole:3.0f}%"


def breakdown_table(rows: Sequence[Breakdown], source: str) -> str:
    """One column per model: counts, batch size, and the client's mean latency split into its parts."""
    lines: list[tuple[str, ...]] = [
        (
            "requests: client / server ok / server failed",
            *(f"{b.client_requests} / {b.requests} / {b.failures}" for b in rows),
        ),
        ("batches (model executions)", *(str(b.batches) for b in rows)),
        ("average batch size (rows)", *(_num(b.rows_per_batch, 2) for b in rows)),
        ("requests per batch", *(_num(b.requests_per_batch, 2) for b in rows)),
        (
            "client latency p50 / p99 (Locust users)",
            *(f"{_ms(b.client_p50_ms)} / {_ms(b.client_p99_ms)} ms" for b in rows),
        ),
        ("client latency mean", *(_share(b.client_mean_ms, b.client_mean_ms) for b in rows)),
        ("  in the server (receive to answer)", *(_share(b.server_ms, b.client_mean_ms) for b in rows)),
        ("    queued for a batch and an instance", *(_share(b.queue_ms, b.client_mean_ms) for b in rows)),
        ("    compute (input + infer + output)", *(_share(b.compute_ms, b.client_mean_ms) for b in rows)),
        ("    other (decode, schedule, split, encode)", *(_share(b.other_server_ms, b.client_mean_ms) for b in rows)),
        (
            "  outside the server (network, gRPC, SDK, Locust)",
            *(_share(b.outside_server_ms, b.client_mean_ms) for b in rows),
        ),
    ]
    title = f"ortserve server-side breakdown: ModelStatistics deltas over the run ({source}), per successful request"
    header = ("", *(b.model for b in rows))
    widths = [max(len(line[i]) for line in [header, *lines]) for i in range(len(header))]
    text = [
        "  ".join(
            cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(line, widths, strict=True))
        ).rstrip()
        for line in [header, *lines]
    ]
    return title + "\n" + "\n".join(text)


KNEE_HEADER = ("stage", "users", "throughput req/s", "p99 ms by model", "holds", "why not")


def knee_rows(stages: Sequence[Stage]) -> list[tuple[str, ...]]:
    return [
        (
            str(i + 1),
            str(s.users),
            _num(s.result.throughput_rps),
            " ".join(f"{m}={_ms(v)}" for m, v in sorted(s.result.p99_ms.items())),
            "yes" if s.result.holds else "no",
            s.result.why,
        )
        for i, s in enumerate(stages)
    ]


def knee_table(stages: Sequence[Stage], knee: Stage | None, stage_s: float, settle_s: float) -> str:
    title = f"ortserve knee search (stages of {stage_s:g} s, each judged after {settle_s:g} s to settle)"
    if knee is None:
        verdict = "knee: no stage held the p99 target"
    else:
        users = f"{knee.users} user{'s' if knee.users != 1 else ''}"
        verdict = f"knee: {users}, {knee.result.throughput_rps:.1f} req/s with every p99 target held"
    return title + "\n" + table(KNEE_HEADER, knee_rows(stages)) + "\n" + verdict


def write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(header)
        writer.writerows(rows)


def write_targets_csv(path: Path, checks: Sequence[Check]) -> None:
    write_csv(
        path,
        ("model", "metric", "target", "measured", "result"),
        [(c.model, c.metric, c.target, c.measured, RESULT[c.passed]) for c in checks],
    )


def write_all(prefix: str, checks: Sequence[Check], breakdowns: Sequence[Breakdown], plan: Plan | None) -> None:
    """Beside Locust's `PREFIX_stats.csv`: `PREFIX_targets.csv`, `PREFIX_server.csv`, `PREFIX_knee.csv`."""
    write_targets_csv(Path(f"{prefix}_targets.csv"), checks)
    if breakdowns:
        write_csv(Path(f"{prefix}_server.csv"), BREAKDOWN_HEADER, breakdown_rows(breakdowns))
    if isinstance(plan, KneeSearch):
        write_csv(Path(f"{prefix}_knee.csv"), KNEE_HEADER, knee_rows(plan.stages))
