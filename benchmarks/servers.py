"""The servers under test, each in its own process, and what the suite reads from them.

- `bare(repo, mode)`: benchmarks.bare_server (`echo`: the RPC ceiling; `ort`: the baseline).
- `ortserve(repo, threads, device)`: `ortserve serve` as a user runs it (tests.harness.serve_in_subprocess),
  on `--device cpu` (the suite) or `cuda` (gpu.py) with `--intra-op-threads` set to the budget, HTTP off.

`Proc.cpu_s()` reads the process's CPU time (all threads, user + system) from /proc, so the
suite can say how much of the 2 cores a server used during a measurement; `Proc.thread_cpu_s()`
the same per thread and `Proc.thread_switches()` each thread's context switches (hotspots.py),
`Proc.minor_faults()` its page faults (gpu.py, bigrequest.py).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from ortserve_client.proto import grpc_service_pb2 as pb
from ortserve_client.proto import grpc_service_pb2_grpc as pb_grpc
from tests.harness import serve_in_subprocess

ROOT = Path(__file__).resolve().parents[1]
_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Proc:
    name: str
    pid: int
    target: str
    lines: list[str] = field(default_factory=list)
    """What the process wrote to stderr (ortserve: its log)."""

    def cpu_s(self) -> float:
        return _stat_cpu_s(Path(f"/proc/{self.pid}/stat"))

    def minor_faults(self) -> int:
        """Minor page faults of the whole process so far (a fresh page touched: kernel time on the toucher)."""
        try:
            return int(Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()[7])
        except OSError:
            return 0

    def thread_cpu_s(self) -> dict[int, tuple[str, float]]:
        """CPU time per thread: {native thread id: (OS thread name, seconds)}."""
        times: dict[int, tuple[str, float]] = {}
        for task in Path(f"/proc/{self.pid}/task").glob("*"):
            try:
                name = (task / "comm").read_text().strip()
            except OSError:
                continue
            times[int(task.name)] = (name, _stat_cpu_s(task / "stat"))
        return times

    def thread_switches(self) -> dict[int, tuple[int, int]]:
        """Context switches per thread so far: {native thread id: (voluntary, involuntary)}.

        Voluntary: the thread blocked (a futex, the GIL, epoll); involuntary: the scheduler took
        its core. On the 2-core KVM sandbox each one costs the switching threads several µs of
        CPU (docs/performance.md, sixth session), so their count per request says how much of a
        thread's CPU is waking up rather than working."""
        switches: dict[int, tuple[int, int]] = {}
        for task in Path(f"/proc/{self.pid}/task").glob("*"):
            try:
                status = (task / "status").read_text()
            except OSError:
                continue
            fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
            try:
                switches[int(task.name)] = (
                    int(fields["voluntary_ctxt_switches"]),
                    int(fields["nonvoluntary_ctxt_switches"]),
                )
            except (KeyError, ValueError):
                continue
        return switches


def _stat_cpu_s(stat: Path) -> float:
    try:
        fields = stat.read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime


@contextmanager
def bare(repo: Path, mode: str, threads: int) -> Iterator[Proc]:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "benchmarks.bare_server",
            "--repo",
            str(repo),
            "--mode",
            mode,
            "--threads",
            str(threads),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None and process.stderr is not None
    proc = Proc(f"bare-{mode}", process.pid, "")
    threading.Thread(target=lambda: proc.lines.extend(process.stderr), daemon=True).start()  # type: ignore[arg-type]
    try:
        line = process.stdout.readline()
        if not line.startswith("bare-server listening"):
            process.wait(10)
            raise RuntimeError(f"bare server ({mode}) did not start: {line}{''.join(proc.lines)}")
        proc.target = f"127.0.0.1:{int(line.split()[-1])}"
        yield proc
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@contextmanager
def ortserve(
    repo: Path, threads: int, device: str = "cpu", extra: Sequence[str] = (), env: dict[str, str] | None = None
) -> Iterator[Proc]:
    args = [
        "--model-repository",
        str(repo),
        "--grpc-port",
        "0",
        "--http-port",
        "-1",
        "--host",
        "127.0.0.1",
        "--device",
        device,
        "--intra-op-threads",
        str(threads),
        # INFO: the harness waits for the "ortserve ready" line; the request path logs nothing below WARNING.
        "--log-level",
        "info",
        *extra,
    ]
    with serve_in_subprocess(args, env=env, ready_timeout_s=300) as server:
        yield Proc("ortserve", server.process.pid, server.grpc_target, server.lines)


@dataclass(slots=True)
class Counts:
    inferences: int
    executions: int
    failures: int


def counts(target: str, model: str) -> Counts:
    """The model's ModelStatistics counters (one RPC, between measurements only).

    ortserve's are its real statistics; the bare servers count requests only.
    """
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        reply = stub.ModelStatistics(pb.ModelStatisticsRequest(name=model), timeout=10)
    stats = reply.model_stats[0]
    return Counts(stats.inference_count, stats.execution_count, stats.inference_stats.fail.count)
