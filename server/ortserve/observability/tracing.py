"""OpenTelemetry tracing: a span per RPC, its queue wait, and the batch execution that served it.

The trace of one request, in steps:

1. The protocol edge (protocol/tracing.py) starts the server span, its parent taken from the
   caller's W3C `traceparent` in the gRPC metadata, and makes a `RequestSpan` current
   (`current_request()`); the servicer hands it down as the request's `context`, which the
   batcher keeps with the request and returns in each BatchReport.
2. When the request's batch has run, `RequestSpan.queued` adds the queue-wait span, a child
   of the server span from enqueue to batch start.
3. The model's batch observer (`Tracing.batch_observer`) adds one batch-execution span per
   batch, a child of the first sampled request span of the batch, linking to the span of
   every request it carried.

Spans carry `ortserve.model`, `ortserve.version`, `ortserve.request_id` and, on the batch
span, `ortserve.batch_size` (rows) and `ortserve.batch_requests`. The batcher times with the
monotonic clock; one offset taken at start turns those times into the epoch times spans need.

Configured by the standard OTEL_* variables (`tracing_from_env`): on when OTEL_TRACES_EXPORTER
names an exporter (`otlp`, `console`) or an OTLP endpoint variable is set, off when
OTEL_SDK_DISABLED=true or OTEL_TRACES_EXPORTER=none. OTEL_TRACES_SAMPLER(_ARG), OTEL_SERVICE_NAME,
OTEL_RESOURCE_ATTRIBUTES, OTEL_EXPORTER_OTLP_* and OTEL_BSP_* apply as the specification says.
When tracing is off nothing here is built: no interceptor, no observer, `current_request()`
returns None from an unset context variable.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from contextvars import ContextVar
from random import random
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    DEFAULT_ON,
    ParentBased,
    Sampler,
    TraceIdRatioBased,
)
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode

from ortserve import __version__

log = logging.getLogger("ortserve.observability")

TRACER_NAME = "ortserve"
MODEL, VERSION, REQUEST_ID = "ortserve.model", "ortserve.version", "ortserve.request_id"
BATCH_SIZE, BATCH_REQUESTS = "ortserve.batch_size", "ortserve.batch_requests"

_request: ContextVar[RequestSpan | None] = ContextVar("ortserve_request_span", default=None)


def current_request() -> RequestSpan | None:
    """The RequestSpan of the RPC being served, or None (tracing off, or outside an RPC)."""
    return _request.get()


class Tracing:
    """A tracer over one TracerProvider, and the clock offset for the batcher's times."""

    def __init__(
        self, provider: TracerProvider, *, owns_provider: bool = True, root_ratio: float | None = None
    ) -> None:
        """`root_ratio`: sample this share of requests that arrive without a parent here, before
        any span is made (the provider's sampler then samples every root it is asked about)."""
        self.provider = provider
        self.tracer = provider.get_tracer(TRACER_NAME, __version__)
        self.root_ratio = root_ratio
        self._owns_provider = owns_provider
        # Taken once: the batcher's monotonic times become epoch times by one addition.
        self._offset_ns = time.time_ns() - time.monotonic_ns()

    def epoch_ns(self, monotonic_ns: int) -> int:
        return monotonic_ns + self._offset_ns

    def start_request(
        self, name: str, parent: Any, model: str = "", version: str = "", request_id: str = "", *,
        message: Any = None,
    ) -> RequestSpan:
        """Start a server span (parent: an OpenTelemetry Context, e.g. from the caller's metadata).

        The identity is (model, version, request_id), or read from `message` (anything with
        `model_name`, `model_version` and `id`, such as a ModelInferRequest) only when a span or a
        log record needs it. An unsampled root gets no span at all: the SDK's non-recording span
        costs a few microseconds (ids, sampler), most of what tracing at 1 % would cost each request.
        """
        ratio = self.root_ratio
        if parent is None and ratio is not None and random() >= ratio:
            return RequestSpan(model, version, request_id, message=message)
        current = RequestSpan(model, version, request_id, tracing=self, message=message)
        model, version, request_id = current.identity()
        service, _, method = name.partition("/")
        attributes = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": method}
        if model:
            attributes[MODEL] = model
        if version:
            attributes[VERSION] = version
        if request_id:
            attributes[REQUEST_ID] = request_id
        current.span = self.tracer.start_span(name, context=parent, kind=SpanKind.SERVER, attributes=attributes)
        return current

    def batch_observer(self, model: str, version: str) -> Any:
        """A BatchObserver for one model version: the batch-execution span (module docstring, step 3)."""
        tracer = self.tracer
        epoch = self._offset_ns

        def observe(report: Any) -> None:
            # Every batch comes here; at 1 % almost none carries a span: leave after one look at each.
            for context in report.contexts:
                if type(context) is RequestSpan and context.span is not None:
                    break
            else:
                return
            spans = [c.span for c in report.contexts if type(c) is RequestSpan and c.span is not None]
            parent = next((s for s in spans if s.is_recording()), None)
            if parent is None:
                return  # no request of this batch is sampled: no batch span either
            links = [Link(s.get_span_context()) for s in spans if s.get_span_context().is_valid]
            span = tracer.start_span(
                "batch",
                context=trace.set_span_in_context(parent),
                kind=SpanKind.INTERNAL,
                links=links,
                start_time=report.started_ns + epoch,
                attributes={
                    MODEL: model,
                    VERSION: version,
                    BATCH_SIZE: report.rows,
                    BATCH_REQUESTS: len(report.contexts),
                },
            )
            if report.error is not None:
                span.set_status(Status(StatusCode.ERROR, str(report.error)))
            span.end(end_time=report.finished_ns + epoch)

        return observe

    def shutdown(self) -> None:
        """Flush and stop the exporter (only for a provider this object was given to own)."""
        if self._owns_provider:
            self.provider.shutdown()


