"""Signature: built from a ModelConfig, checks a request's tensors and outputs, warm-up feeds."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from ortserve.errors import InvalidInputError, ModelLoadError
from ortserve.repository.signature import Signature, TensorSpec, zero_feeds
from ortserve_client.proto import model_config_pb2 as mc

Array = np.ndarray[Any, Any]


def config(
    max_batch_size: int = 8,
    inputs: tuple[tuple[str, int, list[int]], ...] = (
        ("image", mc.TYPE_FP32, [-1, 3]),
        ("scale", mc.TYPE_INT64, [1]),
    ),
    outputs: tuple[tuple[str, int, list[int]], ...] = (
        ("probs", mc.TYPE_FP32, [10]),
        ("label", mc.TYPE_STRING, [1]),
        ("debug", mc.TYPE_FP32, [-1]),
    ),
    name: str = "clf",
) -> mc.ModelConfig:
    return mc.ModelConfig(
        name=name,
        max_batch_size=max_batch_size,
        input=[mc.ModelInput(name=n, data_type=t, dims=d) for n, t, d in inputs],  # type: ignore[arg-type]
        output=[mc.ModelOutput(name=n, data_type=t, dims=d) for n, t, d in outputs],  # type: ignore[arg-type]
    )


@pytest.fixture
def sig() -> Signature:
    return Signature.from_config(config())


def good(rows: int = 2, width: int = 4) -> dict[str, Array]:
    return {
        "image": np.zeros((rows, width, 3), np.float32),
        "scale": np.ones((rows, 1), np.int64),
    }


# -- from_config --------------------------------------------------------------------------


def test_from_config_reads_names_types_dims_and_batching(sig: Signature) -> None:
    assert sig.model == "clf"
    assert sig.max_batch_size == 8
    assert [(s.name, s.dtype.name, s.dims) for s in sig.inputs] == [
        ("image", "FP32", (-1, 3)),
        ("scale", "INT64", (1,)),
    ]
    assert [(s.name, s.dtype.name, s.dims) for s in sig.outputs] == [
        ("probs", "FP32", (10,)),
        ("label", "BYTES", (1,)),
        ("debug", "FP32", (-1,)),
    ]
    assert all(isinstance(s, TensorSpec) for s in (*sig.inputs, *sig.outputs))


@pytest.mark.parametrize(("enum", "enum_name"), [(mc.TYPE_BF16, "TYPE_BF16"), (mc.TYPE_INVALID, "TYPE_INVALID")])
def test_from_config_refuses_an_unsupported_type(enum: int, enum_name: str) -> None:
    bad = config(inputs=(("x", enum, [2]),))
    with pytest.raises(ModelLoadError, match=rf"model 'clf' tensor 'x': data type {enum_name} is not supported"):
        Signature.from_config(bad)


def test_from_config_refuses_a_type_number_outside_the_enum() -> None:
    bad = config(outputs=(("y", 99, [2]),))
    with pytest.raises(ModelLoadError, match=r"model 'clf' tensor 'y': data type 99 is not supported"):
        Signature.from_config(bad)


def test_shape_and_description_carry_the_batch_dim_only_when_batching() -> None:
    batching = Signature.from_config(config())
    fixed = Signature.from_config(config(max_batch_size=0))
    assert batching.shape_of(batching.inputs[0]) == (-1, -1, 3)
    assert batching.describe(batching.inputs[0]) == "FP32 [-1,-1,3]"
    assert fixed.shape_of(fixed.inputs[0]) == (-1, 3)
    assert fixed.describe(fixed.inputs[1]) == "INT64 [1]"


# -- check_inputs -------------------------------------------------------------------------


def test_valid_inputs_come_back_in_signature_order_with_their_rows(sig: Signature) -> None:
    given = good(rows=3)
    reordered = {"scale": given["scale"], "image": given["image"]}
    ordered, rows = sig.check_inputs(reordered)
    assert rows == 3
    assert list(ordered) == ["image", "scale"]
    assert ordered["image"] is given["image"] and ordered["scale"] is given["scale"]  # no copies


@pytest.mark.parametrize("width", [1, 7, 1000])
def test_variable_dims_take_any_size(sig: Signature, width: int) -> None:
    assert sig.check_inputs(good(rows=1, width=width))[1] == 1


@pytest.mark.parametrize("rows", [1, 8])
def test_batch_sizes_from_one_to_max_are_accepted(sig: Signature, rows: int) -> None:
    assert sig.check_inputs(good(rows=rows))[1] == rows


def test_unknown_input_names_the_inputs_there_are(sig: Signature) -> None:
    with pytest.raises(InvalidInputError) as caught:
        sig.check_inputs({**good(), "imgae": np.zeros((2, 4, 3), np.float32)})
    assert str(caught.value) == (
        "model 'clf' has no input 'imgae': its inputs are 'image' (FP32 [-1,-1,3]), 'scale' (INT64 [-1,1])"
    )


def test_missing_input_says_what_is_expected(sig: Signature) -> None:
    with pytest.raises(InvalidInputError, match=r"^model 'clf' input 'scale' is missing: expected INT64 \[-1,1\]$"):
        sig.check_inputs({"image": good()["image"]})


@pytest.mark.parametrize(
    ("image", "got"),
    [
        (np.zeros((2, 4, 3), np.float64), "FP64 [2,4,3]"),  # wrong dtype
        (np.zeros((2, 4, 2), np.float32), "FP32 [2,4,2]"),  # wrong fixed dim
        (np.zeros((2, 12), np.float32), "FP32 [2,12]"),  # wrong rank
        (np.zeros((2, 4, 3, 1), np.float32), "FP32 [2,4,3,1]"),  # wrong rank
        (np.array(1.0, np.float32), "FP32 []"),  # scalar: no batch dim at all
        (np.array([b"x"], dtype=object), "BYTES [1]"),
    ],
)
def test_wrong_dtype_or_shape_names_expected_and_got(sig: Signature, image: Array, got: str) -> None:
    with pytest.raises(InvalidInputError) as caught:
        sig.check_inputs({**good(), "image": image})
    assert str(caught.value) == f"model 'clf' input 'image': expected FP32 [-1,-1,3], got {got}"


@pytest.mark.parametrize("rows", [0, 9])
def test_batch_size_outside_one_to_max_is_refused(sig: Signature, rows: int) -> None:
    with pytest.raises(InvalidInputError, match=rf"batch size {rows} is outside 1\.\.8"):
        sig.check_inputs(good(rows=rows))


def test_inputs_must_agree_on_the_batch_size(sig: Signature) -> None:
    with pytest.raises(InvalidInputError, match=r"inputs disagree on the batch size \(2 and 3 for 'scale'\)"):
        sig.check_inputs({"image": good(rows=2)["image"], "scale": good(rows=3)["scale"]})


def test_unsupported_numpy_dtype_is_an_invalid_input(sig: Signature) -> None:
    with pytest.raises(InvalidInputError, match="complex128"):
        sig.check_inputs({**good(), "image": np.zeros((2, 4, 3), np.complex128)})


def test_model_without_batching_takes_the_shape_as_is_and_one_row() -> None:
    sig = Signature.from_config(config(max_batch_size=0))
    ordered, rows = sig.check_inputs({"image": np.zeros((5, 3), np.float32), "scale": np.ones(1, np.int64)})
    assert rows == 1
    assert list(ordered) == ["image", "scale"]
    with pytest.raises(InvalidInputError, match=r"expected FP32 \[-1,3\], got FP32 \[1,5,3\]"):
        sig.check_inputs({"image": np.zeros((1, 5, 3), np.float32), "scale": np.ones(1, np.int64)})


@pytest.mark.parametrize(
    "array",
    [np.array([[b"a"], [b"bc"]], dtype=object), np.array([["a"], ["bc"]]), np.array([[b"a"], [b"bc"]])],
    ids=["object", "str", "bytes"],
)
def test_bytes_inputs_accept_object_str_and_bytes_arrays(array: Array) -> None:
    sig = Signature.from_config(config(inputs=(("text", mc.TYPE_STRING, [1]),)))
    ordered, rows = sig.check_inputs({"text": array})
    assert rows == 2 and ordered["text"] is array


# -- check_outputs ------------------------------------------------------------------------


def test_no_requested_outputs_means_all_in_model_order(sig: Signature) -> None:
    assert sig.check_outputs([]) == ("probs", "label", "debug")


def test_requested_outputs_keep_the_request_order(sig: Signature) -> None:
    assert sig.check_outputs(["debug", "probs"]) == ("debug", "probs")


def test_unknown_output_names_the_outputs_there_are(sig: Signature) -> None:
    with pytest.raises(InvalidInputError) as caught:
        sig.check_outputs(["probs", "logits"])
    assert str(caught.value) == "model 'clf' has no output 'logits': its outputs are 'probs', 'label', 'debug'"


def test_an_output_requested_twice_is_refused(sig: Signature) -> None:
    with pytest.raises(InvalidInputError, match="model 'clf': an output is requested twice"):
        sig.check_outputs(["label", "probs", "label"])


# -- zero_feeds ---------------------------------------------------------------------------


@pytest.mark.parametrize("rows", [1, 8])
def test_zero_feeds_fit_the_signature(sig: Signature, rows: int) -> None:
    feeds = zero_feeds(sig, rows)
    assert feeds["image"].shape == (rows, 1, 3)  # the variable dim taken as 1
    assert feeds["image"].dtype == np.float32 and not feeds["image"].any()
    assert feeds["scale"].shape == (rows, 1) and feeds["scale"].dtype == np.int64
    assert sig.check_inputs(feeds)[1] == rows


def test_zero_feeds_of_bytes_are_empty_strings() -> None:
    sig = Signature.from_config(config(inputs=(("text", mc.TYPE_STRING, [2, -1]),)))
    feeds = zero_feeds(sig, 3)
    assert feeds["text"].shape == (3, 2, 1)
    assert feeds["text"].dtype == object
    assert all(v == b"" for v in feeds["text"].flat)
    assert sig.check_inputs(feeds)[1] == 3


def test_zero_feeds_of_a_model_without_batching_ignore_the_rows() -> None:
    sig = Signature.from_config(config(max_batch_size=0))
    feeds = zero_feeds(sig, 4)
    assert feeds["image"].shape == (1, 3)
    assert feeds["scale"].shape == (1,)
    assert sig.check_inputs(feeds) == (feeds, 1)


def test_bytes_inputs_must_be_utf8_text_and_the_bad_element_is_named() -> None:
    sig = Signature.from_config(config(inputs=(("text", mc.TYPE_STRING, [2]),)))
    ok = np.array([["héllo".encode(), b""], [b"a", b"b"]], dtype=object)
    assert sig.check_inputs({"text": ok})[1] == 2
    bad = np.array([[b"a", b"b"], [b"c", b"\xff"]], dtype=object)
    with pytest.raises(InvalidInputError, match=r"^model 'clf' input 'text': BYTES element 3 is not valid UTF-8"):
        sig.check_inputs({"text": bad})
