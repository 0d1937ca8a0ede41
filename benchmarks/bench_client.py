#!/usr/bin/env python3
"""The client SDK's per-call cost against raw generated stubs and tritonclient, on one server.

    python benchmarks/bench_client.py [--seconds 1] [--repeats 7] [--concurrency 1,32] [--rows 1]
                                      [--no-triton] [--json FILE]

One `ortserve serve` subprocess serves add_sub (FP32 [rows, 4] x 2 -> 2 outputs). Against it,
closed loops of ModelInfer calls with `concurrency` in flight (threads for the sync clients,
tasks on one event loop for the asyncio ones). Each worker *alternates* the two variants it
compares, call by call, and times every call, so that both see the same machine at the same
moments; this is what makes a comparison possible on a shared, noisy machine:

- in this process: raw stubs vs ortserve_client. Raw stubs: the generated stub on a plain
  channel, the request built from numpy by hand (inputs.add + raw_input_contents.append
  (tobytes())), the outputs read with np.frombuffer: the least any caller must do.
  ortserve_client: `InferenceClient.infer` / `AsyncInferenceClient.infer` with its defaults
  (deadline, retry policy, round-robin service config, keepalive), returning an InferResult;
- in a subprocess (tritonclient registers the same `inference.*` protobuf names as
  ortserve_client): raw stubs (tritonclient's own generated ones, the same code as above) vs
  tritonclient.grpc (InferInput.set_data_from_numpy + infer + as_numpy).

Beside each paired loop, the same two variants run *alone*, in closed loops of the same
concurrency, in blocks A B B A of `seconds`/2 each (so that a drift of the machine cancels):
calls per second of each, and the client process's CPU per call (user + system, gRPC's
threads included; the server is another process). At concurrency 32 these are the measures
that can tell: there the paired calls share one queue on the two cores, so a client's
cheaper call shortens the wait of every call, its rival's too, and the paired latencies stay
within noise of each other whatever the clients cost; alone, a client that costs less CPU
per call leaves more of the cores to the server. The calls/s of blocks are at the mercy of
whatever else runs on the machine; the CPU per call much less so.

The table shows, over the repeats, median [min-max] of: each loop's median latency; the
paired latency ratio (client / raw stubs, same loop); the blocks' time-per-call ratio (raw
stubs' calls/s / the client's); and the client CPU per call of each and their ratio. A
ratio of 1.05 means 5% more than raw stubs. The client shares the cores with the server.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
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


# -- paired closed loops (also run, by source, in the tritonclient subprocess) ----------------


def paired_sync(calls: Sequence[Callable[[], Any]], concurrency: int, seconds: float) -> list[float]:
    """`concurrency` threads, each alternating `calls` for `seconds`; each call's median latency, us."""
    for _ in range(10):
        for call in calls:
            call()
    latencies: list[list[float]] = [[] for _ in calls]
    lock = threading.Lock()
    gate = threading.Barrier(concurrency + 1)
    stop = [0.0]

    def worker(offset: int) -> None:
        own: list[list[float]] = [[] for _ in calls]
        clock = time.perf_counter
        gate.wait()
        turn = offset
        while clock() < stop[0]:
            index = turn % len(calls)
            start = clock()
            calls[index]()
            own[index].append(clock() - start)
            turn += 1
        with lock:
            for mine, all_ in zip(own, latencies, strict=True):
                all_.extend(mine)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(concurrency)]
    for t in threads:
        t.start()
    stop[0] = time.perf_counter() + seconds
    gate.wait()
    for t in threads:
        t.join()
    return [statistics.median(v) * 1e6 for v in latencies]


async def paired_async(calls: Sequence[Callable[[], Awaitable[Any]]], concurrency: int, seconds: float) -> list[float]:
    """`concurrency` tasks, each alternating `calls` for `seconds`; each call's median latency, us."""
    for _ in range(10):
        for call in calls:
            await call()
    latencies: list[list[float]] = [[] for _ in calls]
    clock = time.perf_counter
    stop = clock() + seconds

    async def worker(offset: int) -> None:
        turn = offset
        while clock() < stop:
            index = turn % len(calls)
            start = clock()
            await calls[index]()
            latencies[index].append(clock() - start)
            turn += 1

    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    return [statistics.median(v) * 1e6 for v in latencies]


def alone_sync(call: Callable[[], Any], concurrency: int, seconds: float) -> tuple[int, float]:
    """`concurrency` threads calling `call` for `seconds`: (calls made, seconds taken)."""
    counts = [0] * concurrency
    gate = threading.Barrier(concurrency + 1)
    stop = [0.0]

    def worker(index: int) -> None:
        clock = time.perf_counter
        gate.wait()
        n = 0
        while clock() < stop[0]:
            call()
            n += 1
        counts[index] = n

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(concurrency)]
    for t in threads:
        t.start()
    start = time.perf_counter()
    stop[0] = start + seconds
    gate.wait()
    for t in threads:
        t.join()
    return sum(counts), time.perf_counter() - start


