"""Every datatype round-trips exactly through a real server's identity models (property-based)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from ortserve_client import InferenceClient
from ortserve_client.dtypes import NUMPY_OF
from tests.client.conftest import IDENTITY

Array = np.ndarray[Any, Any]
NUMERIC = [d for d in NUMPY_OF if d != "BYTES"]
SETTINGS = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
shapes = st.tuples(st.integers(1, 4), st.integers(1, 5), st.integers(1, 5))
# ONNX string tensors hold text, so BYTES elements are UTF-8 (any code point but surrogates, NUL included).
utf8 = st.text(st.characters(blacklist_categories=["Cs"]), max_size=12).map(str.encode)


def same_bits(a: Array, b: Array) -> bool:
    """Equal shape, dtype and bytes: NaN payloads and -0.0 count."""
    return a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()


@pytest.mark.parametrize("datatype", NUMERIC)
def test_numeric_datatypes_round_trip_exactly(client: InferenceClient, datatype: str) -> None:
    dtype = NUMPY_OF[datatype]

    @SETTINGS
    @given(hnp.arrays(dtype, shapes))
    def round_trip(x: Array) -> None:
        result = client.infer(IDENTITY[datatype], {"x": x})
        assert result.datatype("y") == datatype
        assert same_bits(result["y"], x)

    round_trip()


def test_bytes_round_trip_exactly(client: InferenceClient) -> None:
    @SETTINGS
    @given(shapes.flatmap(lambda shape: hnp.arrays(np.dtype(object), shape, elements=utf8)))
    def round_trip(x: Array) -> None:
        y = client.infer(IDENTITY["BYTES"], {"x": x})["y"]
        assert y.dtype == object and y.shape == x.shape
        assert y.tolist() == x.tolist()

    round_trip()


def test_str_arrays_travel_as_utf8_bytes(client: InferenceClient) -> None:
    x = np.array([[["a", "é", "日本", ""]]])  # numpy's '<U2'
    y = client.infer(IDENTITY["BYTES"], {"x": x})["y"]
    assert y.tolist() == [[[s.encode() for s in ["a", "é", "日本", ""]]]]
    fixed = np.array([[[b"ab", b"c"]]])  # numpy's 'S2'
    assert client.infer(IDENTITY["BYTES"], {"x": fixed})["y"].tolist() == [[[b"ab", b"c"]]]


def test_outputs_are_read_only_views_of_the_response(client: InferenceClient) -> None:
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    result = client.infer(IDENTITY["FP32"], {"x": x})
    y = result["y"]
    assert not y.flags.writeable and not y.flags.owndata
    base = y
    while isinstance(base, np.ndarray):
        base = base.base
    assert isinstance(base, bytes)  # np.frombuffer over the response bytes: no copy
    np.testing.assert_array_equal(y, x)


def test_big_endian_and_non_contiguous_inputs(client: InferenceClient) -> None:
    x = np.arange(24, dtype=">i4").reshape(2, 3, 4)
    y = client.infer(IDENTITY["INT32"], {"x": x})["y"]
    assert y.dtype == np.dtype("<i4")
    np.testing.assert_array_equal(y, x)
    strided = np.arange(96, dtype=np.float64).reshape(4, 4, 6)[::2, ::-1, 1::2]
    np.testing.assert_array_equal(client.infer(IDENTITY["FP64"], {"x": strided})["y"], strided)
    listed = client.infer(IDENTITY["INT64"], {"x": [[[1, 2], [3, 4]]]})["y"]
    np.testing.assert_array_equal(listed, [[[1, 2], [3, 4]]])
