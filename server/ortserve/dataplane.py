"""DataPlane: the transport-agnostic core that the protocol servicers call.

`infer` is the request path, in steps:

1. Refuse new work while draining (UNAVAILABLE, the client retries elsewhere).
2. Find the ready model version (NOT_FOUND / UNAVAILABLE): the one the request names, else the
   one the model's version weights pick (canary), else the version policy's default.
3. Check the tensors against its signature and the requested outputs (INVALID_ARGUMENT);
   the tensors are already numpy views of the request bytes. When the version caches responses,
   a hit answers here (the queue and the model skipped); a miss goes on and is cached in step 5.
4. Submit to the model's batcher with the caller's deadline and the request's `priority` and
   `timeout` (microseconds) parameters, and await this request's slice of the batch outputs.
5. Record the statistics once and return the outputs (views, encoded once at the edge).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass, field
from time import monotonic_ns
from typing import Any

import numpy as np

from ortserve import __version__
from ortserve.errors import (
    DeadlineExceededError,
    InvalidInputError,
    OrtserveError,
    QueueFullError,
    RequestCancelledError,
    ServerDrainingError,
    UnavailableError,
)
from ortserve.observability import ModelStats
from ortserve.observability.tracing import RequestSpan, current_request
from ortserve.repository import IndexEntry, ModelRegistry, ModelVersion
from ortserve.repository.control import ModelControl

SERVER_NAME = "ortserve"

EXTENSIONS = ("model_configuration", "model_repository", "statistics")
"""Triton protocol extensions this server implements (ServerMetadata.extensions)."""

ParamValue = bool | int | float | str | bytes

DEADLINE_SLACK_NS = 20_000_000
"""A call cancelled after its deadline, or within 20 ms before it as this server reads it, is
counted as failed by its deadline, not as cancelled: the client cancels at its own deadline,
which runs ahead of the server's by the transit time and gRPC's timer granularity (about 5 ms
measured on an idle 2-core machine)."""


@dataclass(slots=True)
class InferRequest:
    """A decoded inference request."""

    model_name: str
    model_version: str
    id: str
    inputs: dict[str, np.ndarray]
    requested_outputs: list[str] = field(default_factory=list)
    parameters: dict[str, ParamValue] = field(default_factory=dict)
    deadline_ns: int | None = None
    """The caller's deadline on the monotonic clock, if any."""


@dataclass(slots=True)
class InferResponse:
    """The outputs of one request, in the order they are to be returned."""

    model_name: str
    model_version: str
    id: str
    outputs: list[tuple[str, np.ndarray]]


