#!/usr/bin/env python3
"""The client SDK's per-call cost against raw generated stubs and tritonclient, on one server.

    python benchmarks/bench_client.py [--seconds 1] [--repeats 5] [--concurrency 1,32] [--rows 1]
                                      [--no-triton] [--json FILE]

One `ortserve serve` subprocess serves add_sub (FP32 [rows, 4] x 2 -> 2 outputs). Against it,
closed loops of ModelInfer calls, `concurrency` in flight, for `seconds` each, `repeats` times,
the variants interleaved within each repeat:

- raw stubs: the generated stub on a plain channel; the request built from numpy by hand
  (inputs.add + raw_input_contents.append(tobytes())), the outputs read with np.frombuffer:
  the least any caller must do;
- ortserve_client: `InferenceClient.infer` / `AsyncInferenceClient.infer` with its defaults
  (deadline, retry policy, round-robin service config, keepalive), returning an InferResult;
- tritonclient.grpc: InferInput.set_data_from_numpy + infer + as_numpy, in a subprocess
  (it registers the same `inference.*` protobuf names as ortserve_client).

Sync variants run `concurrency` threads; asyncio variants `concurrency` tasks on one loop.
Each row: calls/s as median [min-max] over the repeats, and the client process's CPU time per
call (all its threads), median, which isolates the client's own cost from the server's. The
client shares the machine's cores with the server: on a shared, noisy machine only the medians
and the ranges mean anything.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ortserve_client import AsyncInferenceClient, InferenceClient  # noqa: E402
from ortserve_client.proto import grpc_service_pb2 as pb  # noqa: E402
from ortserve_client.proto import grpc_service_pb2_grpc as pb_grpc  # noqa: E402
from tests import models  # noqa: E402
from tests.harness import serve_in_subprocess  # noqa: E402

MODEL = "add_sub"
MAX = 2**31 - 1
Sample = dict[str, float]  # calls_per_s, cpu_us_per_call


# -- closed loops ---------------------------------------------------------------------------


def sync_loop(call: Callable[[], Any], concurrency: int, seconds: float) -> Sample:
    """`concurrency` threads calling `call` back to back for `seconds` (after a short warm-up)."""
    for _ in range(20):
        call()
    counts = [0] * concurrency
    start_gate = threading.Barrier(concurrency + 1)
    stop_at = [0.0]

    def worker(index: int) -> None:
        start_gate.wait()
        n = 0
        while time.perf_counter() < stop_at[0]:
            call()
            n += 1
        counts[index] = n

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(concurrency)]
    for t in threads:
        t.start()
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    stop_at[0] = t0 + seconds
    start_gate.wait()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    calls = sum(counts)
    return {"calls_per_s": calls / wall, "cpu_us_per_call": cpu / calls * 1e6}


async def async_loop(call: Callable[[], Awaitable[Any]], concurrency: int, seconds: float) -> Sample:
    for _ in range(20):
        await call()
    counts = [0] * concurrency
    stop_at = time.perf_counter() + seconds

    async def worker(index: int) -> None:
        n = 0
        while time.perf_counter() < stop_at:
            await call()
            n += 1
        counts[index] = n

    cpu0 = time.process_time()
    t0 = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    wall = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    calls = sum(counts)
    return {"calls_per_s": calls / wall, "cpu_us_per_call": cpu / calls * 1e6}


# -- the variants in this process -----------------------------------------------------------


def raw_request(a: np.ndarray[Any, Any], b: np.ndarray[Any, Any]) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=MODEL)
    request.inputs.add(name="INPUT0", datatype="FP32", shape=a.shape)
    request.inputs.add(name="INPUT1", datatype="FP32", shape=b.shape)
    request.raw_input_contents.append(a.tobytes())
    request.raw_input_contents.append(b.tobytes())
    return request


def raw_outputs(response: pb.ModelInferResponse) -> dict[str, np.ndarray[Any, Any]]:
    return {
        o.name: np.frombuffer(raw, np.float32).reshape(tuple(o.shape))
        for o, raw in zip(response.outputs, response.raw_output_contents, strict=True)
    }


def raw_channel_options() -> list[tuple[str, int]]:
    return [("grpc.max_send_message_length", MAX), ("grpc.max_receive_message_length", MAX)]


def run_raw_sync(target: str, a: Any, b: Any, concurrency: int, seconds: float) -> Sample:
    import grpc

    channel = grpc.insecure_channel(target, raw_channel_options())
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    try:
        return sync_loop(lambda: raw_outputs(stub.ModelInfer(raw_request(a, b))), concurrency, seconds)
    finally:
        channel.close()


def run_sdk_sync(target: str, a: Any, b: Any, concurrency: int, seconds: float) -> Sample:
    with InferenceClient(target) as client:
        inputs = {"INPUT0": a, "INPUT1": b}
        return sync_loop(lambda: client.infer(MODEL, inputs), concurrency, seconds)


def run_raw_aio(target: str, a: Any, b: Any, concurrency: int, seconds: float) -> Sample:
    from grpc import aio

    async def main() -> Sample:
        channel = aio.insecure_channel(target, raw_channel_options())
        stub = pb_grpc.GRPCInferenceServiceStub(channel)

        async def call() -> Any:
            return raw_outputs(await stub.ModelInfer(raw_request(a, b)))

        try:
            return await async_loop(call, concurrency, seconds)
        finally:
            await channel.close()

    return asyncio.run(main())


def run_sdk_aio(target: str, a: Any, b: Any, concurrency: int, seconds: float) -> Sample:
    async def main() -> Sample:
        async with AsyncInferenceClient(target) as client:
            inputs = {"INPUT0": a, "INPUT1": b}
            return await async_loop(lambda: client.infer(MODEL, inputs), concurrency, seconds)

    return asyncio.run(main())


# -- tritonclient, in its own process -------------------------------------------------------

TRITON_SCRIPT = r"""
import asyncio, json, sys, threading, time
import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient

