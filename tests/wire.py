"""Helpers shared by the integration tests: requests from numpy arrays, responses back to numpy,
and the extra ONNX models these tests need beyond tests/models.py.

Written independently of the server's codec, so that a codec bug cannot hide behind itself.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from ortserve_client.proto import grpc_service_pb2 as pb
from tests import models

Array = np.ndarray[Any, Any]

# The typed `contents` field of each datatype (FP16 has none: raw only).
CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}

DATATYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype("?"),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BYTES": np.dtype(object),
}


def datatype_of(array: Array) -> str:
    if array.dtype.kind == "O":
        return "BYTES"
    for name, dtype in DATATYPES.items():
        if dtype == array.dtype:
            return name
    raise ValueError(f"no KServe datatype for {array.dtype}")


def encode_bytes(items: Iterable[bytes]) -> bytes:
    """Triton's BYTES raw layout: a 4-byte little-endian length, then the bytes, per element."""
    return b"".join(struct.pack("<I", len(b)) + b for b in items)


def decode_bytes(raw: bytes) -> list[bytes]:
    items, offset = [], 0
    while offset < len(raw):
        (length,) = struct.unpack_from("<I", raw, offset)
        items.append(raw[offset + 4 : offset + 4 + length])
        offset += 4 + length
    return items


def raw_of(array: Array) -> bytes:
    if array.dtype.kind == "O":
        return encode_bytes(array.reshape(-1).tolist())
    return np.ascontiguousarray(array).tobytes()


def infer_request(
    model: str,
    inputs: Mapping[str, Array],
    *,
    version: str = "",
    request_id: str = "",
    outputs: Iterable[str] = (),
    parameters: Mapping[str, int] | None = None,
) -> pb.ModelInferRequest:
    """A ModelInferRequest with every input in raw_input_contents."""
    request = pb.ModelInferRequest(model_name=model, model_version=version, id=request_id)
    for name, array in inputs.items():
        request.inputs.add(name=name, datatype=datatype_of(array), shape=array.shape)
        request.raw_input_contents.append(raw_of(array))
    for name in outputs:
        request.outputs.add(name=name)
    for key, value in (parameters or {}).items():
        request.parameters[key].int64_param = value
    return request


def outputs_of(response: pb.ModelInferResponse) -> dict[str, Array]:
    """The raw outputs of a response as numpy arrays, by name, in response order."""
    assert len(response.raw_output_contents) == len(response.outputs)
    found: dict[str, Array] = {}
    for tensor, raw in zip(response.outputs, response.raw_output_contents, strict=True):
        shape = tuple(tensor.shape)
        if tensor.datatype == "BYTES":
            found[tensor.name] = np.array(decode_bytes(raw), dtype=object).reshape(shape)
        else:
            found[tensor.name] = np.frombuffer(raw, dtype=DATATYPES[tensor.datatype]).reshape(shape)
    return found


def add_sub_inputs(rows: int, rng: np.random.Generator, width: int = 4) -> tuple[Array, Array]:
    a = rng.standard_normal((rows, width)).astype(np.float32)
    b = rng.standard_normal((rows, width)).astype(np.float32)
    return a, b


def check_add_sub(response: pb.ModelInferResponse, a: Array, b: Array) -> None:
    out = outputs_of(response)
    assert list(out) == ["OUTPUT0", "OUTPUT1"]
    np.testing.assert_array_equal(out["OUTPUT0"], a + b)
    np.testing.assert_array_equal(out["OUTPUT1"], a - b)


def rpc_error(call: Callable[[], Any]) -> grpc.RpcError:
    """Run a call that must fail and return its RpcError."""
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value


def model_stats(stub: Any, name: str, version: str = "") -> pb.ModelStatistics:
    response = stub.ModelStatistics(pb.ModelStatisticsRequest(name=name, version=version))
    assert len(response.model_stats) == 1
    return response.model_stats[0]


