"""Model management against a real server: control modes, config and file overrides, failed
loads that keep the old version serving, reloads that keep unchanged versions, warm-up before ready.

The canary under load is in test_model_management_canary.py, the response cache in
test_model_management_cache.py, the validation gate in tests/e2e/test_validate.py.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from google.protobuf import json_format, text_format

from ortserve.repository import ModelRegistry
from ortserve.repository.control import ModelControl, Snapshot, scan_repository
from ortserve.runtime import RuntimeOptions
from ortserve_client.proto import grpc_service_pb2 as pb
from ortserve_client.proto import model_config_pb2 as mc
from tests import models
from tests.harness import RunningServer, serve_in_thread
from tests.wire import (
    infer_request,
    model_stats,
    outputs_of,
    rpc_error,
    sleep_request,
    sleeper,
    wait_for,
    write_config,
    write_garbage_model,
)

X = np.array([[1.0, -2.0, 0.5]], np.float32)


def factor(stub: Any, name: str, version: str = "") -> tuple[str, float]:
    """(the version that answered, the factor its scale model multiplies by)."""
    response = stub.ModelInfer(infer_request(name, {"x": X}, version=version), timeout=30)
    y = outputs_of(response)["y"]
    found = float(y[0, 0] / X[0, 0])
    np.testing.assert_array_equal(y, X * np.float32(found))
    return response.model_version, found


def as_json(text: str) -> str:
    """A config in Triton's text format, as the JSON the load request carries."""
    return json_format.MessageToJson(text_format.Parse(text, mc.ModelConfig()))


def load(stub: Any, name: str, config: str | None = None, files: dict[str, bytes] | None = None) -> None:
    request = pb.RepositoryModelLoadRequest(model_name=name)
    if config is not None:
        request.parameters["config"].string_param = as_json(config)
    for path, content in (files or {}).items():
        request.parameters[f"file:{path}"].bytes_param = content
    stub.RepositoryModelLoad(request, timeout=60)


def index(stub: Any) -> dict[tuple[str, str], tuple[str, str]]:
    rows = stub.RepositoryIndex(pb.RepositoryIndexRequest()).models
    return {(r.name, r.version): (r.state, r.reason) for r in rows}


def ready(stub: Any, name: str, version: str = "") -> bool:
    return bool(stub.ModelReady(pb.ModelReadyRequest(name=name, version=version)).ready)


def publish(model: Any, repo: Path, name: str, version: int) -> None:
    """Write a version the safe way: elsewhere, then rename it into place (what the poller expects)."""
    staging = repo.parent / f".staging-{name}-{version}"
    models.save(model, staging, name, version)
    target = repo / name / str(version)
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        (staging / name / str(version) / "model.onnx").replace(target / "model.onnx")
    else:
        (staging / name / str(version)).rename(target)


# -- explicit mode ------------------------------------------------------------------------------


@pytest.fixture
def explicit(repo: Path) -> Iterator[tuple[RunningServer, Path]]:
    for name, value in (("a", 1.0), ("b", 2.0), ("c", 3.0)):
        models.save(models.scale(value), repo, name)
    with serve_in_thread(repo, http_port=-1, model_control_mode="explicit", load_model="a,b") as running:
        yield running, repo


def test_explicit_mode_loads_only_the_named_models_then_follows_requests(explicit: tuple[RunningServer, Path]) -> None:
    srv, _ = explicit
    assert (ready(srv.stub, "a"), ready(srv.stub, "b"), ready(srv.stub, "c")) == (True, True, False)
    assert index(srv.stub)[("c", "")] == ("UNAVAILABLE", "not loaded")
    load(srv.stub, "c")
    assert factor(srv.stub, "c") == ("1", 3.0)
    srv.stub.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="a"))
    assert not ready(srv.stub, "a")
    assert index(srv.stub)[("a", "")] == ("UNAVAILABLE", "unloaded")


def test_explicit_mode_star_loads_everything(repo: Path) -> None:
    for name in ("a", "b"):
        models.save(models.scale(2.0), repo, name)
    with serve_in_thread(repo, http_port=-1, model_control_mode="explicit", load_model="*") as srv:
        assert ready(srv.stub, "a") and ready(srv.stub, "b")


