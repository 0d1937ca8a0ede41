"""SIGTERM as Kubernetes sends it: drain, refuse, finish every accepted request, exit 0."""

from __future__ import annotations

import signal
import time
import urllib.error
import urllib.request
from concurrent.futures import Future
from pathlib import Path

import grpc
import numpy as np
import pytest

from ortserve_client.proto import grpc_service_pb2 as pb
from ortserve_client.proto import grpc_service_pb2_grpc as pb_grpc
from tests import models
from tests.harness import channel_to, serve_in_subprocess

ROWS = 256


def _slow_repo(repo: Path) -> Path:
    models.save(models.slow_matmul(chain=40), repo, "slow")
    # No batching and one instance: requests queue behind each other.
    (repo / "slow" / "config.pbtxt").write_text(
        'max_batch_size: 0\ninput [ { name: "x" data_type: TYPE_FP32 dims: [ 256, 1024 ] } ]\n'
        "instance_group [ { count: 1 kind: KIND_CPU } ]\n"
    )
    return repo


def _request(seed: int) -> tuple[pb.ModelInferRequest, np.ndarray]:
    x = np.random.default_rng(seed).standard_normal((ROWS, 1024)).astype(np.float32)
    request = pb.ModelInferRequest(model_name="slow", id=f"r{seed}")
    request.inputs.add(name="x", datatype="FP32", shape=x.shape)
    request.raw_input_contents.append(x.tobytes())
    return request, x


def _ready(stub: pb_grpc.GRPCInferenceServiceStub) -> bool:
    return bool(stub.ServerReady(pb.ServerReadyRequest(), timeout=5).ready)


def _http_ready(port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=5) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def test_sigterm_answers_every_accepted_request_and_exits_0(repo: Path) -> None:
    with serve_in_subprocess(["--model-repository", str(_slow_repo(repo)), "--grpc-port", "0",
                              "--http-port", "0", "--grace-seconds", "60"]) as server:
        channel = channel_to(server.grpc_target)
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        pending: list[tuple[Future[pb.ModelInferResponse], str]] = []
        for seed in range(8):
            request, _ = _request(seed)
            pending.append((stub.ModelInfer.future(request, timeout=120), request.id))
        time.sleep(0.3)  # let them reach the server and queue behind the single instance
        server.process.send_signal(signal.SIGTERM)
        answered = [future.result(timeout=120) for future, _ in pending]
        assert [r.id for r in answered] == [rid for _, rid in pending]
        assert all(len(r.raw_output_contents[0]) == ROWS * 1024 * 4 for r in answered)
        assert server.process.wait(60) == 0, server.output()
        channel.close()
    assert "ortserve stopped" in server.output()


def test_drain_window_reports_not_ready_but_serves_then_refuses(repo: Path) -> None:
    models.save(models.add_sub(), repo, "add_sub")
    args = ["--model-repository", str(repo), "--grpc-port", "0", "--http-port", "0", "--drain-seconds", "3"]
    with serve_in_subprocess(args) as server:
        channel = channel_to(server.grpc_target)
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        health = _health_stub(channel)
        assert _ready(stub) and _http_ready(server.http_port) == 200
        server.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 2
        while _ready(stub) and time.monotonic() < deadline:
            time.sleep(0.05)
        # Not ready at once, everywhere ...
        assert not _ready(stub)
        assert _http_ready(server.http_port) == 503
        assert _health_status(health) == "NOT_SERVING"
        # ... but inference is still served during the drain window.
        request = pb.ModelInferRequest(model_name="add_sub")
        a = np.ones((1, 4), np.float32)
        for name in ("INPUT0", "INPUT1"):
            request.inputs.add(name=name, datatype="FP32", shape=a.shape)
            request.raw_input_contents.append(a.tobytes())
        response = stub.ModelInfer(request, timeout=10)
        assert np.frombuffer(response.raw_output_contents[0], np.float32).tolist() == [2.0] * 4
        assert server.process.wait(30) == 0, server.output()
        channel.close()


def test_second_signal_forces_exit(repo: Path) -> None:
    models.save(models.add_sub(), repo, "add_sub")
    args = ["--model-repository", str(repo), "--grpc-port", "0", "--http-port", "-1", "--drain-seconds", "60"]
    with serve_in_subprocess(args) as server:
        server.process.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        assert server.process.poll() is None  # draining for 60 s
        started = time.monotonic()
        server.process.send_signal(signal.SIGINT)
        assert server.process.wait(10) == 1
        assert time.monotonic() - started < 10
    assert "second signal" in server.output()


def _health_stub(channel: grpc.Channel):  # type: ignore[no-untyped-def]
    from grpc_health.v1 import health_pb2_grpc

    return health_pb2_grpc.HealthStub(channel)


def _health_status(stub) -> str:  # type: ignore[no-untyped-def]
    from grpc_health.v1 import health_pb2

    response = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))


@pytest.mark.parametrize("flag", ["--drain-seconds", "--grace-seconds"])
def test_negative_durations_are_rejected(flag: str, repo: Path) -> None:
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "ortserve", "serve", "--model-repository", str(repo), flag, "-1"],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 2
    assert "must be >= 0" in done.stderr
