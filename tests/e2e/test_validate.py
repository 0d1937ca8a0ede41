"""`ortserve validate` on real models trained on scikit-learn's bundled data sets, and the server's
`require_validation` gate that refuses versions without a passing record.

The Iris classifier is the demo model (`python -m ortserve.demo.build_demo --out DIR` trains it);
the held-out flowers are the 30% its training never saw. A regression model is fitted here on
the diabetes data set and written as ONNX by hand.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from ortserve import cli
from ortserve.demo import build_demo
from ortserve_client.proto import grpc_service_pb2 as pb
from tests.harness import serve_in_thread
from tests.wire import infer_request, outputs_of, rpc_error, wait_for

FLOWERS = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]], np.float32)


def validate(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """`ortserve validate ...` as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "ortserve", "validate", *map(str, args)], capture_output=True, text=True, timeout=120
    )


def validate_here(*args: str | Path) -> int:
    """The same command in this process (faster: no interpreter start)."""
    return cli.main(["validate", *map(str, args)])


def record(model_dir: Path, version: int = 1) -> dict[str, Any]:
    result: dict[str, Any] = json.loads((model_dir / str(version) / "validation.json").read_text())
    return result


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo repository rebuilt from scikit-learn, and the held-out flowers as held_out.npz."""
    out = tmp_path_factory.mktemp("built")
    subprocess.run([sys.executable, "-m", "ortserve.demo.build_demo", "--out", str(out / "repo")],
                   check=True, capture_output=True, timeout=300)
    from sklearn.datasets import load_iris  # type: ignore[import-untyped]
    from sklearn.model_selection import train_test_split  # type: ignore[import-untyped]

    iris = load_iris()
    _, x_test, _, y_test = train_test_split(
        iris.data, iris.target, test_size=build_demo.TEST_FRACTION, stratify=iris.target,
        random_state=build_demo.RANDOM_STATE,
    )
    np.savez(out / "held_out.npz", input=x_test.astype(np.float32), label=y_test.astype(np.int64))
    return out


@pytest.fixture
def iris(built: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A fresh copy of the iris model directory (records are written into it) and the data."""
    shutil.copytree(built / "repo", tmp_path / "repo")
    return tmp_path / "repo" / "iris", built / "held_out.npz"


def altered(model_dir: Path, initializer: str, change: Any) -> bytes:
    """The iris model with one initializer changed: a model that loads and runs, but is wrong."""
    model = onnx.load(str(model_dir / "1" / "model.onnx"))
    for tensor in model.graph.initializer:
        if tensor.name == initializer:
            tensor.CopyFrom(numpy_helper.from_array(change(numpy_helper.to_array(tensor)), initializer))
    return model.SerializeToString()


def test_the_demo_model_passes_on_held_out_data(iris: tuple[Path, Path]) -> None:
    model_dir, data = iris
    done = validate(model_dir, "--data", data, "--labels", "label", "--min-accuracy", "0.9", "--max-p99-ms", "1000")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "accuracy 0.9778 (44/45) from output 'label'" in done.stdout
    assert "latency at batch size 1: p50" in done.stdout and "PASS" in done.stdout
    found = record(model_dir)
    assert found["passed"] is True and found["failures"] == []
    assert found["metrics"]["accuracy"] == pytest.approx(44 / 45)
    assert found["model_sha256"] == hashlib.sha256((model_dir / "1" / "model.onnx").read_bytes()).hexdigest()
    assert set(found["latency_ms"]) == {"1", "45"}  # 1 and max_batch_size 64, capped by the 45 flowers
    assert found["sanity"]["nonfinite_values"] == {"probabilities": 0}
    assert found["data"]["rows"] == 45


def test_a_wrong_model_fails_the_gate(iris: tuple[Path, Path]) -> None:
    model_dir, data = iris
    (model_dir / "1" / "model.onnx").write_bytes(altered(model_dir, "coef", lambda c: np.roll(c, 1, axis=0)))
    done = validate(model_dir, "--data", data, "--labels", "label", "--min-accuracy", "0.9")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "FAIL: accuracy" in done.stdout and "is below --min-accuracy 0.9" in done.stdout
    assert record(model_dir)["passed"] is False


