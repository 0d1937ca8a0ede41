"""Tracing: configuration from OTEL_*, the request/queue/batch spans, and the gRPC interceptor.

Spans go to an in-memory exporter; the interceptor is driven through its public
`intercept_service` with a stand-in ServicerContext (no server, no ports).
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from opentelemetry.trace import SpanKind, StatusCode

from ortserve.batching import BatchReport
from ortserve.dataplane import InferResponse
from ortserve.errors import InvalidInputError, ModelNotFoundError
from ortserve.observability import RequestSpan, Tracing, current_request, tracing_from_env
from ortserve.observability.logs import JsonFormatter
from ortserve.protocol.servicer import InferenceServicer
from ortserve.protocol.tracing import ObservabilityInterceptor
from ortserve.protocol.wire import WireInferRequest
from ortserve_client.proto import grpc_service_pb2 as pb

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
METHOD = "/inference.GRPCInferenceService/ModelInfer"


@pytest.fixture
def spans() -> tuple[Tracing, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return Tracing(provider), exporter


# -- configuration ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "environ",
    [
        {},
        {"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317"},
        {"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "console"},
        {"OTEL_SERVICE_NAME": "only-a-name"},
    ],
)
def test_tracing_is_off_unless_an_exporter_or_endpoint_is_named(environ: dict[str, str]) -> None:
    assert tracing_from_env(environ) is None


@pytest.mark.parametrize(
    ("environ", "description", "root_ratio"),
    [
        ({"OTEL_TRACES_EXPORTER": "console"}, "ParentBased{root:AlwaysOnSampler", None),
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1", "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
             "OTEL_TRACES_SAMPLER_ARG": "0.01"},
            "ParentBased{root:AlwaysOnSampler",  # roots are sampled at 1 % before a span exists
            0.01,
        ),
        (
            {"OTEL_TRACES_EXPORTER": "console", "OTEL_TRACES_SAMPLER": "traceidratio",
             "OTEL_TRACES_SAMPLER_ARG": "0.5"},
            "TraceIdRatioBased{0.5}",
            None,
        ),
        ({"OTEL_TRACES_EXPORTER": "console", "OTEL_TRACES_SAMPLER": "always_off"}, "AlwaysOffSampler", None),
        ({"OTEL_TRACES_EXPORTER": "console", "OTEL_TRACES_SAMPLER": "bogus"}, "ParentBased{root:AlwaysOnSampler", None),
    ],
)
def test_sampler_and_exporter_follow_the_otel_variables(
    environ: dict[str, str], description: str, root_ratio: float | None
) -> None:
    tracing = tracing_from_env(environ)
    assert tracing is not None
    try:
        assert tracing.root_ratio == root_ratio
        assert tracing.provider.sampler.get_description().startswith(description)
        assert tracing.provider.resource.attributes["service.name"] in ("ortserve", "only-a-name")
    finally:
        tracing.shutdown()


# -- spans of a request and of its batch -------------------------------------------------------


def request_span(tracing: Tracing, request_id: str) -> RequestSpan:
    return tracing.start_request("inference.GRPCInferenceService/ModelInfer", None, "m", "1", request_id)


def test_queue_span_is_a_child_in_epoch_time(spans: tuple[Tracing, InMemorySpanExporter]) -> None:
    tracing, exporter = spans
    r = request_span(tracing, "a")
    r.queued("m", "1", enqueued_ns=1_000_000, started_ns=3_000_000)
    assert r.span is not None
    r.span.end()
    queue, server = exporter.get_finished_spans()
    assert queue.name == "queue" and queue.parent is not None and queue.parent.span_id == server.context.span_id
    assert queue.start_time == tracing.epoch_ns(1_000_000) and queue.end_time == tracing.epoch_ns(3_000_000)
    assert queue.end_time - queue.start_time == 2_000_000
    assert server.kind is SpanKind.SERVER and server.attributes["ortserve.request_id"] == "a"


def test_batch_span_links_every_request_of_its_batch(spans: tuple[Tracing, InMemorySpanExporter]) -> None:
    tracing, exporter = spans
    requests = [request_span(tracing, str(i)) for i in range(3)]
    observe = tracing.batch_observer("m", "1")
    observe(BatchReport("m_1", 5, 10_000, 50_000, contexts=[*requests, None, object()]))
    (batch,) = exporter.get_finished_spans()
    assert batch.name == "batch" and batch.status.status_code is StatusCode.UNSET
    assert [link.context.span_id for link in batch.links] == [r.span.get_span_context().span_id for r in requests]
    assert batch.parent is not None and batch.parent.span_id == requests[0].span.get_span_context().span_id
    assert dict(batch.attributes) == {
        "ortserve.model": "m", "ortserve.version": "1", "ortserve.batch_size": 5, "ortserve.batch_requests": 5,
    }
    assert (batch.start_time, batch.end_time) == (tracing.epoch_ns(10_000), tracing.epoch_ns(50_000))


def test_a_failed_batch_is_an_error(spans: tuple[Tracing, InMemorySpanExporter]) -> None:
    tracing, exporter = spans
    observe = tracing.batch_observer("m", "1")
    observe(BatchReport("m_1", 1, 0, 1, contexts=[request_span(tracing, "x")], error=RuntimeError("boom")))
    (batch,) = exporter.get_finished_spans()
    assert batch.status.status_code is StatusCode.ERROR and batch.status.description == "boom"


def test_batch_span_found_behind_unsampled_requests(spans: tuple[Tracing, InMemorySpanExporter]) -> None:
    tracing, exporter = spans
    unsampled = RequestSpan("m", "1", "u")  # an unsampled root: no span at all
    sampled = request_span(tracing, "s")
    observe = tracing.batch_observer("m", "1")
    observe(BatchReport("m_1", 3, 0, 1, contexts=[unsampled, None, sampled]))
    (batch,) = exporter.get_finished_spans()
    assert sampled.span is not None and batch.parent is not None
    assert batch.parent.span_id == sampled.span.get_span_context().span_id
    assert [link.context.span_id for link in batch.links] == [sampled.span.get_span_context().span_id]
    observe(BatchReport("m_1", 2, 0, 1, contexts=[unsampled, None]))
    assert len(exporter.get_finished_spans()) == 1  # a batch without a span of its own makes none


def test_no_batch_span_when_no_request_of_the_batch_is_sampled() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=ALWAYS_OFF)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing = Tracing(provider)
    r = request_span(tracing, "x")
    r.queued("m", "1", 0, 1)
    tracing.batch_observer("m", "1")(BatchReport("m_1", 1, 0, 1, contexts=[r]))
    assert r.span is not None and not r.span.is_recording()
    assert exporter.get_finished_spans() == ()
    assert "trace_id" not in r.log_fields()


# -- the interceptor ---------------------------------------------------------------------------------


@dataclass
class FakeContext:
    """The part of grpc.aio.ServicerContext the interceptor reads."""

    metadata: tuple[tuple[str, str], ...] = ()
    status: grpc.StatusCode | None = None
    message: str = ""
    seen: list[Any] = field(default_factory=list)
    after: list[Any] = field(default_factory=list)

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self.metadata

    def code(self) -> grpc.StatusCode | None:
        return self.status

    def details(self) -> str:
        return self.message


@dataclass
class Details:
    method: str


@dataclass
class Message:
    model_name: str = "m"
    model_version: str = "1"
    id: str = "req-7"


@dataclass
class Wire:  # like protocol.wire.WireInferRequest: the message inside
    message: Message = field(default_factory=Message)


def run_call(
    interceptor: ObservabilityInterceptor, context: FakeContext, fail_with: grpc.StatusCode | None = None,
    method: str = METHOD, request: Any = None,
) -> Any:
    async def behaviour(request: Any, ctx: FakeContext) -> str:
        ctx.seen.append(current_request())
        if fail_with is not None:
            ctx.status, ctx.message = fail_with, f"failed with {fail_with.name}"
            raise RuntimeError("aborted")
        return "ok"

    async def main() -> Any:
        async def continuation(details: Any) -> Any:
            return grpc.unary_unary_rpc_method_handler(behaviour)

        handler = await interceptor.intercept_service(continuation, Details(method))
        try:
            return await handler.unary_unary(Wire() if request is None else request, context)
        finally:
            context.after.append(current_request())  # in the same task: the call must have reset it

    return asyncio.run(main())


def test_server_span_parent_from_traceparent_and_current_request(spans: tuple[Tracing, InMemorySpanExporter]) -> None:
    tracing, exporter = spans
    context = FakeContext(metadata=(("traceparent", TRACEPARENT), ("x-other", "1")))
    assert run_call(ObservabilityInterceptor(tracing), context) == "ok"
    (span,) = exporter.get_finished_spans()
    assert span.name == "inference.GRPCInferenceService/ModelInfer" and span.kind is SpanKind.SERVER
    assert format(span.context.trace_id, "032x") == "0af7651916cd43dd8448eb211c80319c"
    assert span.parent is not None and format(span.parent.span_id, "016x") == "b7ad6b7169203331"
    assert span.attributes["ortserve.model"] == "m" and span.attributes["ortserve.request_id"] == "req-7"
    assert span.attributes["rpc.grpc.status_code"] == 0 and span.status.status_code is StatusCode.UNSET
    (current,) = context.seen
    assert isinstance(current, RequestSpan) and current.request_id == "req-7" and current.span is not None
    assert context.after == [None]  # reset after the call


SERVER_FAULTS = [grpc.StatusCode.INTERNAL, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                 grpc.StatusCode.UNKNOWN]
CLIENT_FAULTS = [grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.CANCELLED,
                 grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAUTHENTICATED,
                 grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNIMPLEMENTED]


@pytest.mark.parametrize("code", SERVER_FAULTS + CLIENT_FAULTS, ids=lambda c: c.name)
def test_status_error_only_for_server_faults(
    spans: tuple[Tracing, InMemorySpanExporter], code: grpc.StatusCode
) -> None:
    tracing, exporter = spans
    with pytest.raises(RuntimeError):
        run_call(ObservabilityInterceptor(tracing), FakeContext(), fail_with=code)
    (span,) = exporter.get_finished_spans()
    assert span.attributes["rpc.grpc.status_code"] == code.value[0]
    expected = StatusCode.ERROR if code in SERVER_FAULTS else StatusCode.UNSET
    assert span.status.status_code is expected


def test_health_checks_are_not_traced(spans: tuple[Tracing, InMemorySpanExporter]) -> None:
    tracing, exporter = spans
    context = FakeContext()
    run_call(ObservabilityInterceptor(tracing), context, method="/grpc.health.v1.Health/Check")
    assert exporter.get_finished_spans() == () and context.seen == [None]


def test_access_log_samples_one_call_in_n_with_its_fields(caplog: pytest.LogCaptureFixture) -> None:
    interceptor = ObservabilityInterceptor(None, access_log_every=3)
    with caplog.at_level(logging.INFO, logger="ortserve.access"):
        for _ in range(6):
            run_call(interceptor, FakeContext())
        with pytest.raises(RuntimeError):
            for _ in range(3):
                run_call(interceptor, FakeContext(), fail_with=grpc.StatusCode.NOT_FOUND)
    records = [r for r in caplog.records if r.name == "ortserve.access"]
    assert len(records) == 2  # calls 3 and 6; the failing loop stopped at its first call
    record = records[0]
    assert record.getMessage().startswith("ModelInfer OK ")
    assert record.__dict__["grpc_code"] == "OK" and record.__dict__["method"] == METHOD[1:]
    assert record.__dict__["duration_ms"] >= 0


def test_without_tracing_the_current_request_still_names_model_and_id() -> None:
    context = FakeContext()
    run_call(ObservabilityInterceptor(None, access_log_every=1), context)
    (current,) = context.seen
    assert isinstance(current, RequestSpan) and current.span is None
    assert current.log_fields() == {"model": "m", "version": "1", "request_id": "req-7"}


def test_roots_are_sampled_at_the_ratio_without_making_spans_for_the_others() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing = Tracing(provider, root_ratio=0.1)
    requests = [request_span(tracing, str(i)) for i in range(4000)]
    sampled = [r for r in requests if r.span is not None]
    assert 300 < len(sampled) < 500  # 10 % of 4000, give or take
    assert all(r.span is not None and r.span.is_recording() for r in sampled)
    # a request with a caller's context follows the caller's decision, never the ratio
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    parent = TraceContextTextMapPropagator().extract({"traceparent": TRACEPARENT})
    followed = [tracing.start_request("m", parent, "m", "1", "x") for _ in range(50)]
    assert all(r.span is not None and r.span.is_recording() for r in followed)


def test_an_unsampled_call_is_current_with_its_identity_and_leaves_no_span() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    interceptor = ObservabilityInterceptor(Tracing(provider, root_ratio=0.0))
    message = pb.ModelInferRequest(model_name="iris", model_version="", id="r-1")  # as protocol.wire hands it
    context = FakeContext()
    assert run_call(interceptor, context, request=Wire(message)) == "ok"  # type: ignore[arg-type]
    with pytest.raises(RuntimeError):
        run_call(interceptor, context, fail_with=grpc.StatusCode.INTERNAL, request=message)
    assert all(isinstance(c, RequestSpan) and c.span is None for c in context.seen)
    assert [c.log_fields() for c in context.seen] == [{"model": "iris", "version": "", "request_id": "r-1"}] * 2
    assert context.after == [None, None]  # reset after either call
    assert exporter.get_finished_spans() == ()
    # a caller's sampled context is still followed at ratio 0
    run_call(interceptor, FakeContext(metadata=(("traceparent", TRACEPARENT),)), request=message)
    (span,) = exporter.get_finished_spans()
    assert span.attributes["ortserve.model"] == "iris" and span.attributes["ortserve.request_id"] == "r-1"
    assert span.attributes["rpc.grpc.status_code"] == 0


# -- ModelInfer: the hot method calls the interceptor itself (InferenceServicer.observer) -------------


@dataclass
class InferContext(FakeContext):
    """FakeContext plus what ModelInfer and the status edge call on a grpc.aio context."""

    def time_remaining(self) -> None:
        return None

    async def abort(self, code: grpc.StatusCode, details: str = "", trailing_metadata: Any = ()) -> None:
        self.status, self.message = code, details
        raise grpc.aio.AbortError("aborted")


class StubDataPlane:
    """The DataPlane's `infer` as ModelInfer calls it: records the context and the current request."""

    def __init__(self, failure: BaseException | None = None) -> None:
        self.failure = failure
        self.seen: list[tuple[Any, Any]] = []

    async def infer(self, request: Any, context: Any = None) -> Any:
        self.seen.append((context, current_request()))
        if self.failure is not None:
            raise self.failure
        return InferResponse(request.model_name, request.model_version, request.id, [])


