"""The suite's own models and model repositories, built with the `onnx` package.

- `mlp`: FP32 [b, 64] -> 2 x (MatMul + Relu) -> MatMul -> [b, 10]. A few microseconds of compute
  per request: the RPC path is all that is measured.
- `cnn`: FP32 [b, 3, 64, 64] -> three stages of 2 x (Conv 3x3 + Relu) + MaxPool, channels
  w, 2w, 4w -> GlobalAveragePool -> MatMul -> [b, 10]. The width w sets the cost; the default
  is calibrated so that one item at batch 1 takes about 1 ms on the 2-core development machine
  (`calibrate_cnn` redoes it elsewhere: `--cnn-width auto`). Compute dominates; a 48 KiB input.
- `image_mean`: FP32 [b, 3, 224, 224] -> ReduceMean -> [b, 1]. ResNet-50's 602 KB input on a model
  that costs almost nothing: what receiving large requests costs (benchmarks/bigrequest.py).

`write_repository` lays out a Triton repository whose config.pbtxt files are complete (tensors,
max_batch_size, one CPU instance), so that the bare servers need no auto-completion. The scheduler
part of each config is given by the caller: `dynamic_batching { ... }` or nothing (no batching).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8
MLP_FEATURES = 64
CNN_SIZE = 64
CNN_DEPTH = 2
CNN_DEFAULT_WIDTH = 32
CLASSES = 10
MAX_BATCH_SIZE = 64


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """A built model: its ONNX proto and the per-row shapes of its one input and one output."""

    kind: str
    """"mlp", "cnn" or "image_mean"."""
    proto: onnx.ModelProto
    input_dims: tuple[int, ...]
    output_dims: tuple[int, ...]
    description: str


def _finish(graph: onnx.GraphProto) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model


def mlp(features: int = MLP_FEATURES, layers: int = 2) -> ModelSpec:
    rng = np.random.default_rng(0)
    nodes, inits, prev = [], [], "x"
    for i in range(layers):
        w = (rng.standard_normal((features, features)) / np.sqrt(features)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes += [
            helper.make_node("MatMul", [prev, f"w{i}"], [f"m{i}"]),
            helper.make_node("Relu", [f"m{i}"], [f"h{i}"]),
        ]
        prev = f"h{i}"
    head = (rng.standard_normal((features, CLASSES)) / np.sqrt(features)).astype(np.float32)
    inits.append(numpy_helper.from_array(head, "head"))
    nodes.append(helper.make_node("MatMul", [prev, "head"], ["y"]))
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", features])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", CLASSES])],
        initializer=inits,
    )
    return ModelSpec("mlp", _finish(graph), (features,), (CLASSES,), f"MLP {features}-{features}x{layers}-{CLASSES}")


def cnn(width: int = CNN_DEFAULT_WIDTH, size: int = CNN_SIZE, depth: int = CNN_DEPTH) -> ModelSpec:
    rng = np.random.default_rng(0)
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []
    prev, channels = "x", 3
    for stage in range(3):
        out = width * 2**stage
        for i in range(depth):
            name = f"s{stage}c{i}"
            w = (rng.standard_normal((out, channels, 3, 3)) * np.sqrt(2 / (channels * 9))).astype(np.float32)
            inits += [
                numpy_helper.from_array(w, f"{name}_w"),
                numpy_helper.from_array(np.zeros(out, np.float32), f"{name}_b"),
            ]
            nodes += [
                helper.make_node("Conv", [prev, f"{name}_w", f"{name}_b"], [name], pads=[1, 1, 1, 1]),
                helper.make_node("Relu", [name], [f"{name}_r"]),
            ]
            prev, channels = f"{name}_r", out
        nodes.append(helper.make_node("MaxPool", [prev], [f"pool{stage}"], kernel_shape=[2, 2], strides=[2, 2]))
        prev = f"pool{stage}"
    head = (rng.standard_normal((channels, CLASSES)) / np.sqrt(channels)).astype(np.float32)
    inits.append(numpy_helper.from_array(head, "head"))
    nodes += [
        helper.make_node("GlobalAveragePool", [prev], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["flat"]),
        helper.make_node("MatMul", ["flat", "head"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "cnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, size, size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", CLASSES])],
        initializer=inits,
    )
    return ModelSpec(
        "cnn",
        _finish(graph),
        (3, size, size),
        (CLASSES,),
        f"CNN 3x{size}x{size}, {3 * depth} conv3x3 (width {width}, {2 * width}, {4 * width}), {CLASSES} classes",
    )


def image_mean(size: int = 224) -> ModelSpec:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, size, size])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 1])
    nodes = [
        helper.make_node("ReduceMean", ["x"], ["m"], axes=[1, 2, 3], keepdims=0),
        helper.make_node("Unsqueeze", ["m", "axis"], ["y"]),
    ]
    axis = numpy_helper.from_array(np.array([1], np.int64), "axis")
    graph = helper.make_graph(nodes, "image_mean", [x], [y], [axis])
    description = f"FP32 [b, 3, {size}, {size}] -> mean -> [b, 1]"
    return ModelSpec("image_mean", _finish(graph), (3, size, size), (1,), description)


def calibrate_cnn(threads: int, target_ms: float = 1.0, widths: tuple[int, ...] = (16, 24, 32, 40, 48, 64)) -> int:
    """The width whose batch-1 run takes closest to `target_ms` (in ratio) with `threads` threads."""
    import tempfile

    from benchmarks.inprocess import feeds_for, make_session

    best, best_error = widths[0], float("inf")
    with tempfile.TemporaryDirectory() as tmp:
        for width in widths:
            path = Path(tmp) / f"cnn{width}.onnx"
            onnx.save(cnn(width).proto, str(path))
            session = make_session(path, threads)
            feeds = feeds_for(session, 1)
            for _ in range(10):
                session.run(None, feeds)
            times = []
            for _ in range(60):
                start = time.perf_counter()
                session.run(None, feeds)
                times.append(time.perf_counter() - start)
            ms = statistics.median(times) * 1000
            error = abs(np.log(ms / target_ms))
            if error < best_error:
                best, best_error = width, error
            if ms > target_ms:
                break
    return best


_TYPE = "TYPE_FP32"


def config_text(name: str, spec: ModelSpec, scheduler: str = "", parameters: Mapping[str, str] | None = None) -> str:
    """A complete config.pbtxt for `spec` served as `name`; `scheduler` is pasted in as is."""

    def dims(values: tuple[int, ...]) -> str:
        return ", ".join(str(x) for x in values)

    lines = [
        f'name: "{name}"',
        'platform: "onnxruntime_onnx"',
        f"max_batch_size: {MAX_BATCH_SIZE}",
        f'input [ {{ name: "x" data_type: {_TYPE} dims: [ {dims(spec.input_dims)} ] }} ]',
        f'output [ {{ name: "y" data_type: {_TYPE} dims: [ {dims(spec.output_dims)} ] }} ]',
        "instance_group [ { count: 1 kind: KIND_CPU } ]",
    ]
    if scheduler:
        lines.append(scheduler)
    for key, value in (parameters or {}).items():
        lines.append(f'parameters {{ key: "{key}" value: {{ string_value: "{value}" }} }}')
    return "\n".join(lines) + "\n"


def write_model(
    repo: Path, name: str, spec: ModelSpec, scheduler: str = "", parameters: Mapping[str, str] | None = None
) -> Path:
    """`<repo>/<name>/1/model.onnx` and `<repo>/<name>/config.pbtxt`; returns the model file."""
    version = repo / name / "1"
    version.mkdir(parents=True, exist_ok=True)
    path = version / "model.onnx"
    onnx.save(spec.proto, str(path))
    (repo / name / "config.pbtxt").write_text(config_text(name, spec, scheduler, parameters))
    return path
