#!/usr/bin/env python3
"""ortserve against in-process ONNX Runtime, on the same machine, in the same run.

    python benchmarks/bench_server.py [--model mlp|iris] [--width 256] [--seconds 3] [--repeats 5]
                                      [--concurrency 1,8,32]

For each concurrency C it measures, `repeats` times, interleaved:
- in-process ONNX Runtime: one session (default options) running batches of C rows back to
  back: the ceiling for C concurrent one-row requests, with no network and no client;
- ortserve: a real `ortserve serve` subprocess, and C concurrent one-row ModelInfer calls from a
  grpc.aio client in this process (the client shares the machine's cores with the server).

It prints rows/s and latency percentiles as median [min-max] over the repeats, and the ratio
server / in-process. On a shared, noisy machine only the medians and ranges mean anything.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ortserve_client.proto import grpc_service_pb2 as pb  # noqa: E402
from ortserve_client.proto import grpc_service_pb2_grpc as pb_grpc  # noqa: E402
from tests.harness import serve_in_subprocess  # noqa: E402


def mlp(width: int = 256, layers: int = 3, classes: int = 10) -> onnx.ModelProto:
    """FP32 [batch, width] -> `layers` x (MatMul + Relu) -> MatMul -> [batch, classes]."""
    rng = np.random.default_rng(0)
    nodes, inits, prev = [], [], "x"
    for i in range(layers):
        w = (rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes += [
            helper.make_node("MatMul", [prev, f"w{i}"], [f"m{i}"]),
            helper.make_node("Relu", [f"m{i}"], [f"h{i}"]),
        ]
        prev = f"h{i}"
    head = (rng.standard_normal((width, classes)) / np.sqrt(width)).astype(np.float32)
    inits.append(numpy_helper.from_array(head, "head"))
    nodes.append(helper.make_node("MatMul", [prev, "head"], ["y"]))
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", classes])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def prepare(model: str, repo: Path, width: int) -> tuple[str, str, int]:
    """Write the model into `repo`; return (model name, input name, features)."""
    if model == "iris":
        from ortserve.demo import DEMO_REPOSITORY

        target = repo / "iris" / "1"
        target.mkdir(parents=True)
        (target / "model.onnx").write_bytes((DEMO_REPOSITORY / "iris/1/model.onnx").read_bytes())
        return "iris", "input", 4
    target = repo / "mlp" / "1"
    target.mkdir(parents=True)
    onnx.save(mlp(width), str(target / "model.onnx"))
    return "mlp", "x", width


def in_process(path: Path, input_name: str, features: int, rows: int, seconds: float) -> dict[str, float]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).standard_normal((rows, features)).astype(np.float32)
    for _ in range(20):
        session.run(None, {input_name: x})
    latencies: list[float] = []
    end = time.perf_counter() + seconds
    while (now := time.perf_counter()) < end:
        session.run(None, {input_name: x})
        latencies.append(time.perf_counter() - now)
    return summarize(latencies, rows * len(latencies) / seconds)


async def against_server(
    target: str, model: str, input_name: str, features: int, concurrency: int, seconds: float
) -> dict[str, float]:
    from grpc import aio

    x = np.random.default_rng(1).standard_normal((1, features)).astype(np.float32)
    request = pb.ModelInferRequest(model_name=model)
    request.inputs.add(name=input_name, datatype="FP32", shape=x.shape)
    request.raw_input_contents.append(x.tobytes())
    async with aio.insecure_channel(target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        for _ in range(50):
            await stub.ModelInfer(request)
        latencies: list[float] = []
        end = time.perf_counter() + seconds

        async def worker() -> None:
            while (now := time.perf_counter()) < end:
                await stub.ModelInfer(request)
                latencies.append(time.perf_counter() - now)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return summarize(latencies, len(latencies) / elapsed)


def summarize(latencies: list[float], rows_per_s: float) -> dict[str, float]:
    ms = np.array(latencies) * 1000
    return {"rows_per_s": rows_per_s, "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99))}


def fmt(values: list[float], digits: int = 0) -> str:
    return f"{statistics.median(values):.{digits}f} [{min(values):.{digits}f}-{max(values):.{digits}f}]"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["mlp", "iris"], default="mlp")
    parser.add_argument("--width", type=int, default=256, help="mlp: features and hidden width (compute per row)")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--json", type=Path, help="also write the raw numbers here")
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    results: dict[str, dict[int, list[dict[str, float]]]] = {
        "ort": {c: [] for c in levels},
        "server": {c: [] for c in levels},
    }
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp)
        name, input_name, features = prepare(args.model, repo, args.width)
        path = repo / name / "1" / "model.onnx"
        server_args = ["--model-repository", str(repo), "--grpc-port", "0", "--http-port", "-1", "--host", "127.0.0.1"]
        with serve_in_subprocess(server_args) as server:
            for _ in range(args.repeats):
                for c in levels:
                    results["ort"][c].append(in_process(path, input_name, features, c, args.seconds))
                    results["server"][c].append(
                        asyncio.run(against_server(server.grpc_target, name, input_name, features, c, args.seconds))
                    )
    shape = "" if args.model == "iris" else f" width {args.width}"
    print(f"model {args.model}{shape}; {args.repeats} repeats of {args.seconds:.0f} s; median [min-max]")
    print(
        f"{'C':>3} | {'in-process rows/s (batch C)':>28} | {'ortserve rows/s':>22} | {'ratio':>17} | "
        f"{'ortserve p50 ms':>19} | {'ortserve p99 ms':>19} | {'in-proc p50 ms':>17}"
    )
    for c in levels:
        o, s = results["ort"][c], results["server"][c]
        ratios = [b["rows_per_s"] / a["rows_per_s"] for a, b in zip(o, s, strict=True)]
        print(
            f"{c:>3} | {fmt([r['rows_per_s'] for r in o]):>28} | {fmt([r['rows_per_s'] for r in s]):>22} | "
            f"{fmt(ratios, 3):>17} | {fmt([r['p50_ms'] for r in s], 2):>19} | {fmt([r['p99_ms'] for r in s], 2):>19} | "
            f"{fmt([r['p50_ms'] for r in o], 3):>17}"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