async def alone_async(call: Callable[[], Awaitable[Any]], concurrency: int, seconds: float) -> tuple[int, float]:
    """`concurrency` tasks awaiting `call` for `seconds`: (calls made, seconds taken)."""
    clock = time.perf_counter
    start = clock()
    stop = start + seconds

    async def worker() -> int:
        n = 0
        while clock() < stop:
            await call()
            n += 1
        return n

    counts = await asyncio.gather(*(worker() for _ in range(concurrency)))
    return sum(counts), clock() - start


def blocks_sync(calls: Sequence[Callable[[], Any]], concurrency: int, seconds: float) -> list[float]:
    """The two `calls` alone, in blocks A B B A of `seconds`: [calls/s of A, of B, CPU us per call of A, of B].

    CPU is this process's (user + system, gRPC's threads included): the client's, not the server's.
    """
    made, spent, cpu = [0, 0], [0.0, 0.0], [0.0, 0.0]
    for index in (0, 1, 1, 0):
        used = time.process_time()
        n, took = alone_sync(calls[index], concurrency, seconds)
        cpu[index] += time.process_time() - used
        made[index] += n
        spent[index] += took
    return [made[0] / spent[0], made[1] / spent[1], cpu[0] / made[0] * 1e6, cpu[1] / made[1] * 1e6]


async def blocks_async(calls: Sequence[Callable[[], Awaitable[Any]]], concurrency: int, seconds: float) -> list[float]:
    """`blocks_sync` on the event loop."""
    made, spent, cpu = [0, 0], [0.0, 0.0], [0.0, 0.0]
    for index in (0, 1, 1, 0):
        used = time.process_time()
        n, took = await alone_async(calls[index], concurrency, seconds)
        cpu[index] += time.process_time() - used
        made[index] += n
        spent[index] += took
    return [made[0] / spent[0], made[1] / spent[1], cpu[0] / made[0] * 1e6, cpu[1] / made[1] * 1e6]


# -- this process: raw stubs vs ortserve_client ---------------------------------------------


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


RAW_OPTIONS = [("grpc.max_send_message_length", MAX), ("grpc.max_receive_message_length", MAX)]


def sdk_sync(target: str, a: Any, b: Any, concurrency: int, seconds: float) -> list[float]:
    import grpc

    channel = grpc.insecure_channel(target, RAW_OPTIONS)
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    inputs = {"INPUT0": a, "INPUT1": b}
    with InferenceClient(target) as client:
        try:
            calls = [lambda: raw_outputs(stub.ModelInfer(raw_request(a, b))), lambda: client.infer(MODEL, inputs)]
            return paired_sync(calls, concurrency, seconds) + blocks_sync(calls, concurrency, seconds / 2)
        finally:
            channel.close()


def sdk_aio(target: str, a: Any, b: Any, concurrency: int, seconds: float) -> list[float]:
    from grpc import aio

    async def main() -> list[float]:
        channel = aio.insecure_channel(target, RAW_OPTIONS)
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        inputs = {"INPUT0": a, "INPUT1": b}

        async def raw() -> Any:
            return raw_outputs(await stub.ModelInfer(raw_request(a, b)))

        async with AsyncInferenceClient(target) as client:
            try:
                calls = [raw, lambda: client.infer(MODEL, inputs)]
                paired = await paired_async(calls, concurrency, seconds)
                return paired + await blocks_async(calls, concurrency, seconds / 2)
            finally:
                await channel.close()

    return asyncio.run(main())


# -- a subprocess: raw stubs vs tritonclient ------------------------------------------------

TRITON_SCRIPT = r"""
from __future__ import annotations  # the shared functions' annotations are never evaluated
import asyncio, json, statistics, sys, threading, time
import grpc
from grpc import aio
import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
from tritonclient.grpc import service_pb2 as pb, service_pb2_grpc as pb_grpc

target, rows, concurrency, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
rng = np.random.default_rng(0)
a = rng.standard_normal((rows, 4)).astype(np.float32)
b = rng.standard_normal((rows, 4)).astype(np.float32)
MODEL = "add_sub"
RAW_OPTIONS = [("grpc.max_send_message_length", 2**31 - 1), ("grpc.max_receive_message_length", 2**31 - 1)]
{shared}

def inputs(module):
    x = module.InferInput("INPUT0", list(a.shape), "FP32"); x.set_data_from_numpy(a)
    y = module.InferInput("INPUT1", list(b.shape), "FP32"); y.set_data_from_numpy(b)
    return [x, y]

stub = pb_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(target, RAW_OPTIONS))
client = grpcclient.InferenceServerClient(target)
def triton():
    result = client.infer(MODEL, inputs(grpcclient))
    return result.as_numpy("OUTPUT0"), result.as_numpy("OUTPUT1")
calls = [lambda: raw_outputs(stub.ModelInfer(raw_request(a, b))), triton]
out = {{"sync": paired_sync(calls, concurrency, seconds) + blocks_sync(calls, concurrency, seconds / 2)}}
client.close()

async def main():
    astub = pb_grpc.GRPCInferenceServiceStub(aio.insecure_channel(target, RAW_OPTIONS))
    aclient = aioclient.InferenceServerClient(target)
    async def raw():
        return raw_outputs(await astub.ModelInfer(raw_request(a, b)))
    async def atriton():
        result = await aclient.infer(MODEL, inputs(aioclient))
        return result.as_numpy("OUTPUT0"), result.as_numpy("OUTPUT1")
    try:
        paired = await paired_async([raw, atriton], concurrency, seconds)
        return paired + await blocks_async([raw, atriton], concurrency, seconds / 2)
    finally:
        await aclient.close()
out["aio"] = asyncio.run(main())
print(json.dumps(out))
"""


