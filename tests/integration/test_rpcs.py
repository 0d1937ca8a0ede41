"""Every RPC of GRPCInferenceService, and grpc.health.v1, against a real server."""

from __future__ import annotations

import importlib.metadata
import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

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
    model_stats,
    outputs_of,
    rpc_error,
    sleep_request,
    sleeper,
    write_config,
    write_garbage_model,
)

READY_MODELS = {"add_sub", "counted", "scale", "sleeper"}


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    repo = tmp_path_factory.mktemp("rpcs")
    models.save(models.add_sub(), repo, "add_sub")
    models.save(models.add_sub(), repo, "counted")  # only the statistics test infers on it
    models.save(models.scale(10.0), repo, "scale", 1)
    models.save(models.scale(20.0), repo, "scale", 2)
    write_config(repo, "scale", "version_policy: { all: {} }\n")
    models.save(sleeper(), repo, "sleeper")
    write_garbage_model(repo, "broken")
    with serve_in_thread(repo) as running:
        yield running


# -- health ---------------------------------------------------------------------------------


def test_server_live_and_ready(srv: RunningServer) -> None:
    assert srv.stub.ServerLive(pb.ServerLiveRequest()).live is True
    assert srv.stub.ServerReady(pb.ServerReadyRequest()).ready is True


def test_model_ready(srv: RunningServer) -> None:
    ready = srv.stub.ModelReady
    assert ready(pb.ModelReadyRequest(name="add_sub")).ready is True
    assert ready(pb.ModelReadyRequest(name="add_sub", version="1")).ready is True
    assert ready(pb.ModelReadyRequest(name="scale", version="1")).ready is True
    assert ready(pb.ModelReadyRequest(name="scale", version="2")).ready is True
    assert ready(pb.ModelReadyRequest(name="scale", version="3")).ready is False
    assert ready(pb.ModelReadyRequest(name="add_sub", version="x")).ready is False
    assert ready(pb.ModelReadyRequest(name="no_such_model")).ready is False
    assert ready(pb.ModelReadyRequest(name="broken")).ready is False


def test_grpc_health_check(srv: RunningServer) -> None:
    health = health_pb2_grpc.HealthStub(srv.channel)
    serving = health_pb2.HealthCheckResponse.SERVING
    assert health.Check(health_pb2.HealthCheckRequest(service="")).status == serving
    assert health.Check(health_pb2.HealthCheckRequest(service="inference.GRPCInferenceService")).status == serving
    error = rpc_error(lambda: health.Check(health_pb2.HealthCheckRequest(service="no.such.Service")))
    assert error.code() is grpc.StatusCode.NOT_FOUND


# -- metadata and configuration -------------------------------------------------------------


def test_server_metadata(srv: RunningServer) -> None:
    meta = srv.stub.ServerMetadata(pb.ServerMetadataRequest())
    assert meta.name == "ortserve"
    assert meta.version == importlib.metadata.version("ortserve")
    assert sorted(meta.extensions) == ["model_configuration", "model_repository", "statistics", "system_shared_memory"]


def _tensors(items: Any) -> list[tuple[str, str, list[int]]]:
    return [(t.name, t.datatype, list(t.shape)) for t in items]


def test_model_metadata_of_a_batching_model(srv: RunningServer) -> None:
    meta = srv.stub.ModelMetadata(pb.ModelMetadataRequest(name="add_sub"))
    assert meta.name == "add_sub"
    assert list(meta.versions) == ["1"]
    assert meta.platform == "onnxruntime_onnx"
    assert _tensors(meta.inputs) == [("INPUT0", "FP32", [-1, 4]), ("INPUT1", "FP32", [-1, 4])]
    assert _tensors(meta.outputs) == [("OUTPUT0", "FP32", [-1, 4]), ("OUTPUT1", "FP32", [-1, 4])]


def test_model_metadata_of_a_non_batching_model_and_of_versions(srv: RunningServer) -> None:
    meta = srv.stub.ModelMetadata(pb.ModelMetadataRequest(name="sleeper"))
    assert _tensors(meta.inputs) == [("x", "INT64", [1])]
    assert _tensors(meta.outputs) == [("y", "INT64", [1])]
    for version in ("", "1", "2"):
        meta = srv.stub.ModelMetadata(pb.ModelMetadataRequest(name="scale", version=version))
        assert list(meta.versions) == ["1", "2"]
        assert _tensors(meta.inputs) == [("x", "FP32", [-1, 3])]
    error = rpc_error(lambda: srv.stub.ModelMetadata(pb.ModelMetadataRequest(name="scale", version="9")))
    assert error.code() is grpc.StatusCode.NOT_FOUND
    error = rpc_error(lambda: srv.stub.ModelMetadata(pb.ModelMetadataRequest(name="nope")))
    assert error.code() is grpc.StatusCode.NOT_FOUND
    error = rpc_error(lambda: srv.stub.ModelMetadata(pb.ModelMetadataRequest(name="broken")))
    assert error.code() is grpc.StatusCode.UNAVAILABLE


