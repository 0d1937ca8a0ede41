#!/usr/bin/env python3
"""Fuzz a running ortserve with random and mutated ModelInferRequest messages; check it survives.

    python scripts/fuzz_infer.py                   # 100,000 messages against a server it starts
    python scripts/fuzz_infer.py --count 5000      # CI's short run (tests/security/test_fuzz.py)
    python scripts/fuzz_infer.py --target host:port --pid PID   # a server started elsewhere

Messages, as raw bytes on the ModelInfer method (so that broken wire format reaches the server):
valid requests to each model of a small repository; structurally malformed ones (unknown or
wrong datatypes, negative, zero, huge, overflowing or over-deep shapes, byte counts that disagree,
duplicate and missing inputs, bad BYTES length prefixes, typed contents in the wrong field,
NaN/Inf for a model that refuses them, oversized tensors); byte-level mutations of valid
requests (flips, truncation, insertion, duplication); and random bytes.

Passes (exit 0) when the server is alive at the end, answered every message with a proper status
and its RSS grew by at most --max-rss-growth-mib between the warm-up and the end. A proper status:
OK, INVALID_ARGUMENT, NOT_FOUND, RESOURCE_EXHAUSTED, and UNKNOWN only where grpc itself could not
parse the protobuf. Anything else (INTERNAL, a timeout, a dropped connection) is a finding.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import struct
import sys
import time
from collections import Counter
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import grpc
import numpy as np
from grpc import aio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ortserve_client.proto import grpc_service_pb2 as pb  # noqa: E402
from tests import models  # noqa: E402
from tests.harness import serve_in_subprocess  # noqa: E402

METHOD = "/inference.GRPCInferenceService/ModelInfer"
PROPER = {"OK", "INVALID_ARGUMENT", "NOT_FOUND", "RESOURCE_EXHAUSTED"}
PARSE_FAILURE = "Error parsing message"  # grpc's own answer (UNKNOWN) to bytes that are no protobuf
DATATYPES = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
             "FP16", "FP32", "FP64", "BYTES"]
ITEMSIZE = {"BOOL": 1, "UINT8": 1, "UINT16": 2, "UINT32": 4, "UINT64": 8, "INT8": 1, "INT16": 2,
            "INT32": 4, "INT64": 8, "FP16": 2, "FP32": 4, "FP64": 8}
FIELDS = ["bool_contents", "int_contents", "int64_contents", "uint_contents", "uint64_contents",
          "fp32_contents", "fp64_contents", "bytes_contents"]
MAX_TENSOR_ELEMENTS = 4096


def build_repository(repo: Path) -> None:
    models.save(models.add_sub(), repo, "add_sub")
    models.save(models.add_sub(), repo, "strict")
    (repo / "strict" / "config.pbtxt").write_text(
        'parameters { key: "reject_nonfinite" value: { string_value: "true" } }\n'
    )
    models.save(models.identity("BYTES"), repo, "text")
    models.save(models.identity("INT8", dims=("batch", 3)), repo, "int8")


# -- message generators -----------------------------------------------------------------------


def valid(rng: random.Random) -> pb.ModelInferRequest:
    model = rng.choice(["add_sub", "strict", "text", "int8"])
    rows = rng.randint(1, 8)
    request = pb.ModelInferRequest(model_name=model, id=f"v{rng.randrange(10**6)}")
    if model in ("add_sub", "strict"):
        for name in ("INPUT0", "INPUT1"):
            a = np.array([rng.uniform(-5, 5) for _ in range(rows * 4)], np.float32).reshape(rows, 4)
            request.inputs.add(name=name, datatype="FP32", shape=a.shape)
            request.raw_input_contents.append(a.tobytes())
    elif model == "text":
        items = [rng.choice(["", "a", "héllo", "日本"]).encode() for _ in range(rows * 4)]
        request.inputs.add(name="x", datatype="BYTES", shape=[rows, 4])
        request.raw_input_contents.append(b"".join(struct.pack("<I", len(b)) + b for b in items))
    else:
        tensor = request.inputs.add(name="x", datatype="INT8", shape=[rows, 3])
        tensor.contents.int_contents.extend(rng.randint(-128, 127) for _ in range(rows * 3))
    return request


def _dim(rng: random.Random) -> int:
    return rng.choice([0, 1, 2, 3, 4, -1, -2**40, 2**31, 2**40, 2**62, 2**63 - 1, rng.randint(0, 50)])


def malformed(rng: random.Random) -> pb.ModelInferRequest:
    request = valid(rng)
    tensor = request.inputs[rng.randrange(len(request.inputs))]
    kind = rng.randrange(14)
    if kind == 0:
        tensor.datatype = rng.choice(["FP8", "fp32", "", "TYPE_FP32", "BF16", "x" * 300, *DATATYPES])
    elif kind == 1:
        del tensor.shape[:]
        tensor.shape.extend(_dim(rng) for _ in range(rng.randint(0, 6)))
    elif kind == 2:
        del tensor.shape[:]
        tensor.shape.extend([1] * rng.choice([33, 64, 65, 200]))
    elif kind == 3:
        del tensor.shape[:]
        tensor.shape.extend([0, rng.choice([2**62, 2**63 - 1]), rng.choice([2**62, 2**63 - 1])])
    elif kind == 4 and request.raw_input_contents:
        index = rng.randrange(len(request.raw_input_contents))
        data = request.raw_input_contents[index]
        request.raw_input_contents[index] = data[: rng.randrange(len(data) + 1)] + bytes(rng.randrange(3))
    elif kind == 5:
        request.inputs.add().CopyFrom(tensor)  # duplicate input
        if request.raw_input_contents:
            request.raw_input_contents.append(request.raw_input_contents[0])
    elif kind == 6:
        del request.inputs[-1]  # missing input (and maybe a raw entry too many)
    elif kind == 7:
        request.model_name = rng.choice(["", "nope", "add_sub/1", "\x00", "a" * 1000])
        request.model_version = rng.choice(["", "0", "-1", "99", "x"])
    elif kind == 8:
        # BYTES with lying length prefixes.
        request.model_name = "text"
        del request.inputs[:]
        del request.raw_input_contents[:]
        request.inputs.add(name="x", datatype="BYTES", shape=[1, rng.randint(1, 4)])
        request.raw_input_contents.append(
            struct.pack("<I", rng.choice([5, 2**31, 2**32 - 1])) + b"abc" + bytes(rng.randrange(8))
        )
    elif kind == 9:
        tensor.contents.Clear()
        field = rng.choice(FIELDS)
        value: Any = b"x" if field == "bytes_contents" else True if field == "bool_contents" else 1
        getattr(tensor.contents, field).extend([] if rng.random() < 0.3 else [value] * rng.randint(1, 20))
    elif kind == 10:
        # NaN / Inf, for a model that refuses them and one that does not.
        request.model_name = rng.choice(["strict", "add_sub"])
        del request.inputs[:]
        del request.raw_input_contents[:]
        for name in ("INPUT0", "INPUT1"):
            a = np.ones((2, 4), np.float32)
            a[rng.randrange(2), rng.randrange(4)] = rng.choice([np.nan, np.inf, -np.inf])
            request.inputs.add(name=name, datatype="FP32", shape=a.shape)
            request.raw_input_contents.append(a.tobytes())
    elif kind == 11:
        # Well formed but over the server's element limit.
        count = MAX_TENSOR_ELEMENTS + rng.randint(1, 512)
        request.model_name = "text"
        del request.inputs[:]
        del request.raw_input_contents[:]
        request.inputs.add(name="x", datatype="BYTES", shape=[count, 1])
        request.raw_input_contents.append(b"\0\0\0\0" * count)
    elif kind == 12:
        request.parameters["timeout"].int64_param = rng.choice([-1, 0, 1, 2**62])
        request.parameters["priority"].string_param = "high"
        request.outputs.add(name=rng.choice(["OUTPUT0", "nope", ""]))
    else:
        tensor.datatype = rng.choice(DATATYPES)  # a different datatype for the same bytes
    return request


def mutated(rng: random.Random) -> bytes:
    data = bytearray(valid(rng).SerializeToString())
    for _ in range(rng.randint(1, 8)):
        op = rng.randrange(5)
        if not data:
            break
        pos = rng.randrange(len(data))
        if op == 0:
            data[pos] = rng.randrange(256)
        elif op == 1:
            del data[pos:]
        elif op == 2:
            data[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        elif op == 3:
            chunk = data[pos : pos + rng.randint(1, 32)]
            data[pos:pos] = chunk
        else:
            data[pos] ^= 1 << rng.randrange(8)
    return bytes(data)


def message(rng: random.Random) -> tuple[str, bytes]:
    roll = rng.random()
    if roll < 0.2:
        return "valid", valid(rng).SerializeToString()
    if roll < 0.6:
        return "malformed", malformed(rng).SerializeToString()
    if roll < 0.95:
        return "mutated", mutated(rng)
    return "random", bytes(rng.randrange(256) for _ in range(rng.randint(0, 200)))


# -- the run ----------------------------------------------------------------------------------


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


async def fire(target: str, count: int, concurrency: int, seed: int, findings: list[dict[str, Any]]) -> Counter[str]:
    tally: Counter[str] = Counter()
    rng = random.Random(seed)
    async with aio.insecure_channel(target) as channel:
        call: Callable[..., Any] = channel.unary_unary(METHOD)  # bytes in, bytes out
        queue: asyncio.Queue[tuple[str, bytes] | None] = asyncio.Queue(maxsize=concurrency * 4)

        async def produce() -> None:
            for _ in range(count):
                await queue.put(message(rng))
            for _ in range(concurrency):
                await queue.put(None)

        async def consume() -> None:
            while (item := await queue.get()) is not None:
                kind, data = item
                try:
                    await call(data, timeout=30)
                    code, details = "OK", ""
                except aio.AioRpcError as exc:
                    code, details = exc.code().name, exc.details() or ""
                proper = code in PROPER or (code == "UNKNOWN" and PARSE_FAILURE in details)
                tally[f"{kind}:{code}"] += 1
                if not proper:
                    tally["IMPROPER"] += 1
                    if len(findings) < 20:
                        findings.append({"kind": kind, "code": code, "details": details[:300], "hex": data[:200].hex()})

        await asyncio.gather(produce(), *(consume() for _ in range(concurrency)))
    return tally


def live(target: str) -> bool:
    with grpc.insecure_channel(target) as channel:
        stub = channel.unary_unary(
            "/inference.GRPCInferenceService/ServerLive",
            request_serializer=pb.ServerLiveRequest.SerializeToString,
            response_deserializer=pb.ServerLiveResponse.FromString,
        )
        try:
            return bool(stub(pb.ServerLiveRequest(), timeout=10).live)
        except grpc.RpcError:
            return False


def run(target: str, pid: int, args: argparse.Namespace) -> dict[str, Any]:
    findings: list[dict[str, Any]] = []
    warmup = min(2000, max(args.count // 10, 100))
    asyncio.run(fire(target, warmup, args.concurrency, args.seed + 1, findings))
    rss_before = rss_mib(pid)
    started = time.monotonic()
    tally = asyncio.run(fire(target, args.count, args.concurrency, args.seed, findings))
    elapsed = time.monotonic() - started
    rss_after = rss_mib(pid)
    alive = live(target)
    improper = tally.pop("IMPROPER", 0)
    report = {
        "messages": args.count,
        "seconds": round(elapsed, 1),
        "per_second": round(args.count / elapsed),
        "rss_mib_after_warmup": round(rss_before, 1),
        "rss_mib_after_run": round(rss_after, 1),
        "rss_growth_mib": round(rss_after - rss_before, 1),
        "alive": alive,
        "improper": improper,
        "codes": dict(sorted(tally.items())),
        "findings": findings,
    }
    report["passed"] = alive and improper == 0 and report["rss_growth_mib"] <= args.max_rss_growth_mib
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=100_000, help="messages to send (default 100000)")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seed", type=int, default=6)
    parser.add_argument("--max-rss-growth-mib", type=float, default=64.0)
    parser.add_argument("--target", help="host:port of a running server (default: start one)")
    parser.add_argument("--pid", type=int, help="its process id, for RSS (with --target)")
    args = parser.parse_args(argv)
    with ExitStack() as stack:
        if args.target:
            if not args.pid:
                parser.error("--target needs --pid")
            target, pid = args.target, args.pid
        else:
            repo = Path(stack.enter_context(TemporaryDirectory())) / "models"
            repo.mkdir()
            build_repository(repo)
            server = stack.enter_context(serve_in_subprocess([
                "--model-repository", str(repo), "--grpc-port", "0", "--http-port", "-1",
                "--max-tensor-elements", str(MAX_TENSOR_ELEMENTS), "--event-loop", "uvloop",
            ]))
            target, pid = server.grpc_target, server.process.pid
        report = run(target, pid, args)
        if not args.target:
            errors = [line for line in server.lines if " ERROR " in line or "Traceback" in line]
            report["server_error_lines"] = errors[:10]
            report["passed"] = report["passed"] and not errors
    print(json.dumps(report, indent=2))
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
