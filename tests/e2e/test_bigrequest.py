"""`python -m benchmarks.bigrequest` (large requests on a free model) as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort

from benchmarks import bigrequest, models
from tests.e2e import ROOT, need_perf_analyzer


def test_image_mean_model_averages_each_image() -> None:
    spec = models.image_mean(8)
    session = ort.InferenceSession(spec.proto.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((3, *spec.input_dims)).astype(np.float32)
    (y,) = session.run(None, {"x": x})
    assert y.shape == (3, *spec.output_dims)
    np.testing.assert_allclose(y[:, 0], x.reshape(3, -1).mean(axis=1), rtol=1e-5, atol=1e-6)


def test_summary_takes_median_and_range_of_rounds_without_errors() -> None:
    rounds = [
        bigrequest.Round("a", 100, 10, 20, 1.0, 2.0),
        bigrequest.Round("a", 300, 30, 40, 3.0, 4.0),
        bigrequest.Round("a", 200, 20, 30, 2.0, 3.0),
        bigrequest.Round("a", 0, 0, 0, 0, 0, error="perf_analyzer ran past 300 s"),
        bigrequest.Round("b", 999, 1, 1, 1, 1),
    ]
    s = bigrequest.summarize(rounds, "a")
    assert s["infer_per_s"] == (200, 100, 300) and s["minflt"] == (2.0, 1.0, 3.0)
    assert bigrequest.summarize(rounds, "c") == {}


def test_benchmark_runs_its_arms_and_reports_each_round(tmp_path: Path) -> None:
    need_perf_analyzer()
    out = tmp_path / "big.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.bigrequest",
            "--rounds",
            "1",
            "--requests",
            "200",
            "--size",
            "32",
            "--threads",
            "1",
            "--arms",
            "echo,ortserve,ortserve-malloc-untouched,ortserve-shm",
            "--json",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    rounds = json.loads(out.read_text())
    assert [r["arm"] for r in rounds] == ["echo", "ortserve", "ortserve-malloc-untouched", "ortserve-shm"]
    for r in rounds:
        assert r["infer_per_s"] > 0 and r["loop_us"] > 0 and r["process_us"] >= r["loop_us"], r
    assert "| ortserve | " in done.stdout and "12 KiB requests" in done.stdout
