"""A closed-loop load generator that survives rejected requests, for the latency-target mode.

    python -m benchmarks.pyload --target HOST:PORT --model NAME --concurrency C --seconds S [--warmup-s W]

perf_analyzer stops at the first failed request ("Thread [0] had error"), and a server in
latency-target mode is expected to refuse, at once and with a clear status, what cannot meet
the target. This generator, in its own process (grpc.aio on uvloop), keeps `C` one-row
ModelInfer calls in flight; a refused call is counted by status code, and the loop sends the
next request after the refusal's `retry-after-ms` hint (trailing metadata) when it carries
one, as a client that backs off would, else at once. `--ignore-retry-after` always resends at
once (the worst case for the server: no client backoff). After `--warmup-s` it records for `--seconds`:
answered/s (goodput), refused/s by code, and latency percentiles of the answered calls.
It prints one JSON object. Every row of the latency-target table is measured with it, so the
rows compare with each other; its numbers do not mix with perf_analyzer's table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import Counter

import grpc
import numpy as np
from grpc import aio

from ortserve_client.proto import grpc_service_pb2 as pb
from ortserve_client.proto import grpc_service_pb2_grpc as pb_grpc


async def run(
    target: str, model: str, concurrency: int, seconds: float, warmup_s: float, follow_hints: bool = True
) -> dict[str, object]:
    async with aio.insecure_channel(target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        metadata = await stub.ModelMetadata(pb.ModelMetadataRequest(name=model))
        request = pb.ModelInferRequest(model_name=model)
        rng = np.random.default_rng(1)
        for tensor in metadata.inputs:
            dims = [1, *tensor.shape[1:]]
            request.inputs.add(name=tensor.name, datatype=tensor.datatype, shape=dims)
            request.raw_input_contents.append(rng.standard_normal(dims).astype(np.float32).tobytes())
        start = time.perf_counter()
        measure_from = start + warmup_s
        measure_to = measure_from + seconds
        latencies: list[float] = []
        refused: Counter[str] = Counter()

        async def worker() -> None:
            while (sent := time.perf_counter()) < measure_to:
                hint = None
                try:
                    await stub.ModelInfer(request)
                    ok, code = True, ""
                except aio.AioRpcError as err:
                    ok, code = False, err.code().name
                    hint = dict(err.trailing_metadata() or ()).get("retry-after-ms") if follow_hints else None
                done = time.perf_counter()
                if measure_from <= sent and done <= measure_to:
                    if ok:
                        latencies.append(done - sent)
                    else:
                        refused[code] += 1
                if hint is not None:
                    await asyncio.sleep(float(hint) / 1000)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    ms = np.array(latencies) * 1000 if latencies else np.zeros(1)
    return {
        "infer_per_s": len(latencies) / seconds,
        "refused_per_s": {code: n / seconds for code, n in refused.items()},
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "answered": len(latencies),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--concurrency", type=int, required=True)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--warmup-s", type=float, default=1.0)
    parser.add_argument("--ignore-retry-after", action="store_true", help="resend a refused call at once")
    args = parser.parse_args(argv)
    try:
        import uvloop
    except ImportError:
        factory = None
    else:
        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        try:
            result = runner.run(
                run(args.target, args.model, args.concurrency, args.seconds, args.warmup_s, not args.ignore_retry_after)
            )
        except grpc.RpcError as err:
            result = {"error": f"{err.code().name}: {err.details()}"}
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
