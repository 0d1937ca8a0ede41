"""Traces through the real OTLP/gRPC exporter of a running ortserve to a receiver in the test.

The receiver is a small gRPC TraceService built on the opentelemetry-proto stubs (no Collector
or Jaeger installs here). The server is `ortserve serve` in a subprocess, configured only by
OTEL_* variables. The test is the client: it opens a client span per request with the
OpenTelemetry SDK and sends its W3C `traceparent` in the gRPC metadata itself.

Checked: client span -> server span -> queue span for every request, and batch spans that link
every request span of their batch (at least one batch carries several requests: the model has
one instance, a queue delay and slow compute), a child of one of them; attributes; no ERROR
status for a client fault (NOT_FOUND).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.trace.v1 import trace_pb2
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from ortserve_client.proto import grpc_service_pb2 as pb
from ortserve_client.proto import grpc_service_pb2_grpc as pb_grpc
from tests import models
from tests.harness import ServerProcess, serve_in_subprocess

REQUESTS = 8
CONFIG = """
max_batch_size: 8
instance_group [{ count: 1, kind: KIND_CPU }]
dynamic_batching { max_queue_delay_microseconds: 50000 }
"""


@dataclass
class Receiver:
    """Spans the exporter sent, by span id, and the service.name of their resource."""

    spans: dict[bytes, trace_pb2.Span] = field(default_factory=dict)
    services: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def named(self, name: str) -> list[trace_pb2.Span]:
        with self.lock:
            return [s for s in self.spans.values() if s.name == name]


class TraceService(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, receiver: Receiver) -> None:
        self.receiver = receiver

    def Export(self, request: trace_service_pb2.ExportTraceServiceRequest, context: Any) -> Any:
        with self.receiver.lock:
            for resource_spans in request.resource_spans:
                for kv in resource_spans.resource.attributes:
                    if kv.key == "service.name":
                        self.receiver.services.add(kv.value.string_value)
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        self.receiver.spans[span.span_id] = span
        return trace_service_pb2.ExportTraceServiceResponse()


@pytest.fixture(scope="module")
def receiver() -> Iterator[tuple[Receiver, int]]:
    found = Receiver()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(TraceService(found), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield found, port
    server.stop(0)


@pytest.fixture(scope="module")
def server(receiver: tuple[Receiver, int], tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repo = tmp_path_factory.mktemp("models")
    models.save(models.slow_matmul(chain=8, width=512), repo, "slow")
    (repo / "slow" / "config.pbtxt").write_text(CONFIG)
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{receiver[1]}",
        "OTEL_EXPORTER_OTLP_INSECURE": "true",
        "OTEL_SERVICE_NAME": "ortserve-under-test",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    }
    args = ["--model-repository", str(repo), "--host", "127.0.0.1", "--grpc-port", "0", "--http-port", "-1"]
    with serve_in_subprocess(args, env=env) as process:
        yield process


def attributes(span: trace_pb2.Span) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for kv in span.attributes:
        kind = kv.value.WhichOneof("value")
        found[kv.key] = getattr(kv.value, kind) if kind else None
    return found


def wait_for(receiver: Receiver, name: str, count: int, timeout_s: float = 30) -> list[trace_pb2.Span]:
    deadline = time.monotonic() + timeout_s
    while len(spans := receiver.named(name)) < count:
        assert time.monotonic() < deadline, f"{len(spans)} {name!r} spans arrived, expected {count}"
        time.sleep(0.1)
    return spans


def test_client_server_queue_tree_and_batch_spans_linking_every_request(
    server: ServerProcess, receiver: tuple[Receiver, int]
) -> None:
    found, _ = receiver
    tracer = TracerProvider().get_tracer("test-client")
    propagator = TraceContextTextMapPropagator()
    clients: dict[str, tuple[bytes, bytes]] = {}  # request id -> (trace id, client span id)
    x = np.ones((1, 512), dtype=np.float32)

    def call(stub: pb_grpc.GRPCInferenceServiceStub, request_id: str) -> None:
        with tracer.start_as_current_span("client ModelInfer") as span:
            ctx = span.get_span_context()
            clients[request_id] = (ctx.trace_id.to_bytes(16, "big"), ctx.span_id.to_bytes(8, "big"))
            carrier: dict[str, str] = {}
            propagator.inject(carrier)
            request = pb.ModelInferRequest(model_name="slow", id=request_id)
            request.inputs.add(name="x", datatype="FP32", shape=[1, 512])
            request.raw_input_contents.append(x.tobytes())
            stub.ModelInfer(request, metadata=tuple(carrier.items()), timeout=30)

    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        call(stub, "warm")
        with futures.ThreadPoolExecutor(REQUESTS) as pool:  # concurrent: they share batches
            list(pool.map(lambda i: call(stub, f"r{i}"), range(REQUESTS)))
        with pytest.raises(grpc.RpcError) as missing:
            stub.ModelInfer(pb.ModelInferRequest(model_name="nope", id="m"))  # no traceparent
        assert missing.value.code() is grpc.StatusCode.NOT_FOUND

    method = "inference.GRPCInferenceService/ModelInfer"
    server_spans = wait_for(found, method, REQUESTS + 2)
    by_request = {attributes(s).get("ortserve.request_id"): s for s in server_spans}
    queue_spans = {s.parent_span_id: s for s in wait_for(found, "queue", REQUESTS + 1)}
    batch_spans = wait_for(found, "batch", 2)
    assert found.services == {"ortserve-under-test"}

    # client span -> server span -> queue span, for every request
    for request_id, (trace_id, client_span_id) in clients.items():
        s = by_request[request_id]
        assert s.trace_id == trace_id and s.parent_span_id == client_span_id, request_id
        assert s.kind == trace_pb2.Span.SPAN_KIND_SERVER
        assert attributes(s)["ortserve.model"] == "slow"
        assert s.status.code == trace_pb2.Status.STATUS_CODE_UNSET
        q = queue_spans[s.span_id]
        assert q.trace_id == trace_id
        assert s.start_time_unix_nano <= q.start_time_unix_nano <= q.end_time_unix_nano <= s.end_time_unix_nano
        assert attributes(q) == {"ortserve.model": "slow", "ortserve.version": "1"}

    # every request span is linked by exactly one batch span; each batch span is a child of one of
    # the requests it links, starts when their queue waits end, and counts their rows
    request_span_ids = {by_request[r].span_id for r in clients}
    linked: list[bytes] = []
    for b in batch_spans:
        links = [link.span_id for link in b.links]
        linked += links
        parent_request = next(s for s in server_spans if s.span_id == b.parent_span_id)
        assert b.trace_id == parent_request.trace_id and b.parent_span_id in links
        a = attributes(b)
        assert a["ortserve.batch_size"] == len(links) == a["ortserve.batch_requests"]  # one row each
        for span_id in links:
            assert queue_spans[span_id].end_time_unix_nano == b.start_time_unix_nano
    assert sorted(linked) == sorted(request_span_ids)
    assert max(len(b.links) for b in batch_spans) >= 2, "no batch carried several requests"

    # a client fault is not a server error
    (nope,) = [s for s in server_spans if attributes(s).get("ortserve.model") == "nope"]
    assert attributes(nope)["rpc.grpc.status_code"] == grpc.StatusCode.NOT_FOUND.value[0]
    assert nope.status.code == trace_pb2.Status.STATUS_CODE_UNSET
    assert nope.parent_span_id == b""  # no traceparent: a root span


def test_without_otel_variables_the_server_exports_nothing(tmp_path: Path, receiver: tuple[Receiver, int]) -> None:
    found, _ = receiver
    before = len(found.spans)
    models.save(models.add_sub(), tmp_path, "add_sub")
    args = ["--model-repository", str(tmp_path), "--host", "127.0.0.1", "--grpc-port", "0", "--http-port", "-1"]
    with serve_in_subprocess(args) as process, grpc.insecure_channel(process.grpc_target) as channel:
        pb_grpc.GRPCInferenceServiceStub(channel).ServerLive(pb.ServerLiveRequest())
        assert "tracing on" not in process.output()
    assert len(found.spans) == before
