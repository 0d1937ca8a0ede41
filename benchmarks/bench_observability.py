"""What observability costs: throughput with metrics + tracing (1 % sampled) against both off.

    python -m benchmarks.bench_observability [--rounds 5] [--requests 3000] [--concurrency 8]

Two ortserve servers run side by side in subprocesses on one tiny, RPC-bound model (the worst
case for per-request overhead: the model itself costs almost nothing):

- off: histogram observations patched out, triton_metrics off, no OTEL_* variables (no
  tracing, servicer untouched), nobody scrapes /metrics;
- on:  everything as shipped, tracing on with OTEL_TRACES_SAMPLER=parentbased_traceidratio at 0.01 and the
  real OTLP/gRPC exporter sending to a receiver, and /metrics scraped every second (harsher than
  Prometheus' usual 15 s).

The receiver (a TraceService that counts and drops spans) runs in a process of its own, as a
Collector would: it is not the server's cost, but it shares the 2 cores, so its CPU time is
reported beside the server's (per request of the `on` server) rather than hidden in this one.

Triton's perf_analyzer (C++, so the load generator takes little of the 2 cores; installed by
.ci/setup-perf-analyzer.sh, or $PERF_ANALYZER) drives each in turn, closed loop, async, one-row
requests, count windows. Rounds alternate which server goes first. Reported: inferences/s per
mode as median [min - max], the on/off ratio per round, whose median must be >= 0.95, and the
server's CPU time per request (from /proc), which a machine shared with other work disturbs
far less than throughput.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent import futures
from pathlib import Path
from typing import Any

from benchmarks import loadgen

ROOT = Path(__file__).resolve().parents[1]
MODEL = "add_sub"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def write_model(repo: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    dims = ["batch", 16]
    graph = helper.make_graph(
        [
            helper.make_node("Add", ["INPUT0", "INPUT1"], ["OUTPUT0"]),
            helper.make_node("Sub", ["INPUT0", "INPUT1"], ["OUTPUT1"]),
        ],
        MODEL,
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, dims) for n in ("INPUT0", "INPUT1")],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, dims) for n in ("OUTPUT0", "OUTPUT1")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    (repo / MODEL / "1").mkdir(parents=True)
    onnx.save(model, str(repo / MODEL / "1" / "model.onnx"))


# -- the servers -------------------------------------------------------------------------------------


def child(mode: str, repo: str, grpc_port: int, http_port: int) -> int:
    """Run one server (in a subprocess): `off` patches the histogram observations out."""
    from ortserve.app import serve
    from ortserve.config import ServerSettings

    if mode == "off":
        from ortserve.observability.histograms import Histogram

        def observe(self: Histogram, value: int) -> None:
            pass

        Histogram.observe = observe  # type: ignore[method-assign]
    settings = ServerSettings(
        model_repository=Path(repo),
        host="127.0.0.1",
        grpc_port=grpc_port,
        http_port=http_port,
        triton_metrics=mode != "off",
        log_level="warning",
        drift_interval_seconds=0,
    )
    return serve(settings)


def cpu_of(pid: int) -> float:
    """CPU time (user + system) a process has used so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Server:
    def __init__(self, mode: str, repo: Path, otlp_port: int) -> None:
        self.mode = mode
        self.grpc_port, self.http_port = free_port(), free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
        if mode in ("on", "tracing"):
            env.update(
                OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{otlp_port}",
                OTEL_EXPORTER_OTLP_INSECURE="true",
                OTEL_TRACES_SAMPLER="parentbased_traceidratio",
                OTEL_TRACES_SAMPLER_ARG="0.01",
            )
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "benchmarks.bench_observability",
                "--child",
                mode,
                str(repo),
                str(self.grpc_port),
                str(self.http_port),
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/v2/health/ready", timeout=2):
                    break
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"server {mode} did not start: {self.process.stderr.read()}") from None
                time.sleep(0.2)

    def cpu_s(self) -> float:
        """CPU time (user + system) the server process has used so far."""
        return cpu_of(self.process.pid)

    def requests(self) -> float:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/metrics", timeout=5) as response:
            for line in response.read().decode().splitlines():
                if line.startswith("ortserve_requests_total{"):
                    return float(line.rsplit(" ", 1)[1])
        return 0.0

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(60)


class Scraper:
    """GETs /metrics every `interval_s` while running (what Prometheus does, more often)."""

    def __init__(self, port: int, interval_s: float = 1.0) -> None:
        self.url = f"http://127.0.0.1:{port}/metrics"
        self.interval_s = interval_s
        self.scrapes = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Scraper:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            with urllib.request.urlopen(self.url, timeout=5) as response:
                response.read()
            self.scrapes += 1