def test_model_config_is_auto_completed(srv: RunningServer) -> None:
    config = srv.stub.ModelConfig(pb.ModelConfigRequest(name="add_sub")).config
    assert config.name == "add_sub"
    assert config.platform == "onnxruntime_onnx"
    assert config.backend == "onnxruntime"
    assert config.max_batch_size == 32  # the server's default_max_batch_size
    assert config.HasField("dynamic_batching")
    assert [(t.name, t.data_type, list(t.dims)) for t in config.input] == [
        ("INPUT0", mc.TYPE_FP32, [4]),
        ("INPUT1", mc.TYPE_FP32, [4]),
    ]
    assert [(t.name, t.data_type, list(t.dims)) for t in config.output] == [
        ("OUTPUT0", mc.TYPE_FP32, [4]),
        ("OUTPUT1", mc.TYPE_FP32, [4]),
    ]
    assert [g.count for g in config.instance_group] == [1]
    assert config.version_policy.latest.num_versions == 1
    assert config.default_model_filename == "model.onnx"


def test_model_config_of_a_non_batching_model_and_a_version(srv: RunningServer) -> None:
    config = srv.stub.ModelConfig(pb.ModelConfigRequest(name="sleeper")).config
    assert config.max_batch_size == 0
    assert not config.HasField("dynamic_batching")
    assert [(t.name, t.data_type, list(t.dims)) for t in config.input] == [("x", mc.TYPE_INT64, [1])]
    config = srv.stub.ModelConfig(pb.ModelConfigRequest(name="scale", version="1")).config
    assert config.version_policy.HasField("all")
    error = rpc_error(lambda: srv.stub.ModelConfig(pb.ModelConfigRequest(name="nope")))
    assert error.code() is grpc.StatusCode.NOT_FOUND


# -- inference ------------------------------------------------------------------------------


def test_model_infer(srv: RunningServer) -> None:
    a, b = add_sub_inputs(3, np.random.default_rng(1))
    response = srv.stub.ModelInfer(infer_request("add_sub", {"INPUT0": a, "INPUT1": b}, request_id="r-1"))
    assert (response.model_name, response.model_version, response.id) == ("add_sub", "1", "r-1")
    check_add_sub(response, a, b)


def test_model_infer_picks_the_version(srv: RunningServer) -> None:
    x = np.array([[1.0, 2.0, 3.0]], np.float32)
    for version, factor in (("1", 10.0), ("2", 20.0), ("", 20.0)):
        response = srv.stub.ModelInfer(infer_request("scale", {"x": x}, version=version))
        assert response.model_version == (version or "2")
        np.testing.assert_array_equal(outputs_of(response)["y"], x * factor)


def test_model_stream_infer_answers_each_request_once(srv: RunningServer) -> None:
    rng = np.random.default_rng(2)
    sent: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    requests = []
    for i in range(12):
        request_id = f"s-{i}"
        if i == 6:  # a bad request in the middle: wrong dims
            bad = np.zeros((1, 5), np.float32)
            requests.append(infer_request("add_sub", {"INPUT0": bad, "INPUT1": bad}, request_id=request_id))
            continue
        a, b = add_sub_inputs(int(rng.integers(1, 5)), rng)
        sent[request_id] = (a, b)
        requests.append(infer_request("add_sub", {"INPUT0": a, "INPUT1": b}, request_id=request_id))
    responses = list(srv.stub.ModelStreamInfer(iter(requests), timeout=30))
    ids = [r.infer_response.id for r in responses]
    assert sorted(ids) == sorted(f"s-{i}" for i in range(12))
    for response in responses:
        request_id = response.infer_response.id
        if request_id == "s-6":
            assert response.error_message
            assert "input 'INPUT0'" in response.error_message
            assert "expected FP32 [-1,4], got FP32 [1,5]" in response.error_message
            assert response.infer_response.model_name == "add_sub"
            assert not response.infer_response.raw_output_contents
        else:
            assert response.error_message == ""
            assert response.infer_response.model_version == "1"
            check_add_sub(response.infer_response, *sent[request_id])