class RequestSpan:
    """One request being served: its identity for the logs and, when traced, its server span.

    Carried through the batcher as the request's `context`. `span` is None when the request is
    not sampled, or when only the access log asked for request identity (tracing off). The
    identity is given, or read from the request message the first time it is asked for: most
    requests (99 % at a 1 % ratio) never need it.
    """

    __slots__ = ("span", "tracing", "started_ns", "_identity", "_message")

    def __init__(
        self, model: str = "", version: str = "", request_id: str = "", span: Span | None = None,
        tracing: Tracing | None = None, *, message: Any = None,
    ) -> None:
        self.span = span
        self.tracing = tracing
        self.started_ns = 0
        """monotonic_ns when the protocol edge took the call (set only when the access log times it)."""
        self._message = message
        self._identity: tuple[str, str, str] | None = None if message is not None else (model, version, request_id)

    def identity(self) -> tuple[str, str, str]:
        """(model, version, request id)."""
        identity = self._identity
        if identity is None:
            message = self._message
            identity = self._identity = (str(message.model_name), str(message.model_version), str(message.id))
            self._message = None
        return identity

    @property
    def model(self) -> str:
        return self.identity()[0]

    @property
    def version(self) -> str:
        return self.identity()[1]

    @property
    def request_id(self) -> str:
        return self.identity()[2]

    def queued(self, model: str, version: str, enqueued_ns: int, started_ns: int) -> None:
        """Record the request's queue wait (monotonic times) as a child span."""
        span, tracing = self.span, self.tracing
        if span is None or tracing is None or not span.is_recording():
            return
        child = tracing.tracer.start_span(
            "queue",
            context=trace.set_span_in_context(span),
            kind=SpanKind.INTERNAL,
            start_time=tracing.epoch_ns(enqueued_ns),
            attributes={MODEL: model, VERSION: version},
        )
        child.end(end_time=tracing.epoch_ns(started_ns))

    def log_fields(self) -> dict[str, str]:
        """model, version, request_id and, for a sampled span, trace_id and span_id (hex)."""
        model, version, request_id = self.identity()
        fields = {"model": model, "version": version, "request_id": request_id}
        if self.span is not None:
            ctx = self.span.get_span_context()
            if ctx.is_valid and ctx.trace_flags.sampled:  # an unsampled trace id leads nowhere
                fields["trace_id"] = format(ctx.trace_id, "032x")
                fields["span_id"] = format(ctx.span_id, "016x")
        return fields

    def activate(self) -> Any:
        """Make this the current request (for the servicer and the log records); returns a reset token."""
        return _request.set(self)

    @staticmethod
    def deactivate(token: Any) -> None:
        _request.reset(token)


