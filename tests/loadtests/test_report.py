"""The end-of-run tables and CSV files."""

from __future__ import annotations

import csv
from pathlib import Path

from loadtests.recorder import Measured
from loadtests.report import breakdown_table, knee_table, table, targets_table, write_all
from loadtests.server_stats import Counters, breakdown
from loadtests.shapes import KneeSearch, Stage, StageResult
from loadtests.targets import Target, judge

CLIENT = Measured(1000, 0, 1.0, 2.0, 3.0, 1.6, 100.0)
SERVER = Counters(success_count=1000, success_ns=400_000_000, queue_ns=100_000_000, compute_input_ns=10_000_000,
                  compute_infer_ns=50_000_000, compute_output_ns=10_000_000, inference_count=4000,
                  execution_count=500)


def test_numbers_align_right_and_words_left() -> None:
    text = table(("name", "value"), [("a", "1.5"), ("long name", "22")])
    assert text.splitlines() == ["name       value", "---------  -----", "a            1.5", "long name     22"]


def test_the_target_table_says_what_missed() -> None:
    checks = judge("iris", Target(p50_ms=10, p99_ms=0.001), CLIENT)
    text = targets_table(checks, False, "t.toml", "the whole run")
    first, *rows = text.splitlines()
    assert first == "ortserve latency targets (t.toml; the whole run): MISSED"
    assert any("p99" in r and "<= 0.001 ms" in r and "3.000 ms" in r and r.endswith("MISS") for r in rows)
    assert any("p50" in r and r.endswith("ok") for r in rows)


def test_the_breakdown_splits_the_client_mean() -> None:
    row = breakdown("iris", SERVER, CLIENT)
    text = breakdown_table([row], "1 server at h:1")
    lines = {line[: line.index("  ", 4)].strip(): line for line in text.splitlines()[2:]}
    assert "8.00" in lines["average batch size (rows)"] and "2.00" in lines["requests per batch"]
    assert lines["client latency mean"].endswith("1.600 ms 100%")
    assert lines["in the server (receive to answer)"].endswith("0.400 ms  25%")
    assert lines["queued for a batch and an instance"].endswith("0.100 ms   6%")
    assert lines["compute (input + infer + output)"].endswith("0.070 ms   4%")
    assert lines["outside the server (network, gRPC, SDK, Locust)"].endswith("1.200 ms  75%")


def test_csv_files_beside_locusts(tmp_path: Path) -> None:
    plan = KneeSearch(max_users=2, judge=lambda a, b: StageResult(True, 0, {}))
    plan.stages = [Stage(1, 0, 1, StageResult(True, 50.0, {"iris": 1.0}))]
    prefix = tmp_path / "out" / "ortserve"
    write_all(str(prefix), judge("iris", Target(p99_ms=5), CLIENT), [breakdown("iris", SERVER, CLIENT)], plan)
    targets = list(csv.DictReader((tmp_path / "out" / "ortserve_targets.csv").open()))
    assert targets == [{"model": "iris", "metric": "p99", "target": "<= 5 ms", "measured": "3.000 ms", "result": "ok"}]
    server = list(csv.DictReader((tmp_path / "out" / "ortserve_server.csv").open()))
    assert server[0]["avg batch rows"] == "8.00" and server[0]["queue ms"] == "0.100"
    knee = list(csv.DictReader((tmp_path / "out" / "ortserve_knee.csv").open()))
    assert knee[0]["users"] == "1" and knee[0]["holds"] == "yes"
    assert "knee: 1 user, 50.0 req/s" in knee_table(plan.stages, plan.knee(), 3, 1)
