"""The tensor codec on protobuf messages, without a server: decode_request and encode_response."""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
import pytest

from ortserve.dataplane import InferResponse
from ortserve.errors import InvalidInputError
from ortserve.protocol.codec import decode_request, encode_bytes_tensor, encode_response
from ortserve_client.proto import grpc_service_pb2 as pb
from tests.wire import CONTENTS_FIELD, DATATYPES

NUMPY = {name: dtype for name, dtype in DATATYPES.items() if name != "BYTES"}
NUMERIC_CONTENTS = {name: field for name, field in CONTENTS_FIELD.items() if name != "BYTES"}


def extremes(datatype: str) -> np.ndarray[Any, Any]:
    """Six values of the type including its extremes, shaped (2, 3)."""
    dtype = NUMPY[datatype]
    if datatype == "BOOL":
        values: list[Any] = [True, False, True, True, False, False]
    elif dtype.kind == "f":
        info = np.finfo(dtype)
        values = [info.min, info.max, info.tiny, -0.5, 0.0, 1.25]
    else:
        info_i = np.iinfo(dtype)
        values = [info_i.min, info_i.max, 0, 1, info_i.max - 1, info_i.min + 1]
    return np.array(values, dtype=dtype).reshape(2, 3)


def length_prefixed(items: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(b)) + b for b in items)


def raw_request(**tensors: tuple[str, list[int], bytes]) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="m", id="req-1")
    for name, (datatype, shape, data) in tensors.items():
        request.inputs.add(name=name, datatype=datatype, shape=shape)
        request.raw_input_contents.append(data)
    return request


def decode_error(request: pb.ModelInferRequest) -> str:
    with pytest.raises(InvalidInputError) as info:
        decode_request(request)
    return str(info.value)


# -- decoding -------------------------------------------------------------------------------


@pytest.mark.parametrize("datatype", list(NUMPY))
def test_raw_contents_decode_to_a_numpy_view_of_the_right_type(datatype: str) -> None:
    expected = extremes(datatype)
    request = raw_request(x=(datatype, [2, 3], expected.tobytes()))
    decoded = decode_request(request)
    array = decoded.inputs["x"]
    assert array.dtype == NUMPY[datatype]
    assert array.shape == (2, 3)
    np.testing.assert_array_equal(array, expected)
    # A view of the request bytes, not a copy (np.frombuffer): it owns no data and is read-only.
    assert not array.flags.owndata
    assert not array.flags.writeable


@pytest.mark.parametrize("datatype", list(NUMERIC_CONTENTS))
def test_typed_contents_decode_to_arrays_of_the_right_type(datatype: str) -> None:
    expected = extremes(datatype)
    request = pb.ModelInferRequest(model_name="m")
    tensor = request.inputs.add(name="x", datatype=datatype, shape=[2, 3])
    getattr(tensor.contents, NUMERIC_CONTENTS[datatype]).extend(expected.reshape(-1).tolist())
    array = decode_request(request).inputs["x"]
    assert array.dtype == NUMPY[datatype]
    assert array.shape == (2, 3)
    np.testing.assert_array_equal(array, expected)


def test_request_fields_are_carried_over() -> None:
    request = raw_request(a=("FP32", [1, 2], np.zeros(2, np.float32).tobytes()))
    request.model_version = "3"
    request.outputs.add(name="out1")
    request.outputs.add(name="out0")
    request.parameters["timeout"].int64_param = 1500
    request.parameters["flag"].bool_param = True
    request.parameters["label"].string_param = "hi"
    request.parameters["ratio"].double_param = 0.25
    request.parameters["big"].uint64_param = 2**63
    request.parameters["unset"].SetInParent()
    decoded = decode_request(request, deadline_ns=12345)
    assert (decoded.model_name, decoded.model_version, decoded.id) == ("m", "3", "req-1")
    assert decoded.requested_outputs == ["out1", "out0"]
    assert decoded.deadline_ns == 12345
    assert decoded.parameters == {"timeout": 1500, "flag": True, "label": "hi", "ratio": 0.25, "big": 2**63}
    assert decode_request(raw_request()).deadline_ns is None


def test_inputs_keep_request_order_and_zero_sized_tensors_decode() -> None:
    request = raw_request(
        b=("INT32", [0, 4], b""),
        a=("FP64", [], np.float64(2.5).tobytes()),
    )
    inputs = decode_request(request).inputs
    assert list(inputs) == ["b", "a"]
    assert inputs["b"].shape == (0, 4) and inputs["b"].dtype == np.int32
    assert inputs["a"].shape == () and inputs["a"] == 2.5