def triton_pairs(target: str, rows: int, concurrency: int, seconds: float) -> dict[str, list[float]]:
    shared = "\n".join(
        inspect.getsource(f)
        for f in (
            paired_sync,
            paired_async,
            alone_sync,
            alone_async,
            blocks_sync,
            blocks_async,
            raw_request,
            raw_outputs,
        )
    )
    done = subprocess.run(
        [sys.executable, "-c", TRITON_SCRIPT.format(shared=shared), target, str(rows), str(concurrency), str(seconds)],
        capture_output=True,
        text=True,
        timeout=120 + 4 * seconds,
        env={**os.environ, "PYTHONPATH": ""},
    )
    if done.returncode != 0:
        raise RuntimeError(f"the tritonclient run failed:\n{done.stderr}")
    result: dict[str, list[float]] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


# -- main -----------------------------------------------------------------------------------

Row = tuple[str, str, str]  # (label, mode, key of the raw baseline in the same loop)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=1.0, help="length of one paired loop (default 1)")
    parser.add_argument("--repeats", type=int, default=7, help="loops per pair (default 7)")
    parser.add_argument("--concurrency", default="1,32", help="calls in flight, comma-separated (default 1,32)")
    parser.add_argument("--rows", type=int, default=1, help="rows per request (default 1: per-call overhead)")
    parser.add_argument("--no-triton", action="store_true", help="skip tritonclient")
    parser.add_argument("--json", type=Path, help="also write every repeat's medians to this file")
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    rng = np.random.default_rng(0)
    a = rng.standard_normal((args.rows, 4)).astype(np.float32)
    b = rng.standard_normal((args.rows, 4)).astype(np.float32)
    # samples[c][pair] = list over repeats of [raw median us, client median us, raw calls/s, client calls/s,
    #                                          raw client-CPU us/call, client client-CPU us/call]
    samples: dict[int, dict[str, list[list[float]]]] = {c: {} for c in levels}
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp)
        models.save(models.add_sub(), repo, MODEL)
        with serve_in_subprocess(["--model-repository", str(repo), "--grpc-port", "0", "--http-port", "-1"]) as srv:
            for repeat in range(args.repeats):
                for c in levels:
                    got = samples[c]
                    got.setdefault("ortserve_client sync", []).append(sdk_sync(srv.grpc_target, a, b, c, args.seconds))
                    got.setdefault("ortserve_client aio", []).append(sdk_aio(srv.grpc_target, a, b, c, args.seconds))
                    if not args.no_triton:
                        triton = triton_pairs(srv.grpc_target, args.rows, c, args.seconds)
                        got.setdefault("tritonclient sync", []).append(triton["sync"])
                        got.setdefault("tritonclient aio", []).append(triton["aio"])
                print(f"repeat {repeat + 1}/{args.repeats} done", file=sys.stderr)
    load = os.getloadavg()[0]
    print(
        f"add_sub FP32 [{args.rows},4] x2; {args.seconds:g} s paired loops x {args.repeats} repeats; "
        f"{os.cpu_count()} cores shared by client and server; load average at the end {load:.1f}"
    )
    print("paired: per-call latency in us and ratio client / raw, median [min-max] over repeats of each loop's median")
    print("alone: blocks A B B A; time ratio = raw calls/s / client calls/s; client CPU us per call and its ratio")

    def cell(values: list[float], fmt: str) -> str:
        return f"{statistics.median(values):{fmt}} [{min(values):{fmt}}-{max(values):{fmt}}]"

    for c in levels:
        print(f"\nconcurrency {c}")
        print(
            f"  {'pair':<20} {'raw stubs us':>18} {'client us':>18} {'paired ratio':>20}"
            f" {'alone time ratio':>20} {'raw CPU us':>14} {'client CPU us':>14} {'CPU ratio':>20}"
        )
        for pair, runs in samples[c].items():
            columns = [
                cell([r[0] for r in runs], ".0f"),
                cell([r[1] for r in runs], ".0f"),
                cell([r[1] / r[0] for r in runs], ".3f"),
                cell([r[2] / r[3] for r in runs], ".3f"),
                cell([r[4] for r in runs], ".0f"),
                cell([r[5] for r in runs], ".0f"),
                cell([r[5] / r[4] for r in runs], ".3f"),
            ]
            widths = (18, 18, 20, 20, 14, 14, 20)
            print(f"  {pair:<20} " + " ".join(f"{text:>{width}}" for text, width in zip(columns, widths, strict=True)))
    if args.json:
        args.json.write_text(json.dumps({str(c): samples[c] for c in levels}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
