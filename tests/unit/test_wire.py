"""protocol.wire: ModelInfer's hand-made protobuf encoding agrees with protobuf's own, without copies."""

from __future__ import annotations

import numpy as np
import pytest

from ortserve.dataplane import InferResponse
from ortserve.protocol.codec import decode_request, encode_response
from ortserve.protocol.wire import SMALL_MESSAGE_BYTES, parse_infer_request, serialize_infer_response
from ortserve_client.proto import grpc_service_pb2 as pb


def request(rng: np.random.Generator, width: int = 5) -> tuple[pb.ModelInferRequest, list[np.ndarray]]:
    message = pb.ModelInferRequest(model_name="m", model_version="3", id="req-1")
    message.parameters["priority"].int64_param = 2
    message.parameters["note"].string_param = "x" * 300  # a multi-byte length varint
    arrays = []
    for i, rows in enumerate(rng.integers(1, 40, size=3)):
        array = rng.standard_normal((int(rows), width)).astype(np.float32)
        message.inputs.add(name=f"in{i}", datatype="FP32", shape=array.shape)
        message.raw_input_contents.append(array.tobytes())
        arrays.append(array)
    message.outputs.add(name="out")
    return message, arrays


@pytest.mark.parametrize("seed", range(5))
def test_parse_splits_raw_tensors_as_views_and_the_rest_like_protobuf(seed: int) -> None:
    message, arrays = request(np.random.default_rng(seed), width=SMALL_MESSAGE_BYTES // 4)  # rows of 16 KiB
    data = message.SerializeToString()
    assert len(data) >= SMALL_MESSAGE_BYTES
    wire = parse_infer_request(data)
    assert wire.error is None and wire.id == "req-1"
    rest = pb.ModelInferRequest()
    rest.CopyFrom(message)
    del rest.raw_input_contents[:]
    assert wire.message == rest
    decoded = decode_request(wire.message, raw_contents=wire.raw)
    everything = np.frombuffer(data, np.uint8)
    for i, array in enumerate(arrays):
        np.testing.assert_array_equal(decoded.inputs[f"in{i}"], array)
        assert np.shares_memory(decoded.inputs[f"in{i}"], everything)  # a view of the received bytes


@pytest.mark.parametrize("seed", range(3))
def test_a_small_request_is_parsed_whole_by_protobuf_its_tensors_copied(seed: int) -> None:
    message, arrays = request(np.random.default_rng(seed))
    data = message.SerializeToString()
    assert len(data) < SMALL_MESSAGE_BYTES
    wire = parse_infer_request(data)
    assert wire.error is None and wire.id == "req-1" and wire.message == message
    assert wire.raw == list(message.raw_input_contents)
    decoded = decode_request(wire.message, raw_contents=wire.raw)
    for i, array in enumerate(arrays):
        np.testing.assert_array_equal(decoded.inputs[f"in{i}"], array)
        assert not decoded.inputs[f"in{i}"].flags.writeable  # read-only, as views of the wire are


def test_the_size_that_switches_the_parse() -> None:
    def sized(payload: int) -> bytes:
        message = pb.ModelInferRequest(model_name="m")
        message.inputs.add(name="x", datatype="UINT8", shape=[payload])
        message.raw_input_contents.append(b"\x07" * payload)
        return message.SerializeToString()

    below = sized(SMALL_MESSAGE_BYTES - 64)
    above = sized(SMALL_MESSAGE_BYTES)
    assert len(below) < SMALL_MESSAGE_BYTES <= len(above)
    small, large = parse_infer_request(below), parse_infer_request(above)
    assert isinstance(small.raw[0], bytes) and len(small.message.raw_input_contents) == 1
    assert isinstance(large.raw[0], memoryview) and len(large.message.raw_input_contents) == 0
    assert np.shares_memory(np.frombuffer(large.raw[0], np.uint8), np.frombuffer(above, np.uint8))
    assert bytes(small.raw[0]) == bytes(large.raw[0][: len(small.raw[0])])


def test_a_request_without_raw_contents_parses_whole() -> None:
    message = pb.ModelInferRequest(model_name="m")
    message.inputs.add(name="x", datatype="INT32", shape=[2]).contents.int_contents.extend([1, 2])
    wire = parse_infer_request(message.SerializeToString())
    assert wire.error is None and wire.raw == [] and wire.message == message


@pytest.mark.parametrize(
    "data",
    [
        b"\x3a\x05abc",  # field 7 claims 5 bytes, 3 remain
        b"\x0a",  # a key without its length
        b"\x0f\x00",  # wire type 7 does not exist
        b"\xff" * 11,  # an endless varint
        b"\x0a\x02\xff\xff",  # model_name is not UTF-8: protobuf refuses it
    ],
)
def test_malformed_bytes_become_an_error_not_an_exception(data: bytes) -> None:
    wire = parse_infer_request(data)
    assert wire.error is not None and wire.error.startswith("malformed ModelInferRequest")


def test_serialize_matches_protobufs_encoding_of_the_same_response() -> None:
    rng = np.random.default_rng(0)
    outputs = [
        ("probabilities", rng.standard_normal((4, 3)).astype(np.float32)[1:3]),  # a view: rows 1..2
        ("label", np.arange(2, dtype=np.int64)),
        ("mask", np.array([[True, False]])),
        ("half", np.ones((2, 2), np.float16)),
        ("text", np.array([b"a", "é".encode(), b""], dtype=object)),
    ]
    response = InferResponse("m", "3", "req-1", outputs)
    ours = pb.ModelInferResponse.FromString(serialize_infer_response(response))
    assert ours == encode_response(response)
    assert np.frombuffer(ours.raw_output_contents[0], np.float32).tolist() == outputs[0][1].reshape(-1).tolist()
