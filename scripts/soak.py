#!/usr/bin/env python3
"""Soak: mixed load for a long time, reporting the server's RSS and latency drift. Not run by CI.

    python scripts/soak.py                          # 30 minutes against a server it starts
    python scripts/soak.py --duration-s 60 --window-s 10
    python scripts/soak.py --target host:port --pid PID --api-key KEY   # a server started elsewhere

The mix, from --clients concurrent asyncio workers: unary inference on a batchable FP32 model (most
of it), a BYTES model, ModelStreamInfer, metadata and statistics calls, deliberately malformed
requests, and health checks. The server it starts runs with API-key authentication and an audit
file, so that the security interceptor is on the path too.

One JSON line per window (requests, codes, p50/p99 latency per kind, RSS), then a summary: RSS
growth and p99 drift (last window over first) per kind. Exit 1 if the server died, answered an
unexpected status, or grew beyond --max-rss-growth-mib.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import struct
import sys
import time
from collections import defaultdict
from contextlib import ExitStack
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import numpy as np
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ortserve.security.apikeys import hash_key, new_key  # noqa: E402
from ortserve_client.proto import grpc_service_pb2 as pb  # noqa: E402
from ortserve_client.proto import grpc_service_pb2_grpc as pb_grpc  # noqa: E402
from tests import models  # noqa: E402
from tests.harness import serve_in_subprocess  # noqa: E402

EXPECTED = {"OK", "INVALID_ARGUMENT", "NOT_FOUND"}
KINDS = [("infer", 0.70), ("bytes", 0.08), ("stream", 0.05), ("metadata", 0.07), ("statistics", 0.03),
         ("malformed", 0.05), ("health", 0.02)]


def rss_mib(pid: int) -> float:
    """The process's resident set in MiB; NaN once it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return float("nan")
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def add_sub_request(rng: random.Random) -> pb.ModelInferRequest:
    rows = rng.randint(1, 8)
    request = pb.ModelInferRequest(model_name="add_sub")
    for name in ("INPUT0", "INPUT1"):
        a = np.full((rows, 4), rng.random(), np.float32)
        request.inputs.add(name=name, datatype="FP32", shape=a.shape)
        request.raw_input_contents.append(a.tobytes())
    return request


def bytes_request(rng: random.Random) -> pb.ModelInferRequest:
    rows = rng.randint(1, 4)
    items = [rng.choice([b"", b"soak", "ünï".encode()]) for _ in range(rows * 4)]
    request = pb.ModelInferRequest(model_name="text")
    request.inputs.add(name="x", datatype="BYTES", shape=[rows, 4])
    request.raw_input_contents.append(b"".join(struct.pack("<I", len(i)) + i for i in items))
    return request


def malformed_request(rng: random.Random) -> pb.ModelInferRequest:
    request = add_sub_request(rng)
    choice = rng.randrange(3)
    if choice == 0:
        request.inputs[0].datatype = "FP64"
    elif choice == 1:
        request.raw_input_contents[0] = request.raw_input_contents[0][:-1]
    else:
        request.model_name = "missing"
    return request


class Stats:
    def __init__(self) -> None:
        self.latency: dict[str, list[float]] = defaultdict(list)
        self.codes: dict[str, int] = defaultdict(int)

    def add(self, kind: str, seconds: float, code: str) -> None:
        self.latency[kind].append(seconds)
        self.codes[f"{kind}:{code}"] += 1

    def summary(self) -> dict[str, Any]:
        return {
            kind: {"n": len(v), "p50_ms": round(float(np.percentile(v, 50)) * 1e3, 2),
                   "p99_ms": round(float(np.percentile(v, 99)) * 1e3, 2)}
            for kind, v in sorted(self.latency.items()) if v
        }


