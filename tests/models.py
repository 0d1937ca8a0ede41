"""Small real ONNX models for the tests, built with the `onnx` package.

Every builder returns an `onnx.ModelProto`; `save(model, repo, name, version)` lays it out
as `<repo>/<name>/<version>/model.onnx`. Batchable models have a symbolic first dim.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import onnx
from onnx import TensorProto, helper

OPSET = 17
IR_VERSION = 8  # accepted by every onnxruntime >= 1.15

# KServe datatype -> ONNX element type.
ONNX_TYPES = {
    "BOOL": TensorProto.BOOL,
    "UINT8": TensorProto.UINT8,
    "UINT16": TensorProto.UINT16,
    "UINT32": TensorProto.UINT32,
    "UINT64": TensorProto.UINT64,
    "INT8": TensorProto.INT8,
    "INT16": TensorProto.INT16,
    "INT32": TensorProto.INT32,
    "INT64": TensorProto.INT64,
    "FP16": TensorProto.FLOAT16,
    "FP32": TensorProto.FLOAT,
    "FP64": TensorProto.DOUBLE,
    "BYTES": TensorProto.STRING,
}

Dims = Sequence[int | str | None]


def _model(graph: onnx.GraphProto) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model


def _vi(name: str, datatype: str, dims: Dims) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, ONNX_TYPES[datatype], list(dims))


def add_sub(datatype: str = "FP32", dims: Dims = ("batch", 4)) -> onnx.ModelProto:
    """INPUT0, INPUT1 -> OUTPUT0 = INPUT0 + INPUT1, OUTPUT1 = INPUT0 - INPUT1 (Triton's classic)."""
    nodes = [
        helper.make_node("Add", ["INPUT0", "INPUT1"], ["OUTPUT0"]),
        helper.make_node("Sub", ["INPUT0", "INPUT1"], ["OUTPUT1"]),
    ]
    graph = helper.make_graph(
        nodes,
        "add_sub",
        [_vi("INPUT0", datatype, dims), _vi("INPUT1", datatype, dims)],
        [_vi("OUTPUT0", datatype, dims), _vi("OUTPUT1", datatype, dims)],
    )
    return _model(graph)


def identity(datatype: str = "FP32", dims: Dims = ("batch", 4)) -> onnx.ModelProto:
    """x -> y, unchanged: round-trips any datatype, BYTES (ONNX string) included."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "identity",
        [_vi("x", datatype, dims)],
        [_vi("y", datatype, dims)],
    )
    return _model(graph)


def scale(factor: float = 2.0, dims: Dims = ("batch", 3)) -> onnx.ModelProto:
    """FP32 x -> y = x * factor; distinct factors tell model versions apart."""
    const = helper.make_tensor("factor", TensorProto.FLOAT, [], [factor])
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "factor"], ["y"])],
        "scale",
        [_vi("x", "FP32", dims)],
        [_vi("y", "FP32", dims)],
        initializer=[const],
    )
    return _model(graph)


def rows_seen(dims: Dims = ("batch", 3)) -> onnx.ModelProto:
    """FP32 x -> y = x + the number of rows of the batch the session ran (tells padding apart)."""
    index = helper.make_tensor("first", TensorProto.INT64, [], [0])
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Gather", ["shape", "first"], ["rows"], axis=0),
        helper.make_node("Cast", ["rows"], ["rows_f"], to=TensorProto.FLOAT),
        helper.make_node("Add", ["x", "rows_f"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "rows_seen", [_vi("x", "FP32", dims)], [_vi("y", "FP32", dims)], initializer=[index]
    )
    return _model(graph)


def lookup(table: Sequence[float] = (10.0, 11.0, 12.0, 13.0)) -> onnx.ModelProto:
    """INT64 idx [batch, 1] -> y = table[idx] (FP32): an index outside the table fails the run itself
    (ONNX Runtime's Gather checks its indices: INVALID_ARGUMENT), whatever requests share the batch."""
    values = helper.make_tensor("table", TensorProto.FLOAT, [len(table)], list(table))
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "idx"], ["y"], axis=0)],
        "lookup",
        [_vi("idx", "INT64", ("batch", 1))],
        [_vi("y", "FP32", ("batch", 1))],
        initializer=[values],
    )
    return _model(graph)


def allocating() -> onnx.ModelProto:
    """INT64 n [batch, 1] -> y = n as FP32, after allocating max(n) elements (Range): a value too large
    fails the run with ONNX Runtime's FAIL (its allocator refuses), as a model out of memory does."""
    nodes = [
        helper.make_node("ReduceMax", ["n"], ["most"], keepdims=0),
        helper.make_node("Range", ["zero", "most", "one"], ["span"]),
        helper.make_node("Cast", ["span"], ["span_f"], to=TensorProto.FLOAT),
        helper.make_node("ReduceSum", ["span_f"], ["total"], keepdims=0),
        helper.make_node("Mul", ["total", "zero_f"], ["nothing"]),
        helper.make_node("Cast", ["n"], ["n_f"], to=TensorProto.FLOAT),
        helper.make_node("Add", ["n_f", "nothing"], ["y"]),
    ]
    constants = [
        helper.make_tensor("zero", TensorProto.INT64, [], [0]),
        helper.make_tensor("one", TensorProto.INT64, [], [1]),
        helper.make_tensor("zero_f", TensorProto.FLOAT, [], [0.0]),
    ]
    graph = helper.make_graph(
        nodes, "allocating", [_vi("n", "INT64", ("batch", 1))], [_vi("y", "FP32", ("batch", 1))], initializer=constants
    )
    return _model(graph)


def save(model: onnx.ModelProto, repo: Path, name: str, version: int = 1) -> Path:
    """Write `model` to <repo>/<name>/<version>/model.onnx and return that path."""
    path = repo / name / str(version) / "model.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def slow_matmul(chain: int = 10, width: int = 1024) -> onnx.ModelProto:
    """FP32 x [batch, width] -> y = x @ W @ W ... (chain times): compute-bound, for timing tests.

    W is a fixed random matrix scaled by 1/sqrt(width), so values stay finite along the
    chain; each request costs batch * width^2 * chain multiply-adds.
    """
    import numpy as np
    from onnx import numpy_helper

    w = (np.random.default_rng(7).standard_normal((width, width)) / np.sqrt(width)).astype(np.float32)
    weight = numpy_helper.from_array(w, "W")
    nodes = []
    previous = "x"
    for i in range(chain):
        out = "y" if i == chain - 1 else f"h{i}"
        nodes.append(helper.make_node("MatMul", [previous, "W"], [out]))
        previous = out
    graph = helper.make_graph(
        nodes,
        "slow_matmul",
        [_vi("x", "FP32", ("batch", width))],
        [_vi("y", "FP32", ("batch", width))],
        initializer=[weight],
    )
    return _model(graph)
