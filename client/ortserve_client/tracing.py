"""W3C trace context propagation, when OpenTelemetry is there; nothing otherwise.

`opentelemetry-api` is optional and imported lazily, once. When it is importable and the
caller has a valid span active, `trace_metadata()` returns the headers the globally
configured propagator writes (W3C `traceparent`, and `tracestate`/`baggage` when set),
so the server's spans join the caller's trace. Without it, or without an active span,
it returns () at the cost of a context lookup.
"""

from __future__ import annotations

from collections.abc import Callable

Metadata = tuple[tuple[str, str], ...]

_inject: Callable[[], Metadata] | None = None
_resolved = False


def _resolve() -> Callable[[], Metadata] | None:
    try:
        from opentelemetry import propagate, trace
    except ImportError:
        return None

    get_current_span = trace.get_current_span
    inject = propagate.inject

    def current() -> Metadata:
        if not get_current_span().get_span_context().is_valid:
            return ()
        carrier: dict[str, str] = {}
        inject(carrier)
        return tuple((key.lower(), value) for key, value in carrier.items())

    return current


def trace_metadata() -> Metadata:
    """Trace context headers of the active span, or () (no OpenTelemetry, or no span)."""
    global _inject, _resolved
    if not _resolved:
        _inject = _resolve()
        _resolved = True
    return () if _inject is None else _inject()
