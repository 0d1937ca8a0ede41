"""Rebuild the demo model `iris`: train on scikit-learn's Iris data, write the ONNX graph by hand.

    python -m ortserve.demo.build_demo [--out DIR]

1. Split the 150 Iris flowers 70/30 (stratified, fixed seed) and fit StandardScaler +
   LogisticRegression on the training part; print the held-out accuracy.
2. Write the fitted parameters into an ONNX graph with `onnx.helper` (no skl2onnx):
   input  "input"          FP32  [batch, 4]   sepal length, sepal width, petal length, petal width (cm)
   output "probabilities"  FP32  [batch, 3]   Softmax over setosa, versicolor, virginica
   output "label"          INT64 [batch]      ArgMax of the logits, i.e. the class index
   as (input - mean) / scale -> Gemm(coef, intercept) -> Softmax / ArgMax; opset 17, IR 8.
3. Check that ONNX Runtime on the graph reproduces scikit-learn on all 150 flowers
   (predict_proba within 1e-5, predict exactly) and stop with an error before writing otherwise.
4. Write `<out>/iris/1/model.onnx` (same bytes on every run with the same library versions) and,
   when `<out>` is not the bundled repository, copy `iris/config.pbtxt` beside it so that `<out>`
   is a complete model repository.

scikit-learn is imported here only: it is a development dependency, never a serving one.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from ortserve.demo import DEMO_REPOSITORY

MODEL_NAME = "iris"
OPSET = 17
IR_VERSION = 8  # accepted by every onnxruntime >= 1.15
RANDOM_STATE = 0
TEST_FRACTION = 0.3
PROBA_ATOL = 1e-5

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


class DemoBuildError(RuntimeError):
    """The ONNX graph does not reproduce the scikit-learn model; nothing was written."""


@dataclass(frozen=True, slots=True)
class FittedClassifier:
    """What the graph needs from the fitted pipeline, plus what the check compares against."""

    mean: FloatArray
    """StandardScaler.mean_, shape [4]."""
    scale: FloatArray
    """StandardScaler.scale_, shape [4]."""
    coef: FloatArray
    """LogisticRegression.coef_, shape [3, 4]."""
    intercept: FloatArray
    """LogisticRegression.intercept_, shape [3]."""
    feature_names: list[str]
    class_names: list[str]
    held_out_accuracy: float
    """Accuracy on the held-out flowers, which the fit never saw."""
    held_out_size: int
    """Number of held-out flowers."""
    data: FloatArray
    """All 150 flowers, shape [150, 4]."""
    expected_proba: FloatArray
    """scikit-learn's predict_proba on `data`, shape [150, 3]."""
    expected_label: IntArray
    """scikit-learn's predict on `data`, shape [150]."""


def train() -> FittedClassifier:
    """Fit StandardScaler + LogisticRegression on 70% of Iris; score it on the other 30%."""
    from sklearn.datasets import load_iris  # type: ignore[import-untyped]
    from sklearn.exceptions import ConvergenceWarning  # type: ignore[import-untyped]
    from sklearn.linear_model import LogisticRegression  # type: ignore[import-untyped]
    from sklearn.model_selection import train_test_split  # type: ignore[import-untyped]
    from sklearn.pipeline import make_pipeline  # type: ignore[import-untyped]
    from sklearn.preprocessing import StandardScaler  # type: ignore[import-untyped]

    iris = load_iris()
    x, y = iris.data, iris.target
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=TEST_FRACTION, stratify=y, random_state=RANDOM_STATE
    )
    pipeline = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, random_state=RANDOM_STATE))
    with warnings.catch_warnings():
        # An unconverged fit would ship a model that differs from run to run of the solver.
        warnings.simplefilter("error", ConvergenceWarning)
        pipeline.fit(x_train, y_train)
    scaler, classifier = pipeline[0], pipeline[-1]
    # ArgMax yields the class index; that is the label only while classes_ is 0..n-1.
    if not np.array_equal(classifier.classes_, np.arange(len(iris.target_names))):
        raise DemoBuildError(f"expected classes 0..{len(iris.target_names) - 1}, got {classifier.classes_}")
    return FittedClassifier(
        mean=scaler.mean_,
        scale=scaler.scale_,
        coef=classifier.coef_,
        intercept=classifier.intercept_,
        feature_names=[str(n) for n in iris.feature_names],
        class_names=[str(n) for n in iris.target_names],
        held_out_accuracy=float(pipeline.score(x_test, y_test)),
        held_out_size=len(y_test),
        data=x,
        expected_proba=pipeline.predict_proba(x),
        expected_label=pipeline.predict(x).astype(np.int64),
    )


def _const(name: str, values: FloatArray) -> onnx.TensorProto:
    return numpy_helper.from_array(values.astype(np.float32), name)


