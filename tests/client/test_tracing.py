"""W3C trace context: injected when OpenTelemetry is importable and a span is active.

The metadata is checked on a scripted server; the whole trip on a real ortserve whose spans go
to an in-memory exporter: its server span is a child of the client's span, in the same trace.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import ortserve.app
from ortserve.observability import Tracing
from ortserve_client import AsyncInferenceClient, InferenceClient, tracing
from tests import models
from tests.client.scripted import scripted_server
from tests.harness import serve_in_thread
from tests.wire import wait_for

X = np.ones((1, 4), np.float32)


@pytest.fixture
def tracer() -> Iterator[tuple[object, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider.get_tracer("test"), exporter
    provider.shutdown()


def traceparent_of(span: object) -> str:
    context = span.get_span_context()  # type: ignore[attr-defined]
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"


def test_traceparent_of_the_active_span_is_sent(tracer: tuple[object, InMemorySpanExporter]) -> None:
    get_tracer, exporter = tracer
    with scripted_server() as server, InferenceClient(server.target, token="t") as client:
        client.infer("m", {"x": X})
        assert "traceparent" not in server.servicer.attempts[-1]  # no span active: nothing added
        with get_tracer.start_as_current_span("caller") as span:  # type: ignore[attr-defined]
            client.infer("m", {"x": X})
            client.is_server_live()
        for seen in server.servicer.attempts[-2:]:
            assert seen["traceparent"] == traceparent_of(span)
            assert seen["authorization"] == "Bearer t"  # alongside the client's own metadata
    (finished,) = exporter.get_finished_spans()
    assert finished.name == "caller"


def test_async_client_sends_traceparent(tracer: tuple[object, InMemorySpanExporter]) -> None:
    get_tracer, _ = tracer

    async def body(target: str) -> str:
        async with AsyncInferenceClient(target) as client:
            with get_tracer.start_as_current_span("async caller") as span:  # type: ignore[attr-defined]
                await client.infer("m", {"x": X})
                return traceparent_of(span)

    with scripted_server() as server:
        expected = asyncio.run(body(server.target))
        assert server.servicer.attempts[-1]["traceparent"] == expected


def test_without_opentelemetry_nothing_is_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry", None)  # makes `import opentelemetry` fail
    monkeypatch.setattr(tracing, "_resolved", False)
    monkeypatch.setattr(tracing, "_inject", None)
    assert tracing.trace_metadata() == ()
    assert tracing._resolved and tracing._inject is None


def test_server_span_joins_the_client_trace(
    tracer: tuple[object, InMemorySpanExporter], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    get_tracer, _ = tracer
    server_exporter = InMemorySpanExporter()
    server_provider = TracerProvider()
    server_provider.add_span_processor(SimpleSpanProcessor(server_exporter))
    # The server takes its Tracing from the OTEL_* environment; hand it one on an in-memory exporter.
    monkeypatch.setattr(ortserve.app, "tracing_from_env", lambda: Tracing(server_provider, owns_provider=False))
    repo = tmp_path / "models"
    models.save(models.identity("FP32", dims=("batch", 4)), repo, "echo")

    def server_spans(name: str) -> list[object]:
        return [s for s in server_exporter.get_finished_spans() if s.name == name]

    infer_span = "inference.GRPCInferenceService/ModelInfer"
    with serve_in_thread(repo, http_port=-1) as srv, InferenceClient(srv.grpc_target) as client:
        with get_tracer.start_as_current_span("caller") as caller:  # type: ignore[attr-defined]
            client.infer("echo", {"x": X}, request_id="traced")
        wait_for(lambda: len(server_spans(infer_span)) == 1)

        async def async_call() -> object:
            async with AsyncInferenceClient(srv.grpc_target) as aclient:
                with get_tracer.start_as_current_span("async caller") as span:  # type: ignore[attr-defined]
                    await aclient.infer("echo", {"x": X}, request_id="traced-async")
                    return span

        async_caller = asyncio.run(async_call())
        wait_for(lambda: len(server_spans(infer_span)) == 2)
        client.infer("echo", {"x": X}, request_id="untraced")  # no client span: the server starts a root
        wait_for(lambda: len(server_spans(infer_span)) == 3)
    by_id = {s.attributes.get("ortserve.request_id", ""): s for s in server_spans(infer_span)}  # type: ignore[attr-defined]
    for request_id, span in (("traced", caller), ("traced-async", async_caller)):
        served = by_id[request_id]
        client_context = span.get_span_context()  # type: ignore[attr-defined]
        assert served.context.trace_id == client_context.trace_id  # type: ignore[attr-defined]
        assert served.parent.span_id == client_context.span_id  # type: ignore[attr-defined]
    assert by_id["untraced"].parent is None  # type: ignore[attr-defined]
    server_provider.shutdown()
