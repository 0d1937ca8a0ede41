"""Tensor codec: ModelInferRequest -> numpy, numpy -> ModelInferResponse, once, at the edge.

Raw contents become numpy views of the request bytes (`np.frombuffer`, no copy); typed
`contents` are accepted too. Every size is checked against shape x datatype before any
array is made, so a hostile shape cannot make the server allocate. BYTES elements travel
as a 4-byte little-endian length followed by the bytes, as in Triton.

Hostile input: a shape is checked first (no negative dims, at most `DecodeLimits.max_dims`, no
product that overflows), then its element count against the bytes or values actually sent
(INVALID_ARGUMENT when they disagree), then against `DecodeLimits.max_tensor_elements`
(RESOURCE_EXHAUSTED) -- all before anything proportional to the claimed size is allocated.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np

from ortserve import dtypes
from ortserve.dataplane import InferRequest, InferResponse, ParamValue
from ortserve.dtypes import DType
from ortserve.errors import InvalidInputError, ResourceExhaustedError
from ortserve.protocol.shared_memory import REGION, SharedMemoryRegistry, uses_shared_memory, write_outputs
from ortserve_client.proto import grpc_service_pb2 as pb

_LEN = struct.Struct("<I")

# The typed `contents` field that carries each datatype (FP16 and BF16 have none).
_CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


@dataclass(frozen=True, slots=True)
class DecodeLimits:
    """What a request's tensors may claim before the codec makes anything of them."""

    max_tensor_elements: int = 2**26
    """Elements per input tensor (the server's max_tensor_elements setting); beyond it RESOURCE_EXHAUSTED."""
    max_dims: int = 32
    """Dimensions per shape (numpy's own bound is 32 or 64, depending on its version)."""


DEFAULT_LIMITS = DecodeLimits()

# Above this, numpy cannot even describe a zero-sized array of the shape (its byte size overflows).
_MAX_SHAPE_BYTES = 2**62


def decode_request(
    request: pb.ModelInferRequest,
    deadline_ns: int | None = None,
    limits: DecodeLimits = DEFAULT_LIMITS,
    raw_contents: Sequence[bytes | memoryview] | None = None,
    shared_memory: SharedMemoryRegistry | None = None,
) -> InferRequest:
    """Decode a ModelInferRequest; wire-level faults raise InvalidInputError, size limits ResourceExhaustedError.

    `raw_contents` replaces the message's raw_input_contents when the caller split them off
    the wire itself (protocol.wire), so that the arrays are views of the received bytes. An
    input whose parameters name a shared memory region is read from `shared_memory` (a view,
    no copy) and has no raw_input_contents entry: the raw entries belong, in order, to the
    inputs that are neither in shared memory nor in typed contents.
    """
    raw = request.raw_input_contents if raw_contents is None else raw_contents
    inputs: dict[str, np.ndarray] = {}
    used = 0
    for tensor in request.inputs:
        name = tensor.name
        if name in inputs:
            raise InvalidInputError(f"input {name!r} appears twice in the request")
        try:
            dtype = dtypes.from_name(tensor.datatype)
        except InvalidInputError as exc:
            raise InvalidInputError(f"input {name!r}: {exc}") from None
        shape = tuple(tensor.shape)
        if shape and min(shape) <= 0:
            if min(shape) < 0:
                raise InvalidInputError(
                    f"input {name!r}: shape {list(shape)} has a negative dimension; send the actual shape"
                )
            _check_shape(name, dtype, shape, limits)
        elif len(shape) > limits.max_dims:
            _check_shape(name, dtype, shape, limits)
        parameters = tensor.parameters
        if parameters and REGION in parameters:  # uses_shared_memory, inlined: every input passes here
            if shared_memory is None:
                raise InvalidInputError(
                    f"input {name!r} names a shared memory region, but shared memory is off on this server "
                    "(--shared-memory off); send the tensor in raw_input_contents"
                )
            if tensor.HasField("contents"):
                raise InvalidInputError(f"input {name!r} has both contents and a shared memory region; send one")
            inputs[name] = _from_raw(name, dtype, shape, shared_memory.tensor(name, parameters), limits)
        elif raw:
            if tensor.HasField("contents"):
                raise InvalidInputError(
                    f"input {name!r} has both contents and raw_input_contents; send one of them"
                )
            if used == len(raw):
                raise _raw_count_error(request, len(raw))
            inputs[name] = _from_raw(name, dtype, shape, raw[used], limits)
            used += 1
        else:
            inputs[name] = _from_contents(name, dtype, shape, tensor, limits)
    if used != len(raw):
        raise _raw_count_error(request, len(raw))
    outputs, parameters = request.outputs, request.parameters
    return InferRequest(
        request.model_name,
        request.model_version,
        request.id,
        inputs,
        [o.name for o in outputs] if outputs else [],
        decode_parameters(parameters) if parameters else {},
        deadline_ns,
    )