def test_model_stream_infer_runs_requests_concurrently(srv: RunningServer) -> None:
    """A slow request first does not hold back a fast one behind it on the same stream."""
    clock = SleeperClock(srv.stub)
    a, b = add_sub_inputs(1, np.random.default_rng(3))
    requests = [
        sleep_request(clock.iterations(1.5), request_id="slow"),
        infer_request("add_sub", {"INPUT0": a, "INPUT1": b}, request_id="fast"),
    ]
    responses = list(srv.stub.ModelStreamInfer(iter(requests), timeout=60))
    assert [r.infer_response.id for r in responses] == ["fast", "slow"]
    assert all(r.error_message == "" for r in responses)
    check_add_sub(responses[0].infer_response, a, b)
    np.testing.assert_array_equal(
        outputs_of(responses[1].infer_response)["y"], [clock.iterations(1.5)]
    )


def test_model_stream_infer_answers_while_the_stream_stays_open(srv: RunningServer) -> None:
    """Each response comes as soon as its request is done, not when the client half-closes."""
    outbox: queue.Queue[pb.ModelInferRequest | None] = queue.Queue()

    def requests() -> Iterator[pb.ModelInferRequest]:
        while (item := outbox.get()) is not None:
            yield item

    stream = srv.stub.ModelStreamInfer(requests(), timeout=30)
    rng = np.random.default_rng(4)
    try:
        for i in range(3):
            a, b = add_sub_inputs(2, rng)
            outbox.put(infer_request("add_sub", {"INPUT0": a, "INPUT1": b}, request_id=f"o-{i}"))
            response = next(stream)
            assert response.infer_response.id == f"o-{i}"
            check_add_sub(response.infer_response, a, b)
    finally:
        outbox.put(None)
    assert list(stream) == []


# -- statistics -----------------------------------------------------------------------------


def test_model_statistics_count_real_inferences(srv: RunningServer) -> None:
    rng = np.random.default_rng(5)
    batch_sizes = [1, 2, 3, 1, 4]
    before = time.time_ns() // 1_000_000
    for rows in batch_sizes:  # one at a time: each is its own execution
        a, b = add_sub_inputs(rows, rng)
        check_add_sub(srv.stub.ModelInfer(infer_request("counted", {"INPUT0": a, "INPUT1": b})), a, b)
    stats = model_stats(srv.stub, "counted")
    assert (stats.name, stats.version) == ("counted", "1")
    assert stats.inference_count == sum(batch_sizes)
    assert stats.execution_count == len(batch_sizes)
    assert before <= stats.last_inference <= time.time_ns() // 1_000_000 + 1
    infer = stats.inference_stats
    assert infer.success.count == len(batch_sizes) and infer.success.ns > 0
    assert infer.fail.count == 0
    for duration in (infer.queue, infer.compute_input, infer.compute_infer, infer.compute_output):
        assert duration.count == len(batch_sizes)
        assert duration.ns > 0
    assert infer.success.ns >= infer.compute_infer.ns
    by_size = {b.batch_size: b for b in stats.batch_stats}
    assert sorted(by_size) == [1, 2, 3, 4]
    assert by_size[1].compute_infer.count == 2
    assert all(by_size[s].compute_infer.count == 1 for s in (2, 3, 4))
    assert all(b.compute_infer.ns > 0 and b.compute_input.count == b.compute_output.count for b in by_size.values())

    # A rejected request counts as a failure and infers nothing.
    bad = np.zeros((1, 5), np.float32)
    rpc_error(lambda: srv.stub.ModelInfer(infer_request("counted", {"INPUT0": bad, "INPUT1": bad})))
    after = model_stats(srv.stub, "counted")
    assert after.inference_stats.fail.count == 1
    assert after.inference_count == sum(batch_sizes)
    assert after.execution_count == len(batch_sizes)


