"""Structured logs: JSON lines and text, with the current request's model, ids and trace."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import TracerProvider

from ortserve.observability import RequestSpan, Tracing, configure_logging
from ortserve.observability.logs import JsonFormatter, TextFormatter


def record(
    message: str = "hello %s", *args: object, level: int = logging.WARNING, **extra: object
) -> logging.LogRecord:
    rec = logging.LogRecord("ortserve.test", level, __file__, 1, message, args or ("world",), None)
    rec.__dict__.update(extra)
    return rec


@pytest.fixture
def traced_request() -> Iterator[RequestSpan]:
    tracing = Tracing(TracerProvider())
    request = tracing.start_request("inference.GRPCInferenceService/ModelInfer", None, "iris", "1", "req-1")
    token = request.activate()
    yield request
    RequestSpan.deactivate(token)
    assert request.span is not None
    request.span.end()


def test_json_line_has_timestamp_level_logger_message() -> None:
    entry = json.loads(JsonFormatter().format(record()))
    assert list(entry) == ["timestamp", "level", "logger", "message"]
    assert entry["level"] == "warning" and entry["logger"] == "ortserve.test" and entry["message"] == "hello world"
    assert entry["timestamp"].endswith("Z") and "T" in entry["timestamp"]


def test_json_line_carries_the_current_request_and_its_trace(traced_request: RequestSpan) -> None:
    entry = json.loads(JsonFormatter().format(record()))
    assert traced_request.span is not None
    ctx = traced_request.span.get_span_context()
    assert entry["model"] == "iris" and entry["version"] == "1" and entry["request_id"] == "req-1"
    assert entry["trace_id"] == format(ctx.trace_id, "032x") and len(entry["trace_id"]) == 32
    assert entry["span_id"] == format(ctx.span_id, "016x")


def test_extra_fields_are_kept_and_win_over_the_request(traced_request: RequestSpan) -> None:
    entry = json.loads(JsonFormatter().format(record(model="other", grpc_code="OK", duration_ms=1.5)))
    assert entry["model"] == "other" and entry["grpc_code"] == "OK" and entry["duration_ms"] == 1.5


def test_exceptions_are_one_json_field() -> None:
    try:
        raise ValueError("bad")
    except ValueError:
        import sys

        rec = record()
        rec.exc_info = sys.exc_info()
    line = JsonFormatter().format(rec)
    assert "\n" not in line
    assert "ValueError: bad" in json.loads(line)["exception"]


def test_text_puts_the_fields_on_the_message_line(traced_request: RequestSpan) -> None:
    text = TextFormatter().format(record())
    assert " WARNING ortserve.test: hello world [model=iris version=1 request_id=req-1 trace_id=" in text
    assert "\n" not in text
    assert TextFormatter().format(record(model=None)).count("[") == 1


def test_text_without_a_request_is_the_classic_line() -> None:
    assert TextFormatter().format(record()).endswith(" WARNING ortserve.test: hello world")


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_configure_logging_installs_one_handler_at_the_level(fmt: str) -> None:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    stream = io.StringIO()
    try:
        configure_logging("warning", fmt, stream)
        assert len(root.handlers) == 1 and root.level == logging.WARNING
        logging.getLogger("ortserve.x").info("hidden")
        logging.getLogger("ortserve.x").warning("shown %d", 3)
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    (line,) = stream.getvalue().splitlines()
    if fmt == "json":
        assert json.loads(line)["message"] == "shown 3"
    else:
        assert line.endswith("WARNING ortserve.x: shown 3")


def test_an_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="log format: expected one of text, json"):
        configure_logging("info", "xml")