def infer_call(
    interceptor: ObservabilityInterceptor, dataplane: StubDataPlane, context: InferContext,
    message: pb.ModelInferRequest | None = None,
) -> Any:
    servicer = interceptor.instrument(InferenceServicer(dataplane))  # type: ignore[arg-type]
    request = WireInferRequest(message or pb.ModelInferRequest(model_name="iris", model_version="2", id="r-9"))
    return asyncio.run(servicer.ModelInfer(request, context))  # type: ignore[arg-type]


def test_model_infer_span_has_the_callers_parent_and_the_request_is_handed_down(
    spans: tuple[Tracing, InMemorySpanExporter],
) -> None:
    tracing, exporter = spans
    dataplane = StubDataPlane()
    context = InferContext(metadata=(("traceparent", TRACEPARENT),))
    answer = infer_call(ObservabilityInterceptor(tracing), dataplane, context)
    assert pb.ModelInferResponse.FromString(answer).id == "r-9"
    (span,) = exporter.get_finished_spans()
    assert span.name == "inference.GRPCInferenceService/ModelInfer" and span.kind is SpanKind.SERVER
    assert span.parent is not None and format(span.parent.span_id, "016x") == "b7ad6b7169203331"
    assert span.attributes["ortserve.model"] == "iris" and span.attributes["ortserve.version"] == "2"
    assert span.attributes["ortserve.request_id"] == "r-9"
    assert span.attributes["rpc.grpc.status_code"] == 0 and span.status.status_code is StatusCode.UNSET
    ((handed, current),) = dataplane.seen
    assert handed is current and isinstance(handed, RequestSpan) and handed.span is not None
    assert handed.span.get_span_context().span_id == span.context.span_id


