"""SIGTERM in the middle of concurrent load from several clients: readiness turns NOT_SERVING first,
every request the server accepted is answered successfully, and the process exits 0 within the
grace period.

"Accepted" is counted by the server itself: its success and failure counters (scraped from
/metrics until the port closes) must equal the successes the clients received, with no failure.
Everything else a client saw is a refusal of a request the server never took: UNAVAILABLE (the
server's "shutting down", or a closed port), or CANCELLED from the transport for a call that
raced the listener's close after the last accepted request was answered.
"""

from __future__ import annotations

import re
import signal
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ortserve_client.proto import grpc_service_pb2_grpc as pb_grpc
from tests import models
from tests.harness import channel_to, serve_in_subprocess
from tests.wire import infer_request, outputs_of

CLIENTS = 6
DRAIN_S = 1.5
GRACE_S = 20.0


@dataclass
class Outcome:
    client: int
    sent: float
    ended: float
    code: str
    details: str = ""


def _model_repo(repo: Path) -> Path:
    # ~10-30 ms a request, one instance, no batching: requests are in flight and queued at SIGTERM.
    models.save(models.slow_matmul(chain=6, width=512), repo, "slow")
    (repo / "slow" / "config.pbtxt").write_text(
        'max_batch_size: 0\ninput [ { name: "x" data_type: TYPE_FP32 dims: [ 8, 512 ] } ]\n'
        "instance_group [ { count: 1 kind: KIND_CPU } ]\n"
    )
    return repo


def _client(index: int, target: str, stop: threading.Event, outcomes: list[Outcome]) -> None:
    rng = np.random.default_rng(index)
    with channel_to(target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        while not stop.is_set():
            x = rng.standard_normal((8, 512)).astype(np.float32)
            sent = time.monotonic()
            try:
                response = stub.ModelInfer(infer_request("slow", {"x": x}), timeout=60)
                assert outputs_of(response)["y"].shape == (8, 512)
                outcomes.append(Outcome(index, sent, time.monotonic(), "OK"))
            except grpc.RpcError as exc:
                outcomes.append(Outcome(index, sent, time.monotonic(), exc.code().name, exc.details() or ""))
                if exc.code() is grpc.StatusCode.UNAVAILABLE:
                    time.sleep(0.02)  # a refused client backs off a little, as a real one would


def _watch_health(target: str, flips: list[tuple[float, str]]) -> None:
    with channel_to(target) as channel:
        try:
            for response in health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service="")):
                flips.append((time.monotonic(), health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)))
        except grpc.RpcError:
            pass  # the server went away


def _scrape(port: int, stop: threading.Event, counts: list[tuple[int, int]]) -> None:
    """(successes, failures) of the model from /metrics, until the HTTP port closes.

    The port outlives the gRPC server by the models' unloading, so the largest count seen is
    the final one (the counters go with the model once it is unloaded).
    """
    while not stop.is_set():
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
                text = response.read().decode()
            counts.append(
                (_counter(text, "nv_inference_request_success"), _counter(text, "nv_inference_request_failure"))
            )
        except OSError:
            return
        time.sleep(0.02)


def _counter(text: str, name: str) -> int:
    return sum(int(float(v)) for v in re.findall(rf'^{name}{{[^}}]*model="slow"[^}}]*}} (\S+)$', text, re.M))


def test_sigterm_under_load_answers_every_accepted_request(repo: Path) -> None:
    args = ["--model-repository", str(_model_repo(repo)), "--grpc-port", "0", "--http-port", "0",
            "--drain-seconds", str(DRAIN_S), "--grace-seconds", str(GRACE_S)]
    with serve_in_subprocess(args) as server:
        outcomes: list[Outcome] = []
        flips: list[tuple[float, str]] = []
        stop = threading.Event()
        watcher = threading.Thread(target=_watch_health, args=(server.grpc_target, flips), daemon=True)
        watcher.start()
        counts: list[tuple[int, int]] = []
        scraper = threading.Thread(target=_scrape, args=(server.http_port, stop, counts), daemon=True)
        scraper.start()
        clients = [
            threading.Thread(target=_client, args=(i, server.grpc_target, stop, outcomes), daemon=True)
            for i in range(CLIENTS)
        ]
        for thread in clients:
            thread.start()
        time.sleep(1.5)
        sigterm = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        code = server.process.wait(DRAIN_S + GRACE_S + 10)
        exited = time.monotonic()
        stop.set()
        for thread in clients:
            thread.join(70)
        watcher.join(10)
        scraper.join(10)
    assert code == 0, server.output()
    assert exited - sigterm < DRAIN_S + GRACE_S

    # Readiness went NOT_SERVING at once, before any request was refused.
    serving = [t for t, status in flips if status == "SERVING"]
    not_serving = [t for t, status in flips if status == "NOT_SERVING" and t >= sigterm]
    assert serving and not_serving, flips
    flip = not_serving[0]
    assert flip - sigterm < 1.0
    refused = [o for o in outcomes if o.code == "UNAVAILABLE"]
    assert refused, "no request came after the drain window"
    assert min(o.ended for o in refused) > flip

    # The server's own count of the requests it accepted: all succeeded, and each success reached its client.
    ok = [o for o in outcomes if o.code == "OK"]
    assert max(counts) == (len(ok), 0)
    others = [o for o in outcomes if o.code not in ("OK", "UNAVAILABLE", "CANCELLED")]
    assert not others, others[:5]
    last_ok = max(o.ended for o in ok)
    assert all(o.sent > flip for o in outcomes if o.code == "CANCELLED")  # transport refusals at the close
    assert sum(o.ended < sigterm for o in ok) >= CLIENTS  # real load before the signal ...
    assert sum(o.sent > flip for o in ok) >= 1  # ... and served while draining (not ready, still serving)
    assert last_ok > flip
    assert {o.client for o in ok} == set(range(CLIENTS))
    assert any("shutting down" in o.details for o in refused)
    assert "refusing new requests; finishing" in server.output()
