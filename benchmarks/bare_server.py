"""The two reference servers of the suite: the RPC ceiling and the no-batching baseline.

    python -m benchmarks.bare_server --repo DIR --mode echo|ort [--port 0] [--threads 2]

Both speak the same protocol as ortserve (inference.GRPCInferenceService, the generated stubs
of ortserve_client) on grpc.aio with uvloop, as ortserve does, and answer the calls a load
generator makes before it starts: ServerMetadata, ModelMetadata, ModelConfig (built from each
model's config.pbtxt, which the suite writes complete), plus ServerLive/ServerReady.
They count requests and answer ModelStatistics with that count (inference_count and
execution_count), so that the suite can divide their CPU time by it; they do not advertise the
"statistics" extension, so perf_analyzer does not call it.

- `echo` (the RPC ceiling of one Python process): ModelInfer looks the answer up in a cache of
  precomputed responses (one per model and row count) and returns a copy carrying the
  request's id. The request is still parsed by the stub's deserializer and the response
  serialized: that is what any grpc.aio servicer pays, and all it pays.
- `ort` (the baseline): what a minimal server does. Decode raw inputs with np.frombuffer, run
  the ONNX Runtime session on one worker thread (loop.run_in_executor), encode the outputs with
  tobytes(). No batching, no validation, no statistics.

The session is built by `benchmarks.inprocess.make_session`, the one place where the suite's
thread budget is set, so the baseline, the compute ceiling and ortserve run ONNX Runtime alike.
The bound port is printed as "bare-server listening PORT" on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from google.protobuf import text_format
from grpc import aio

from benchmarks.inprocess import make_session
from ortserve_client.proto import grpc_service_pb2 as pb
from ortserve_client.proto import grpc_service_pb2_grpc as pb_grpc
from ortserve_client.proto import model_config_pb2 as mc

MAX_MESSAGE = 2**31 - 1

# model_config DataType -> (KServe datatype, numpy dtype); the suite's models use these only.
DTYPES: dict[int, tuple[str, type[np.generic]]] = {
    mc.TYPE_FP32: ("FP32", np.float32),
    mc.TYPE_INT64: ("INT64", np.int64),
}


class Model:
    """One model of the repository as the bare servers see it: config, metadata, session."""

    def __init__(self, directory: Path, threads: int, with_session: bool) -> None:
        self.config = text_format.Parse((directory / "config.pbtxt").read_text(), mc.ModelConfig())
        self.name = self.config.name
        make = pb.ModelMetadataResponse.TensorMetadata
        batch = [-1] if self.config.max_batch_size else []
        self.metadata = pb.ModelMetadataResponse(
            name=self.name,
            versions=["1"],
            platform="onnxruntime_onnx",
            inputs=[
                make(name=t.name, datatype=DTYPES[t.data_type][0], shape=batch + list(t.dims))
                for t in self.config.input
            ],
            outputs=[
                make(name=t.name, datatype=DTYPES[t.data_type][0], shape=batch + list(t.dims))
                for t in self.config.output
            ],
        )
        self.inputs = [(t.name, DTYPES[t.data_type][1], tuple(t.dims)) for t in self.config.input]
        self.outputs = [(t.name, DTYPES[t.data_type][0]) for t in self.config.output]
        self.output_names = [name for name, _ in self.outputs]
        self.session = make_session(directory / "1" / "model.onnx", threads) if with_session else None
        self._echo: dict[int, pb.ModelInferResponse] = {}
        self.requests = 0

    def response(self, values: list[np.ndarray], request_id: str = "") -> pb.ModelInferResponse:
        response = pb.ModelInferResponse(model_name=self.name, model_version="1", id=request_id)
        for (name, datatype), value in zip(self.outputs, values, strict=True):
            response.outputs.add(name=name, datatype=datatype, shape=value.shape)
            response.raw_output_contents.append(value.tobytes())
        return response

    def echo(self, rows: int) -> pb.ModelInferResponse:
        """The precomputed answer for `rows` rows (zeros of the output shapes, built once)."""
        cached = self._echo.get(rows)
        if cached is None:
            values = []
            for t in self.config.output:
                values.append(np.zeros((rows, *t.dims), DTYPES[t.data_type][1]))
            cached = self._echo[rows] = self.response(values)
        return cached


class BareServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, models: dict[str, Model], mode: str) -> None:
        self._models = models
        self._mode = mode
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ort")
        self._infer: Callable[[Any, Any], Any] = self._echo if mode == "echo" else self._run

    def _model(self, name: str) -> Model:
        model = self._models.get(name)
        if model is None:
            raise KeyError(name)
        return model

    async def ServerLive(self, request: Any, context: aio.ServicerContext) -> Any:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: aio.ServicerContext) -> Any:
        return pb.ServerReadyResponse(ready=True)

    async def ServerMetadata(self, request: Any, context: aio.ServicerContext) -> Any:
        return pb.ServerMetadataResponse(name=f"bare-{self._mode}", version="0", extensions=[])

    async def ModelMetadata(self, request: Any, context: aio.ServicerContext) -> Any:
        if request.name not in self._models:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown model {request.name!r}")
        return self._models[request.name].metadata

    async def ModelConfig(self, request: Any, context: aio.ServicerContext) -> Any:
        if request.name not in self._models:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown model {request.name!r}")
        return pb.ModelConfigResponse(config=self._models[request.name].config)

    async def ModelStatistics(self, request: Any, context: aio.ServicerContext) -> Any:
        if request.name not in self._models:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown model {request.name!r}")
        count = self._models[request.name].requests
        stats = pb.ModelStatistics(name=request.name, version="1", inference_count=count, execution_count=count)
        return pb.ModelStatisticsResponse(model_stats=[stats])

    async def ModelInfer(self, request: Any, context: aio.ServicerContext) -> Any:
        return await self._infer(request, context)

    async def _echo(self, request: Any, context: aio.ServicerContext) -> Any:
        # The id must come back: perf_analyzer's async mode matches responses to requests by it.
        model = self._models[request.model_name]
        model.requests += 1
        response = pb.ModelInferResponse(id=request.id)
        response.MergeFrom(model.echo(request.inputs[0].shape[0]))
        return response

    async def _run(self, request: Any, context: aio.ServicerContext) -> Any:
        model = self._models[request.model_name]
        model.requests += 1
        feeds = {
            name: np.frombuffer(raw, dtype).reshape(tuple(tensor.shape))
            for (name, dtype, _), tensor, raw in zip(
                model.inputs, request.inputs, request.raw_input_contents, strict=True
            )
        }
        assert model.session is not None
        values = await asyncio.get_running_loop().run_in_executor(
            self._executor, model.session.run, model.output_names, feeds
        )
        return model.response(values, request.id)


async def serve(repo: Path, mode: str, port: int, threads: int) -> None:
    models = {
        d.name: Model(d, threads, with_session=mode == "ort")
        for d in sorted(repo.iterdir())
        if (d / "config.pbtxt").is_file()
    }
    server = aio.server(
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE),
            ("grpc.max_send_message_length", MAX_MESSAGE),
            ("grpc.so_reuseport", 0),
        ]
    )
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(BareServicer(models, mode), server)
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print(f"bare-server listening {bound}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await server.stop(1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, required=True, help="model repository written by the suite")
    parser.add_argument("--mode", choices=["echo", "ort"], required=True)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads (mode ort)")
    args = parser.parse_args(argv)
    try:
        import uvloop
    except ImportError:  # as ortserve's "auto": uvloop when installed
        factory = None
    else:
        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(serve(args.repo, args.mode, args.port, args.threads))
    return 0


if __name__ == "__main__":
    sys.exit(main())
