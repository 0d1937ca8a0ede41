"""Triton's own tools against ortserve, unchanged: tritonclient.grpc and perf_analyzer.

tritonclient registers the same `inference.*` protobuf names as ortserve_client, so it
cannot be imported in this process: its side runs as a subprocess (a script, or the
perf_analyzer binary) against a server started here.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ortserve_client.proto import grpc_service_pb2 as pb
from tests import models
from tests.harness import serve_in_subprocess, serve_in_thread

ROOT = Path(__file__).resolve().parents[2]

TRITONCLIENT_SCRIPT = r'''
import json, sys
import numpy as np
import onnxruntime as ort
import tritonclient.grpc as grpcclient

target, repo = sys.argv[1], sys.argv[2]
client = grpcclient.InferenceServerClient(url=target)
out = {
    "live": client.is_server_live(),
    "ready": client.is_server_ready(),
    "model_ready": client.is_model_ready("add_sub"),
    "server": client.get_server_metadata(as_json=True),
    "metadata": client.get_model_metadata("add_sub", as_json=True),
    "config": client.get_model_config("add_sub", as_json=True)["config"],
}
session = ort.InferenceSession(f"{repo}/add_sub/1/model.onnx", providers=["CPUExecutionProvider"])
rng = np.random.default_rng(0)
a = rng.standard_normal((3, 4)).astype(np.float32)
b = rng.standard_normal((3, 4)).astype(np.float32)
inputs = [grpcclient.InferInput("INPUT0", [3, 4], "FP32"), grpcclient.InferInput("INPUT1", [3, 4], "FP32")]
inputs[0].set_data_from_numpy(a)
inputs[1].set_data_from_numpy(b)
result = client.infer("add_sub", inputs, request_id="req-7",
                      outputs=[grpcclient.InferRequestedOutput("OUTPUT1")])
expected = session.run(["OUTPUT1"], {"INPUT0": a, "INPUT1": b})[0]
out["infer_equal"] = bool(np.array_equal(result.as_numpy("OUTPUT1"), expected))
out["infer_outputs"] = [o["name"] for o in result.get_response(as_json=True)["outputs"]]
out["infer_id"] = result.get_response().id

strings = np.array([["héllo".encode(), b""], ["zero\\x00byte ✓".encode(), b"x" * 300]], dtype=object)
text = grpcclient.InferInput("x", [2, 2], "BYTES")
text.set_data_from_numpy(strings)
echoed = client.infer("strings", [text]).as_numpy("y")
out["bytes_equal"] = echoed.tolist() == strings.tolist()

try:
    client.infer("no_such_model", inputs)
except grpcclient.InferenceServerException as exc:
    out["missing_status"] = exc.status()

stats = client.get_inference_statistics("add_sub", as_json=True)["model_stats"][0]
out["stats_success"] = int(stats["inference_stats"]["success"]["count"])
out["stats_inference_count"] = int(stats["inference_count"])

# System shared memory, as tritonclient's own shared memory example does it (the object made
# with the standard library here: tritonclient.utils.shared_memory needs pkg_resources).
from multiprocessing import shared_memory
block = shared_memory.SharedMemory(create=True, size=3 * a.nbytes)
try:
    view = np.ndarray((3, 3, 4), np.float32, buffer=block.buf)
    view[0], view[1] = a, b
    client.unregister_system_shared_memory()
    client.register_system_shared_memory("tensors", "/" + block.name, 3 * a.nbytes)
    out["shm_status"] = client.get_system_shared_memory_status(as_json=True)
    shm_inputs = [grpcclient.InferInput("INPUT0", [3, 4], "FP32"), grpcclient.InferInput("INPUT1", [3, 4], "FP32")]
    shm_inputs[0].set_shared_memory("tensors", a.nbytes, offset=0)
    shm_inputs[1].set_shared_memory("tensors", b.nbytes, offset=a.nbytes)
    shm_output = grpcclient.InferRequestedOutput("OUTPUT0")
    shm_output.set_shared_memory("tensors", a.nbytes, offset=2 * a.nbytes)
    shm_result = client.infer("add_sub", shm_inputs, outputs=[shm_output, grpcclient.InferRequestedOutput("OUTPUT1")])
    out["shm_output0_equal"] = bool(np.array_equal(view[2], a + b))
    out["shm_output1_equal"] = bool(np.array_equal(shm_result.as_numpy("OUTPUT1"), a - b))
    client.unregister_system_shared_memory("tensors")
    out["shm_after"] = client.get_system_shared_memory_status(as_json=True)
finally:
    del view
    block.close()
    block.unlink()
print(json.dumps(out))
'''


@pytest.fixture
def triton_repo(repo: Path) -> Path:
    models.save(models.add_sub(), repo, "add_sub")
    models.save(models.identity("BYTES", ("batch", 2)), repo, "strings")
    return repo


def test_tritonclient_grpc_works_unchanged(triton_repo: Path, tmp_path: Path) -> None:
    if importlib.util.find_spec("tritonclient") is None:  # never import it here (see the module docstring)
        pytest.skip("tritonclient[grpc] is not installed (a dev dependency)")
    script = tmp_path / "client.py"
    script.write_text(TRITONCLIENT_SCRIPT)
    with serve_in_thread(triton_repo) as server:
        done = subprocess.run(
            [sys.executable, str(script), server.grpc_target, str(triton_repo)],
            capture_output=True, text=True, timeout=120,
        )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["live"] and out["ready"] and out["model_ready"]
    assert out["server"]["name"] == "ortserve"
    assert "statistics" in out["server"]["extensions"]
    assert out["metadata"]["platform"] == "onnxruntime_onnx"
    assert out["metadata"]["inputs"][0] == {"name": "INPUT0", "datatype": "FP32", "shape": ["-1", "4"]}
    assert out["config"]["max_batch_size"] > 0
    assert out["infer_equal"] and out["infer_outputs"] == ["OUTPUT1"] and out["infer_id"] == "req-7"
    assert out["bytes_equal"]
    assert out["missing_status"] == "StatusCode.NOT_FOUND"
    assert out["stats_success"] == 1 and out["stats_inference_count"] == 3
    assert "system_shared_memory" in out["server"]["extensions"]
    assert out["shm_status"]["regions"]["tensors"]["byte_size"] == "144", out["shm_status"]
    assert out["shm_output0_equal"] and out["shm_output1_equal"]
    assert not out["shm_after"].get("regions")


def _perf_analyzer() -> str | None:
    candidates = [os.environ.get("PERF_ANALYZER", ""), str(ROOT / ".ci/venvs/perf-analyzer/bin/perf_analyzer_wrapped")]
    return next((c for c in candidates if c and shutil.which(c)), None)


def test_perf_analyzer_on_a_config_free_repository(repo: Path) -> None:
    binary = _perf_analyzer()
    if binary is None:
        pytest.skip("perf_analyzer is not installed: run .ci/setup-perf-analyzer.sh (CI does)")
    models.save(models.add_sub(), repo, "add_sub")  # only .onnx files: no config.pbtxt
    assert not list(repo.rglob("*.pbtxt"))
    with serve_in_subprocess(["--model-repository", str(repo), "--grpc-port", "0", "--http-port", "-1"]) as server:
        done = subprocess.run(
            [binary, "-m", "add_sub", "-i", "grpc", "-u", server.grpc_target, "--concurrency-range", "1:64:21",
             "--async", "-p", "300", "-s", "50", "-r", "6", "--percentile=95"],
            capture_output=True, text=True, timeout=300,
        )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    levels = re.findall(r"^Concurrency: (\d+), throughput", output, re.M)
    assert levels == ["1", "22", "43", "64"], output
    # The server-side breakdown comes from ModelStatistics: queue and compute filled in.
    server_lines = re.findall(
        r"Avg request latency: (\d+) usec \(overhead (\d+) usec \+ queue (\d+) usec \+ "
        r"compute input (\d+) usec \+ compute infer (\d+) usec \+ compute output (\d+) usec\)",
        output,
    )
    assert len(server_lines) >= 4, output
    assert all(int(line[4]) > 0 for line in server_lines), output
    assert "error" not in output.lower(), output


def test_perf_analyzer_with_system_shared_memory(repo: Path) -> None:
    """perf_analyzer's --shared-memory system: inputs and outputs in regions it registers itself."""
    binary = _perf_analyzer()
    if binary is None:
        pytest.skip("perf_analyzer is not installed: run .ci/setup-perf-analyzer.sh (CI does)")
    models.save(models.add_sub(), repo, "add_sub")
    with serve_in_thread(repo) as server:
        done = subprocess.run(
            [binary, "-m", "add_sub", "-i", "grpc", "-u", server.grpc_target, "--concurrency-range", "4",
             "--shared-memory", "system", "--output-shared-memory-size", "64", "-p", "300", "-s", "50", "-r", "6"],
            capture_output=True, text=True, timeout=300,
        )
        answered = server.stub.ModelStatistics(pb.ModelStatisticsRequest(name="add_sub")).model_stats[0]
        left = server.stub.SystemSharedMemoryStatus(pb.SystemSharedMemoryStatusRequest())
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert re.search(r"^Concurrency: 4, throughput: [\d.]+ infer/sec", output, re.M), output
    assert answered.inference_stats.success.count > 100 and answered.inference_stats.fail.count == 0
    assert not left.regions  # perf_analyzer unregisters what it registered
