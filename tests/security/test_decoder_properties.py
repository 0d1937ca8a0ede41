"""Property tests of the request decoder (hypothesis): over random, malformed and mutated requests
it returns tensors exactly as declared or raises InvalidInputError / ResourceExhaustedError, never
anything else, and never makes a tensor beyond its limits."""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ortserve.errors import InvalidInputError, ResourceExhaustedError
from ortserve.protocol.codec import DecodeLimits, decode_request
from ortserve_client.proto import grpc_service_pb2 as pb
from tests.wire import CONTENTS_FIELD, DATATYPES, raw_of

LIMITS = DecodeLimits(max_tensor_elements=4096, max_dims=8)
NAMES = ["x", "y", "INPUT0", ""]
DATATYPE_NAMES = [*DATATYPES, "FP8", "fp32", "", "TYPE_FP32", "BF16"]
FIELDS = sorted(set(CONTENTS_FIELD.values()))

# Mostly sensible, sometimes hostile: negative, huge, overflowing, too many dims.
dims = st.one_of(
    st.integers(1, 4),
    st.integers(0, 4),
    st.integers(-3, -1) | st.sampled_from([2**31, 2**40, 2**62, 2**63 - 1]),
)
shapes = st.lists(st.integers(0, 3), max_size=3) | st.lists(dims, max_size=10)

# Values a typed contents field may hold (the protobuf field's own range).
FIELD_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "bool_contents": st.booleans(),
    "int_contents": st.integers(-(2**31), 2**31 - 1),
    "int64_contents": st.integers(-(2**63), 2**63 - 1),
    "uint_contents": st.integers(0, 2**32 - 1),
    "uint64_contents": st.integers(0, 2**64 - 1),
    "fp32_contents": st.floats(width=32, allow_nan=True),
    "fp64_contents": st.floats(allow_nan=True),
    "bytes_contents": st.binary(max_size=8),
}


@st.composite
def raw_payload(draw: st.DrawFn, datatype: str, shape: list[int]) -> bytes:
    """Mostly bytes that agree with shape x datatype; sometimes random or BYTES with bad prefixes."""
    count = int(np.prod(shape)) if shape and all(0 <= d <= 6 for d in shape) else 1
    kind = draw(st.sampled_from(["exact", "exact", "random", "short", "long"]))
    dtype = DATATYPES.get(datatype)
    if kind == "random" or dtype is None or count > 4096:
        return draw(st.binary(max_size=64))
    if dtype.kind == "O":
        items = draw(st.lists(st.binary(max_size=5), min_size=count, max_size=count))
        data = b"".join(struct.pack("<I", len(b)) + b for b in items)
        if kind == "short" and data:
            return data[: draw(st.integers(0, len(data) - 1))]
        if kind == "long":
            return data + struct.pack("<I", draw(st.integers(0, 2**32 - 1)))
        return data
    data = draw(st.binary(min_size=count * dtype.itemsize, max_size=count * dtype.itemsize))
    if kind == "short" and data:
        return data[:-1]
    if kind == "long":
        return data + b"\0"
    return data


@st.composite
def requests(draw: st.DrawFn) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=draw(st.sampled_from(["m", ""])), id=draw(st.text(max_size=4)))
    use_raw = draw(st.booleans())
    for _ in range(draw(st.integers(0, 3))):
        datatype = draw(st.sampled_from(list(DATATYPES)) | st.sampled_from(DATATYPE_NAMES))
        shape = draw(shapes)
        name = f"in{len(request.inputs)}" if draw(st.integers(0, 5)) else draw(st.sampled_from(NAMES))
        tensor = request.inputs.add(name=name, datatype=datatype, shape=shape)
        if use_raw:
            request.raw_input_contents.append(draw(raw_payload(datatype, shape)))
            if draw(st.integers(0, 9)) == 7:
                tensor.contents.fp32_contents.append(1.0)  # both forms at once
        else:
            field = CONTENTS_FIELD.get(datatype) if draw(st.integers(0, 4)) else None
            field = field or draw(st.sampled_from(FIELDS))
            count = int(np.prod(shape)) if all(0 <= d <= 4 for d in shape) else 1
            values = draw(st.lists(FIELD_VALUES[field], min_size=count, max_size=count) if count <= 64
                          and draw(st.integers(0, 3)) else st.lists(FIELD_VALUES[field], max_size=12))
            getattr(tensor.contents, field).extend(values)
    if use_raw and draw(st.integers(0, 5)) == 3:
        # Well formed but over the element limit: RESOURCE_EXHAUSTED, before the array is made.
        count = draw(st.integers(LIMITS.max_tensor_elements - 2, LIMITS.max_tensor_elements + 2000))
        datatype = draw(st.sampled_from(["INT8", "BYTES"]))
        request.inputs.add(name=f"big{len(request.inputs)}", datatype=datatype, shape=[count])
        request.raw_input_contents.append(b"\0" * count * (4 if datatype == "BYTES" else 1))
    if use_raw and draw(st.integers(0, 9)) == 7:
        request.raw_input_contents.append(b"extra")
    return request


def check_decodes_as_declared_or_refuses(request: pb.ModelInferRequest) -> None:
    try:
        decoded = decode_request(request, None, LIMITS)
    except (InvalidInputError, ResourceExhaustedError) as exc:
        assert str(exc)  # a message for the caller, always
        return
    assert list(decoded.inputs) == [t.name for t in request.inputs]
    for tensor in request.inputs:
        array = decoded.inputs[tensor.name]
        assert array.shape == tuple(tensor.shape)
        assert array.size <= LIMITS.max_tensor_elements
        assert array.dtype == DATATYPES[tensor.datatype]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(requests())
def test_random_requests_decode_as_declared_or_are_refused(request: pb.ModelInferRequest) -> None:
    check_decodes_as_declared_or_refuses(request)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(requests(), st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=6),
       st.integers(0, 8))
def test_mutated_wire_bytes_parse_and_decode_or_are_refused(
    request: pb.ModelInferRequest, flips: list[tuple[int, int]], cut: int
) -> None:
    data = bytearray(request.SerializeToString())
    for position, value in flips:
        if data:
            data[position % len(data)] = value
    del data[len(data) - min(cut, len(data)) :]
    try:
        mutated = pb.ModelInferRequest.FromString(bytes(data))
    except DecodeError:
        return  # gRPC answers this before the decoder ever sees it
    check_decodes_as_declared_or_refuses(mutated)


arrays = st.sampled_from([d for d in DATATYPES if d != "BYTES"]).flatmap(
    lambda datatype: st.tuples(
        st.just(datatype), st.lists(st.integers(0, 5), max_size=4), st.randoms(use_true_random=False)
    )
)


@settings(max_examples=200, deadline=None)
@given(arrays)
def test_well_formed_raw_tensors_round_trip_exactly(case: tuple[str, list[int], Any]) -> None:
    datatype, shape, rnd = case
    dtype = DATATYPES[datatype]
    data = bytes(rnd.getrandbits(8) for _ in range(int(np.prod(shape)) * dtype.itemsize))
    expected = np.frombuffer(data, dtype=dtype).reshape(shape)
    request = pb.ModelInferRequest(model_name="m")
    request.inputs.add(name="x", datatype=datatype, shape=shape)
    request.raw_input_contents.append(raw_of(expected))
    decoded = decode_request(request, None, LIMITS).inputs["x"]
    assert decoded.tobytes() == expected.tobytes() and decoded.shape == expected.shape