def test_explicit_mode_with_nothing_named_starts_empty_and_unknown_names_are_reported(repo: Path) -> None:
    models.save(models.scale(2.0), repo, "a")
    with serve_in_thread(repo, http_port=-1, model_control_mode="explicit", load_model="ghost") as srv:
        assert srv.stub.ServerReady(pb.ServerReadyRequest()).ready
        assert not ready(srv.stub, "a")
        assert index(srv.stub) == {("a", ""): ("UNAVAILABLE", "not loaded")}


# -- config override ------------------------------------------------------------------------------


def test_config_sent_with_the_load_replaces_config_pbtxt_for_that_load(explicit: tuple[RunningServer, Path]) -> None:
    srv, _ = explicit
    assert srv.stub.ModelConfig(pb.ModelConfigRequest(name="a")).config.max_batch_size == 32
    load(srv.stub, "a", 'max_batch_size: 4 dynamic_batching { max_queue_delay_microseconds: 100 }')
    config = srv.stub.ModelConfig(pb.ModelConfigRequest(name="a")).config
    assert config.max_batch_size == 4 and config.dynamic_batching.max_queue_delay_microseconds == 100
    big = np.ones((5, 3), np.float32)
    error = rpc_error(lambda: srv.stub.ModelInfer(infer_request("a", {"x": big})))
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT and "outside 1..4" in error.details()
    load(srv.stub, "a")  # no config: back to the repository's (none: auto-complete)
    assert srv.stub.ModelConfig(pb.ModelConfigRequest(name="a")).config.max_batch_size == 32


@pytest.mark.parametrize(
    ("value", "code", "fragment"),
    [
        ("{not json", grpc.StatusCode.INVALID_ARGUMENT, "parameter 'config' is not a ModelConfig in JSON"),
        ('{"max_batch_size": 4, "no_such_field": 1}', grpc.StatusCode.INVALID_ARGUMENT, "no_such_field"),
        ('{"name": "other"}', grpc.StatusCode.UNAVAILABLE, "says name \"other\""),
        ('{"max_batch_size": -1}', grpc.StatusCode.UNAVAILABLE, "max_batch_size is -1"),
        ('{"parameters": {"version_weights": {"string_value": "1:x"}}}', grpc.StatusCode.UNAVAILABLE,
         "parameter version_weights '1:x': bad pair"),
    ],
)
def test_a_bad_config_override_is_refused_and_the_old_version_keeps_serving(
    explicit: tuple[RunningServer, Path], value: str, code: grpc.StatusCode, fragment: str
) -> None:
    srv, _ = explicit
    request = pb.RepositoryModelLoadRequest(model_name="a")
    request.parameters["config"].string_param = value
    error = rpc_error(lambda: srv.stub.RepositoryModelLoad(request))
    assert error.code() is code and fragment in error.details(), error.details()
    assert factor(srv.stub, "a") == ("1", 1.0)


def test_files_sent_with_the_load_replace_the_model_directory(explicit: tuple[RunningServer, Path]) -> None:
    srv, repo = explicit
    onnx_bytes = models.scale(4.0).SerializeToString()
    load(srv.stub, "uploaded", "max_batch_size: 8", {"3/model.onnx": onnx_bytes})
    assert factor(srv.stub, "uploaded") == ("3", 4.0)
    assert index(srv.stub)[("uploaded", "3")] == ("READY", "")
    assert not (repo / "uploaded").exists()  # nothing written into the repository
    load(srv.stub, "a", "", {"1/model.onnx": onnx_bytes})  # replaces a's files for this load
    assert factor(srv.stub, "a") == ("1", 4.0)
    srv.stub.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="uploaded"))
    assert ("uploaded", "3") not in index(srv.stub) and ("uploaded", "") not in index(srv.stub)


