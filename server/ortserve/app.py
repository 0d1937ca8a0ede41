"""The composition root: builds the parts, owns start-up and graceful shutdown.

Start-up, in steps:
1. Bind the gRPC port (inference + grpc.health.v1) and the HTTP side port, so that
   liveness answers while models load; readiness is false until step 3 is done.
2. Load the models the control mode names (none, poll: all of them; explicit: load_model) in
   worker threads (a broken model is reported, the others serve); poll mode then watches the repository.
3. Report ready (V2 ServerReady, grpc.health SERVING, HTTP /v2/health/ready 200).

Shutdown (SIGTERM), as DESIGN.md's contract:
1. Report not ready at once; keep serving for `drain_seconds` so load balancers stop
   routing here.
2. Refuse new inference with UNAVAILABLE.
3. Let every accepted request finish within `grace_seconds`, then stop the models.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import logging
import os
import signal
import sys
from collections.abc import Callable, Coroutine, Iterator, Mapping
from pathlib import Path
from typing import Any

import grpc
from grpc import aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry

from ortserve.config import ServerSettings
from ortserve.dataplane import DataPlane
from ortserve.observability import (
    DriftCollector,
    DriftMonitor,
    DriftOptions,
    GpuCollector,
    OrtserveCollector,
    SharedMemoryCollector,
    StatsCollector,
    Tracing,
    run_drift_schedule,
    tracing_from_env,
)
from ortserve.observability import configure_logging as configure_log_output
from ortserve.protocol import HealthMetricsServer, InferenceServicer, SharedMemoryRegistry, add_inference_service
from ortserve.protocol.codec import DecodeLimits
from ortserve.protocol.interceptors import SecurityInterceptor
from ortserve.protocol.tracing import ObservabilityInterceptor
from ortserve.repository import ModelRegistry, ModelVersion
from ortserve.repository.cache import ResponseCache
from ortserve.repository.control import ModelControl
from ortserve.runtime import RuntimeOptions
from ortserve.security import AuditLog, SecurityConfigError, TlsFiles, build_policy, tls_files

log = logging.getLogger("ortserve")

SERVICE_NAME = "inference.GRPCInferenceService"


def demo_repository() -> Path:
    from ortserve.demo import DEMO_REPOSITORY

    return DEMO_REPOSITORY


class OrtServer:
    """One ortserve server: gRPC + HTTP ports over a model registry."""

    def __init__(
        self,
        settings: ServerSettings,
        *,
        metrics_registry: CollectorRegistry | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        """`tracing` None: configured by the OTEL_* environment (usually off)."""
        self.settings = settings
        self.repository = settings.model_repository or demo_repository()
        self.metrics_registry = metrics_registry or CollectorRegistry()
        self.tracing = tracing if tracing is not None else tracing_from_env()
        self._drift = (
            DriftOptions(
                settings.drift_interval_seconds,
                settings.drift_window_rows,
                settings.drift_psi_threshold,
                settings.drift_pvalue_threshold,
            )
            if settings.drift_interval_seconds > 0
            else None
        )
        self._drift_task: asyncio.Task[None] | None = None
        self._gpu = GpuCollector() if settings.triton_metrics else None
        self.shared_memory = SharedMemoryRegistry() if settings.shared_memory == "system" else None
        """Regions same-host clients registered (Triton's system shared memory); None when off."""
        self.registry = ModelRegistry(
            self.repository,
            RuntimeOptions(device=settings.device, intra_op_threads=settings.intra_op_threads),
            default_max_batch_size=settings.default_max_batch_size,
            default_latency_target_ms=settings.latency_target_ms,
            on_load=self._instrument,
            cache=ResponseCache(settings.response_cache_bytes) if settings.response_cache_bytes else None,
            require_validation=settings.require_validation,
        )
        self.control = ModelControl(
            self.registry,
            settings.model_control_mode,
            poll_seconds=settings.repository_poll_seconds,
            startup_models=settings.load_model.split(","),
        )
        self.dataplane = DataPlane(
            self.registry, max_inflight_requests=settings.max_inflight_requests, control=self.control
        )
        self._register_collectors()
        self.grpc_port = -1
        self.http_port = -1
        self._grpc: aio.Server | None = None
        self._http: HealthMetricsServer | None = None
        self._health = health.aio.HealthServicer()

    async def start(self) -> None:
        """Bind both ports, load the repository, then report ready."""
        s = self.settings
        # Security (see ortserve.security): TLS files, then an interceptor only if something asks for one.
        tls = tls_files(s.tls_cert, s.tls_key, s.tls_client_ca)
        credentials = _server_credentials(tls) if tls is not None else None
        policy = build_policy(s)
        audit = AuditLog(s.audit_log_file) if policy is not None or s.audit_log_file is not None else None
        self._grpc = aio.server(
            interceptors=[SecurityInterceptor(policy, audit)] if audit is not None else [],
            options=[
                ("grpc.max_receive_message_length", s.max_message_bytes),
                ("grpc.max_send_message_length", s.max_message_bytes),
                # Without this a second server could silently share the port.
                ("grpc.so_reuseport", 0),
            ]
        )
        add_inference_service(
            self._observed(
                InferenceServicer(
                    self.dataplane,
                    DecodeLimits(max_tensor_elements=s.max_tensor_elements),
                    self.shared_memory,
                )
            ),
            self._grpc,
        )
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._grpc)
        await self._set_health(serving=False)
        address = f"{s.host}:{s.grpc_port}"
        try:
            if credentials is None:
                self.grpc_port = self._grpc.add_insecure_port(address)
            else:
                self.grpc_port = self._grpc.add_secure_port(address, credentials)
                log.info("gRPC port %d: %s", self.grpc_port, "mTLS" if tls and tls.mutual else "TLS")
        except RuntimeError as exc:
            raise OSError(f"cannot bind the gRPC port {address}: {exc}") from exc
        if s.http_port >= 0:
            self._http = HealthMetricsServer(
                s.host, s.http_port, self.metrics_registry, self.dataplane.live, self.dataplane.ready
            )
            self.http_port = self._http.port
            self._http.start()
        await self._grpc.start()
        log.info(
            "ortserve listening: gRPC %s:%d, HTTP %s; loading models from %s",
            s.host,
            self.grpc_port,
            f"{s.host}:{self.http_port}" if self._http else "off",
            self.repository,
        )
        await self.control.start()  # the models the control mode loads at start (then polling, if asked)
        if self._drift is not None:
            self._drift_task = asyncio.create_task(run_drift_schedule(self._drift_monitors, self._drift.interval_s))
        self.dataplane.started = True
        await self._set_health(serving=True)
        for row in self.registry.index():
            log.info(
                "model %s version %s: %s%s", row.name, row.version or "-", row.state,
                f" ({row.reason})" if row.reason else "",
            )
        log.info("ortserve ready")

    async def shutdown(self) -> None:
        """Drain and stop (the shutdown contract in the module docstring)."""
        s = self.settings
        self.dataplane.draining = True
        await self.control.close()
        await self._set_health(serving=False)
        if s.drain_seconds:
            log.info("draining: not ready, still serving for %.1f s", s.drain_seconds)
            await asyncio.sleep(s.drain_seconds)
        self.dataplane.refusing = True
        log.info("refusing new requests; finishing %d in flight", self.dataplane.in_flight)
        # The grace period is for accepted inference: wait for it, then give the calls that never
        # end on their own (a grpc.health Watch, an idle stream) one short grace, not the whole period.
        deadline = asyncio.get_running_loop().time() + s.grace_seconds
        while self.dataplane.in_flight and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)
        if self._grpc is not None:
            await self._grpc.stop(min(1.0, max(0.0, deadline - asyncio.get_running_loop().time())))
        await self.registry.close(timeout_s=1.0)
        if self._http is not None:
            await asyncio.to_thread(self._http.stop)
        await self._stop_observability()
        log.info("ortserve stopped")

    # -- observability wiring (ortserve.observability) ---------------------------------------

    def _instrument(self, model: ModelVersion) -> None:
        model.instrument(self.tracing, self._drift)

    def _batchers(self) -> Iterator[tuple[str, str, Any]]:
        for model in self.registry.loaded():
            yield model.name, model.version_str, model.batcher

    def _drift_monitors(self) -> Iterator[DriftMonitor]:
        for model in self.registry.loaded():
            if model.drift is not None:
                yield model.drift

    def _register_collectors(self) -> None:
        registry = self.metrics_registry
        registry.register(OrtserveCollector(self.registry.stats, self._batchers))
        registry.register(DriftCollector(self._drift_monitors))
        if self.shared_memory is not None:
            registry.register(SharedMemoryCollector(self.shared_memory.usage))
        if self.settings.triton_metrics:
            registry.register(StatsCollector(self.registry.stats, self._batchers))
            assert self._gpu is not None
            registry.register(self._gpu)

    def _observed(self, servicer: InferenceServicer) -> InferenceServicer:
        """The servicer with a span per RPC and the access log, when either is on (else untouched)."""
        ratio = self.settings.access_log_ratio
        every = max(round(1 / ratio), 1) if ratio > 0 else 0
        if self.tracing is None and not every:
            return servicer  # the request path pays nothing
        return ObservabilityInterceptor(self.tracing, every).instrument(servicer)

    async def _stop_observability(self) -> None:
        if self._drift_task is not None:
            self._drift_task.cancel()
        if self.tracing is not None:
            await asyncio.to_thread(self.tracing.shutdown)  # flushes the spans still queued
        if self._gpu is not None:
            self._gpu.close()

    async def _set_health(self, *, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for service in ("", SERVICE_NAME):
            await self._health.set(service, status)


def _server_credentials(tls: TlsFiles) -> grpc.ServerCredentials:
    """TLS (mTLS with a client CA) whose files are re-read when they change.

    gRPC asks the fetcher at each new handshake; it answers None (keep the current
    configuration) unless the files changed into a valid set.
    """

    def configuration(material: Any) -> Any:
        return grpc.ssl_server_certificate_configuration(
            [(material.private_key, material.certificate_chain)], root_certificates=material.client_ca
        )

    def fetch() -> Any:
        material = tls.changed()
        return None if material is None else configuration(material)

    return grpc.dynamic_ssl_server_credentials(
        configuration(tls.load()), fetch, require_client_authentication=tls.mutual
    )


def configure_logging(level: str, fmt: str = "text") -> None:
    """Log at `level` to stderr, as text or JSON lines (ortserve.observability.logs)."""
    configure_log_output(level, fmt.lower(), sys.stderr)


def run_event_loop(main: Callable[[], Coroutine[Any, Any, int]], choice: str) -> int:
    """Run `main` on uvloop or asyncio, as chosen by name ("auto": uvloop when installed)."""
    factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    if choice in ("auto", "uvloop"):
        try:
            import uvloop

            factory = uvloop.new_event_loop
        except ImportError:
            if choice == "uvloop":
                raise
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main())


