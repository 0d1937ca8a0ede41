"""A scripted GRPCInferenceService for what a real ortserve cannot show: how many attempts a
call made, what metadata each attempt carried, and TLS/mTLS handshakes.

`scripted_server(codes)` answers ModelInfer (and opens a ModelStreamInfer stream) with the
next status code of `codes` (None: OK, echoing each request's model name and id; a (code,
value) pair also sends `retry-after-ms: value` as trailing metadata) and records every
attempt's metadata and arrival time.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import grpc

from ortserve_client.proto import grpc_service_pb2 as pb
from ortserve_client.proto import grpc_service_pb2_grpc as pb_grpc

Script = grpc.StatusCode | tuple[grpc.StatusCode, str] | None
"""One answer: None (OK), a status code, or (code, retry-after-ms trailing metadata value)."""


@dataclass
class Scripted(pb_grpc.GRPCInferenceServiceServicer):
    codes: list[Script]
    attempts: list[dict[str, str]] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    """time.monotonic() of each attempt's arrival."""

    def _answer(self, context: Any) -> None:
        self.times.append(time.monotonic())
        self.attempts.append({k: v for k, v in context.invocation_metadata()})
        code = self.codes.pop(0) if self.codes else None
        if isinstance(code, tuple):
            code, hint = code
            context.set_trailing_metadata((("retry-after-ms", hint),))
        if code is not None:
            context.abort(code, f"scripted {code.name}")

    def ModelInfer(self, request: pb.ModelInferRequest, context: Any) -> pb.ModelInferResponse:
        self._answer(context)
        return pb.ModelInferResponse(model_name=request.model_name, id=request.id)

    def ModelStreamInfer(
        self, request_iterator: Iterator[pb.ModelInferRequest], context: Any
    ) -> Iterator[pb.ModelStreamInferResponse]:
        self._answer(context)  # before any request is read: a failure here is retryable
        for request in request_iterator:
            yield pb.ModelStreamInferResponse(
                infer_response=pb.ModelInferResponse(model_name=request.model_name, id=request.id)
            )

    def ServerLive(self, request: pb.ServerLiveRequest, context: Any) -> pb.ServerLiveResponse:
        self._answer(context)
        return pb.ServerLiveResponse(live=True)


@dataclass
class ScriptedServer:
    target: str
    servicer: Scripted


@contextmanager
def scripted_server(
    codes: Iterable[Script] = (), credentials: Any = None
) -> Iterator[ScriptedServer]:
    servicer = Scripted(list(codes))
    limit = 2**31 - 1
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=4),
        options=[("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", limit)],
    )
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
    if credentials is None:
        port = server.add_insecure_port("127.0.0.1:0")
    else:
        port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    try:
        yield ScriptedServer(f"127.0.0.1:{port}", servicer)
    finally:
        server.stop(None)
