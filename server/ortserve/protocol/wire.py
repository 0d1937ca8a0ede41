"""ModelInfer on the wire without protobuf's extra copies of tensor bytes.

protobuf's Python API copies a `bytes` field twice on the way in (parse into the arena, then
a new `bytes` object on access) and three times on the way out (`tobytes`, append, serialize).
For the tensor payloads of ModelInfer (`raw_input_contents` = field 7 of ModelInferRequest,
`raw_output_contents` = field 6 of ModelInferResponse) this module does the protobuf wire
format by hand instead, so that:

- a request's raw tensors are memoryviews into the received message (np.frombuffer over them
  is the only view), and only the small rest of the message is parsed by protobuf; a message
  under SMALL_MESSAGE_BYTES is parsed whole by protobuf instead, whose copy of a few KiB costs
  less than walking the fields in Python;
- a response is the serialized small message followed by one length-delimited field per
  output, joined once straight from the output arrays' memory.

Both are plain protobuf encodings: any V2 client reads and writes them unchanged (a parser
accepts fields in any order; repeated fields accumulate in order).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from ortserve import dtypes
from ortserve.dataplane import InferResponse
from ortserve.protocol.codec import _to_raw
from ortserve.protocol.shared_memory import write_outputs
from ortserve_client.proto import grpc_service_pb2 as pb

SMALL_MESSAGE_BYTES = 16 * 1024
"""Below this size a request is parsed whole by protobuf, raw tensors copied out of it: 0.8-1.2 µs
against ~2.1 µs for the field walk that keeps them views (timeit, 288 B to 16 KiB, 2-core sandbox;
the two meet near 64 KiB). Larger requests, whose copies would cost, are walked."""

_RAW_INPUT_FIELD = 7
_RAW_OUTPUT_TAG = bytes([(6 << 3) | 2])  # field 6, length-delimited
_LENGTH_DELIMITED = 2


@dataclass(slots=True)
class WireInferRequest:
    """A received ModelInferRequest: the parsed rest of the message and its raw tensors."""

    message: pb.ModelInferRequest
    raw: list[memoryview] | list[bytes] = field(default_factory=list)
    """The raw tensors, in order: views of the received bytes, or copies for a small message."""
    error: str | None = None
    """Why the bytes are not a valid ModelInferRequest (answered INVALID_ARGUMENT by the servicer)."""

    @property
    def id(self) -> str:
        return str(self.message.id)


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("a varint longer than 10 bytes")


_ONE_BYTE_VARINTS = [bytes((n,)) for n in range(0x80)]


def _varint_bytes(value: int) -> bytes:
    if value < 0x80:
        return _ONE_BYTE_VARINTS[value]
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def parse_infer_request(data: bytes) -> WireInferRequest:
    """The request deserializer of ModelInfer; it never raises (gRPC would answer INTERNAL)."""
    try:
        if len(data) < SMALL_MESSAGE_BYTES:
            # The raw tensors stay in the message too; decode_request reads them from `raw`.
            message = pb.ModelInferRequest.FromString(data)
            return WireInferRequest(message, list(message.raw_input_contents))
        view = memoryview(data)
        raw: list[memoryview] = []
        rest: list[memoryview] = []
        pos, rest_start, end = 0, 0, len(data)
        while pos < end:
            field_start = pos
            key, pos = _varint(data, pos)
            number, wire_type = key >> 3, key & 7
            if wire_type == _LENGTH_DELIMITED:
                length, pos = _varint(data, pos)
                stop = pos + length
                if stop > end:
                    raise ValueError(f"field {number} claims {length} bytes but only {end - pos} remain")
                if number == _RAW_INPUT_FIELD:
                    rest.append(view[rest_start:field_start])
                    raw.append(view[pos:stop])
                    rest_start = stop
                pos = stop
            elif wire_type == 0:
                _, pos = _varint(data, pos)
            elif wire_type == 1:
                pos += 8
            elif wire_type == 5:
                pos += 4
            else:
                raise ValueError(f"field {number} has the unsupported wire type {wire_type}")
        if pos != end:
            raise ValueError("the last field runs past the end of the message")
        if not raw:
            return WireInferRequest(pb.ModelInferRequest.FromString(data))
        rest.append(view[rest_start:end])
        return WireInferRequest(pb.ModelInferRequest.FromString(b"".join(rest)), raw)
    except Exception as exc:  # noqa: BLE001 - any malformation is the client's, reported in the handler
        return WireInferRequest(pb.ModelInferRequest(), error=f"malformed ModelInferRequest: {exc}")


def serialize_infer_response(response: InferResponse, targets: Mapping[str, memoryview] | None = None) -> bytes:
    """The response serializer of ModelInfer: one copy of each output, straight from its array.

    An output in `targets` (shared memory regions, protocol.shared_memory) is copied into its
    region instead, and its raw_output_contents entry is empty.
    """
    message = pb.ModelInferResponse(
        model_name=response.model_name, model_version=response.model_version, id=response.id
    )
    parts: list[bytes | memoryview] = [b""]
    for name, array in response.outputs:
        dtype = dtypes.from_numpy(array.dtype)
        message.outputs.add(name=name, datatype=dtype.name, shape=array.shape)
        data = output_bytes(array, dtype)
        if targets and name in targets:
            write_outputs(((name, data),), targets)
            data = b""
        parts += (_RAW_OUTPUT_TAG, _varint_bytes(len(data)), data)
    parts[0] = message.SerializeToString()
    return b"".join(parts)


def output_bytes(array: np.ndarray, dtype: dtypes.DType) -> bytes | memoryview:
    """An output's raw content: the array's own memory (no copy) or, for BYTES, its serialization."""
    if dtype.name == "BYTES":
        return _to_raw(array, dtype)
    return np.ascontiguousarray(array).data.cast("B")
