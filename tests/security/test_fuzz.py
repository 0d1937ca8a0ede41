"""CI's short fuzz run: scripts/fuzz_infer.py with 5,000 random and mutated ModelInferRequest messages
against a server it starts (the 100,000-message run is the same script with its default count)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "fuzz_infer.py"


def test_short_fuzz_run_leaves_the_server_alive_with_proper_statuses_and_bounded_rss() -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--count", "5000", "--max-rss-growth-mib", "48"],
        capture_output=True, text=True, timeout=110,
    )
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert report["alive"] and report["improper"] == 0 and not report["findings"]
    codes = report["codes"]
    # The run exercised every outcome it is meant to: answers, refusals of each kind.
    assert codes.get("valid:OK", 0) > 500
    for outcome in ("INVALID_ARGUMENT", "RESOURCE_EXHAUSTED", "NOT_FOUND"):
        assert codes.get(f"malformed:{outcome}", 0) > 20, codes
