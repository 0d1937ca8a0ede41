"""`python -m benchmarks.gpu` (issue 3's GPU target) as a user runs it.

On CPU with a tiny ResNet, so that the one command a GPU session will run keeps working on
machines without a GPU; the CUDA mode runs only where onnxruntime has the CUDA provider.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import onnx
import onnxruntime as ort
import pytest

from benchmarks import resnet
from tests.e2e import ROOT, need_perf_analyzer

SMOKE = ["--tiny", "--repeats", "1", "--sweep-s", "0.2", "--window-s", "0.2", "--threads", "1", "--pa-threads", "1"]


def _benchmark(tmp_path: Path, *args: str, timeout_s: float = 90) -> tuple[subprocess.CompletedProcess[str], dict]:
    need_perf_analyzer()
    out = tmp_path / "gpu.json"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu", *args, "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    return done, json.loads(out.read_text()) if out.exists() else {}


def test_resnet50_has_its_shape_and_the_tiny_variant_runs(tmp_path: Path) -> None:
    full = resnet.resnet()
    assert 25.4e6 < full.parameters < 25.7e6  # ResNet-50's 25.6 M less BatchNorm's scales and shifts
    assert sum(n.op_type == "Conv" for n in full.proto.graph.node) == 53  # 49 + 4 projection shortcuts
    tiny = resnet.resnet(**resnet.TINY)
    path = tmp_path / "tiny.onnx"
    onnx.save(tiny.proto, str(path))
    onnx.checker.check_model(str(path))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    import numpy as np

    (y,) = session.run(None, {"x": np.ones((3, *tiny.input_dims), np.float32)})
    assert y.shape == (3, *tiny.output_dims) and np.isfinite(y).all()


def test_the_server_config_carries_the_batching_parameters_asked_for() -> None:
    from google.protobuf import text_format

    from benchmarks.gpu import config_text
    from ortserve.repository.batch_policy import batch_policy
    from ortserve_client.proto import model_config_pb2 as mc

    spec = resnet.resnet(**resnet.TINY)
    asked = text_format.Parse(config_text(spec, 64, "cpu", 1, "", "1,8", "off"), mc.ModelConfig())
    policy = batch_policy(asked, device="cpu")
    assert policy.batch_shapes == (1, 8, 64) and not policy.hold
    default = batch_policy(text_format.Parse(config_text(spec, 64, "cuda"), mc.ModelConfig()), device="cuda")
    assert default.hold and default.batch_shapes[-1] == 64


def test_cpu_smoke_prints_the_table_and_a_verdict(tmp_path: Path) -> None:
    done, result = _benchmark(
        tmp_path, "--device", "cpu", "--instances", "1,2", "--diagnose-s", "0.1",
        "--server-arg=--gil-switch-interval-ms=0.5", "--batch-shapes", "1,8,64", "--batch-hold", "off", *SMOKE,
    )
    assert done.returncode in (0, 3), done.stdout + done.stderr  # met or missed: both are a finished run
    assert "in-process ORT, IO binding, host input, best batch" in done.stdout
    assert "ortserve, dynamic_batching (session.run, host arrays), 1 instance " in done.stdout
    assert "ortserve, dynamic_batching (session.run, host arrays), 2 instances " in done.stdout
    assert "no IO binding on the server side" in done.stdout
    verdict = [line for line in done.stdout.splitlines() if line.startswith("verdict: ortserve at C=128")]
    assert verdict and (">= 0.90: met" in verdict[0] or ">= 0.90: missed" in verdict[0]), done.stdout
    assert result["verdict"] in ("met", "missed")
    # The session.run paths, each timed on the session it names, and the servers' own providers.
    paths = result["env"]["run_paths"]
    assert [p["name"] for p in paths] == [
        "iobinding", "run", "run, fresh batch", "ortserve instance", "ortserve instance, busy GIL",
        "ortserve instance, busy GIL, switch 0.5 ms",
    ]
    assert all(p["ms_per_batch"] > 0 and p["runs"] >= 3 and p["providers"] == "CPUExecutionProvider" for p in paths)
    assert "session.run paths at batch 64" in done.stdout
    assert "providers ['CPUExecutionProvider']" in done.stdout  # the servers' log, echoed
    assert result["server_args"] == ["--gil-switch-interval-ms=0.5"]
    assert result["env"]["batch_shapes"] == "1,8,64" and result["env"]["batch_hold"] == "off"
    # The first run at unseen batch sizes, in-process and on an ortserve instance.
    shapes = result["env"]["new_shapes"]
    assert [c["name"] for c in shapes] == ["in-process session.run", "ortserve instance"]
    assert all(c["sizes"] == [3, 5, 60, 61, 62, 63] and len(c["first_ms"]) == len(c["second_ms"]) == 6 for c in shapes)
    assert all(len(c["alternating_ms"]) == 6 and min(c["alternating_ms"]) > 0 for c in shapes)
    assert "first run at a batch size not run before" in done.stdout
    # The servers' batch shapes (listed, so padded on CPU too) and their warm-up, from their logs.
    assert "padded to the batch shapes 1,8,64,128" in done.stdout
    assert "warmed up at batch sizes 1,8,64,128 on" in done.stdout and "a change of batch shape costs" in done.stdout
    best = result["best_instances"]
    assert best in (1, 2) and f"({best} instance" in verdict[0] and "the best of 1, 2" in verdict[0]
    for n in ("1", "2"):
        samples = [s for c in ("32", "128") for s in result["server"][n][c]]
        assert all(s["error"] == "" and s["infer_per_s"] > 0 and 0 < s["loop_thread"] <= 1.2 for s in samples)
        assert all(s["loop_us_per_request"] > 0 and s["faults_per_request"] >= 0 for s in samples), samples
        assert len(result["ratio_host"][n]["128"]) == 1
    assert "loop µs/req" in done.stdout and "faults/req" in done.stdout


def test_cpu_smoke_with_the_images_in_system_shared_memory(tmp_path: Path) -> None:
    done, result = _benchmark(tmp_path, "--device", "cpu", "--concurrency", "8", "--shared-memory", "system", *SMOKE)
    assert done.returncode in (0, 3), done.stdout + done.stderr
    assert result["shared_memory"] == "system"
    assert "1 instance, inputs in system shared memory" in done.stdout
    assert "verdict: ortserve at C=8 (inputs in system shared memory)" in done.stdout
    samples = result["server"]["1"]["8"]
    assert samples and all(s["error"] == "" and s["infer_per_s"] > 0 for s in samples), samples


def test_cpu_smoke_with_two_server_processes(tmp_path: Path) -> None:
    done, result = _benchmark(
        tmp_path, "--device", "cpu", "--concurrency", "3,8", "--processes", "2", "--diagnose-batch", "0", *SMOKE
    )
    assert done.returncode in (0, 3), done.stdout + done.stderr
    assert result["processes"] == 2
    assert "1 instance in each of 2 processes (a perf_analyzer each)" in done.stdout
    assert "verdict: ortserve in 2 processes at C=8" in done.stdout
    assert done.stdout.count("providers ['CPUExecutionProvider']") == 2  # both servers' logs, echoed
    for c in ("3", "8"):
        (sample,) = result["server"]["1"][c]
        assert sample["error"] == "", sample
        # Both processes answered, and the row is their sum.
        assert len(sample["per_process"]) == 2 and min(sample["per_process"]) > 0, sample
        assert abs(sample["infer_per_s"] - sum(sample["per_process"])) < 1e-6 * sample["infer_per_s"]
        assert sample["loop_us_per_request"] > 0 and sample["mean_batch"] >= 1


def test_processes_share_out_the_concurrency_and_the_windows() -> None:
    from benchmarks.gpu import split_load

    assert split_load(128, 4000, 1) == [(128, 4000)]
    assert split_load(128, 4000, 3) == [(43, 1343), (43, 1343), (42, 1312)]
    assert split_load(3, 40, 2) == [(2, 26), (1, 13)]
    assert sum(c for c, _ in split_load(7, 1000, 4)) == 7


def test_processes_must_fit_the_concurrency(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu", "--device", "cpu", "--concurrency", "2,8", "--processes", "3"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "--processes 3: expected 1 to the lowest --concurrency (2)" in done.stderr


def test_cuda_mode_fails_clearly_without_the_cuda_provider(tmp_path: Path) -> None:
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has the CUDA provider")
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu", "--device", "cuda", "--tiny"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "cannot start: --device cuda" in done.stderr and "CUDAExecutionProvider" in done.stderr


@pytest.mark.skipif(
    "CUDAExecutionProvider" not in ort.get_available_providers(),
    reason="needs onnxruntime-gpu with CUDAExecutionProvider (a GPU machine: benchmarks/gpu_device.sh)",
)
def test_cuda_smoke(tmp_path: Path) -> None:
    done, result = _benchmark(tmp_path, "--device", "cuda", *SMOKE, timeout_s=300)
    assert done.returncode in (0, 3), done.stdout + done.stderr
    assert "CUDAExecutionProvider" in result["env"]["providers"]
    assert result["verdict"] in ("met", "missed")
    # The session.run paths, each timed on the session it names, and the servers' own providers.
    paths = result["env"]["run_paths"]
    assert [p["name"] for p in paths] == [
        "iobinding", "run", "run, fresh batch", "ortserve instance", "ortserve instance, busy GIL",
        "ortserve instance, busy GIL, switch 0.5 ms",
    ]
    # On a GPU every path's session holds the CUDA provider first (CPU stays as ONNX Runtime's fallback).
    assert all(
        p["ms_per_batch"] > 0 and p["runs"] >= 3 and p["providers"].startswith("CUDAExecutionProvider") for p in paths
    ), paths
    assert "session.run paths at batch 64" in done.stdout
    assert "providers ['CUDAExecutionProvider'" in done.stdout  # the servers' log, echoed
    assert result["server_args"] == []
    for c in ("32", "128"):
        samples = result["server"]["1"][c]
        assert all(s["error"] == "" and s["infer_per_s"] > 0 for s in samples), samples