class DataPlane:
    """Everything the servicers can ask of the server, with no transport in sight."""

    def __init__(
        self, registry: ModelRegistry, *, max_inflight_requests: int = 0, control: ModelControl | None = None
    ) -> None:
        self.registry = registry
        self.control = control or ModelControl(registry)
        """Answers load/unload requests as the model control mode allows."""
        self.max_inflight_requests = max_inflight_requests
        """Global bound on inference requests in flight (0 = none): beyond it, UNAVAILABLE at once."""
        self.started = False
        """True once the repository's initial load finished."""
        self.draining = False
        """True once shutdown began: not ready; new inference is refused after the drain window."""
        self.refusing = False
        self.in_flight = 0

    # -- health and metadata ------------------------------------------------------------

    def live(self) -> bool:
        return True

    def ready(self) -> bool:
        return self.started and not self.draining

    def model_ready(self, name: str, version: str = "") -> bool:
        try:
            self.registry.get(name, version)
        except OrtserveError:
            return False
        return True

    def server_metadata(self) -> tuple[str, str, tuple[str, ...]]:
        return SERVER_NAME, __version__, EXTENSIONS

    def model(self, name: str, version: str = "") -> ModelVersion:
        """The ready model version (for metadata and config)."""
        return self.registry.get(name, version)

    def model_versions(self, name: str) -> list[str]:
        return self.registry.ready_versions(name)

    def statistics(self, name: str = "", version: str = "") -> list[tuple[str, str, ModelStats]]:
        if not name:
            if version:
                raise InvalidInputError("statistics: a version was given without a model name")
            return sorted(self.registry.stats(), key=_by_name_and_version)
        if version:
            found = self.registry.get(name, version)
            return [(found.name, found.version_str, found.stats)]
        self.registry.get(name)  # NOT_FOUND / UNAVAILABLE for an unknown or failed model
        return sorted((s for s in self.registry.stats() if s[0] == name), key=_by_name_and_version)

    def repository_index(self, ready_only: bool = False) -> list[IndexEntry]:
        rows = self.registry.index()
        return [r for r in rows if r.state == "READY"] if ready_only else rows

    async def load_model(self, name: str, parameters: dict[str, Any]) -> None:
        """Load or reload; `parameters` may carry Triton's "config" (JSON) and "file:<path>" (bytes)."""
        self._check_not_draining()
        await self.control.load(name, parameters)

    async def unload_model(self, name: str) -> None:
        await self.control.unload(name)

    # -- inference ----------------------------------------------------------------------

    async def infer(self, request: InferRequest, context: RequestSpan | None = None) -> InferResponse:
        """Run one request through its model's batcher (see the module docstring).

        `context` is the request's trace, handed to the batcher (default: the one the protocol
        edge made current; None when tracing and the access log are off).
        """
        start_ns = monotonic_ns()
        if self.refusing:
            self._check_not_draining()
        if self.in_flight >= self.max_inflight_requests > 0:
            raise QueueFullError(
                f"server overloaded: {self.in_flight} inference requests in flight reached the bound "
                f"max_inflight_requests={self.max_inflight_requests}; retry later or on another replica"
            )
        model = self.registry.route(request.model_name, request.model_version)
        self.in_flight += 1
        try:
            inputs, rows = model.signature.check_inputs(request.inputs)
            names = model.signature.check_outputs(request.requested_outputs)
            cache = model.cache
            if cache is not None:
                lookup_ns = monotonic_ns()
                key = cache.key(inputs, names)
                cached = cache.get(key)
                lookup_ns = monotonic_ns() - lookup_ns
                if cached is not None:  # a hit skips the queue and the model
                    model.stats.record_cache_hit(monotonic_ns() - start_ns, lookup_ns)
                    return InferResponse(model.name, model.version_str, request.id, list(cached))
            parameters = request.parameters
            result = await model.infer(
                inputs,
                rows=rows,
                deadline_ns=request.deadline_ns,
                priority=_int_parameter(request, "priority") if parameters else 0,
                timeout_us=_int_parameter(request, "timeout", " of microseconds") if parameters else 0,
                context=context if context is not None else current_request(),
            )
        except asyncio.CancelledError:
            # gRPC cancels a call when its deadline passes: that one failed by its deadline.
            now = monotonic_ns()
            expired = request.deadline_ns is not None and now >= request.deadline_ns - DEADLINE_SLACK_NS
            model.stats.record_failure(now - start_ns, "REJECTED" if expired else "CANCELED")
            raise
        except OrtserveError as exc:
            model.stats.record_failure(monotonic_ns() - start_ns, _failure_reason(exc))
            raise
        except Exception:
            model.stats.record_failure(monotonic_ns() - start_ns, "OTHER")
            raise
        finally:
            self.in_flight -= 1
        model.stats.record_success(
            rows,
            monotonic_ns() - start_ns,
            result.queue_ns,
            result.compute_input_ns,
            result.compute_infer_ns,
            result.compute_output_ns,
        )
        outputs = result.outputs
        answer = [(name, outputs[name]) for name in names]
        if cache is not None:
            insert_ns = monotonic_ns()
            cache.put(key, answer)
            model.stats.cache_miss.add(lookup_ns + monotonic_ns() - insert_ns)
        return InferResponse(model.name, model.version_str, request.id, answer)

    def _check_not_draining(self) -> None:
        if self.refusing:
            raise ServerDrainingError("the server is shutting down and takes no new requests; retry on another replica")

    def models(self) -> Iterator[ModelVersion]:
        return self.registry.loaded()


def _by_name_and_version(row: tuple[str, str, ModelStats]) -> tuple[str, int]:
    return row[0], int(row[1])


def _int_parameter(request: InferRequest, name: str, unit: str = "") -> int:
    """A non-negative int64 request parameter (Triton's `priority`, `timeout` in microseconds); 0 if absent."""
    value = request.parameters.get(name)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidInputError(f"parameter {name!r} must be a non-negative int64{unit}, got {value!r}")
    return value


def _failure_reason(exc: OrtserveError) -> str:
    # Triton's nv_inference_request_failure reasons.
    if isinstance(exc, (InvalidInputError, UnavailableError)):
        return "REJECTED"
    if isinstance(exc, RequestCancelledError):
        return "CANCELED"
    if isinstance(exc, DeadlineExceededError):
        return "REJECTED"
    return "BACKEND"
