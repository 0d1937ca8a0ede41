"""The model repository as a real server reads it: broken models, configs, versions, instances."""

from __future__ import annotations

import time
from collections.abc import Iterator

import grpc
import numpy as np
import pytest

from ortserve_client.proto import grpc_service_pb2 as pb
from ortserve_client.proto import model_config_pb2 as mc
from tests import models
from tests.harness import RunningServer, serve_in_thread
from tests.wire import (
    Busy,
    SleeperClock,
    add_sub_inputs,
    check_add_sub,
    infer_request,
    outputs_of,
    rpc_error,
    sleep_request,
    sleeper,
    while_busy,
    write_config,
    write_garbage_model,
)

FACTORS = {1: 1.5, 2: 2.5, 3: 3.5}
POLICIES = {
    "scale_latest": None,
    "scale_latest2": "version_policy: { latest: { num_versions: 2 } }",
    "scale_all": "version_policy: { all: {} }",
    "scale_specific": "version_policy: { specific: { versions: [1, 3] } }",
}


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    repo = tmp_path_factory.mktemp("repository")
    models.save(models.add_sub(), repo, "add_sub")
    write_garbage_model(repo, "broken")
    models.save(models.add_sub(), repo, "bad_syntax")
    write_config(repo, "bad_syntax", "max_batch_size: 4\ndynamic_batching {\n  max_queue_delay_microseconds: oops\n}\n")
    models.save(models.add_sub(), repo, "bad_dims")
    write_config(repo, "bad_dims", 'max_batch_size: 8\ninput [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 5 ] } ]\n')
    (repo / "no_versions").mkdir()
    for name, policy in POLICIES.items():
        for version, factor in FACTORS.items():
            models.save(models.scale(factor), repo, name, version)
        if policy:
            write_config(repo, name, policy + "\n")
    models.save(models.add_sub(), repo, "two_instances")
    write_config(repo, "two_instances", "instance_group [ { count: 2 kind: KIND_CPU } ]\n")
    models.save(sleeper(), repo, "sleeper_pair")
    write_config(repo, "sleeper_pair", "instance_group [ { count: 2 kind: KIND_CPU } ]\n")
    models.save(models.add_sub(), repo, "small_batch")
    write_config(repo, "small_batch", "max_batch_size: 4\ndynamic_batching { }\n")
    with serve_in_thread(repo, http_port=-1) as running:
        yield running


def index(srv: RunningServer) -> dict[str, list[pb.RepositoryIndexResponse.ModelIndex]]:
    rows: dict[str, list[pb.RepositoryIndexResponse.ModelIndex]] = {}
    for row in srv.stub.RepositoryIndex(pb.RepositoryIndexRequest()).models:
        rows.setdefault(row.name, []).append(row)
    return rows


def assert_unavailable(srv: RunningServer, name: str, *fragments: str) -> None:
    """The model is in the index as UNAVAILABLE with a reason holding `fragments`, and refuses work."""
    (row,) = index(srv)[name]
    assert row.state == "UNAVAILABLE"
    for fragment in fragments:
        assert fragment in row.reason, row.reason
    assert srv.stub.ModelReady(pb.ModelReadyRequest(name=name)).ready is False
    a, b = add_sub_inputs(1, np.random.default_rng())
    error = rpc_error(lambda: srv.stub.ModelInfer(infer_request(name, {"INPUT0": a, "INPUT1": b})))
    assert error.code() is grpc.StatusCode.UNAVAILABLE
    assert f"model '{name}' is not ready" in error.details()
    for fragment in fragments:
        assert fragment in error.details()


def test_server_starts_and_good_models_serve_beside_broken_ones(srv: RunningServer) -> None:
    assert srv.stub.ServerReady(pb.ServerReadyRequest()).ready is True
    a, b = add_sub_inputs(2, np.random.default_rng(1))
    check_add_sub(srv.stub.ModelInfer(infer_request("add_sub", {"INPUT0": a, "INPUT1": b})), a, b)
    ready = {r.name for r in srv.stub.RepositoryIndex(pb.RepositoryIndexRequest(ready=True)).models}
    assert ready == {"add_sub", "two_instances", "sleeper_pair", "small_batch", *POLICIES}


def test_garbage_model_file(srv: RunningServer) -> None:
    assert_unavailable(srv, "broken", "model.onnx", "not a valid ONNX model")
    assert index(srv)["broken"][0].version == "1"


