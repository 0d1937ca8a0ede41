"""W3C trace context: injected when OpenTelemetry is importable and a span is active.

The server's half (its spans joining the caller's trace) arrives with the observability issue;
here the metadata the server receives is checked on a scripted server.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator

import numpy as np
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from ortserve_client import AsyncInferenceClient, InferenceClient, tracing
from tests.client.scripted import scripted_server

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
