"""End-to-end tests: the CLI, real tools (perf_analyzer, Prometheus, an OTLP receiver), the benchmarks."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PERF_ANALYZER = Path(os.environ.get("PERF_ANALYZER") or ROOT / ".ci/venvs/perf-analyzer/bin/perf_analyzer_wrapped")
"""Where `.ci/setup-perf-analyzer.sh` installs Triton's perf_analyzer ($PERF_ANALYZER overrides)."""


def need_perf_analyzer() -> None:
    """Skip the calling test unless perf_analyzer is installed."""
    if not os.access(PERF_ANALYZER, os.X_OK):
        pytest.skip("perf_analyzer is not installed: run .ci/setup-perf-analyzer.sh (CI does)")
