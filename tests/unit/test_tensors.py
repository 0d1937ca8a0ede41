"""The pure tensor plumbing of a batch: concat_inputs and split_outputs."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from ortserve.batching import concat_inputs, split_outputs

Array = np.ndarray[Any, Any]


def test_a_single_request_passes_through_without_a_copy() -> None:
    item: dict[str, Array] = {"a": np.ones((2, 3), np.float32), "b": np.zeros((2,), np.int64)}
    assert concat_inputs([item]) is item


def test_requests_are_stacked_along_the_batch_axis_in_order() -> None:
    items: list[dict[str, Array]] = [
        {"a": np.full((1, 3), 1.0, np.float32), "b": np.array([[10]], np.int64)},
        {"a": np.full((2, 3), 2.0, np.float32), "b": np.array([[20], [21]], np.int64)},
        {"a": np.full((3, 3), 3.0, np.float32), "b": np.array([[30], [31], [32]], np.int64)},
    ]
    feeds = concat_inputs(items)
    assert list(feeds) == ["a", "b"]
    np.testing.assert_array_equal(feeds["a"], np.concatenate([i["a"] for i in items]))
    np.testing.assert_array_equal(feeds["b"], [[10], [20], [21], [30], [31], [32]])
    assert feeds["a"].dtype == np.float32 and feeds["b"].dtype == np.int64
    assert not np.shares_memory(feeds["a"], items[0]["a"])  # the one intended copy


def test_bytes_tensors_are_stacked_too() -> None:
    items = [
        {"s": np.array([[b"a", b"bb"]], dtype=object)},
        {"s": np.array([[b""], [b"ccc"]], dtype=object).reshape(1, 2)},
    ]
    feeds = concat_inputs(items)
    assert feeds["s"].dtype == object
    assert feeds["s"].tolist() == [[b"a", b"bb"], [b"", b"ccc"]]


def test_split_gives_each_request_its_rows_as_views() -> None:
    outputs = {"y": np.arange(12, dtype=np.float32).reshape(6, 2), "z": np.arange(6, dtype=np.int32)}
    parts = split_outputs(outputs, [1, 2, 3])
    assert [len(p["y"]) for p in parts] == [1, 2, 3]
    np.testing.assert_array_equal(parts[0]["y"], [[0, 1]])
    np.testing.assert_array_equal(parts[1]["y"], [[2, 3], [4, 5]])
    np.testing.assert_array_equal(parts[2]["z"], [3, 4, 5])
    for part in parts:
        assert list(part) == ["y", "z"]
        for name, array in part.items():
            assert np.shares_memory(array, outputs[name])  # views, no copy


def test_split_of_one_request_returns_the_outputs_as_they_are() -> None:
    outputs = {"y": np.arange(4).reshape(2, 2)}
    (part,) = split_outputs(outputs, [2])
    assert part["y"] is outputs["y"]


@pytest.mark.parametrize(
    "bad",
    [np.zeros((5, 2)), np.zeros((7,)), np.array(1.0)],
    ids=["too-few-rows", "too-many-rows", "scalar"],
)
def test_split_refuses_outputs_whose_first_dim_is_not_the_batch(bad: Array) -> None:
    outputs = {"ok": np.zeros((6, 2)), "bad": bad}
    with pytest.raises(ValueError, match=r"output 'bad' has shape \[.*\]: cannot split 6 batch rows"):
        split_outputs(outputs, [2, 4])


@pytest.mark.parametrize("seed", range(5))
def test_concat_then_split_is_the_identity_per_request(seed: int) -> None:
    rng = np.random.default_rng(seed)
    rows = [int(n) for n in rng.integers(1, 6, size=int(rng.integers(2, 9)))]
    items = [{"x": rng.standard_normal((n, 4)), "m": rng.integers(0, 9, (n, 2, 2))} for n in rows]
    parts = split_outputs(concat_inputs(items), rows)
    assert len(parts) == len(items)
    for item, part in zip(items, parts, strict=True):
        for name in item:
            np.testing.assert_array_equal(part[name], item[name])