# -- configuration from OTEL_* ----------------------------------------------------------------


def _flag(environ: Mapping[str, str], name: str) -> bool:
    return environ.get(name, "").strip().lower() == "true"


def _sampler(environ: Mapping[str, str]) -> tuple[Sampler, float | None]:
    """OTEL_TRACES_SAMPLER / OTEL_TRACES_SAMPLER_ARG, as the specification names them, and the
    root ratio that Tracing applies itself (parentbased_traceidratio: roots are sampled at the
    ratio before a span exists, so the provider samples roots always and follows parents)."""
    name = environ.get("OTEL_TRACES_SAMPLER", "").strip().lower() or "parentbased_always_on"
    arg = environ.get("OTEL_TRACES_SAMPLER_ARG", "").strip()
    try:
        ratio = float(arg) if arg else 1.0
    except ValueError:
        log.warning("OTEL_TRACES_SAMPLER_ARG=%r is not a number; using 1.0", arg)
        ratio = 1.0
    table: dict[str, Sampler] = {
        "always_on": ALWAYS_ON,
        "always_off": ALWAYS_OFF,
        "traceidratio": TraceIdRatioBased(ratio),
        "parentbased_always_on": DEFAULT_ON,
        "parentbased_always_off": ParentBased(ALWAYS_OFF),
        "parentbased_traceidratio": ParentBased(TraceIdRatioBased(ratio)),
    }
    if name not in table:
        log.warning("OTEL_TRACES_SAMPLER=%r is not supported (%s); using parentbased_always_on", name, ", ".join(table))
        return DEFAULT_ON, None
    if name == "parentbased_traceidratio":
        return DEFAULT_ON, min(max(ratio, 0.0), 1.0)
    return table[name], None


def _exporters(environ: Mapping[str, str]) -> list[SpanExporter]:
    names = [n.strip().lower() for n in environ.get("OTEL_TRACES_EXPORTER", "").split(",") if n.strip()]
    if not names:
        endpoint = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        names = ["otlp"] if endpoint else []
    exporters: list[SpanExporter] = []
    for name in names:
        if name == "none":
            return []
        if name == "otlp":
            protocol = environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
            if protocol not in (None, "", "grpc"):
                log.warning("OTEL_EXPORTER_OTLP_PROTOCOL=%r: ortserve exports OTLP/gRPC only; using it", protocol)
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

            exporters.append(OTLPSpanExporter())
        elif name == "console":
            exporters.append(ConsoleSpanExporter())
        else:
            log.warning("OTEL_TRACES_EXPORTER: %r is not supported (otlp, console, none); ignored", name)
    return exporters


def tracing_from_env(environ: Mapping[str, str] | None = None) -> Tracing | None:
    """A Tracing configured by the OTEL_* variables, or None when they leave tracing off."""
    env = os.environ if environ is None else environ
    if _flag(env, "OTEL_SDK_DISABLED"):
        return None
    exporters = _exporters(env)
    if not exporters:
        return None
    resource = Resource.create({SERVICE_VERSION: __version__})
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: "ortserve"}))
    sampler, root_ratio = _sampler(env)
    provider = TracerProvider(sampler=sampler, resource=resource, shutdown_on_exit=False)
    for exporter in exporters:
        processor: SpanProcessor = BatchSpanProcessor(exporter)
        provider.add_span_processor(processor)
    log.info(
        "tracing on: %s, sampler %s%s, service %s",
        ", ".join(type(e).__name__ for e in exporters),
        provider.sampler.get_description(),
        "" if root_ratio is None else f" with roots sampled at {root_ratio:g}",
        resource.attributes.get(SERVICE_NAME),
    )
    return Tracing(provider, root_ratio=root_ratio)
