"""The HTTP side port of a real server: health probes and Prometheus metrics."""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Iterator

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests import models
from tests.harness import RunningServer, serve_in_thread
from tests.wire import add_sub_inputs, check_add_sub, infer_request, rpc_error, write_garbage_model


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    repo = tmp_path_factory.mktemp("http")
    models.save(models.add_sub(), repo, "add_sub")
    write_garbage_model(repo, "broken")
    with serve_in_thread(repo) as running:
        yield running


def get(srv: RunningServer, path: str) -> tuple[int, str, str]:
    """(status, content type, body) of GET `path`; error statuses are returned, not raised."""
    url = f"http://127.0.0.1:{srv.http_port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.headers.get("Content-Type", ""), response.read().decode()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.headers.get("Content-Type", ""), error.read().decode()


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def metric(srv: RunningServer, name: str, **labels: str) -> float:
    status, _, body = get(srv, "/metrics")
    assert status == 200
    return samples(body).get((name, frozenset(labels.items())), 0.0)


def test_liveness(srv: RunningServer) -> None:
    assert get(srv, "/v2/health/live")[0] == 200


def test_readiness_when_ready(srv: RunningServer) -> None:
    # A broken model does not make the server unready: the others serve.
    assert get(srv, "/v2/health/ready")[0] == 200


def test_unknown_path(srv: RunningServer) -> None:
    status, _, body = get(srv, "/v2/models/add_sub")
    assert status == 404
    assert "/metrics" in body
    assert get(srv, "/")[0] == 404


def test_metrics_count_inferences(srv: RunningServer) -> None:
    labels = {"model": "add_sub", "version": "1"}
    success = metric(srv, "nv_inference_request_success", **labels)
    rows = metric(srv, "nv_inference_count", **labels)
    executions = metric(srv, "nv_inference_exec_count", **labels)
    rejected = metric(srv, "nv_inference_request_failure", reason="REJECTED", **labels)
    rng = np.random.default_rng(1)
    for batch in (1, 3, 2):
        a, b = add_sub_inputs(batch, rng)
        check_add_sub(srv.stub.ModelInfer(infer_request("add_sub", {"INPUT0": a, "INPUT1": b})), a, b)
    bad = np.zeros((1, 5), np.float32)
    rpc_error(lambda: srv.stub.ModelInfer(infer_request("add_sub", {"INPUT0": bad, "INPUT1": bad})))

    status, content_type, body = get(srv, "/metrics")
    assert status == 200
    assert content_type.startswith("text/plain")
    found = samples(body)

    def now(name: str, **extra: str) -> float:
        return found[(name, frozenset({**labels, **extra}.items()))]

    assert now("nv_inference_request_success") == success + 3
    assert now("nv_inference_count") == rows + 6
    assert now("nv_inference_exec_count") == executions + 3
    assert now("nv_inference_request_failure", reason="REJECTED") == rejected + 1
    for family in ("queue", "compute_input", "compute_infer", "compute_output"):
        assert f"nv_inference_{family}_duration_us" in {name for name, _ in found}
    assert now("nv_inference_request_duration_us") > 0
    # Triton's exact exposition: dashboards match on the family name and these labels.
    line = f'nv_inference_request_success{{model="add_sub",version="1"}} {success + 3:.1f}'
    assert line in body.splitlines()
    assert not any(name.startswith("nv_inference_request_success_total") for name, _ in found)
    assert not any(dict(labels_).get("model") == "broken" for _, labels_ in found)