@pytest.mark.parametrize(
    ("parameters", "fragment"),
    [
        ({"file:1/model.onnx": b"x"}, "need a 'config' parameter"),
        ({"config": "{}", "file:../1/model.onnx": b"x"}, "expected 'file:<version>/<path>'"),
        ({"config": "{}", "file:model.onnx": b"x"}, "expected 'file:<version>/<path>'"),
        ({"config": "{}", "file:01/model.onnx": b"x"}, "expected 'file:<version>/<path>'"),
        ({"config": "{}", "file:1/.hidden": b"x"}, "expected 'file:<version>/<path>'"),
    ],
)
def test_bad_file_parameters_are_refused(
    explicit: tuple[RunningServer, Path], parameters: dict[str, Any], fragment: str
) -> None:
    srv, _ = explicit
    request = pb.RepositoryModelLoadRequest(model_name="a")
    for key, value in parameters.items():
        if isinstance(value, bytes):
            request.parameters[key].bytes_param = value
        else:
            request.parameters[key].string_param = value
    error = rpc_error(lambda: srv.stub.RepositoryModelLoad(request))
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT and fragment in error.details(), error.details()
    assert factor(srv.stub, "a") == ("1", 1.0)


# -- failed loads and reloads ---------------------------------------------------------------------


def test_a_new_version_that_fails_leaves_the_old_one_serving_with_the_reason(
    explicit: tuple[RunningServer, Path],
) -> None:
    srv, repo = explicit
    write_garbage_model(repo, "a", 2)
    error = rpc_error(lambda: load(srv.stub, "a"))
    assert error.code() is grpc.StatusCode.UNAVAILABLE
    assert "version 2" in error.details() and "keep serving" in error.details()
    assert factor(srv.stub, "a") == ("1", 1.0)
    state, reason = index(srv.stub)[("a", "1")]
    assert state == "READY" and "the last load failed" in reason and "version 2" in reason


def test_a_version_whose_reload_fails_keeps_its_previous_files_serving(repo: Path) -> None:
    for version, value in ((1, 1.0), (2, 2.0)):
        models.save(models.scale(value), repo, "m", version)
    write_config(repo, "m", "version_policy: { all: {} }\n")
    with serve_in_thread(repo, http_port=-1, model_control_mode="explicit", load_model="m") as srv:
        write_garbage_model(repo, "m", 2)
        error = rpc_error(lambda: load(srv.stub, "m"))
        assert error.code() is grpc.StatusCode.UNAVAILABLE
        assert "version 2 failed to reload (the version loaded before keeps serving)" in error.details()
        assert factor(srv.stub, "m", "2") == ("2", 2.0)
        state, reason = index(srv.stub)[("m", "2")]
        assert state == "READY" and "the reload failed, the version loaded before keeps serving" in reason
        assert "not a valid ONNX model" in reason
        assert index(srv.stub)[("m", "1")] == ("READY", "")


def test_a_reload_keeps_unchanged_versions_with_their_statistics(repo: Path) -> None:
    models.save(models.scale(1.0), repo, "m", 1)
    with serve_in_thread(repo, http_port=-1, model_control_mode="explicit", load_model="m") as srv:
        for _ in range(3):
            factor(srv.stub, "m")
        models.save(models.scale(2.0), repo, "m", 2)
        load(srv.stub, "m", "version_policy: { all: {} }")
        assert model_stats(srv.stub, "m", "1").inference_stats.success.count == 3  # kept, not reloaded
        assert factor(srv.stub, "m") == ("2", 2.0)
        publish(models.scale(5.0), repo, "m", 1)  # changed files: this version reloads
        load(srv.stub, "m", "version_policy: { all: {} }")
        assert factor(srv.stub, "m", "1") == ("1", 5.0)
        assert model_stats(srv.stub, "m", "1").inference_stats.success.count == 1
        assert model_stats(srv.stub, "m", "2").inference_stats.success.count == 1  # kept again


# -- poll mode ---------------------------------------------------------------------------------


