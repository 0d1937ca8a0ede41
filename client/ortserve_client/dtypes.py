"""The client's table of tensor element types: KServe V2 datatype string <-> numpy dtype.

Raw tensor contents are little-endian, as on the wire. BYTES has no fixed-size numpy dtype:
it travels as length-prefixed elements and arrives as an object array of `bytes`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

DType = np.dtype[Any]

NUMPY_OF: dict[str, DType] = {
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
"""numpy dtype of each KServe datatype (object arrays of `bytes` for BYTES)."""

# Keyed by dtype object: np.dtype hashes by value, so int64 spelled 'l' or 'q' finds the same entry.
_NAME_OF: dict[DType, str] = {dtype: name for name, dtype in NUMPY_OF.items() if name != "BYTES"}

SUPPORTED = ", ".join(NUMPY_OF)


def datatype_of(dtype: DType) -> str:
    """The KServe datatype of a numpy dtype; str, bytes and object arrays are BYTES.

    Big-endian dtypes map to their little-endian type (the codec swaps the bytes).
    """
    name = _NAME_OF.get(dtype)
    if name is not None:
        return name
    if dtype.kind in "OSU":
        return "BYTES"
    if dtype.byteorder == ">":
        name = _NAME_OF.get(dtype.newbyteorder("<"))
        if name is not None:
            return name
    raise TypeError(f"numpy dtype {dtype} has no KServe datatype; use one of {SUPPORTED}")


def numpy_of(datatype: str) -> DType:
    """The numpy dtype of a KServe datatype string (ValueError for an unknown one)."""
    try:
        return NUMPY_OF[datatype]
    except KeyError:
        raise ValueError(f"unknown KServe datatype {datatype!r}: expected one of {SUPPORTED}") from None