def test_bytes_raw_decode_handles_empty_and_non_ascii_elements() -> None:
    items = [b"", "héllo wörld".encode(), "日本語".encode(), b"\x00\xff", b"plain"]
    request = raw_request(s=("BYTES", [5, 1], length_prefixed(items)))
    array = decode_request(request).inputs["s"]
    assert array.dtype == object
    assert array.shape == (5, 1)
    assert array.reshape(-1).tolist() == items


def test_bytes_typed_contents_decode() -> None:
    request = pb.ModelInferRequest(model_name="m")
    tensor = request.inputs.add(name="s", datatype="BYTES", shape=[1, 2])
    tensor.contents.bytes_contents.extend([b"", "ü".encode()])
    array = decode_request(request).inputs["s"]
    assert array.dtype == object and array.shape == (1, 2)
    assert array.reshape(-1).tolist() == [b"", "ü".encode()]


def test_bytes_encode_decode_round_trip() -> None:
    values = np.array([[b"a", b""], ["ß€".encode(), b"\x00" * 300]], dtype=object)
    raw = encode_bytes_tensor(values)
    assert raw == length_prefixed([b"a", b"", "ß€".encode(), b"\x00" * 300])
    decoded = decode_request(raw_request(s=("BYTES", [2, 2], raw))).inputs["s"]
    assert decoded.tolist() == values.tolist()
    # str elements are encoded as UTF-8.
    assert encode_bytes_tensor(["é", ""]) == length_prefixed(["é".encode(), b""])


# -- encoding -------------------------------------------------------------------------------


@pytest.mark.parametrize("datatype", list(NUMPY))
def test_encode_response_puts_every_output_in_raw_output_contents(datatype: str) -> None:
    array = extremes(datatype)
    response = encode_response(InferResponse("m", "2", "id-9", [("y", array), ("z", array[:1])]))
    assert (response.model_name, response.model_version, response.id) == ("m", "2", "id-9")
    assert [(o.name, o.datatype, list(o.shape)) for o in response.outputs] == [
        ("y", datatype, [2, 3]),
        ("z", datatype, [1, 3]),
    ]
    assert list(response.raw_output_contents) == [array.tobytes(), array[:1].tobytes()]
    assert not any(o.HasField("contents") for o in response.outputs)
    back = np.frombuffer(response.raw_output_contents[0], dtype=NUMPY[datatype]).reshape(2, 3)
    np.testing.assert_array_equal(back, array)


def test_encode_response_of_non_contiguous_view_is_row_major() -> None:
    base = np.arange(12, dtype=np.float32).reshape(3, 4)
    view = base[:, 1:3]
    response = encode_response(InferResponse("m", "1", "", [("y", view)]))
    assert response.raw_output_contents[0] == np.ascontiguousarray(view).tobytes()
    assert list(response.outputs[0].shape) == [3, 2]


def test_encode_response_bytes_output_is_length_prefixed() -> None:
    array = np.array([[b"x", b""], ["ö".encode(), b"long" * 10]], dtype=object)
    response = encode_response(InferResponse("m", "1", "", [("s", array)]))
    assert response.outputs[0].datatype == "BYTES"
    assert list(response.outputs[0].shape) == [2, 2]
    assert response.raw_output_contents[0] == length_prefixed([b"x", b"", "ö".encode(), b"long" * 10])


# -- wire-level errors ----------------------------------------------------------------------


def test_raw_count_disagreeing_with_inputs_is_rejected() -> None:
    request = raw_request(a=("FP32", [1], b"\0" * 4), b=("FP32", [1], b"\0" * 4))
    del request.raw_input_contents[1]
    message = decode_error(request)
    assert "2 inputs but 1 raw_input_contents" in message
    assert "one raw entry per input" in message


def test_duplicate_input_is_rejected() -> None:
    request = pb.ModelInferRequest(model_name="m")
    for _ in range(2):
        request.inputs.add(name="a", datatype="FP32", shape=[1])
        request.raw_input_contents.append(b"\0" * 4)
    assert "input 'a' appears twice" in decode_error(request)


def test_unknown_datatype_names_the_input_and_the_valid_types() -> None:
    message = decode_error(raw_request(a=("FLOAT32", [1], b"\0" * 4)))
    assert "input 'a'" in message
    assert "unknown datatype 'FLOAT32'" in message
    assert "expected one of BOOL" in message and "FP32" in message and "BYTES" in message


def test_negative_dimension_is_rejected() -> None:
    message = decode_error(raw_request(a=("FP32", [-1, 4], b"\0" * 16)))
    assert "input 'a'" in message
    assert "[-1, 4] has a negative dimension" in message


