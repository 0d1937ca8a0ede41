#!/usr/bin/env bash
# Install everything the tests need into the current Python environment, then lint, type-check
# and run the whole test suite. This is the README's test command; .ci/run calls it in a fresh venv.
#
#   ./scripts/test.sh                 # everything
#   ./scripts/test.sh tests/unit -x   # extra arguments go to pytest
set -euo pipefail
cd "$(dirname "$0")/.."

python -m pip install --quiet --upgrade pip
python -m pip install --quiet -e ./client -e '.[cpu,dev]'

# Triton's perf_analyzer lives in its own venv (see DESIGN.md, "Real components for tests").
PERF_ANALYZER="$(bash .ci/setup-perf-analyzer.sh | tail -n 1)"
export PERF_ANALYZER
# The Prometheus server and promtool (Debian) for tests/e2e/test_prometheus.py.
PROMETHEUS_BIN_DIR="$(bash scripts/setup-prometheus.sh | tail -n 1)"
export PROMETHEUS_BIN_DIR

python -m ruff check server client tests scripts benchmarks loadtests
python -m mypy server client
python -m pytest "$@"
