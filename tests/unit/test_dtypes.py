from __future__ import annotations

import numpy as np
import pytest

from ortserve import dtypes
from ortserve.errors import InvalidInputError


@pytest.mark.parametrize("name", list(dtypes.BY_NAME))
def test_every_type_round_trips_through_its_names(name: str) -> None:
    dtype = dtypes.from_name(name)
    assert dtypes.BY_CONFIG_ENUM[dtype.config_enum] is dtype
    assert dtypes.BY_ORT_TYPE[dtype.ort_type] is dtype
    assert dtypes.from_numpy(dtype.numpy) is dtype
    assert dtype.config_name == "TYPE_" + ("STRING" if name == "BYTES" else name)


@pytest.mark.parametrize(("char", "name"), [("l", "INT64"), ("q", "INT64"), ("L", "UINT64"), ("Q", "UINT64")])
def test_platform_aliases_of_64_bit_integers_are_recognised(char: str, name: str) -> None:
    # ONNX Runtime hands back int64 as 'l' where numpy's own int64 may be 'q'.
    assert dtypes.from_numpy(np.dtype(char)).name == name


@pytest.mark.parametrize("kind", ["U", "S", "O"])
def test_text_arrays_are_bytes(kind: str) -> None:
    assert dtypes.from_numpy(np.dtype(kind)).name == "BYTES"


def test_itemsize_of_bytes_is_zero_and_of_fp16_two() -> None:
    assert dtypes.BY_NAME["BYTES"].itemsize == 0
    assert dtypes.BY_NAME["FP16"].itemsize == 2


def test_unknown_names_and_dtypes_are_invalid_input_naming_the_choices() -> None:
    with pytest.raises(InvalidInputError, match="unknown datatype 'BF16': expected one of BOOL"):
        dtypes.from_name("BF16")
    with pytest.raises(InvalidInputError, match="complex64"):
        dtypes.from_numpy(np.dtype(np.complex64))
