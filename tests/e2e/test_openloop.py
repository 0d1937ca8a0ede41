"""`python -m benchmarks.openloop`: open-loop load on the batch hold and its strictly greedy twin."""

from __future__ import annotations

import subprocess
import sys

from tests.e2e import ROOT, need_perf_analyzer


def test_both_configs_answer_the_offered_rate_and_the_table_has_a_row_each() -> None:
    need_perf_analyzer()
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
