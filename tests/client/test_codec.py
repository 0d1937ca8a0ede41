"""The sans-IO request builder and response decoder, without a server."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from ortserve_client.codec import decode_bytes, encode_bytes, encode_tensor, get_parameters
from ortserve_client.dtypes import NUMPY_OF, datatype_of, numpy_of
from ortserve_client.proto import grpc_service_pb2 as pb
from ortserve_client.request import InferRequest, build_from, build_infer_request
from ortserve_client.result import decode_infer_response, decode_stream_response
from tests.wire import decode_bytes as reference_decode
from tests.wire import encode_bytes as reference_encode


def test_datatype_table() -> None:
    for name, dtype in NUMPY_OF.items():
        assert numpy_of(name) == dtype
        assert datatype_of(dtype) == name
    assert datatype_of(np.dtype("q")) == datatype_of(np.dtype("l")) == "INT64"
    assert datatype_of(np.dtype(">f2")) == "FP16"
    assert datatype_of(np.dtype("U3")) == datatype_of(np.dtype("S3")) == "BYTES"
    with pytest.raises(TypeError, match="complex128"):
        datatype_of(np.dtype(complex))
    with pytest.raises(ValueError, match="BF16"):
        numpy_of("BF16")


def test_build_request_fields() -> None:
    x = np.arange(6, dtype=np.int16).reshape(2, 3)
    request = build_infer_request(
        "m",
        {"x": x, "s": np.array(["a", "bc"])},
        outputs=["y"],
        version=3,
        request_id="r",
        priority=2,
        parameters={"b": True, "i": -4, "u": 2**64 - 1, "f": 0.25, "t": "s"},
    )
    assert (request.model_name, request.model_version, request.id) == ("m", "3", "r")
    tensors = [(t.name, t.datatype, list(t.shape)) for t in request.inputs]
    assert tensors == [("x", "INT16", [2, 3]), ("s", "BYTES", [2])]
    assert request.raw_input_contents[0] == x.tobytes()
    assert reference_decode(request.raw_input_contents[1]) == [b"a", b"bc"]
    assert [o.name for o in request.outputs] == ["y"]
    assert request.parameters["priority"].uint64_param == 2
    expected = {"priority": 2, "b": True, "i": -4, "u": 2**64 - 1, "f": 0.25, "t": "s"}
    assert get_parameters(request.parameters) == expected
    bare = build_infer_request("m", {})
    assert bare.model_version == "" and bare.id == "" and not bare.outputs and not bare.parameters


def test_build_request_refuses_what_it_cannot_send() -> None:
    with pytest.raises(TypeError, match="input 'x'"):
        build_infer_request("m", {"x": np.zeros(2, complex)})
    with pytest.raises(TypeError, match="element 1 is int"):
        build_infer_request("m", {"x": np.array([b"a", 3], dtype=object)})
    with pytest.raises(TypeError, match="list of output names"):
        build_infer_request("m", {}, outputs="y")
    with pytest.raises(ValueError, match="priority"):
        build_infer_request("m", {}, priority=-1)
    with pytest.raises(TypeError, match="parameter 'p'"):
        build_infer_request("m", {}, parameters={"p": [1]})  # type: ignore[dict-item]


def test_stream_requests_get_an_id() -> None:
    assert build_from(InferRequest("m", {}), "4").id == "4"
    assert build_from(InferRequest("m", {}, request_id="mine"), "4").id == "mine"


def test_encode_tensor_layouts() -> None:
    strided = np.arange(12, dtype=np.float32).reshape(3, 4)[:, ::2]
    assert encode_tensor("x", strided) == ("FP32", (3, 2), np.ascontiguousarray(strided).tobytes())
    big = np.array([1, 2], dtype=">u4")
    assert encode_tensor("x", big) == ("UINT32", (2,), np.array([1, 2], "<u4").tobytes())
    assert encode_tensor("x", [True, False]) == ("BOOL", (2,), b"\x01\x00")
    items = [b"", b"\x00\xff", "é", bytearray(b"z")]
    array = np.empty(4, dtype=object)
    array[:] = items
    assert encode_bytes("x", array) == reference_encode([b"", b"\x00\xff", "é".encode(), b"z"])


def _response(outputs: list[tuple[str, str, list[int]]], raw: list[bytes]) -> pb.ModelInferResponse:
    response = pb.ModelInferResponse(model_name="m", model_version="1", id="r")
    for name, datatype, shape in outputs:
        response.outputs.add(name=name, datatype=datatype, shape=shape)
    response.raw_output_contents.extend(raw)
    response.parameters["p"].int64_param = 5
    return response


def test_decode_raw_outputs() -> None:
    y = np.arange(6, dtype=np.float16).reshape(2, 3)
    words = reference_encode([b"ab", b"", b"c"])
    result = decode_infer_response(_response([("y", "FP16", [2, 3]), ("w", "BYTES", [3])], [y.tobytes(), words]))
    assert (result.model_name, result.model_version, result.id, result.error) == ("m", "1", "r", None)
    assert list(result) == ["y", "w"] and result.datatype("w") == "BYTES"
    np.testing.assert_array_equal(result["y"], y)
    assert result["w"].tolist() == [b"ab", b"", b"c"]
    assert result.parameters == {"p": 5}
    assert "FP16 [2, 3]" in repr(result)
    assert result.raise_for_error() is result


def test_decoded_arrays_are_read_only_views_of_the_response() -> None:
    y = np.arange(8, dtype=np.int64).reshape(2, 2, 2)
    result = decode_infer_response(_response([("y", "INT64", [2, 2, 2]), ("e", "FP32", [0, 3])], [y.tobytes(), b""]))
    assert result["y"].shape == (2, 2, 2) and result["y"].dtype == np.int64 and not result["y"].flags.writeable
    np.testing.assert_array_equal(result["y"], y)
    assert result["e"].shape == (0, 3)


def test_input_templates_follow_each_call_and_stay_unchanged() -> None:
    """Requests copy a shared InferInputTensor per (name, datatype, shape); changing one changes no other."""
    first = build_infer_request("m", {"x": np.zeros((1, 4), np.float32)})
    first.inputs[0].shape[0] = 99
    first.inputs[0].parameters["p"].bool_param = True
    again = build_infer_request("m", {"x": np.zeros((1, 4), np.float32)})
    assert again.inputs[0] == pb.ModelInferRequest.InferInputTensor(name="x", datatype="FP32", shape=[1, 4])
    other = build_infer_request("m", {"x": np.zeros((3, 4), np.int8), "y": np.zeros((), np.float64)})
    assert [(t.name, t.datatype, list(t.shape)) for t in other.inputs] == [("x", "INT8", [3, 4]), ("y", "FP64", [])]
    for rows in range(1, 1500):  # more shapes than the table keeps: still right
        assert list(build_infer_request("m", {"x": np.zeros((rows, 1), np.uint8)}).inputs[0].shape) == [rows, 1]


def test_decode_typed_contents() -> None:
    """Servers that answer with typed `contents` instead of raw bytes."""
    response = pb.ModelInferResponse(model_name="m")
    response.outputs.add(name="i8", datatype="INT8", shape=[3]).contents.int_contents.extend([-1, 0, 127])
    response.outputs.add(name="b", datatype="BYTES", shape=[1, 2]).contents.bytes_contents.extend([b"x", b"yz"])
    response.outputs.add(name="f", datatype="FP64", shape=[2]).contents.fp64_contents.extend([0.5, -2.0])
    result = decode_infer_response(response)
    assert result["i8"].dtype == np.int8 and result["i8"].tolist() == [-1, 0, 127]
    assert result["b"].tolist() == [[b"x", b"yz"]]
    assert result["f"].tolist() == [0.5, -2.0]
    half = pb.ModelInferResponse()
    half.outputs.add(name="h", datatype="FP16", shape=[1])
    with pytest.raises(ValueError, match="FP16 has no typed contents"):
        decode_infer_response(half)


@pytest.mark.parametrize(
    ("outputs", "raw", "message"),
    [
        ([("y", "FP32", [2])], [b"\x00" * 7], "needs 8 bytes, got 7"),
        ([("y", "FP32", [2])], [b"\x00" * 12], "needs 8 bytes, got 12"),
        ([("y", "FP32", [-1, 2])], [b"\x00" * 8], r"FP32 \[-1, 2\] needs -8 bytes, got 8"),
        ([("y", "FP32", [2])], [], "needs 2 values"),
        ([("y", "FP32", [1])], [b"\x00" * 4, b""], "1 outputs but 2 raw"),
        ([("y", "BYTES", [2])], [struct.pack("<I", 1) + b"a"], "element 1 of 2 has no length prefix"),
        ([("y", "BYTES", [1])], [struct.pack("<I", 9) + b"a"], "claims 9 bytes"),
        ([("y", "BYTES", [1])], [struct.pack("<I", 1) + b"ab"], "1 bytes left"),
        ([("y", "BF16", [1])], [b"\x00\x00"], "unknown KServe datatype 'BF16'"),
    ],
)
def test_decode_refuses_malformed_responses(
    outputs: list[tuple[str, str, list[int]]], raw: list[bytes], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        decode_infer_response(_response(outputs, raw))


def test_decode_stream_response() -> None:
    failed = pb.ModelStreamInferResponse(error_message="boom", infer_response=pb.ModelInferResponse(id="7"))
    result = decode_stream_response(failed)
    assert result.error == "boom" and result.id == "7" and len(result) == 0
    ok = pb.ModelStreamInferResponse(infer_response=_response([("y", "INT32", [1])], [b"\x01\x00\x00\x00"]))
    assert decode_stream_response(ok)["y"].tolist() == [1]


def test_bytes_round_trip_through_the_codec() -> None:
    array = np.array([[b"a", b""], [b"\x00" * 3, "ü".encode()]], dtype=object)
    assert decode_bytes("x", (2, 2), encode_bytes("x", array)).tolist() == array.tolist()
    assert decode_bytes("x", (0,), b"").shape == (0,)