def test_model_statistics_of_every_model_and_of_one_version(srv: RunningServer) -> None:
    everything = srv.stub.ModelStatistics(pb.ModelStatisticsRequest()).model_stats
    assert sorted((s.name, s.version) for s in everything) == sorted(
        [("add_sub", "1"), ("counted", "1"), ("scale", "1"), ("scale", "2"), ("sleeper", "1")]
    )
    assert [(s.name, s.version) for s in srv.stub.ModelStatistics(
        pb.ModelStatisticsRequest(name="scale")).model_stats] == [("scale", "1"), ("scale", "2")]
    assert model_stats(srv.stub, "scale", "2").version == "2"
    error = rpc_error(lambda: srv.stub.ModelStatistics(pb.ModelStatisticsRequest(name="nope")))
    assert error.code() is grpc.StatusCode.NOT_FOUND
    error = rpc_error(lambda: srv.stub.ModelStatistics(pb.ModelStatisticsRequest(name="scale", version="7")))
    assert error.code() is grpc.StatusCode.NOT_FOUND
    error = rpc_error(lambda: srv.stub.ModelStatistics(pb.ModelStatisticsRequest(name="broken")))
    assert error.code() is grpc.StatusCode.UNAVAILABLE
    error = rpc_error(lambda: srv.stub.ModelStatistics(pb.ModelStatisticsRequest(version="1")))
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "without a model name" in error.details()


# -- repository -----------------------------------------------------------------------------


def test_repository_index(srv: RunningServer) -> None:
    rows = srv.stub.RepositoryIndex(pb.RepositoryIndexRequest()).models
    table = {(r.name, r.version): (r.state, r.reason) for r in rows}
    assert table[("add_sub", "1")] == ("READY", "")
    assert table[("scale", "1")] == ("READY", "")
    assert table[("scale", "2")] == ("READY", "")
    broken = [(v, s, why) for (n, v), (s, why) in table.items() if n == "broken"]
    assert len(broken) == 1
    _, state, reason = broken[0]
    assert state == "UNAVAILABLE"
    assert "model.onnx" in reason and "not a valid ONNX model" in reason
    assert {n for n, _ in table} == READY_MODELS | {"broken"}

    ready_only = srv.stub.RepositoryIndex(pb.RepositoryIndexRequest(ready=True)).models
    assert {r.name for r in ready_only} == READY_MODELS
    assert all(r.state == "READY" for r in ready_only)


@pytest.fixture
def own(tmp_path: Path) -> Iterator[tuple[RunningServer, Path]]:
    """A server of its own, for the tests that load and unload models."""
    repo = tmp_path / "models"
    models.save(models.add_sub(), repo, "add_sub")
    models.save(models.scale(2.0), repo, "scale", 1)
    with serve_in_thread(repo, http_port=-1) as running:
        yield running, repo


def _scale(stub: Any, factor: float, version: str = "") -> None:
    x = np.array([[1.0, -2.0, 0.5]], np.float32)
    np.testing.assert_array_equal(
        outputs_of(stub.ModelInfer(infer_request("scale", {"x": x}, version=version)))["y"], x * factor
    )


def test_unload_then_load_again(own: tuple[RunningServer, Path]) -> None:
    srv, _ = own
    a, b = add_sub_inputs(2, np.random.default_rng(6))
    request = infer_request("add_sub", {"INPUT0": a, "INPUT1": b})
    check_add_sub(srv.stub.ModelInfer(request), a, b)

    srv.stub.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="add_sub"))
    assert srv.stub.ModelReady(pb.ModelReadyRequest(name="add_sub")).ready is False
    error = rpc_error(lambda: srv.stub.ModelInfer(request))
    assert error.code() is grpc.StatusCode.UNAVAILABLE
    assert "model 'add_sub' is not ready" in error.details()
    index = {r.name: r for r in srv.stub.RepositoryIndex(pb.RepositoryIndexRequest()).models}
    assert (index["add_sub"].state, index["add_sub"].reason) == ("UNAVAILABLE", "unloaded")
    assert "add_sub" not in {r.name for r in srv.stub.RepositoryIndex(pb.RepositoryIndexRequest(ready=True)).models}
    _scale(srv.stub, 2.0)  # the other model is untouched

    srv.stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="add_sub"))
    assert srv.stub.ModelReady(pb.ModelReadyRequest(name="add_sub")).ready is True
    check_add_sub(srv.stub.ModelInfer(request), a, b)


def test_load_of_an_unknown_model_is_not_found(own: tuple[RunningServer, Path]) -> None:
    srv, _ = own
    error = rpc_error(lambda: srv.stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="ghost")))
    assert error.code() is grpc.StatusCode.NOT_FOUND
    assert "'ghost'" in error.details()
    error = rpc_error(lambda: srv.stub.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="ghost")))
    assert error.code() is grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize("name", ["../outside", "", ".", "..", ".hidden", "scale/1", "sca\0le"])
