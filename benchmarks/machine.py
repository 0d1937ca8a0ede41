"""The machine the suite runs on: what it is, and how busy it is."""

from __future__ import annotations

import os
import platform
import subprocess
import time
from pathlib import Path

from benchmarks import loadgen

ROOT = Path(__file__).resolve().parents[1]


def cpu_times() -> tuple[float, float]:
    """(busy seconds, steal seconds) of the whole machine, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = values[:8]
    ticks = os.sysconf("SC_CLK_TCK")
    return (user + nice + system + irq + softirq) / ticks, steal / ticks


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def idle_before(seconds: float = 1.0) -> float:
    """Percent of the machine's CPU that was idle over `seconds`."""
    busy0, steal0 = cpu_times()
    time.sleep(seconds)
    busy1, steal1 = cpu_times()
    cores = len(os.sched_getaffinity(0))
    return 100 * (1 - (busy1 - busy0 + steal1 - steal0) / (seconds * cores))


def busy_neighbours() -> list[str]:
    """Test runs and servers started by others (the machine is shared)."""
    found = []
    mine = {os.getpid(), os.getppid()}
    for stat in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            pid = int(stat.parent.name)
            cmd = stat.read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except (OSError, ValueError):
            continue
        if pid not in mine and ("pytest" in cmd or "ortserve serve" in cmd or "perf_analyzer " in cmd):
            found.append(f"{pid} {cmd[:100]}")
    return found


def environment(pa: Path) -> dict[str, str]:
    import google.protobuf
    import grpc
    import numpy
    import onnxruntime

    import ortserve

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
        return done.stdout.strip()

    commit = git("rev-parse", "--short=12", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--", "server", "client")
    try:
        import uvloop

        uvloop_version = str(getattr(uvloop, "__version__", "unknown"))
    except ImportError:
        uvloop_version = "not installed"
    return {
        "cpu": cpu_model(),
        "cores": f"{len(os.sched_getaffinity(0))} (os.cpu_count {os.cpu_count()})",
        "kernel": platform.release(),
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
        "grpcio": grpc.__version__,
        "protobuf": google.protobuf.__version__,
        "numpy": numpy.__version__,
        "uvloop": uvloop_version,
        "perf_analyzer": loadgen.version(pa),
        "ortserve": f"{ortserve.__version__} at commit {commit}"
        + (" plus uncommitted changes in server/ or client/ (the working tree was measured)" if dirty else ""),
    }