def test_config_syntax_error_names_the_line(srv: RunningServer) -> None:
    assert_unavailable(srv, "bad_syntax", "config.pbtxt", "line 3")


def test_config_contradicting_the_graph(srv: RunningServer) -> None:
    assert_unavailable(srv, "bad_dims", "input 'INPUT0'", "dims [5]", "[4]")


def test_model_without_versions(srv: RunningServer) -> None:
    assert_unavailable(srv, "no_versions", "no version")


def scale_output(srv: RunningServer, name: str, version: str = "") -> tuple[str, float]:
    x = np.array([[1.0, 2.0, -4.0]], np.float32)
    response = srv.stub.ModelInfer(infer_request(name, {"x": x}, version=version))
    y = outputs_of(response)["y"]
    factor = float(y[0, 0])
    np.testing.assert_array_equal(y, x * np.float32(factor))
    return response.model_version, factor


@pytest.mark.parametrize(("name", "served"), [
    ("scale_latest", [3]),
    ("scale_latest2", [2, 3]),
    ("scale_all", [1, 2, 3]),
    ("scale_specific", [1, 3]),
])
def test_version_policy(srv: RunningServer, name: str, served: list[int]) -> None:
    assert scale_output(srv, name) == ("3", FACTORS[3])
    for version, factor in FACTORS.items():
        ready = srv.stub.ModelReady(pb.ModelReadyRequest(name=name, version=str(version))).ready
        if version in served:
            assert ready is True
            assert scale_output(srv, name, str(version)) == (str(version), factor)
        else:
            assert ready is False
            error = rpc_error(lambda v=version: scale_output(srv, name, str(v)))  # type: ignore[misc]
            assert error.code() is grpc.StatusCode.NOT_FOUND
            assert f"has no version {version}" in error.details()
    meta = srv.stub.ModelMetadata(pb.ModelMetadataRequest(name=name))
    assert list(meta.versions) == [str(v) for v in served]
    assert [(r.version, r.state) for r in index(srv)[name]] == [(str(v), "READY") for v in served]
    stats = srv.stub.ModelStatistics(pb.ModelStatisticsRequest(name=name)).model_stats
    assert [s.version for s in stats] == [str(v) for v in served]


def test_instance_group_count_two(srv: RunningServer) -> None:
    config = srv.stub.ModelConfig(pb.ModelConfigRequest(name="two_instances")).config
    assert [(g.count, g.kind) for g in config.instance_group] == [(2, mc.ModelInstanceGroup.KIND_CPU)]
    rng = np.random.default_rng(2)
    sent = []
    for _ in range(48):
        a, b = add_sub_inputs(int(rng.integers(1, 9)), rng)
        sent.append((a, b, srv.stub.ModelInfer.future(infer_request("two_instances", {"INPUT0": a, "INPUT1": b}))))
    for a, b, future in sent:
        check_add_sub(future.result(timeout=60), a, b)


def test_two_instances_run_side_by_side(srv: RunningServer) -> None:
    """With one instance busy on a slow request, a quick one runs on the other at once."""
    clock = SleeperClock(srv.stub, model="sleeper_pair")

    def attempt(seconds: float) -> bool:
        busy = Busy(srv.stub, clock, seconds, model="sleeper_pair")
        quick = srv.stub.ModelInfer(sleep_request(2, model="sleeper_pair"), timeout=60)
        answered = time.monotonic()
        np.testing.assert_array_equal(outputs_of(quick)["y"], [2])
        busy.finish()
        return busy.busy_until(answered)

    while_busy(attempt, seconds=2.0)


def test_max_batch_size_from_config(srv: RunningServer) -> None:
    config = srv.stub.ModelConfig(pb.ModelConfigRequest(name="small_batch")).config
    assert config.max_batch_size == 4 and config.HasField("dynamic_batching")
    rng = np.random.default_rng(3)
    a, b = add_sub_inputs(4, rng)
    check_add_sub(srv.stub.ModelInfer(infer_request("small_batch", {"INPUT0": a, "INPUT1": b})), a, b)
    a, b = add_sub_inputs(5, rng)
    error = rpc_error(lambda: srv.stub.ModelInfer(infer_request("small_batch", {"INPUT0": a, "INPUT1": b})))
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "model 'small_batch' input 'INPUT0'" in error.details()
    assert "batch size 5 is outside 1..4" in error.details()
