"""The one table of tensor element types, and the conversions every room needs.

Each type is known by four names: the KServe V2 datatype string on the wire ("FP32"),
the numpy dtype of its arrays, the `DataType` enum value of Triton's model configuration
(TYPE_FP32 = 11) and the type string ONNX Runtime reports ("tensor(float)"). BYTES is the
exception: numpy holds it as an object array of `bytes`, ONNX Runtime as strings.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ortserve.errors import InvalidInputError


@dataclass(frozen=True, slots=True)
class DType:
    """One tensor element type under all its names."""

    name: str
    """KServe V2 datatype string, e.g. "FP32"."""
    numpy: np.dtype[np.generic]
    """numpy dtype of arrays of this type (object for BYTES), little-endian."""
    config_enum: int
    """Value of Triton's model_config DataType enum, e.g. 11 for TYPE_FP32."""
    ort_type: str
    """Type string ONNX Runtime reports, e.g. "tensor(float)"."""

    @property
    def itemsize(self) -> int:
        """Bytes per element in raw form; 0 for BYTES, whose elements vary in length."""
        return 0 if self.name == "BYTES" else self.numpy.itemsize

    @property
    def config_name(self) -> str:
        """Name of the model_config DataType enum value, e.g. "TYPE_FP32"."""
        return _CONFIG_NAMES[self.config_enum]


def _dt(name: str, np_type: str, enum: int, ort: str) -> DType:
    return DType(name, np.dtype(np_type), enum, ort)


_ALL = (
    _dt("BOOL", "?", 1, "tensor(bool)"),
    _dt("UINT8", "<u1", 2, "tensor(uint8)"),
    _dt("UINT16", "<u2", 3, "tensor(uint16)"),
    _dt("UINT32", "<u4", 4, "tensor(uint32)"),
    _dt("UINT64", "<u8", 5, "tensor(uint64)"),
    _dt("INT8", "<i1", 6, "tensor(int8)"),
    _dt("INT16", "<i2", 7, "tensor(int16)"),
    _dt("INT32", "<i4", 8, "tensor(int32)"),
    _dt("INT64", "<i8", 9, "tensor(int64)"),
    _dt("FP16", "<f2", 10, "tensor(float16)"),
    _dt("FP32", "<f4", 11, "tensor(float)"),
    _dt("FP64", "<f8", 12, "tensor(double)"),
    _dt("BYTES", "O", 13, "tensor(string)"),
)
_CONFIG_NAMES = {
    1: "TYPE_BOOL", 2: "TYPE_UINT8", 3: "TYPE_UINT16", 4: "TYPE_UINT32", 5: "TYPE_UINT64",
    6: "TYPE_INT8", 7: "TYPE_INT16", 8: "TYPE_INT32", 9: "TYPE_INT64", 10: "TYPE_FP16",
    11: "TYPE_FP32", 12: "TYPE_FP64", 13: "TYPE_STRING",
}

BY_NAME: dict[str, DType] = {d.name: d for d in _ALL}
BY_CONFIG_ENUM: dict[int, DType] = {d.config_enum: d for d in _ALL}
BY_ORT_TYPE: dict[str, DType] = {d.ort_type: d for d in _ALL}
# Keyed by (kind, itemsize), not by dtype.char: int64 is 'l' or 'q' depending on the platform
# and the producer (numpy vs ONNX Runtime), but always ("i", 8).
_BY_KIND_SIZE: dict[tuple[str, int], DType] = {
    (d.numpy.kind, d.numpy.itemsize): d for d in _ALL if d.name != "BYTES"
}

SUPPORTED_NAMES = ", ".join(BY_NAME)


def from_name(name: str) -> DType:
    """The type of a KServe datatype string; InvalidInputError names the valid ones."""
    try:
        return BY_NAME[name]
    except KeyError:
        raise InvalidInputError(
            f"unknown datatype {name!r}: expected one of {SUPPORTED_NAMES}"
        ) from None


def from_numpy(dtype: np.dtype[np.generic]) -> DType:
    """The type of a numpy dtype; str, bytes and object arrays are BYTES."""
    if dtype.kind in ("O", "S", "U"):
        return BY_NAME["BYTES"]
    found = _BY_KIND_SIZE.get((dtype.kind, dtype.itemsize))
    if found is None:
        raise InvalidInputError(f"numpy dtype {dtype} has no KServe datatype")
    return found
