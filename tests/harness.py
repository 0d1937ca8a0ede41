"""Run a real ortserve server for tests: in a background thread (sync clients) or a subprocess.

`serve_in_thread(repo, **settings)` starts `OrtServer` on its own uvloop event loop in a
daemon thread, on ephemeral ports, waits until it is ready and yields a `RunningServer`
with the gRPC target and a stub. Leaving the block shuts it down the way SIGTERM does.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from prometheus_client import CollectorRegistry

from ortserve.app import OrtServer, run_event_loop
from ortserve.config import ServerSettings
from ortserve_client.proto import grpc_service_pb2_grpc as pb_grpc

MAX_MESSAGE = 2**31 - 1


@dataclass
class RunningServer:
    server: OrtServer
    loop: asyncio.AbstractEventLoop
    grpc_target: str
    http_port: int
    channel: grpc.Channel
    stub: pb_grpc.GRPCInferenceServiceStub
    metrics: CollectorRegistry
    extra: dict[str, Any] = field(default_factory=dict)

    def call(self, coro: Any, timeout: float = 30) -> Any:
        """Run a coroutine on the server's loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)


def channel_to(target: str) -> grpc.Channel:
    return grpc.insecure_channel(
        target,
        options=[("grpc.max_send_message_length", MAX_MESSAGE), ("grpc.max_receive_message_length", MAX_MESSAGE)],
    )


@contextmanager
def serve_in_thread(repo: Path | None, **overrides: Any) -> Iterator[RunningServer]:
    values: dict[str, Any] = {"grpc_port": 0, "http_port": 0, "host": "127.0.0.1", "log_level": "warning"}
    values.update(overrides)
    settings = ServerSettings(model_repository=repo, **values)
    metrics = CollectorRegistry()
    started = threading.Event()
    stop: dict[str, Any] = {}
    failure: list[BaseException] = []

    async def main() -> int:
        server = OrtServer(settings, metrics_registry=metrics)
        stop["event"] = asyncio.Event()
        stop["server"] = server
        stop["loop"] = asyncio.get_running_loop()
        try:
            await server.start()
        except BaseException as exc:  # noqa: BLE001 - reported to the test thread
            failure.append(exc)
            started.set()
            return 1
        started.set()
        await stop["event"].wait()
        await server.shutdown()
        return 0

    thread = threading.Thread(target=run_event_loop, args=(main, "auto"), daemon=True)
    thread.start()
    if not started.wait(120):
        raise TimeoutError("the server did not start within 120 s")
    if failure:
        raise failure[0]
    server: OrtServer = stop["server"]
    loop: asyncio.AbstractEventLoop = stop["loop"]
    target = f"127.0.0.1:{server.grpc_port}"
    channel = channel_to(target)
    try:
        yield RunningServer(
            server, loop, target, server.http_port, channel, pb_grpc.GRPCInferenceServiceStub(channel), metrics
        )
    finally:
        channel.close()
        loop.call_soon_threadsafe(stop["event"].set)
        thread.join(60)


_LISTENING = re.compile(r"ortserve listening: gRPC [^:]+:(\d+), HTTP (?:[^:]+:(\d+)|off)")


@dataclass
class ServerProcess:
    """`ortserve serve` as a user runs it, in a subprocess; its stderr is collected."""

    process: subprocess.Popen[str]
    grpc_port: int
    http_port: int
    lines: list[str]

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def output(self) -> str:
        return "".join(self.lines)


@contextmanager
def serve_in_subprocess(
    args: list[str], env: dict[str, str] | None = None, ready_timeout_s: float = 120
) -> Iterator[ServerProcess]:
    """Start `python -m ortserve serve ARGS` and wait for "ortserve ready" on its stderr.

    On exit the process is sent SIGTERM (if still running) and reaped.
    """
    full_env = {**os.environ, **(env or {})}
    process = subprocess.Popen(
        [sys.executable, "-m", "ortserve", "serve", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=full_env,
    )
    assert process.stderr is not None
    lines: list[str] = []
    ready = threading.Event()
    ports: dict[str, int] = {}

    def pump() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            lines.append(line)
            found = _LISTENING.search(line)
            if found:
                ports["grpc"] = int(found.group(1))
                ports["http"] = int(found.group(2) or -1)
            if "ortserve ready" in line:
                ready.set()
        ready.set()  # the process ended

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        if not ready.wait(ready_timeout_s) or "grpc" not in ports:
            raise RuntimeError("the server did not become ready:\n" + "".join(lines))
        yield ServerProcess(process, ports["grpc"], ports["http"], lines)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        reader.join(10)