def test_a_model_answering_nan_fails_its_sanity_check(iris: tuple[Path, Path]) -> None:
    model_dir, data = iris
    (model_dir / "1" / "model.onnx").write_bytes(altered(model_dir, "scale", np.zeros_like))
    assert validate_here(model_dir, "--data", data) == 1
    failures = record(model_dir)["failures"]
    assert any("output 'probabilities' holds" in f and "NaN or Inf" in f for f in failures), failures


def test_too_slow_fails_the_latency_threshold(iris: tuple[Path, Path]) -> None:
    model_dir, data = iris
    assert validate_here(model_dir, "--data", data, "--max-p99-ms", "0.000001", "--batch-sizes", "1,8") == 1
    found = record(model_dir)
    assert set(found["latency_ms"]) == {"1", "8"}
    assert any("at batch size 1 is above --max-p99-ms" in f for f in found["failures"])


def test_a_config_that_contradicts_the_graph_is_refused(iris: tuple[Path, Path]) -> None:
    model_dir, data = iris
    config = model_dir / "config.pbtxt"
    config.write_text(config.read_text() + '\noutput [ { name: "label" data_type: TYPE_FP32 dims: [ 1 ] } ]\n')
    assert validate_here(model_dir, "--data", data) == 2
    found = record(model_dir)
    assert found["passed"] is False and "output 'label'" in found["failures"][0]


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("--labels", "nope"), "no labels 'nope'"),
        (("--min-accuracy", "0.5"), "--min-accuracy needs --labels"),
        (("--version", "7"), "has no version 7"),
        (("--batch-sizes", "1,999"), "outside 1..64"),
    ],
)
def test_unusable_arguments_exit_2(iris: tuple[Path, Path], capsys: pytest.CaptureFixture[str], args: tuple[str, ...],
                                   fragment: str) -> None:
    model_dir, data = iris
    assert validate_here(model_dir, "--data", data, "--no-record", *args) == 2
    out = capsys.readouterr()
    assert fragment in out.out + out.err
    assert not (model_dir / "1" / "validation.json").exists()


def test_data_without_an_input_is_refused(iris: tuple[Path, Path], tmp_path: Path) -> None:
    model_dir, _ = iris
    np.savez(tmp_path / "bad.npz", features=FLOWERS)
    assert validate_here(model_dir, "--data", tmp_path / "bad.npz") == 2
    assert "no array for input(s) ['input']" in record(model_dir)["failures"][0]