def to_onnx(fitted: FittedClassifier) -> onnx.ModelProto:
    """The classifier as an ONNX graph: (input - mean) / scale -> Gemm -> Softmax, ArgMax."""
    n_features, n_classes = fitted.coef.shape[1], fitted.coef.shape[0]
    nodes = [
        helper.make_node("Sub", ["input", "mean"], ["centered"]),
        helper.make_node("Div", ["centered", "scale"], ["standardized"]),
        # logits = standardized @ coef.T + intercept
        helper.make_node("Gemm", ["standardized", "coef", "intercept"], ["logits"], transB=1),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
        helper.make_node("ArgMax", ["logits"], ["label"], axis=1, keepdims=0),
    ]
    graph = helper.make_graph(
        nodes,
        MODEL_NAME,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", n_features])],
        [
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", n_classes]),
            helper.make_tensor_value_info("label", TensorProto.INT64, ["batch"]),
        ],
        initializer=[
            _const("mean", fitted.mean),
            _const("scale", fitted.scale),
            _const("coef", fitted.coef),
            _const("intercept", fitted.intercept),
        ],
        doc_string=(
            "Iris classifier (StandardScaler + LogisticRegression). input columns: "
            + ", ".join(fitted.feature_names)
            + "; probabilities columns and label values: "
            + ", ".join(f"{i}={name}" for i, name in enumerate(fitted.class_names))
        ),
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="ortserve.demo.build_demo",
        doc_string="Built by `python -m ortserve.demo.build_demo` from scikit-learn's Iris data set.",
    )
    model.ir_version = IR_VERSION
    helper.set_model_props(
        model,
        {
            "feature_names": ",".join(fitted.feature_names),
            "class_names": ",".join(fitted.class_names),
            "held_out_accuracy": f"{fitted.held_out_accuracy:.4f}",
        },
    )
    onnx.checker.check_model(model, full_check=True)
    return model


def verify(model_bytes: bytes, fitted: FittedClassifier) -> float:
    """Run the graph in ONNX Runtime on every flower; raise DemoBuildError unless it matches.

    Returns the largest absolute difference of the probabilities.
    """
    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    proba, label = session.run(["probabilities", "label"], {"input": fitted.data.astype(np.float32)})
    if proba.dtype != np.float32 or proba.shape != fitted.expected_proba.shape:
        raise DemoBuildError(
            f"probabilities: expected FP32 {list(fitted.expected_proba.shape)}, "
            f"got {proba.dtype} {list(proba.shape)}"
        )
    if label.dtype != np.int64 or label.shape != fitted.expected_label.shape:
        raise DemoBuildError(
            f"label: expected INT64 {list(fitted.expected_label.shape)}, "
            f"got {label.dtype} {list(label.shape)}"
        )
    max_diff = float(np.max(np.abs(proba.astype(np.float64) - fitted.expected_proba)))
    if max_diff > PROBA_ATOL:
        raise DemoBuildError(
            f"probabilities differ from scikit-learn's predict_proba by {max_diff:.3g} "
            f"(allowed {PROBA_ATOL:g})"
        )
    mismatched = np.flatnonzero(label != fitted.expected_label)
    if mismatched.size:
        raise DemoBuildError(
            f"label differs from scikit-learn's predict on {mismatched.size} of "
            f"{label.size} rows (first: row {mismatched[0]})"
        )
    return max_diff


def write(model_bytes: bytes, out: Path) -> Path:
    """Write <out>/iris/1/model.onnx, plus iris/config.pbtxt when out is not the bundled repository."""
    path = out / MODEL_NAME / "1" / "model.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model_bytes)
    config = DEMO_REPOSITORY / MODEL_NAME / "config.pbtxt"
    target = out / MODEL_NAME / "config.pbtxt"
    if not (target.exists() and target.samefile(config)):
        shutil.copyfile(config, target)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ortserve.demo.build_demo", description="Rebuild the demo model 'iris'."
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=DEMO_REPOSITORY,
        help=f"model repository to write {MODEL_NAME}/ into (default: {DEMO_REPOSITORY})",
    )
    args = parser.parse_args(argv)

    try:
        fitted = train()
        correct = round(fitted.held_out_accuracy * fitted.held_out_size)
        print(f"held-out accuracy: {fitted.held_out_accuracy:.4f} ({correct}/{fitted.held_out_size} flowers)")
        model_bytes = to_onnx(fitted).SerializeToString(deterministic=True)
        max_diff = verify(model_bytes, fitted)
    except DemoBuildError as exc:
        print(f"error: nothing written: {exc}", file=sys.stderr)
        return 1
    print(
        f"onnxruntime matches scikit-learn on all {len(fitted.data)} flowers "
        f"(max |proba diff| {max_diff:.2g}, labels identical)"
    )
    print(f"wrote {write(model_bytes, args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