def settle_heap() -> int:
    """Collect, then freeze what survives: the start-up heap leaves the garbage collector's sight.

    Once ortserve and its libraries are imported, the process holds a few hundred thousand
    long-lived objects (modules, the generated protobuf classes, onnx, grpc, numpy). Every
    older-generation collection walks all of them, and the request path allocates enough to
    trigger those now and then; the pause lands on whatever requests are in flight. Frozen
    (gc.freeze), they are skipped. Called by `serve` once, after the server's parts are built
    and before any model loads: what models and requests allocate stays collectable (a model
    unloaded later must not leave reference cycles frozen, with its sessions' memory, behind).
    Process-wide, so only `serve` calls it. Measured on the MLP at concurrency 64 (8 interleaved
    runs, 2 cores): p99 18.5 -> 15.4 ms (medians), throughput within the noise. Returns the
    number of objects frozen.
    """
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


MMAP_THRESHOLD_BYTES = 32 << 20
"""Allocations below this come from the heap, not a fresh mmap (glibc's own dynamic ceiling)."""
TRIM_THRESHOLD_BYTES = 256 << 20
"""Free memory at the top of a heap is returned to the kernel only beyond this."""
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters, <malloc.h>
_MALLOC_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")


def _glibc() -> bool:
    try:
        return (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc")
    except (ValueError, OSError):  # the name is unknown where the C library is not glibc
        return False


def tune_malloc(environ: Mapping[str, str] | None = None) -> str:
    """Keep large request buffers in the heap: fixed glibc malloc thresholds instead of dynamic ones.

    gRPC's Python layer copies every received message into new `bytes` (per slice, then joined),
    so a 602 KB image request allocates and frees about 1.2 MB on the event loop's thread. glibc
    serves that from a fresh mmap or from heap it has just trimmed back to the kernel, depending
    on where its dynamic thresholds happen to settle, and then the copy page-faults on every
    page. On the 2-core sandbox (one-image 3x224x224 FP32 requests, perf_analyzer at C=32,
    scratch A/B, one server per round) servers without this settled either way: 95-137 minor
    faults and 325-411 us of loop CPU a request at 1640-2062 requests/s, or 6-9 faults, 237-244 us
    and ~2600/s; with it every round was the latter (6-8 faults, 225-248 us, 2467-2830/s).
    Fixed thresholds (mmap from 32 MiB, trim beyond 256 MiB) make the fast state the only one;
    the memory kept is at most what the process already used at its peak.

    glibc only, process-wide, so only `serve` calls it; left alone when the environment sets
    malloc's own knobs (GLIBC_TUNABLES glibc.malloc.*, MALLOC_*_). Returns what was done.
    """
    env = os.environ if environ is None else environ
    if not _glibc():
        return "not glibc: malloc left as is"
    if "glibc.malloc." in env.get("GLIBC_TUNABLES", "") or any(name in env for name in _MALLOC_ENV):
        return "malloc tuned by the environment: left as is"
    libc = ctypes.CDLL(None)
    ok = libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) and libc.mallopt(
        _M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES
    )
    if not ok:
        return "mallopt refused the thresholds: malloc left as is"
    return f"malloc: mmap threshold {MMAP_THRESHOLD_BYTES >> 20} MiB, trim threshold {TRIM_THRESHOLD_BYTES >> 20} MiB"


def serve(settings: ServerSettings) -> int:
    """Run a server until SIGTERM/SIGINT; a second signal forces an immediate exit."""
    configure_logging(settings.log_level, settings.log_format)
    log.debug("%s", tune_malloc())

    async def main() -> int:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        signals = 0

        def on_signal(signum: int) -> None:
            nonlocal signals
            signals += 1
            if signals > 1:
                log.warning("second signal: exiting at once")
                os._exit(1)
            log.info("received %s: shutting down", signal.Signals(signum).name)
            stop.set()

        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, on_signal, signum)
        server = OrtServer(settings)
        log.debug("start-up heap frozen: %d objects", settle_heap())
        if settings.gil_switch_interval_ms:
            sys.setswitchinterval(settings.gil_switch_interval_ms / 1000)
        log.debug("GIL switch interval: %.3g ms", sys.getswitchinterval() * 1000)
        try:
            await server.start()
        except (OSError, SecurityConfigError) as exc:
            log.error("%s", exc)
            return 1
        await stop.wait()
        await server.shutdown()
        return 0

    return run_event_loop(main, settings.event_loop)
