"""Tensor codec: numpy arrays <-> the V2 protocol's tensor bytes, with no I/O.

Arrays go out as `raw_input_contents` (one `tobytes()` copy, the one copy the wire needs)
and come back as `np.frombuffer` views of the response bytes (read-only, no copy). BYTES
elements travel as a 4-byte little-endian length followed by the bytes, as in Triton;
typed `contents` are decoded too, for servers that answer with them.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping, MutableMapping, Sequence
from typing import Any

import numpy as np

from ortserve_client.dtypes import _NAME_OF, datatype_of, numpy_of

Array = np.ndarray[Any, Any]
ParameterValue = bool | int | float | str
"""A request parameter: bool, int (int64, or uint64 above int64's range), float or str."""

_LEN = struct.Struct("<I")
_INT64_MAX = 2**63 - 1

# The typed `contents` field that carries each datatype (FP16 has none: raw only).
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


def encode_tensor(name: str, value: Any) -> tuple[str, tuple[int, ...], bytes]:
    """(datatype, shape, raw bytes) of an input; any array-like numpy accepts.

    Every numeric dtype, FP16 and bool travel as their little-endian bytes in C order;
    str, bytes and object arrays travel as BYTES (str elements as UTF-8).
    """
    array: Array = value if isinstance(value, np.ndarray) else np.asarray(value)
    datatype = _NAME_OF.get(array.dtype)
    if datatype is not None:  # the common case: one lookup, one copy
        return datatype, array.shape, array.tobytes()
    try:
        datatype = datatype_of(array.dtype)
    except TypeError as exc:
        raise TypeError(f"input {name!r}: {exc}") from None
    if datatype == "BYTES":
        return datatype, array.shape, encode_bytes(name, array)
    return datatype, array.shape, array.astype(array.dtype.newbyteorder("<")).tobytes()


def encode_bytes(name: str, array: Array) -> bytes:
    """Triton's BYTES layout of an str, bytes or object array, in C order."""
    parts: list[bytes] = []
    append = parts.append
    pack = _LEN.pack
    for index, item in enumerate(array.reshape(-1).tolist()):
        if isinstance(item, bytes):
            data = item
        elif isinstance(item, str):
            data = item.encode()
        elif isinstance(item, (bytearray, memoryview)):
            data = bytes(item)
        else:
            raise TypeError(
                f"input {name!r}: BYTES element {index} is {type(item).__name__}; expected bytes or str"
            )
        append(pack(len(data)))
        append(data)
    return b"".join(parts)


def decode_bytes(name: str, shape: tuple[int, ...], data: bytes) -> Array:
    """An object array of `bytes` from Triton's length-prefixed BYTES layout."""
    count = math.prod(shape)
    out = np.empty(count, dtype=object)
    offset, end = 0, len(data)
    unpack = _LEN.unpack_from
    for i in range(count):
        if offset + 4 > end:
            raise ValueError(f"output {name!r}: BYTES element {i} of {count} has no length prefix")
        (length,) = unpack(data, offset)
        offset += 4
        if offset + length > end:
            raise ValueError(f"output {name!r}: BYTES element {i} claims {length} bytes, {end - offset} remain")
        out[i] = data[offset : offset + length]
        offset += length
    if offset != end:
        raise ValueError(f"output {name!r}: {end - offset} bytes left after {count} BYTES elements")
    return out.reshape(shape)


def decode_raw(name: str, datatype: str, shape: Sequence[int], data: bytes) -> Array:
    """A read-only view of `data` as the tensor it holds (BYTES: an object array of bytes)."""
    dims = tuple(shape)
    if datatype == "BYTES":
        return decode_bytes(name, dims, data)
    dtype = numpy_of(datatype)
    expected = math.prod(dims) * dtype.itemsize
    if len(data) != expected:
        raise ValueError(f"output {name!r}: {datatype} {list(dims)} needs {expected} bytes, got {len(data)}")
    return np.frombuffer(data, dtype).reshape(dims)


def decode_contents(name: str, datatype: str, shape: Sequence[int], contents: Any) -> Array:
    """The tensor held in typed `contents` (an InferTensorContents message); a copy."""
    dims = tuple(shape)
    field = CONTENTS_FIELD.get(datatype)
    if field is None:
        raise ValueError(f"output {name!r}: {datatype} has no typed contents field and no raw contents")
    values = getattr(contents, field)
    if len(values) != math.prod(dims):
        raise ValueError(
            f"output {name!r}: {datatype} {list(dims)} needs {math.prod(dims)} values, got {len(values)}"
        )
    if datatype == "BYTES":
        array = np.empty(len(values), dtype=object)
        array[:] = list(values)
        return array.reshape(dims)
    return np.asarray(values).astype(numpy_of(datatype), copy=False).reshape(dims)


def set_parameters(target: MutableMapping[str, Any], parameters: Mapping[str, ParameterValue]) -> None:
    """Fill a protobuf map of InferParameter from plain values."""
    for key, value in parameters.items():
        param = target[key]
        if isinstance(value, bool):
            param.bool_param = value
        elif isinstance(value, int):
            if value > _INT64_MAX:
                param.uint64_param = value
            else:
                param.int64_param = value
        elif isinstance(value, float):
            param.double_param = value
        elif isinstance(value, str):
            param.string_param = value
        else:
            raise TypeError(f"parameter {key!r} is {type(value).__name__}; expected bool, int, float or str")


def get_parameters(source: Mapping[str, Any]) -> dict[str, ParameterValue | bytes]:
    """Plain values of a protobuf map of InferParameter (or ModelRepositoryParameter)."""
    values: dict[str, ParameterValue | bytes] = {}
    for key, param in source.items():
        choice = param.WhichOneof("parameter_choice")
        if choice is not None:
            values[key] = getattr(param, choice)
    return values
