"""The HTTP side port: /metrics (Prometheus), /v2/health/live and /v2/health/ready.

Served by the standard library's WSGI server on its own threads, so a scrape or a probe
is answered promptly even while the event loop is busy with inference.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry

from ortserve.observability.exposition import metrics_app

log = logging.getLogger("ortserve.protocol")

StartResponse = Callable[..., Any]


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        log.debug("http: " + format, *args)


class HealthMetricsServer:
    """A small threaded HTTP server for probes and metrics."""

    def __init__(
        self,
        host: str,
        port: int,
        registry: CollectorRegistry,
        live: Callable[[], bool],
        ready: Callable[[], bool],
    ) -> None:
        self._metrics = metrics_app(registry)  # values as plain decimals, as Triton writes them
        self._live = live
        self._ready = ready
        self._server = make_server(
            host, port, self._app, server_class=_ThreadingWSGIServer, handler_class=_QuietHandler
        )
        self.port: int = self._server.server_port
        self._thread = threading.Thread(target=self._server.serve_forever, name="ortserve-http", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _app(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            return self._metrics(environ, start_response)
        if path == "/v2/health/live":
            return self._status(start_response, self._live())
        if path == "/v2/health/ready":
            return self._status(start_response, self._ready())
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found: try /metrics, /v2/health/live or /v2/health/ready\n"]

    @staticmethod
    def _status(start_response: StartResponse, ok: bool) -> list[bytes]:
        if ok:
            start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "0")])
        else:
            start_response("503 Service Unavailable", [("Content-Type", "text/plain"), ("Content-Length", "0")])
        return [b""]