def test_poll_mode_follows_the_repository(repo: Path) -> None:
    models.save(models.scale(1.0), repo, "m", 1)
    with serve_in_thread(repo, http_port=-1, model_control_mode="poll", repository_poll_seconds=0.1) as srv:
        assert factor(srv.stub, "m") == ("1", 1.0)

        publish(models.scale(2.0), repo, "late", 1)  # a new model
        wait_for(lambda: ready(srv.stub, "late"))
        assert factor(srv.stub, "late") == ("1", 2.0)

        publish(models.scale(3.0), repo, "m", 2)  # a new version (policy latest 1: it replaces 1)
        wait_for(lambda: factor(srv.stub, "m") == ("2", 3.0))
        wait_for(lambda: not ready(srv.stub, "m", "1"))

        write_config(repo, "m", "version_policy: { all: {} }\n")  # a changed config
        wait_for(lambda: ready(srv.stub, "m", "1"))
        assert factor(srv.stub, "m", "1") == ("1", 1.0)

        publish(models.scale(4.0), repo, "m", 2)  # a rewritten version
        wait_for(lambda: factor(srv.stub, "m", "2") == ("2", 4.0))

        write_garbage_model(repo, "m", 3)  # a broken version: reported, the others serve
        wait_for(lambda: ("m", "3") in index(srv.stub))
        state, reason = index(srv.stub)[("m", "3")]
        assert state == "UNAVAILABLE" and "not a valid ONNX model" in reason
        assert factor(srv.stub, "m") == ("2", 4.0)

        for path in sorted((repo / "late").rglob("*"), reverse=True):  # a removed model
            path.unlink() if path.is_file() else path.rmdir()
        (repo / "late").rmdir()
        wait_for(lambda: not any(name == "late" for name, _ in index(srv.stub)))
        assert not ready(srv.stub, "late")

        error = rpc_error(lambda: load(srv.stub, "m"))
        assert error.code() is grpc.StatusCode.UNAVAILABLE
        assert "refused in model control mode 'poll'" in error.details()


def test_the_poll_scans_in_a_worker_thread_and_acts_only_on_changes(repo: Path) -> None:
    models.save(models.scale(1.0), repo, "m", 1)
    threads: list[int] = []

    def scan(root: Path) -> Snapshot:
        threads.append(threading.get_ident())
        return scan_repository(root)

    async def main() -> list[list[tuple[str, str]]]:
        registry = ModelRegistry(repo, RuntimeOptions(device="cpu"), default_max_batch_size=8)
        control = ModelControl(registry, "poll", poll_seconds=3600, scan=scan)
        await control.start()
        try:
            steps = [await control.poll_once()]
            models.save(models.scale(2.0), repo, "n", 1)
            steps.append(await control.poll_once())
            os.utime(repo / "m" / "1" / "model.onnx", ns=(1, 1))
            steps.append(await control.poll_once())
            steps.append(await control.poll_once())
            return steps
        finally:
            await control.close()
            await registry.close()

    loop_thread = threading.get_ident()
    steps = asyncio.run(main())
    assert steps == [[], [("load", "n")], [("load", "m")], []]
    assert threads and loop_thread not in threads


# -- warm-up before ready -------------------------------------------------------------------------


def test_a_model_is_ready_only_after_its_warm_up(repo: Path) -> None:
    """model_warmup runs a slow sample 3 times before the model reports ready."""
    models.save(sleeper(), repo, "slow")
    models.save(sleeper(), repo, "probe")
    iterations = 500
    (repo / "slow" / "warmup").mkdir()
    (repo / "slow" / "warmup" / "x.bin").write_bytes(np.array([iterations], np.int64).tobytes())
    write_config(repo, "slow", """
        model_warmup [ { name: "slow" batch_size: 0 count: 3
          inputs { key: "x" value: { data_type: TYPE_INT64 dims: [ 1 ] input_data_file: "x.bin" } } } ]
    """)
    with serve_in_thread(repo, http_port=-1, model_control_mode="explicit", load_model="probe") as srv:
        runs = []
        for _ in range(3):
            started = time.monotonic()
            srv.stub.ModelInfer(sleep_request(iterations, model="probe"), timeout=60)
            runs.append(time.monotonic() - started)
        one_run = min(runs)

        seen: list[tuple[bool, str]] = []
        done = threading.Event()

        def watch() -> None:
            while not done.is_set():
                is_ready = ready(srv.stub, "slow")  # first: once ready, the state cannot be LOADING again
                seen.append((is_ready, index(srv.stub).get(("slow", ""), ("", ""))[0]))
                time.sleep(0.01)

        watcher = threading.Thread(target=watch)
        watcher.start()
        started = time.monotonic()
        load(srv.stub, "slow")
        loading = time.monotonic() - started
        done.set()
        watcher.join()
        assert ready(srv.stub, "slow")
        assert (False, "LOADING") in seen and (True, "LOADING") not in seen
        assert loading >= 1.5 * one_run, (loading, one_run)  # 3 warm-up runs; half of that allows for noise
        stats = model_stats(srv.stub, "slow")
        assert stats.inference_count == 0 and stats.execution_count == 0  # warm-up is not traffic