def test_load_refuses_names_that_are_not_a_model_directory(own: tuple[RunningServer, Path], name: str) -> None:
    """A model name is a directory directly inside the repository: never a path out of it."""
    srv, repo = own
    models.save(models.add_sub(), repo.parent, "outside")  # a valid model beside the repository
    models.save(models.add_sub(), repo, ".hidden")
    before = list(srv.stub.RepositoryIndex(pb.RepositoryIndexRequest()).models)
    error = rpc_error(lambda: srv.stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name=name)))
    assert error.code() is grpc.StatusCode.NOT_FOUND
    assert "is not in the repository" in error.details()
    assert list(srv.stub.RepositoryIndex(pb.RepositoryIndexRequest()).models) == before
    assert srv.stub.ModelReady(pb.ModelReadyRequest(name=name)).ready is False


def test_load_with_an_unknown_parameter_is_refused(own: tuple[RunningServer, Path]) -> None:
    # "config" and "file:..." are Triton's load parameters (tests/integration/test_model_management.py).
    srv, _ = own
    request = pb.RepositoryModelLoadRequest(model_name="scale")
    request.parameters["bogus"].string_param = "{}"
    error = rpc_error(lambda: srv.stub.RepositoryModelLoad(request))
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "unknown parameter 'bogus'" in error.details()
    _scale(srv.stub, 2.0)


def test_load_picks_up_new_models_and_versions(own: tuple[RunningServer, Path]) -> None:
    srv, repo = own
    models.save(models.scale(7.0), repo, "scale", 2)
    models.save(models.identity("INT32"), repo, "late")
    assert srv.stub.ModelReady(pb.ModelReadyRequest(name="late")).ready is False

    srv.stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="scale"))
    _scale(srv.stub, 7.0)
    error = rpc_error(lambda: _scale(srv.stub, 2.0, version="1"))  # latest policy: only 2 now
    assert error.code() is grpc.StatusCode.NOT_FOUND

    srv.stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="late"))
    x = np.arange(8, dtype=np.int32).reshape(2, 4)
    np.testing.assert_array_equal(outputs_of(srv.stub.ModelInfer(infer_request("late", {"x": x})))["y"], x)


def test_failed_reload_keeps_the_old_versions_serving(own: tuple[RunningServer, Path]) -> None:
    srv, repo = own
    write_config(repo, "scale", "max_batch_size: [oops\n")
    error = rpc_error(lambda: srv.stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="scale")))
    assert error.code() is grpc.StatusCode.UNAVAILABLE
    assert "config.pbtxt" in error.details()
    assert "keep serving" in error.details()
    _scale(srv.stub, 2.0)


def test_requests_in_flight_during_unload_are_answered(own: tuple[RunningServer, Path]) -> None:
    srv, repo = own
    models.save(sleeper(), repo, "sleeper")
    srv.stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="sleeper"))
    busy = Busy(srv.stub, SleeperClock(srv.stub), 0.6)
    done = threading.Event()

    def unload() -> None:
        srv.stub.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="sleeper"))
        done.set()

    worker = threading.Thread(target=unload)
    worker.start()
    busy.finish()  # answered, not failed by the unload
    worker.join(30)
    assert done.is_set()
    assert srv.stub.ModelReady(pb.ModelReadyRequest(name="sleeper")).ready is False


def test_a_model_added_after_start_is_listed_unloads_as_a_no_op_and_loads(
    own: tuple[RunningServer, Path],
) -> None:
    srv, repo = own
    models.save(models.scale(5.0), repo, "late")
    index = {r.name: r for r in srv.stub.RepositoryIndex(pb.RepositoryIndexRequest()).models}
    assert (index["late"].state, index["late"].reason) == ("UNAVAILABLE", "not loaded")
    srv.stub.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="late"))  # nothing to do: OK
    srv.stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="late"))
    x = np.array([[1.0, 2.0, 3.0]], np.float32)
    np.testing.assert_array_equal(outputs_of(srv.stub.ModelInfer(infer_request("late", {"x": x})))["y"], x * 5)


def test_statistics_list_versions_in_numeric_order(tmp_path: Path) -> None:
    repo = tmp_path / "models"
    for version in (2, 10):
        models.save(models.scale(float(version)), repo, "scale", version)
    (repo / "scale" / "config.pbtxt").write_text("version_policy: { all: {} }\n")
    with serve_in_thread(repo, http_port=-1) as running:
        stats = running.stub.ModelStatistics(pb.ModelStatisticsRequest(name="scale")).model_stats
        assert [s.version for s in stats] == ["2", "10"]
        everything = running.stub.ModelStatistics(pb.ModelStatisticsRequest()).model_stats
        assert [s.version for s in everything] == ["2", "10"]
