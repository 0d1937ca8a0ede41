"""The `ortserve` command as a user runs it: the bare demo, flags, environment, bad settings."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import onnxruntime as ort

from ortserve.app import _glibc
from ortserve.demo import DEMO_REPOSITORY
from ortserve_client.proto import grpc_service_pb2 as pb
from ortserve_client.proto import grpc_service_pb2_grpc as pb_grpc
from tests import models
from tests.harness import channel_to, serve_in_subprocess

FLOWERS = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]], np.float32)


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run(
        [sys.executable, "-m", "ortserve", *args],
        capture_output=True, text=True, timeout=60, env={**os.environ, **(env or {})},
    )


def test_bare_serve_serves_the_demo_model_like_onnxruntime_in_process() -> None:
    # No --model-repository: the bundled demo. Ports 0 only to stay clear of other runs.
    with serve_in_subprocess(["--grpc-port", "0", "--http-port", "0"]) as server:
        stub = pb_grpc.GRPCInferenceServiceStub(channel_to(server.grpc_target))
        request = pb.ModelInferRequest(model_name="iris")
        request.inputs.add(name="input", datatype="FP32", shape=FLOWERS.shape)
        request.raw_input_contents.append(FLOWERS.tobytes())
        response = stub.ModelInfer(request, timeout=30)
        got = {o.name: (o, raw) for o, raw in zip(response.outputs, response.raw_output_contents, strict=True)}
        with urllib.request.urlopen(f"http://127.0.0.1:{server.http_port}/v2/health/ready", timeout=5) as r:
            assert r.status == 200
    session = ort.InferenceSession(str(DEMO_REPOSITORY / "iris/1/model.onnx"), providers=["CPUExecutionProvider"])
    probabilities, labels = session.run(["probabilities", "label"], {"input": FLOWERS})
    out, raw = got["probabilities"]
    assert out.datatype == "FP32" and list(out.shape) == [3, 3]
    np.testing.assert_array_equal(np.frombuffer(raw, np.float32).reshape(3, 3), probabilities)
    out, raw = got["label"]
    assert out.datatype == "INT64" and list(out.shape) == [3]
    np.testing.assert_array_equal(np.frombuffer(raw, np.int64), labels)
    assert labels.tolist() == [0, 2, 1]
    assert str(DEMO_REPOSITORY) in server.output()


def test_every_flag_can_come_from_the_environment(repo: Path) -> None:
    models.save(models.add_sub(), repo, "add_sub")
    env = {"ORTSERVE_MODEL_REPOSITORY": str(repo), "ORTSERVE_GRPC_PORT": "0", "ORTSERVE_HTTP_PORT": "-1",
           "ORTSERVE_DEVICE": "cpu", "ORTSERVE_DEFAULT_MAX_BATCH_SIZE": "7"}
    with serve_in_subprocess([], env=env) as server:
        stub = pb_grpc.GRPCInferenceServiceStub(channel_to(server.grpc_target))
        config = stub.ModelConfig(pb.ModelConfigRequest(name="add_sub"), timeout=10).config
        assert config.max_batch_size == 7
        assert server.http_port == -1
    assert "HTTP off" in server.output()


def test_a_flag_wins_over_the_environment(repo: Path) -> None:
    models.save(models.add_sub(), repo, "add_sub")
    env = {"ORTSERVE_MODEL_REPOSITORY": "/does/not/exist", "ORTSERVE_DEFAULT_MAX_BATCH_SIZE": "7"}
    args = ["--model-repository", str(repo), "--grpc-port", "0", "--http-port", "-1", "--default-max-batch-size", "3"]
    with serve_in_subprocess(args, env=env) as server:
        stub = pb_grpc.GRPCInferenceServiceStub(channel_to(server.grpc_target))
        assert stub.ModelConfig(pb.ModelConfigRequest(name="add_sub"), timeout=10).config.max_batch_size == 3


def test_serve_freezes_the_start_up_heap_before_it_loads_a_model(repo: Path) -> None:
    models.save(models.add_sub(), repo, "add_sub")
    args = ["--model-repository", str(repo), "--grpc-port", "0", "--http-port", "-1", "--log-level", "debug"]
    with serve_in_subprocess(args) as server:
        stub = pb_grpc.GRPCInferenceServiceStub(channel_to(server.grpc_target))
        assert stub.ModelReady(pb.ModelReadyRequest(name="add_sub"), timeout=10).ready
        out = server.output()
    match = re.search(r"start-up heap frozen: (\d+) objects", out)
    assert match is not None, out
    # The interpreter, numpy, onnxruntime, grpc and protobuf alone leave tens of thousands of objects.
    assert int(match.group(1)) > 10_000
    # Before any model loads: a model unloaded later must stay collectable, not frozen.
    assert out.index(match.group(0)) < out.index("loading models from") < out.index("ortserve ready")
    assert "GIL switch interval: 5 ms" in out  # Python's, unless --gil-switch-interval-ms says otherwise
    if _glibc():  # large request buffers stay in the heap (ortserve.app.tune_malloc)
        assert "malloc: mmap threshold 32 MiB, trim threshold 256 MiB" in out, out


def test_serve_sets_the_gil_switch_interval_and_leaves_malloc_to_an_environment_that_tunes_it(repo: Path) -> None:
    models.save(models.add_sub(), repo, "add_sub")
    args = ["--model-repository", str(repo), "--grpc-port", "0", "--http-port", "-1", "--log-level", "debug"]
    env = {"ORTSERVE_GIL_SWITCH_INTERVAL_MS": "0.5", "GLIBC_TUNABLES": "glibc.malloc.check=0"}
    with serve_in_subprocess(args, env=env) as server:
        stub = pb_grpc.GRPCInferenceServiceStub(channel_to(server.grpc_target))
        assert stub.ModelReady(pb.ModelReadyRequest(name="add_sub"), timeout=10).ready
        out = server.output()
    assert "GIL switch interval: 0.5 ms" in out, out
    if _glibc():
        assert "malloc tuned by the environment: left as is" in out, out


def test_bad_settings_exit_2_with_a_message_naming_the_setting(tmp_path: Path) -> None:
    done = _run("serve", "--device", "tpu")
    assert done.returncode == 2 and "--device" in done.stderr
    done = _run("serve", env={"ORTSERVE_GRPC_PORT": "eighty"})
    assert done.returncode == 2 and "ORTSERVE_GRPC_PORT" in done.stderr and "eighty" in done.stderr
    done = _run("serve", "--model-repository", str(tmp_path / "missing"))
    assert done.returncode == 2 and "is not a directory" in done.stderr


def test_a_busy_port_exits_1_with_a_message(repo: Path) -> None:
    models.save(models.add_sub(), repo, "add_sub")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = _run("serve", "--model-repository", str(repo), "--host", "127.0.0.1",
                    "--grpc-port", str(port), "--http-port", "-1")
    assert done.returncode == 1
    assert f"127.0.0.1:{port}" in done.stderr


def test_version_and_help() -> None:
    done = _run("--version")
    assert done.returncode == 0 and done.stdout.startswith("ortserve ")
    done = _run("serve", "--help")
    assert done.returncode == 0
    assert "ORTSERVE_DRAIN_SECONDS" in done.stdout and "--model-repository" in done.stdout