def test_both_contents_and_raw_is_rejected() -> None:
    request = raw_request(a=("FP32", [1], b"\0" * 4))
    request.inputs[0].contents.fp32_contents.append(1.0)
    message = decode_error(request)
    assert "input 'a' has both contents and raw_input_contents" in message


@pytest.mark.parametrize(("datatype", "shape", "size", "expected"), [
    ("FP32", [2, 3], 23, 24),
    ("FP32", [2, 3], 25, 24),
    ("INT64", [4], 0, 32),
    ("FP16", [3], 4, 6),
    ("BOOL", [2, 2], 5, 4),
])
def test_raw_size_disagreeing_with_shape_and_datatype_is_rejected(
    datatype: str, shape: list[int], size: int, expected: int
) -> None:
    message = decode_error(raw_request(a=(datatype, shape, b"\0" * size)))
    assert "input 'a'" in message
    assert f"{datatype} {shape} needs {expected} bytes of raw content, got {size}" in message


def test_hostile_shape_is_rejected_without_allocating() -> None:
    huge = [2**40, 2**40]
    assert "needs" in decode_error(raw_request(a=("FP32", huge, b"\0" * 8)))
    assert "needs at least" in decode_error(raw_request(s=("BYTES", huge, b"\0" * 8)))
    request = pb.ModelInferRequest(model_name="m")
    request.inputs.add(name="a", datatype="FP32", shape=huge).contents.fp32_contents.append(1.0)
    assert "got 1" in decode_error(request)


def test_bytes_shorter_than_the_length_prefixes_is_rejected() -> None:
    message = decode_error(raw_request(s=("BYTES", [3], b"\0" * 8)))
    assert "input 's'" in message
    assert "BYTES [3] needs at least 12 bytes (a 4-byte length per element), got 8" in message


def test_bytes_element_claiming_more_than_remains_is_rejected() -> None:
    raw = struct.pack("<I", 100) + b"abc"
    message = decode_error(raw_request(s=("BYTES", [1], raw)))
    assert "input 's'" in message
    assert "BYTES element 0 claims 100 bytes but only 3 remain" in message


def test_bytes_element_without_length_prefix_is_rejected() -> None:
    raw = length_prefixed([b"abc"]) + b"\x01"  # 8 bytes: enough for two prefixes, but not laid out so
    message = decode_error(raw_request(s=("BYTES", [2], raw)))
    assert "input 's'" in message
    assert "BYTES element 1 has no length prefix" in message


def test_bytes_leftover_after_the_elements_is_rejected() -> None:
    raw = length_prefixed([b"ab", b"c"]) + b"zz"
    message = decode_error(raw_request(s=("BYTES", [2], raw)))
    assert "input 's'" in message
    assert "2 bytes left over after the 2 BYTES elements of shape [2]" in message


def test_fp16_in_typed_contents_is_rejected() -> None:
    request = pb.ModelInferRequest(model_name="m")
    request.inputs.add(name="h", datatype="FP16", shape=[1]).contents.fp32_contents.append(1.0)
    message = decode_error(request)
    assert "input 'h'" in message
    assert "FP16 has no typed contents field; send it in raw_input_contents" in message


def test_typed_contents_count_mismatch_is_rejected() -> None:
    request = pb.ModelInferRequest(model_name="m")
    request.inputs.add(name="a", datatype="INT32", shape=[2, 4]).contents.int_contents.extend(range(7))
    message = decode_error(request)
    assert "input 'a'" in message
    assert "INT32 [2, 4] needs 8 values in contents.int_contents, got 7" in message


def test_typed_contents_in_the_wrong_field_count_as_missing() -> None:
    request = pb.ModelInferRequest(model_name="m")
    request.inputs.add(name="a", datatype="FP32", shape=[2]).contents.int_contents.extend([1, 2])
    assert "needs 2 values in contents.fp32_contents, got 0" in decode_error(request)


@pytest.mark.parametrize(("datatype", "value"), [("INT8", 200), ("INT16", -40000), ("UINT8", 256)])
def test_typed_value_out_of_range_is_rejected(datatype: str, value: int) -> None:
    request = pb.ModelInferRequest(model_name="m")
    tensor = request.inputs.add(name="a", datatype=datatype, shape=[1])
    getattr(tensor.contents, NUMERIC_CONTENTS[datatype]).append(value)
    message = decode_error(request)
    assert "input 'a'" in message
    assert f"value {value} does not fit {datatype}" in message