target, rows, concurrency, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
rng = np.random.default_rng(0)
a = rng.standard_normal((rows, 4)).astype(np.float32)
b = rng.standard_normal((rows, 4)).astype(np.float32)
{loops}

def inputs(module):
    x = module.InferInput("INPUT0", list(a.shape), "FP32"); x.set_data_from_numpy(a)
    y = module.InferInput("INPUT1", list(b.shape), "FP32"); y.set_data_from_numpy(b)
    return [x, y]

client = grpcclient.InferenceServerClient(target)
def call():
    result = client.infer("add_sub", inputs(grpcclient))
    return result.as_numpy("OUTPUT0"), result.as_numpy("OUTPUT1")
out = {{"sync": sync_loop(call, concurrency, seconds)}}
client.close()

async def main():
    aclient = aioclient.InferenceServerClient(target)
    async def acall():
        result = await aclient.infer("add_sub", inputs(aioclient))
        return result.as_numpy("OUTPUT0"), result.as_numpy("OUTPUT1")
    try:
        return await async_loop(acall, concurrency, seconds)
    finally:
        await aclient.close()
out["aio"] = asyncio.run(main())
print(json.dumps(out))
"""


def run_triton(target: str, rows: int, concurrency: int, seconds: float) -> dict[str, Sample]:
    import inspect

    loops = inspect.getsource(sync_loop) + "\n" + inspect.getsource(async_loop)
    loops = loops.replace("-> Sample", "").replace(": Callable[[], Any]", "").replace(
        ": Callable[[], Awaitable[Any]]", ""
    )
    script = TRITON_SCRIPT.format(loops=loops)
    done = subprocess.run(
        [sys.executable, "-c", script, target, str(rows), str(concurrency), str(seconds)],
        capture_output=True,
        text=True,
        timeout=120 + 4 * seconds,
        env={**os.environ, "PYTHONPATH": ""},
    )
    if done.returncode != 0:
        raise RuntimeError(f"the tritonclient run failed:\n{done.stderr}")
    result: dict[str, Sample] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


# -- main -----------------------------------------------------------------------------------

IN_PROCESS: dict[str, Callable[[str, Any, Any, int, float], Sample]] = {
    "raw stubs (sync)": run_raw_sync,
    "ortserve_client (sync)": run_sdk_sync,
    "raw stubs (aio)": run_raw_aio,
    "ortserve_client (aio)": run_sdk_aio,
}
ORDER = [
    "raw stubs (sync)",
    "ortserve_client (sync)",
    "tritonclient (sync)",
    "raw stubs (aio)",
    "ortserve_client (aio)",
    "tritonclient (aio)",
]


def summary(samples: list[Sample], key: str) -> tuple[float, float, float]:
    values = [s[key] for s in samples]
    return statistics.median(values), min(values), max(values)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=1.0, help="length of one measurement (default 1)")
    parser.add_argument("--repeats", type=int, default=5, help="measurements per variant (default 5)")
    parser.add_argument("--concurrency", default="1,32", help="calls in flight, comma-separated (default 1,32)")
    parser.add_argument("--rows", type=int, default=1, help="rows per request (default 1: per-call overhead)")
    parser.add_argument("--no-triton", action="store_true", help="skip tritonclient")
    parser.add_argument("--json", type=Path, help="also write every sample to this file")
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    rng = np.random.default_rng(0)
    a = rng.standard_normal((args.rows, 4)).astype(np.float32)
    b = rng.standard_normal((args.rows, 4)).astype(np.float32)
    samples: dict[int, dict[str, list[Sample]]] = {c: {name: [] for name in ORDER} for c in levels}
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp)
        models.save(models.add_sub(), repo, MODEL)
        server_args = ["--model-repository", str(repo), "--grpc-port", "0", "--http-port", "-1"]
        with serve_in_subprocess(server_args) as server:
            target = server.grpc_target
            for repeat in range(args.repeats):
                for c in levels:
                    for name, run in IN_PROCESS.items():
                        samples[c][name].append(run(target, a, b, c, args.seconds))
                    if not args.no_triton:
                        triton = run_triton(target, args.rows, c, args.seconds)
                        samples[c]["tritonclient (sync)"].append(triton["sync"])
                        samples[c]["tritonclient (aio)"].append(triton["aio"])
                print(f"repeat {repeat + 1}/{args.repeats} done", file=sys.stderr)
    print(f"add_sub FP32 [{args.rows},4] x2, {args.seconds:g} s x {args.repeats} repeats, interleaved; "
          f"{os.cpu_count()} cores shared by client and server")
    for c in levels:
        print(f"\nconcurrency {c}")
        print(f"  {'variant':<24} {'calls/s median [min-max]':>28} {'vs raw':>7} {'client CPU us/call':>19}")
        for name in ORDER:
            if not samples[c][name]:
                continue
            med, low, high = summary(samples[c][name], "calls_per_s")
            cpu = summary(samples[c][name], "cpu_us_per_call")[0]
            raw_name = "raw stubs (aio)" if "aio" in name else "raw stubs (sync)"
            ratio = med / summary(samples[c][raw_name], "calls_per_s")[0]
            print(f"  {name:<24} {med:>10.0f} [{low:>6.0f}-{high:>6.0f}]     {ratio:>6.2f} {cpu:>19.0f}")
    if args.json:
        args.json.write_text(json.dumps({str(c): samples[c] for c in levels}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
