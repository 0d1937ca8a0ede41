"""`python -m benchmarks.openloop`: open-loop load on the batch hold and its strictly greedy twin."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PERF_ANALYZER = Path(os.environ.get("PERF_ANALYZER") or ROOT / ".ci/venvs/perf-analyzer/bin/perf_analyzer_wrapped")


def test_both_configs_answer_the_offered_rate_and_the_table_has_a_row_each() -> None:
    if not os.access(PERF_ANALYZER, os.X_OK):
        pytest.skip("perf_analyzer is not installed: run .ci/setup-perf-analyzer.sh (CI does)")
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.openloop", "--rates", "200", "--seconds", "0.5", "--repeats", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    rows = [line.split("|")[1:-1] for line in done.stdout.splitlines() if line.startswith("| 200 |")]
    assert [row[1].strip() for row in rows] == ["batch_hold auto (default)", "batch_hold off"], done.stdout
    for row in rows:
        answered = float(row[2].split()[0])
        assert 150 < answered < 250, done.stdout  # an open loop: the offered rate, whatever the server's speed
        assert float(row[3].split()[0]) > 0 and float(row[5].split()[0]) >= 1.0
