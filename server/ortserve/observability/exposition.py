"""/metrics in Prometheus' text format with every value as a plain decimal.

prometheus_client writes values of a million or more with an exponent, as Go does
(`8.589934592e+10`). Prometheus reads either, but Triton writes plain decimals and tools that
parse Triton's /metrics with a regular expression (perf_analyzer's GPU metrics among them)
read `8.589934592e+10` as 8.59. So the text is rendered by prometheus_client and every value
written with an exponent is rewritten in plain notation (exactly: from its shortest repr).
"""

from __future__ import annotations

import gzip
from collections.abc import Callable, Iterable
from decimal import Decimal
from typing import Any

from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.registry import Collector

StartResponse = Callable[..., Any]


def plain(value: bytes) -> bytes:
    """A sample value without an exponent: b'8.589934592e+10' -> b'85899345920'."""
    if b"e" not in value or value in (b"+Inf", b"-Inf", b"NaN"):
        return value
    return format(Decimal(value.decode()), "f").encode()


def exposition(registry: Collector) -> bytes:
    """The registry in text format 0.0.4, values as plain decimals."""
    text: bytes = generate_latest(registry)
    if b"e+" not in text and b"e-" not in text:
        return text
    lines = text.split(b"\n")
    for i, line in enumerate(lines):
        if line and not line.startswith(b"#"):
            head, _, value = line.rpartition(b" ")
            if b"e" in value:
                lines[i] = head + b" " + plain(value)
    return b"\n".join(lines)


def metrics_app(registry: Collector) -> Callable[[dict[str, Any], StartResponse], Iterable[bytes]]:
    """A WSGI app answering GET with `exposition(registry)`, gzipped when the scraper accepts it."""

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD", "GET") not in ("GET", "HEAD"):
            start_response("405 Method Not Allowed", [("Allow", "GET, HEAD"), ("Content-Length", "0")])
            return [b""]
        body = exposition(registry)
        headers = [("Content-Type", CONTENT_TYPE_PLAIN_0_0_4)]
        if "gzip" in environ.get("HTTP_ACCEPT_ENCODING", ""):
            body = gzip.compress(body, compresslevel=1)
            headers.append(("Content-Encoding", "gzip"))
        headers.append(("Content-Length", str(len(body))))
        start_response("200 OK", headers)
        return [body]

    return app
