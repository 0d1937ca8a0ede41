"""ortserve-client stays light: grpcio, protobuf and numpy at run time, OpenTelemetry optional."""

from __future__ import annotations

import importlib.metadata
import json
import re
import subprocess
import sys

# What the three dependencies bring in themselves: Cython runtime modules, and grpc's own
# optional imports of grpc_tools and grpc_health when they happen to be installed (dev only).
ALLOWED = {"grpc", "google", "numpy", "ortserve_client", "typing_extensions", "cython_runtime"} | {
    "grpc_tools",
    "grpc_health",
}


def test_declared_runtime_dependencies() -> None:
    requires = importlib.metadata.requires("ortserve-client") or []
    runtime = {re.split(r"[ <>=!;\[]", r, maxsplit=1)[0].lower() for r in requires if "extra ==" not in r}
    assert runtime == {"grpcio", "protobuf", "numpy"}
    optional = [r for r in requires if "extra ==" in r]
    assert all(r.startswith("opentelemetry-api") and 'extra == "tracing"' in r for r in optional), optional
    scripts = {e.name: e.value for e in importlib.metadata.entry_points(group="console_scripts")}
    assert scripts["ortserve-client"] == "ortserve_client.cli:main"


def test_imports_nothing_else_even_without_opentelemetry() -> None:
    code = """
import json, sys
sys.modules["opentelemetry"] = None  # as if it were not installed
before = set(sys.modules)
import ortserve_client, ortserve_client.cli, ortserve_client.aio
from ortserve_client import tracing
assert tracing.trace_metadata() == ()
print(json.dumps(sorted({m.split(".")[0] for m in set(sys.modules) - before} - set(sys.stdlib_module_names))))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    imported = set(json.loads(done.stdout))
    imported = {m for m in imported if not m.startswith("_cython")}
    assert imported <= ALLOWED, sorted(imported - ALLOWED)
    assert "ortserve" not in imported  # never the server