def _raw_count_error(request: pb.ModelInferRequest, entries: int) -> InvalidInputError:
    in_memory = sum(uses_shared_memory(t.parameters) for t in request.inputs)
    wire = len(request.inputs) - in_memory
    where = f" ({in_memory} of them in shared memory)" if in_memory else ""
    return InvalidInputError(
        f"the request has {len(request.inputs)} inputs{where} but {entries} raw_input_contents "
        f"entries: send one raw entry per input{' not in shared memory' if in_memory else ''} "
        f"({wire}), in the order of inputs (or none and use contents)"
    )


def decode_parameters(parameters: Mapping[str, Any]) -> dict[str, ParamValue]:
    """Plain values of a map of InferParameter or ModelRepositoryParameter (oneof parameter_choice)."""
    values: dict[str, ParamValue] = {}
    for key, param in parameters.items():
        choice = param.WhichOneof("parameter_choice")
        if choice is not None:
            values[key] = getattr(param, choice)
    return values


def _check_shape(name: str, dtype: DType, shape: tuple[int, ...], limits: DecodeLimits) -> None:
    if len(shape) > limits.max_dims:
        raise InvalidInputError(
            f"input {name!r}: shape has {len(shape)} dimensions; at most {limits.max_dims} are supported"
        )
    # A dim of 0 makes the count 0 whatever the others claim, so the byte checks below pass:
    # the other dims must still describe an array numpy can represent.
    if 0 in shape and math.prod(d for d in shape if d) * max(dtype.itemsize, 8) > _MAX_SHAPE_BYTES:
        raise InvalidInputError(
            f"input {name!r}: shape {list(shape)} overflows (its nonzero dims multiply past 2**62 bytes)"
        )


def _check_elements(name: str, count: int, limits: DecodeLimits) -> None:
    if count > limits.max_tensor_elements:
        raise ResourceExhaustedError(
            f"input {name!r}: {count} elements exceed this server's limit of {limits.max_tensor_elements} "
            "per tensor (max_tensor_elements); split the request"
        )


def _from_raw(
    name: str, dtype: DType, shape: tuple[int, ...], buf: bytes | memoryview, limits: DecodeLimits
) -> np.ndarray:
    count = math.prod(shape)
    if dtype.name == "BYTES":
        return _decode_bytes(name, shape, count, buf, limits)
    expected = count * dtype.itemsize
    if len(buf) != expected:
        raise InvalidInputError(
            f"input {name!r}: {dtype.name} {list(shape)} needs {expected} bytes of raw content, "
            f"got {len(buf)}"
        )
    if count > limits.max_tensor_elements:
        _check_elements(name, count, limits)
    return np.frombuffer(buf, dtype=dtype.numpy).reshape(shape)