def receive() -> int:
    """Run the OTLP receiver (in a subprocess): prints its port, and the spans it got at stdin's end."""
    import grpc
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

    received = [0]

    class Sink(trace_service_pb2_grpc.TraceServiceServicer):
        def Export(self, request: Any, context: Any) -> Any:
            received[0] += sum(len(s.spans) for r in request.resource_spans for s in r.scope_spans)
            return trace_service_pb2.ExportTraceServiceResponse()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Sink(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(port, flush=True)
    sys.stdin.read()  # until the parent closes it
    server.stop(0).wait()
    print(received[0], flush=True)
    return 0


class Receiver:
    """The OTLP receiver's process: its port, its CPU time, and at the end the spans it received."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.bench_observability", "--receiver"],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        self.port = int(self.process.stdout.readline())

    def cpu_s(self) -> float:
        return cpu_of(self.process.pid)

    def stop(self) -> int:
        """Spans received."""
        out, _ = self.process.communicate(timeout=60)
        return int(out.strip() or 0)


# -- the load -------------------------------------------------------------------------------------------


def measure_server(path: Path, server: Server, concurrency: int, requests: int) -> tuple[float, float]:
    """(inferences/s, server CPU microseconds per request) of one perf_analyzer run."""
    cpu, count = server.cpu_s(), server.requests()
    rate = measure(path, server.grpc_port, concurrency, requests)
    cpu, count = server.cpu_s() - cpu, server.requests() - count
    return rate, cpu / max(count, 1) * 1e6


def measure(path: Path, grpc_port: int, concurrency: int, requests: int) -> float:
    """Inferences/s of three merged count windows of `requests` each (the suite's perf_analyzer run)."""
    result = loadgen.measure(path, f"127.0.0.1:{grpc_port}", MODEL, concurrency, requests, timeout_s=600, max_threads=4)
    if result.error:
        raise RuntimeError(f"perf_analyzer failed: {result.error}")
    return result.infer_per_s


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.1f} [{min(values):.1f} - {max(values):.1f}]"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=3000, help="requests per count window")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument(
        "--child", nargs=4, metavar=("MODE", "REPO", "GRPC_PORT", "HTTP_PORT"), help=argparse.SUPPRESS
    )
    parser.add_argument("--receiver", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        mode, repo, grpc_port, http_port = args.child
        return child(mode, repo, int(grpc_port), int(http_port))
    if args.receiver:
        return receive()

    path = loadgen.find_perf_analyzer()
    receiver = Receiver()
    received = 0
    receiver_us = 0.0
    servers: dict[str, Server] = {}
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp)
        write_model(repo)
        try:
            for mode in ("off", "on"):
                servers[mode] = Server(mode, repo, receiver.port)
            for server in servers.values():  # warm-up: first calls pay one-time costs
                measure(path, server.grpc_port, args.concurrency, 500)
            results: dict[str, list[float]] = {"off": [], "on": []}
            cpu: dict[str, list[float]] = {"off": [], "on": []}
            ratios: list[float] = []
            cpu_ratios: list[float] = []
            scraper = Scraper(servers["on"].http_port)
            # It exports every 5 s (OTEL_BSP_SCHEDULE_DELAY), not per window: counted over all rounds.
            receiver_cpu, on_requests = receiver.cpu_s(), servers["on"].requests()
            for round_ in range(args.rounds):
                order = ("off", "on") if round_ % 2 == 0 else ("on", "off")
                got: dict[str, float] = {}
                used: dict[str, float] = {}
                for mode in order:
                    if mode == "on":
                        with scraper:
                            got[mode], used[mode] = measure_server(path, servers[mode], args.concurrency, args.requests)
                    else:
                        got[mode], used[mode] = measure_server(path, servers[mode], args.concurrency, args.requests)
                    results[mode].append(got[mode])
                    cpu[mode].append(used[mode])
                ratios.append(got["on"] / got["off"])
                cpu_ratios.append(used["off"] / used["on"])
                print(
                    f"round {round_ + 1}: off {got['off']:.1f}/s {used['off']:.0f} us CPU/request, "
                    f"on {got['on']:.1f}/s {used['on']:.0f} us CPU/request, ratio {ratios[-1]:.3f}",
                    flush=True,
                )
            time.sleep(5.5)  # the last spans of the rounds exported
            receiver_cpu = receiver.cpu_s() - receiver_cpu
            receiver_us = receiver_cpu / max(servers["on"].requests() - on_requests, 1) * 1e6
        finally:
            for server in servers.values():
                server.stop()  # the on server flushes its last spans
            received = receiver.stop()
    print(f"off (no histograms, no tracing, no scrape): {spread(results['off'])} inferences/s")
    print(f"on  (metrics scraped 1/s, tracing 1 %):     {spread(results['on'])} inferences/s")
    print(
        f"on/off ratio per round: {statistics.median(ratios):.3f} [{min(ratios):.3f} - {max(ratios):.3f}]; "
        f"spans exported: {received}, scrapes: {scraper.scrapes}"
    )
    print(
        f"server CPU per request: off {spread(cpu['off'])} us, on {spread(cpu['on'])} us; "
        f"capacity ratio (off CPU / on CPU) {statistics.median(cpu_ratios):.3f} "
        f"[{min(cpu_ratios):.3f} - {max(cpu_ratios):.3f}]"
    )
    print(f"OTLP receiver CPU (its own process, same machine), all rounds: {receiver_us:.2f} us per request of on")
    ok = statistics.median(ratios) >= 0.95
    print("PASS: within 5 %" if ok else "FAIL: more than 5 % slower")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