def diabetes_model(repo: Path) -> tuple[Path, Path]:
    """LinearRegression on scikit-learn's diabetes data, as MatMul + Add; returns (model dir, held-out .npz)."""
    from sklearn.datasets import load_diabetes
    from sklearn.linear_model import LinearRegression  # type: ignore[import-untyped]
    from sklearn.model_selection import train_test_split

    x, y = load_diabetes(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.25, random_state=0)
    fitted = LinearRegression().fit(x_train, y_train)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["features", "w"], ["xw"]), helper.make_node("Add", ["xw", "b"], ["target"])],
        "diabetes",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", x.shape[1]])],
        [helper.make_tensor_value_info("target", TensorProto.FLOAT, ["batch", 1])],
        initializer=[
            numpy_helper.from_array(fitted.coef_.reshape(-1, 1).astype(np.float32), "w"),
            numpy_helper.from_array(np.array([fitted.intercept_], np.float32), "b"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = repo / "diabetes" / "1" / "model.onnx"
    path.parent.mkdir(parents=True)
    onnx.save(model, str(path))
    np.savez(repo / "diabetes.npz", features=x_test.astype(np.float32), target=y_test)
    return path.parent.parent, repo / "diabetes.npz"


def test_a_regression_model_is_judged_by_its_rmse(tmp_path: Path) -> None:
    model_dir, data = diabetes_model(tmp_path)
    done = validate(model_dir, "--data", data, "--labels", "target", "--max-rmse", "70")
    assert done.returncode == 0, done.stdout + done.stderr
    metrics = record(model_dir)["metrics"]
    assert metrics["task"] == "regression" and metrics["output"] == "target"
    assert 40 < metrics["rmse"] < 70 and 0.2 < metrics["r2"] < 0.7
    assert validate_here(model_dir, "--data", data, "--labels", "target", "--max-rmse", "30") == 1
    assert "is above --max-rmse 30" in record(model_dir)["failures"][0]


def test_the_server_promotes_only_validated_versions(iris: tuple[Path, Path]) -> None:
    model_dir, data = iris
    assert validate_here(model_dir, "--data", data, "--labels", "label", "--min-accuracy", "0.9") == 0
    good = (model_dir / "1" / "model.onnx").read_bytes()
    wrong = altered(model_dir, "coef", lambda c: np.roll(c, 1, axis=0))
    settings: dict[str, Any] = {"http_port": -1, "model_control_mode": "explicit", "load_model": "iris",
                                "require_validation": True}
    with serve_in_thread(model_dir.parent, **settings) as srv:
        def labels() -> tuple[str, list[int]]:
            response = srv.stub.ModelInfer(infer_request("iris", {"input": FLOWERS}, outputs=["label"]))
            return response.model_version, outputs_of(response)["label"].tolist()

        def load(config: str | None = None) -> None:
            request = pb.RepositoryModelLoadRequest(model_name="iris")
            if config is not None:
                request.parameters["config"].string_param = config
            srv.stub.RepositoryModelLoad(request)

        def reason(version: str) -> str:
            rows = srv.stub.RepositoryIndex(pb.RepositoryIndexRequest()).models
            return next(r.reason for r in rows if r.name == "iris" and r.version == version)

        assert labels() == ("1", [0, 2])

        # The latest policy counts validated versions only: a new one without a record waits.
        (model_dir / "2").mkdir()
        (model_dir / "2" / "model.onnx").write_bytes(wrong)
        load()
        assert labels() == ("1", [0, 2]) and "version(s) 2 not validated yet" in reason("1")
        assert validate_here(model_dir, "--version", "2", "--data", data, "--labels", "label",
                             "--min-accuracy", "0.9") == 1  # a failing record: still waiting
        load()
        assert labels() == ("1", [0, 2])

        (model_dir / "2" / "model.onnx").write_bytes(good)
        assert validate_here(model_dir, "--version", "2", "--data", data, "--labels", "label",
                             "--min-accuracy", "0.9") == 0
        load()
        assert labels() == ("2", [0, 2])

        (model_dir / "2" / "model.onnx").write_bytes(wrong)  # the record vouches for other bytes
        error = rpc_error(load)
        assert error.code() is grpc.StatusCode.UNAVAILABLE and "SHA-256 differs" in error.details()
        assert "keeps serving" in reason("2") and labels() == ("2", [0, 2])

        # A policy naming versions outright gets an error for an unvalidated one.
        (model_dir / "3").mkdir()
        (model_dir / "3" / "model.onnx").write_bytes(good)
        error = rpc_error(lambda: load('{"version_policy": {"specific": {"versions": [1, 3]}}}'))
        assert "version 3 is not validated: no validation.json" in error.details()
        assert labels() == ("1", [0, 2])  # version 1 serves, the policy's default now
        assert "version 3 is not validated" in reason("3")


def test_in_poll_mode_a_passing_record_promotes_the_waiting_version(iris: tuple[Path, Path]) -> None:
    model_dir, data = iris
    assert validate_here(model_dir, "--data", data, "--labels", "label", "--min-accuracy", "0.9") == 0
    shutil.copytree(model_dir / "1", model_dir / "2")
    (model_dir / "2" / "validation.json").unlink()
    settings: dict[str, Any] = {"http_port": -1, "model_control_mode": "poll", "repository_poll_seconds": 0.1,
                                "require_validation": True}
    with serve_in_thread(model_dir.parent, **settings) as srv:
        def version() -> str:
            return str(srv.stub.ModelInfer(infer_request("iris", {"input": FLOWERS})).model_version)

        assert version() == "1"  # version 2 waits for its record
        assert validate_here(model_dir, "--version", "2", "--data", data, "--labels", "label") == 0
        wait_for(lambda: version() == "2")