@pytest.mark.parametrize(
    ("failure", "code", "status"),
    [
        (RuntimeError("boom"), grpc.StatusCode.INTERNAL, StatusCode.ERROR),
        (ModelNotFoundError("no model 'iris'"), grpc.StatusCode.NOT_FOUND, StatusCode.UNSET),
    ],
    ids=["internal", "not-found"],
)
def test_model_infer_failure_sets_the_code_and_the_error_log_carries_the_trace(
    spans: tuple[Tracing, InMemorySpanExporter], failure: BaseException, code: grpc.StatusCode, status: StatusCode,
) -> None:
    tracing, exporter = spans
    context = InferContext()
    lines = FormattedAtEmit()
    protocol_log = logging.getLogger("ortserve.protocol")
    protocol_log.addHandler(lines)
    try:
        with pytest.raises(grpc.aio.AbortError):
            infer_call(ObservabilityInterceptor(tracing), StubDataPlane(failure), context)
    finally:
        protocol_log.removeHandler(lines)
    (span,) = exporter.get_finished_spans()
    assert context.status is code
    assert span.attributes["rpc.grpc.status_code"] == code.value[0] and span.status.status_code is status
    if code is grpc.StatusCode.INTERNAL:  # the status edge logs it while the request is still current
        (entry,) = lines.entries
        assert entry["trace_id"] == format(span.context.trace_id, "032x") and entry["request_id"] == "r-9"
    else:
        assert lines.entries == []