async def worker(seed: int, target: str, metadata: tuple[tuple[str, str], ...], stop: float,
                 window: list[Stats]) -> None:
    rng = random.Random(seed)
    names, weights = zip(*KINDS, strict=True)
    async with aio.insecure_channel(target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        health = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < stop:
            kind = rng.choices(names, weights)[0]
            started = time.perf_counter()
            code = "OK"
            try:
                if kind == "infer":
                    await stub.ModelInfer(add_sub_request(rng), metadata=metadata, timeout=30)
                elif kind == "bytes":
                    await stub.ModelInfer(bytes_request(rng), metadata=metadata, timeout=30)
                elif kind == "stream":
                    requests = [add_sub_request(rng) for _ in range(rng.randint(1, 8))]
                    async for response in stub.ModelStreamInfer(iter(requests), metadata=metadata, timeout=30):
                        if response.error_message:
                            code = "STREAM_ERROR"
                elif kind == "metadata":
                    await stub.ModelMetadata(pb.ModelMetadataRequest(name="add_sub"), metadata=metadata, timeout=30)
                elif kind == "statistics":
                    await stub.ModelStatistics(pb.ModelStatisticsRequest(), metadata=metadata, timeout=30)
                elif kind == "malformed":
                    await stub.ModelInfer(malformed_request(rng), metadata=metadata, timeout=30)
                else:
                    await health.Check(health_pb2.HealthCheckRequest(), timeout=30)
            except aio.AioRpcError as exc:
                code = exc.code().name
            window[0].add(kind, time.perf_counter() - started, code)


async def soak(target: str, pid: int, args: argparse.Namespace, metadata: tuple[tuple[str, str], ...]) -> int:
    start = time.monotonic()
    stop = start + args.duration_s
    window = [Stats()]
    workers = [asyncio.create_task(worker(i, target, metadata, stop, window)) for i in range(args.clients)]
    windows: list[dict[str, Any]] = []
    unexpected: dict[str, int] = defaultdict(int)
    while time.monotonic() < stop:
        await asyncio.sleep(min(args.window_s, max(0.0, stop - time.monotonic())))
        stats, window[0] = window[0], Stats()
        row = {"t_s": round(time.monotonic() - start), "rss_mib": round(rss_mib(pid), 1),
               "requests": sum(len(v) for v in stats.latency.values()), "latency": stats.summary()}
        for key, n in stats.codes.items():
            if key.split(":")[1] not in EXPECTED:
                unexpected[key] += n
        windows.append(row)
        print(json.dumps(row), flush=True)
    await asyncio.gather(*workers)
    first, last = windows[0], windows[-1]
    drift = {
        kind: round(last["latency"][kind]["p99_ms"] / first["latency"][kind]["p99_ms"], 2)
        for kind in first["latency"] if kind in last["latency"] and first["latency"][kind]["p99_ms"] > 0
    }
    alive = rss_mib(pid) == rss_mib(pid)  # NaN once the process is gone
    summary = {
        "duration_s": args.duration_s,
        "requests": sum(w["requests"] for w in windows),
        "rss_mib_first_window": first["rss_mib"],
        "rss_mib_last_window": last["rss_mib"],
        "rss_growth_mib": round(last["rss_mib"] - first["rss_mib"], 1),
        "p99_drift_last_over_first": drift,
        "unexpected_statuses": dict(unexpected),
        "alive": alive,
    }
    print(json.dumps({"summary": summary}, indent=2))
    ok = alive and not unexpected and summary["rss_growth_mib"] <= args.max_rss_growth_mib
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration-s", type=float, default=1800.0)
    parser.add_argument("--window-s", type=float, default=60.0)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--max-rss-growth-mib", type=float, default=64.0)
    parser.add_argument("--target", help="host:port of a running server (default: start one)")
    parser.add_argument("--pid", type=int, help="its process id, for RSS (with --target)")
    parser.add_argument("--api-key", help="bearer key for a server started elsewhere")
    args = parser.parse_args(argv)
    with ExitStack() as stack:
        if args.target:
            if not args.pid:
                parser.error("--target needs --pid")
            target, pid, key = args.target, args.pid, args.api_key
        else:
            work = Path(stack.enter_context(TemporaryDirectory()))
            repo = work / "models"
            models.save(models.add_sub(), repo, "add_sub")
            models.save(models.identity("BYTES"), repo, "text")
            key = new_key()
            (work / "keys.toml").write_text(
                f'[[key]]\nid = "soak"\nsha256 = "{hash_key(key)}"\nscopes = ["inference", "metadata"]\n'
            )
            server = stack.enter_context(serve_in_subprocess([
                "--model-repository", str(repo), "--grpc-port", "0", "--http-port", "-1",
                "--auth-api-keys-file", str(work / "keys.toml"), "--audit-log-file", str(work / "audit.jsonl"),
            ]))
            target, pid = server.grpc_target, server.process.pid
        metadata = (("authorization", f"Bearer {key}"),) if key else ()
        return asyncio.run(soak(target, pid, args, metadata))


if __name__ == "__main__":
    raise SystemExit(main())