def wait_for(predicate: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Poll until `predicate` holds (for effects recorded after the response left the server)."""
    stop = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > stop:
            raise AssertionError(f"condition not met within {timeout_s} s")
        time.sleep(0.01)


def write_config(repo: Path, name: str, text: str) -> None:
    path = repo / name / "config.pbtxt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def write_garbage_model(repo: Path, name: str, version: int = 1) -> None:
    path = repo / name / str(version) / "model.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x00this is not an ONNX model\xff" * 10)


# -- models ---------------------------------------------------------------------------------


def sleeper(n: int = 256, *, batchable: bool = False) -> onnx.ModelProto:
    """INT64 x [1] -> y = x, after x iterations of an n x n MatMul: a model as slow as asked.

    Its dims are fixed, so the server does not batch it: each request runs alone, in order.
    With `batchable`, x and y are [batch, 1] and a batch runs max(x) iterations.
    """
    dims: list[int | str] = ["batch", 1] if batchable else [1]
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("MatMul", ["s_in", "s_in"], ["s_out"]),
        ],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("s_in", TensorProto.FLOAT, [n, n]),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("s_out", TensorProto.FLOAT, [n, n]),
        ],
    )
    nodes = [
        helper.make_node("ReduceMax", ["x"], ["trips"], keepdims=0),
        helper.make_node(
            "Constant", [], ["true"], value=helper.make_tensor("t", TensorProto.BOOL, [], [True])
        ),
        helper.make_node(
            "Constant", [], ["shape"], value=helper.make_tensor("sh", TensorProto.INT64, [2], [n, n])
        ),
        helper.make_node(
            "ConstantOfShape", ["shape"], ["s0"], value=helper.make_tensor("z", TensorProto.FLOAT, [1], [0.0])
        ),
        helper.make_node("Loop", ["trips", "true", "s0"], ["s_final"], body=body),
        helper.make_node("ReduceSum", ["s_final"], ["total"], keepdims=0),
        helper.make_node("Cast", ["total"], ["zero"], to=TensorProto.INT64),
        helper.make_node("Add", ["x", "zero"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "sleeper",
        [helper.make_tensor_value_info("x", TensorProto.INT64, dims)],
        [helper.make_tensor_value_info("y", TensorProto.INT64, dims)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", models.OPSET)])
    model.ir_version = models.IR_VERSION
    onnx.checker.check_model(model)
    return model


def sleep_request(
    iterations: int, request_id: str = "", model: str = "sleeper", **kwargs: Any
) -> pb.ModelInferRequest:
    return infer_request(model, {"x": np.array([iterations], np.int64)}, request_id=request_id, **kwargs)


class SleeperClock:
    """How many sleeper iterations take a given time on this machine, measured through the server."""

    def __init__(self, stub: Any, model: str = "sleeper") -> None:
        probe = 400
        best = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            stub.ModelInfer(sleep_request(probe, model=model))
            best = min(best, time.perf_counter() - start)
        self.per_iteration_s = max(best / probe, 1e-6)

    def iterations(self, seconds: float) -> int:
        return max(1, int(seconds / self.per_iteration_s))


class Busy:
    """A slow sleeper request keeping one instance of `model` busy for about `seconds`.

    The moment it ends is recorded, so that a test can tell whether its check happened while
    the instance was really busy, or whether a loaded machine made the calibration wrong.
    """

    def __init__(self, stub: Any, clock: SleeperClock, seconds: float, model: str = "sleeper") -> None:
        self.iterations = clock.iterations(seconds)
        self.ended_at: float | None = None
        self.future = stub.ModelInfer.future(sleep_request(self.iterations, model=model), timeout=120)
        self.future.add_done_callback(self._ended)
        time.sleep(0.2)  # time for it to reach the instance

    def _ended(self, _: Any) -> None:
        self.ended_at = time.monotonic()

    def busy_until(self, moment: float) -> bool:
        """Whether the slow request was still running at `moment` (time.monotonic())."""
        ended = self.ended_at
        return ended is None or ended > moment

    def finish(self) -> None:
        """Wait for the slow request and check its answer."""
        np.testing.assert_array_equal(outputs_of(self.future.result())["y"], [self.iterations])


def while_busy(attempt: Callable[[float], bool], seconds: float = 1.5, tries: int = 3) -> None:
    """Run `attempt(seconds)` until it is conclusive (returns True), doubling `seconds` each try.

    An attempt returns False when its slow request ended before the moment the test needed it
    busy (a loaded machine skews the calibration); it asserts what it checks otherwise.
    """
    for _ in range(tries):
        if attempt(seconds):
            return
        seconds *= 2
    raise AssertionError(
        f"{tries} tries, up to {seconds / 2:.1f} s each: the slow request never kept the instance "
        "busy for as long as the check needed (or the checked request waited for it)"
    )
