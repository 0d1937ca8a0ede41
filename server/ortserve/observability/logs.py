"""Structured logs: JSON lines for collectors, text for a terminal, joined to traces.

Every record carries timestamp, level, logger and message; a record logged while an RPC is
served (with tracing or the access log on) also carries the request's model, version,
request id and, when the request is traced, its trace id and span id (hex, as trace UIs
show them), so a log line leads to its trace and back. Fields given with `extra=` (model,
version, request_id, grpc_code, duration_ms, method) are kept too.

`configure_logging(level, fmt)` installs one handler on the root logger (stderr).
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

from ortserve.observability.tracing import current_request

LOG_FORMATS = ("text", "json")

FIELDS = ("method", "model", "version", "request_id", "grpc_code", "duration_ms", "trace_id", "span_id")
"""Optional fields, in output order, taken from the record (extra=) or the current request."""


def _request_fields(record: logging.LogRecord) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    request = current_request()
    if request is not None:
        fields.update(request.log_fields())
    for name in FIELDS:
        value = record.__dict__.get(name)
        if value is not None and value != "":
            fields[name] = value
    return {name: fields[name] for name in FIELDS if name in fields}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: timestamp (UTC, ms), level, logger, message, fields, exception."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "timestamp": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace(
                "+00:00", "Z"
            ),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(_request_fields(record))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """`time LEVEL logger: message [key=value ...]` for people at a terminal."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = _request_fields(record)
        if not fields:
            return text
        first, newline, rest = text.partition("\n")  # fields go on the message line, before a traceback
        suffix = " [" + " ".join(f"{k}={v}" for k, v in fields.items()) + "]"
        return first + suffix + newline + rest


def configure_logging(level: str, fmt: str = "text", stream: TextIO | None = None) -> logging.Handler:
    """Send every record at `level` or above to `stream` (stderr) as `fmt` (text or json)."""
    if fmt not in LOG_FORMATS:
        raise ValueError(f"log format: expected one of {', '.join(LOG_FORMATS)}, got {fmt!r}")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    return handler