class FormattedAtEmit(logging.Handler):
    """Formats each record as it is emitted (in the call's context, as the server's handler does)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.entries: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.entries.append(json.loads(JsonFormatter().format(record)))


def test_model_infer_unsampled_reads_its_identity_only_when_asked() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    dataplane = StubDataPlane()
    infer_call(ObservabilityInterceptor(Tracing(provider, root_ratio=0.0)), dataplane, InferContext())
    ((handed, current),) = dataplane.seen
    assert handed is current and isinstance(handed, RequestSpan) and handed.span is None
    assert handed.log_fields() == {"model": "iris", "version": "2", "request_id": "r-9"}
    assert exporter.get_finished_spans() == ()


def test_model_infer_access_log_without_tracing(caplog: pytest.LogCaptureFixture) -> None:
    dataplane = StubDataPlane()
    with caplog.at_level(logging.INFO, logger="ortserve.access"):
        infer_call(ObservabilityInterceptor(None, access_log_every=1), dataplane, InferContext())
        with pytest.raises(grpc.aio.AbortError):
            infer_call(
                ObservabilityInterceptor(None, access_log_every=1),
                StubDataPlane(InvalidInputError("input 'x': expected FP32, got FP16")),
                InferContext(),
            )
    first, second = [r for r in caplog.records if r.name == "ortserve.access"]
    assert first.getMessage().startswith("ModelInfer OK ") and first.__dict__["duration_ms"] >= 0
    assert second.__dict__["grpc_code"] == "INVALID_ARGUMENT"
    ((handed, _),) = dataplane.seen
    assert isinstance(handed, RequestSpan) and handed.span is None and handed.request_id == "r-9"

