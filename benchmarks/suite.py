"""The benchmark suite of issue 3: ortserve against its ceilings, on one machine, in one run.

    python -m benchmarks                      # full run (about 8 min), writes docs/performance.md
    python -m benchmarks --quick              # smoke (about 1-2 min), writes nothing unless --write
    python -m benchmarks --mode table         # only the server table
    python -m benchmarks --mode latency-target   # either half: prints only, unless --write FILE

Steps of a run (`main`), one module each:

1. models.py: build a tiny MLP (RPC cost dominates) and a small CNN (compute dominates, about
   1 ms per item at batch 1) in a temporary directory, with complete config.pbtxt files: the
   bare servers' repository, ortserve's (`<model>_batching` with `dynamic_batching { }`,
   `<model>_greedy` the same with `batch_hold` off, `<model>_nobatch` with max_batch_size and no
   scheduler) and the latency-target mode's.
2. table.py: start the RPC ceiling and the baseline (bare_server.py) and ortserve (servers.py),
   each in its own process with the same ONNX Runtime thread budget (inprocess.py). For each
   repeat and model: sweep in-process ONNX Runtime over batch sizes 1..64 (the compute ceiling is
   the best), then for each concurrency (1, 8, 32, 64) measure every server, in an order rotated
   between cells, under the one load generator (loadgen.py: perf_analyzer, closed loop, async,
   three count windows of about `--window-s` each). measure.py reads around each measurement the
   server's CPU time, the machine's (what else ran: `others`) and ModelStatistics (requests,
   mean executed batch).
3. latency.py: the CNN at concurrency 64 on ortserve with `latency_target_ms` 50 against static
   `max_queue_delay_microseconds` values, measured with pyload.py (it survives refused requests,
   which perf_analyzer does not). When ortserve warns about the parameter or does not know it,
   the row says "not available".
4. Here: print the tables (medians and ranges over the repeats, ratios to the ceilings, the
   issue's targets) and write them with the machine, versions and command into
   docs/performance.md (report.py keeps the hand-written text around the generated part).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from benchmarks import loadgen, models
from benchmarks.latency import LatencyResults, latency_rows, latency_target_verdict, run_latency_target
from benchmarks.machine import busy_neighbours, environment, idle_before
from benchmarks.measure import FULL, QUICK, Bench, Profile
from benchmarks.report import markdown_table, median, summary, text_table, write_generated
from benchmarks.table import BATCHES, MODELS, TableResults, run_table, table_rows, table_targets

ROOT = Path(__file__).resolve().parents[1]


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
            sweep_rows.append(
                [f"{m} µs/item"] + [f"{median([1000 * x.ms_per_row for x in ts]):.2f}" for ts in by_batch]
            )
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
    targets = (table_targets(t) if t is not None else []) + ([latency_target_verdict(lt)] if lt is not None else [])
    if targets:
        header = ["target (issue 3)", "measured", "for comparison", "verdict (median)"]
        md += ["### Targets", "", markdown_table(header, targets, "llll"), ""]
        text += ["", text_table(header, targets)]
    return "\n".join(text), "\n".join(md)


def write_target(args: argparse.Namespace) -> Path | None:
    """The markdown file a run writes: --write's, else docs/performance.md for a full run only.

    A half run (--mode table or latency-target) or --quick writes nothing by default: the page's
    generated block holds both halves, and a half would drop the other half's table from it.
    """
    if args.no_write:
        return None
    if args.write is not None:
        return Path(args.write)
    return ROOT / "docs" / "performance.md" if not args.quick and args.mode == "all" else None


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
        help="write the results into this markdown file (default for a full run of both modes: docs/performance.md)",
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
    write_to = write_target(args)

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
            models.write_model(
                root / "ortserve", f"{m}_greedy", specs[m], "dynamic_batching { }", {"batch_hold": "off"}
            )
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
        f"Load average (1 min) {load_start[0]:.2f} at the start, {load_end[0]:.2f} at the end "
        "(the suite's own load included); `others CPU %` is what the rest of the machine used during each "
        "measurement, beside the server and the load generator (100 = one core)."
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