def _decode_bytes(
    name: str, shape: tuple[int, ...], count: int, buf: bytes | memoryview, limits: DecodeLimits
) -> np.ndarray:
    # Each element costs at least its 4-byte length: reject impossible counts before allocating.
    if count * _LEN.size > len(buf):
        raise InvalidInputError(
            f"input {name!r}: BYTES {list(shape)} needs at least {count * _LEN.size} bytes "
            f"(a 4-byte length per element), got {len(buf)}"
        )
    _check_elements(name, count, limits)
    out = np.empty(count, dtype=object)
    view = memoryview(buf)
    offset, end = 0, len(buf)
    for i in range(count):
        if offset + _LEN.size > end:
            raise InvalidInputError(f"input {name!r}: BYTES element {i} has no length prefix")
        (length,) = _LEN.unpack_from(view, offset)
        offset += _LEN.size
        if offset + length > end:
            raise InvalidInputError(
                f"input {name!r}: BYTES element {i} claims {length} bytes but only "
                f"{end - offset} remain"
            )
        out[i] = bytes(view[offset : offset + length])
        offset += length
    if offset != end:
        raise InvalidInputError(
            f"input {name!r}: {end - offset} bytes left over after the {count} BYTES elements of "
            f"shape {list(shape)}"
        )
    return out.reshape(shape)


def _from_contents(
    name: str,
    dtype: DType,
    shape: tuple[int, ...],
    tensor: pb.ModelInferRequest.InferInputTensor,
    limits: DecodeLimits,
) -> np.ndarray:
    field = _CONTENTS_FIELD.get(dtype.name)
    if field is None:
        raise InvalidInputError(
            f"input {name!r}: {dtype.name} has no typed contents field; send it in raw_input_contents"
        )
    values = getattr(tensor.contents, field)
    count = math.prod(shape)
    if len(values) != count:
        raise InvalidInputError(
            f"input {name!r}: {dtype.name} {list(shape)} needs {count} values in contents.{field}, "
            f"got {len(values)}"
        )
    _check_elements(name, count, limits)
    if dtype.name == "BYTES":
        array = np.empty(count, dtype=object)
        array[:] = list(values)
        return array.reshape(shape)
    # The field's own element type (int32 for INT8/INT16, uint32 for UINT8/UINT16): a direct
    # np.array(values, dtype=int8) casts the container unsafely, so 200 would arrive as -56.
    wide = np.asarray(values)
    if dtype.numpy.kind in "iu" and wide.size and wide.dtype != dtype.numpy:
        info = np.iinfo(cast("np.dtype[np.integer[Any]]", dtype.numpy))
        outside = wide[(wide < info.min) | (wide > info.max)]
        if outside.size:
            raise InvalidInputError(
                f"input {name!r}: value {outside[0]} does not fit {dtype.name} "
                f"(expected {info.min}..{info.max})"
            )
    return wide.astype(dtype.numpy, copy=False).reshape(shape)


def encode_response(response: InferResponse, targets: Mapping[str, memoryview] | None = None) -> pb.ModelInferResponse:
    """Build the ModelInferResponse with every output in raw_output_contents.

    An output in `targets` (shared memory regions) is copied there instead; its entry is empty.
    """
    message = pb.ModelInferResponse(
        model_name=response.model_name, model_version=response.model_version, id=response.id
    )
    raw = message.raw_output_contents
    for name, array in response.outputs:
        dtype = dtypes.from_numpy(array.dtype)
        message.outputs.add(name=name, datatype=dtype.name, shape=array.shape)
        data = _to_raw(array, dtype)
        if targets and name in targets:
            write_outputs(((name, data),), targets)
            data = b""
        raw.append(data)
    return message


def _to_raw(array: np.ndarray, dtype: DType) -> bytes:
    if dtype.name != "BYTES":
        return array.tobytes()
    parts: list[bytes] = []
    for item in array.reshape(-1):
        data = item.encode() if isinstance(item, str) else bytes(item)
        parts.append(_LEN.pack(len(data)))
        parts.append(data)
    return b"".join(parts)


def encode_bytes_tensor(values: Any) -> bytes:
    """Serialize an array-like of bytes/str as Triton's length-prefixed BYTES raw content."""
    array = np.asarray(values, dtype=object)
    return _to_raw(array, dtypes.BY_NAME["BYTES"])
