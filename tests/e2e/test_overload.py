"""Overload: offered load far above capacity. Admitted requests keep a bounded latency, the rest are
refused at once with UNAVAILABLE naming the bound, health answers within 100 ms throughout, /metrics
promptly, and memory stays put.

The load comes from another process (open loop: requests leave on a fixed schedule whatever the
answers), so that the probes measured here do not queue behind the load generator's own work.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import time
import urllib.request
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ortserve_client.proto import grpc_service_pb2_grpc as pb_grpc
from tests import models
from tests.harness import channel_to, serve_in_subprocess
from tests.wire import SleeperClock, sleep_request, sleeper

INFLIGHT = 4
REQUEST_S = 0.02  # each request keeps the one instance busy this long: capacity ~50 requests/s
OFFERED_PER_S = 500  # ten times the capacity
SECONDS = 4.0


def offer_load(target: str, iterations: int, rate_per_s: float, seconds: float) -> dict[str, Any]:
    """In a separate process: send requests on a fixed schedule; latency and outcome of each."""
    from grpc import aio

    async def main() -> dict[str, Any]:
        results: dict[str, list[float]] = {}
        details: set[str] = set()
        async with aio.insecure_channel(target) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            request = sleep_request(iterations)

            async def one() -> None:
                started = time.perf_counter()
                try:
                    await stub.ModelInfer(request, timeout=30)
                    code = "OK"
                except aio.AioRpcError as exc:
                    code = exc.code().name
                    details.add((exc.details() or "")[:120])
                results.setdefault(code, []).append(time.perf_counter() - started)

            tasks = []
            start = time.perf_counter()
            for i in range(int(rate_per_s * seconds)):
                delay = start + i / rate_per_s - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.create_task(one()))
            await asyncio.gather(*tasks)
        return {"latencies": results, "details": sorted(details)}

    return asyncio.run(main())


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_overload_is_refused_fast_while_admitted_latency_and_health_stay_bounded(repo: Path) -> None:
    models.save(sleeper(), repo, "sleeper")
    args = ["--model-repository", str(repo), "--grpc-port", "0", "--http-port", "0",
            "--max-inflight-requests", str(INFLIGHT)]
    with serve_in_subprocess(args) as server, channel_to(server.grpc_target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        iterations = SleeperClock(stub).iterations(REQUEST_S)
        health = health_pb2_grpc.HealthStub(channel)
        rss_before = rss_mib(server.process.pid)
        health_s: list[float] = []
        metrics_s: list[float] = []
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            pool.submit(int, 0).result()  # the worker is up before the clock starts
            load = pool.submit(offer_load, server.grpc_target, iterations, OFFERED_PER_S, SECONDS)
            next_metrics = 0.0
            while not load.done():
                started = time.perf_counter()
                status = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status
                health_s.append(time.perf_counter() - started)
                assert status == health_pb2.HealthCheckResponse.SERVING
                if started > next_metrics:
                    with urllib.request.urlopen(f"http://127.0.0.1:{server.http_port}/metrics", timeout=5) as r:
                        assert b"nv_inference_request_success" in r.read()
                    metrics_s.append(time.perf_counter() - started - health_s[-1])
                    next_metrics = started + 0.25
                time.sleep(0.02)
            report = load.result()
        rss_after = rss_mib(server.process.pid)

    latencies: dict[str, list[float]] = report["latencies"]
    ok, refused = np.array(latencies.pop("OK", [])), np.array(latencies.pop("UNAVAILABLE", []))
    assert not latencies, (latencies.keys(), report["details"])  # nothing but answers and refusals
    offered = int(OFFERED_PER_S * SECONDS)
    assert len(ok) + len(refused) == offered
    assert len(refused) > offered / 2  # far above capacity: most are refused ...
    assert len(ok) > SECONDS * 5  # ... but the server keeps serving at its capacity
    assert all("max_inflight_requests=4" in d for d in report["details"])
    summary = (
        f"admitted {len(ok)}: p50 {np.percentile(ok, 50) * 1e3:.0f} ms, p99 {np.percentile(ok, 99) * 1e3:.0f} ms, "
        f"max {ok.max() * 1e3:.0f} ms; refused {len(refused)}: p50 {np.percentile(refused, 50) * 1e3:.1f} ms, "
        f"p99 {np.percentile(refused, 99) * 1e3:.1f} ms; health max {max(health_s) * 1e3:.1f} ms over "
        f"{len(health_s)} checks; /metrics max {max(metrics_s) * 1e3:.1f} ms; "
        f"RSS {rss_before:.0f} -> {rss_after:.0f} MiB"
    )
    print(summary)
    # Admitted: at most INFLIGHT requests ahead of one, so its latency is bounded by a few of them.
    assert np.percentile(ok, 99) < 0.5 and ok.max() < 1.5, summary
    # Refused: at once, without waiting for the model.
    assert np.percentile(refused, 99) < 0.1, summary
    assert max(health_s) < 0.1, summary
    assert max(metrics_s) < 0.25, summary
    assert rss_after - rss_before < 64, summary
