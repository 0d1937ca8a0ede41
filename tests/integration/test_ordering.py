"""Triton's `dynamic_batching { preserve_ordering }` against a real server.

Two instances of a batchable sleeper: a slow request occupies one, a fast one sent after it runs
on the other and is done first. On a stream, the fast answer comes first without
preserve_ordering and second with it; unary calls likewise.
"""

from __future__ import annotations

import queue
import time
from collections.abc import Iterator

import numpy as np
import pytest

from ortserve_client.proto import grpc_service_pb2 as pb
from tests import models
from tests.harness import RunningServer, serve_in_thread
from tests.wire import infer_request, outputs_of, sleeper, write_config

SLOW_S = 1.5
"""How long the slow request keeps its instance busy (calibrated on this machine)."""
SETTLE_S = 0.2
"""Time for the slow request to reach its instance before the fast one is sent."""


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    repo = tmp_path_factory.mktemp("ordering")
    for name, option in (("ordered", "preserve_ordering: true"), ("unordered", "")):
        models.save(sleeper(batchable=True), repo, name)
        config = f"max_batch_size: 8\ndynamic_batching {{ {option} }}\ninstance_group {{ count: 2 kind: KIND_CPU }}\n"
        write_config(repo, name, config)
    with serve_in_thread(repo) as running:
        yield running


def request(model: str, iterations: int, request_id: str) -> pb.ModelInferRequest:
    return infer_request(model, {"x": np.array([[iterations]], np.int64)}, request_id=request_id)


_calibrated: dict[str, int] = {}


def slow_iterations(srv: RunningServer, model: str) -> int:
    """Sleeper iterations that take about SLOW_S on this machine (best of three timed probes)."""
    if model in _calibrated:
        return _calibrated[model]
    probe, best = 400, float("inf")
    for _ in range(3):
        start = time.perf_counter()
        srv.stub.ModelInfer(request(model, probe, "probe"))
        best = min(best, time.perf_counter() - start)
    _calibrated[model] = max(1, int(SLOW_S * probe / best))
    return _calibrated[model]


@pytest.mark.parametrize(("model", "expected"), [("ordered", ["slow", "fast"]), ("unordered", ["fast", "slow"])])
def test_stream_answers_follow_the_queue_order_only_with_preserve_ordering(
    srv: RunningServer, model: str, expected: list[str]
) -> None:
    iterations = slow_iterations(srv, model)
    outbox: queue.Queue[pb.ModelInferRequest | None] = queue.Queue()

    def requests() -> Iterator[pb.ModelInferRequest]:
        while (item := outbox.get()) is not None:
            yield item

    stream = srv.stub.ModelStreamInfer(requests(), timeout=60)
    try:
        outbox.put(request(model, iterations, "slow"))
        time.sleep(SETTLE_S)  # the slow request is on one instance, the other is idle
        outbox.put(request(model, 1, "fast"))
        responses = [next(stream), next(stream)]
    finally:
        outbox.put(None)
    assert [r.infer_response.id for r in responses] == expected
    assert all(r.error_message == "" for r in responses)
    answers = {r.infer_response.id: outputs_of(r.infer_response)["y"] for r in responses}
    np.testing.assert_array_equal(answers["slow"], [[iterations]])
    np.testing.assert_array_equal(answers["fast"], [[1]])


@pytest.mark.parametrize(("model", "expected"), [("ordered", ["slow", "fast"]), ("unordered", ["fast", "slow"])])
def test_unary_answers_follow_the_queue_order_only_with_preserve_ordering(
    srv: RunningServer, model: str, expected: list[str]
) -> None:
    iterations = slow_iterations(srv, model)
    finished: list[str] = []
    slow = srv.stub.ModelInfer.future(request(model, iterations, "slow"), timeout=60)
    slow.add_done_callback(lambda _: finished.append("slow"))
    time.sleep(SETTLE_S)
    fast = srv.stub.ModelInfer.future(request(model, 1, "fast"), timeout=60)
    fast.add_done_callback(lambda _: finished.append("fast"))
    np.testing.assert_array_equal(outputs_of(slow.result())["y"], [[iterations]])
    np.testing.assert_array_equal(outputs_of(fast.result())["y"], [[1]])
    assert finished == expected


@pytest.mark.parametrize("seed", [0, 1])
def test_a_stream_of_random_requests_is_answered_in_order(srv: RunningServer, seed: int) -> None:
    """Random sizes, batches of several requests on two instances: every answer is its own, in order."""
    rng = np.random.default_rng(seed)
    per_iteration_s = SLOW_S / slow_iterations(srv, "ordered")
    sent: list[tuple[str, np.ndarray]] = []
    for i in range(40):
        rows = int(rng.integers(1, 4))
        longest = int(0.08 / per_iteration_s) if rng.random() < 0.2 else int(0.005 / per_iteration_s)
        sent.append((f"r{i}", rng.integers(0, max(longest, 1) + 1, size=(rows, 1)).astype(np.int64)))
    requests = [infer_request("ordered", {"x": x}, request_id=i) for i, x in sent]
    responses = list(srv.stub.ModelStreamInfer(iter(requests), timeout=120))
    assert [r.infer_response.id for r in responses] == [i for i, _ in sent]
    for response, (_, x) in zip(responses, sent, strict=True):
        assert response.error_message == ""
        np.testing.assert_array_equal(outputs_of(response.infer_response)["y"], x)
