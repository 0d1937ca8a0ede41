"""The pure tensor plumbing of a batch: concat_inputs and split_outputs."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from ortserve.batching import concat_inputs, split_outputs
from ortserve.batching.tensors import BatchBuffers, gather

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


# BatchBuffers: large batches go into memory kept between batches.

ROW = 1 << 16  # float32 elements per row: 256 KiB, so 4 rows make a batch of BatchBuffers.MIN_BYTES


def _rows(values: list[float], n: int = 1) -> list[dict[str, Array]]:
    return [{"x": np.full((n, ROW), v, np.float32), "id": np.full((n, 1), v, np.int64)} for v in values]


def test_buffers_leave_small_batches_and_single_requests_alone() -> None:
    buffers = BatchBuffers()
    small = _rows([1.0, 2.0], n=1)  # 512 KiB of x
    feeds = buffers.concat(small)
    np.testing.assert_array_equal(feeds["x"], np.concatenate([i["x"] for i in small]))
    assert buffers.nbytes == 0
    one = _rows([3.0], n=8)
    assert buffers.concat(one) is one[0]
    assert buffers.nbytes == 0


def test_buffers_reuse_their_memory_for_large_batches_and_keep_the_order() -> None:
    buffers = BatchBuffers()
    first = buffers.concat(_rows([1.0, 2.0, 3.0, 4.0]))  # 1 MiB: into a kept buffer
    np.testing.assert_array_equal(first["x"][:, 0], [1.0, 2.0, 3.0, 4.0])
    assert first["x"].dtype == np.float32 and first["x"].shape == (4, ROW) and first["x"].flags.c_contiguous
    held = buffers.nbytes
    assert held == 4 * ROW * 4  # x only: id's batch is 32 bytes
    second = buffers.concat(_rows([5.0, 6.0, 7.0, 8.0]))
    assert np.shares_memory(first["x"], second["x"]) and buffers.nbytes == held
    np.testing.assert_array_equal(second["x"][:, -1], [5.0, 6.0, 7.0, 8.0])
    np.testing.assert_array_equal(second["id"][:, 0], [5, 6, 7, 8])
    smaller = buffers.concat(_rows([9.0, 10.0, 11.0, 12.0]))
    assert np.shares_memory(smaller["x"], second["x"]) and buffers.nbytes == held


def test_buffers_grow_by_half_again_at_least() -> None:
    buffers = BatchBuffers()
    buffers.concat(_rows([1.0] * 4))
    held = buffers.nbytes
    feeds = buffers.concat(_rows([float(v) for v in range(5)]))  # 5 rows: 1.25 x, grows to 1.5 x
    assert buffers.nbytes == held * 3 // 2
    np.testing.assert_array_equal(feeds["x"][:, 7], [0.0, 1.0, 2.0, 3.0, 4.0])
    feeds = buffers.concat(_rows([float(v) for v in range(8)]))  # 2 x needed: 1.5 x 1.5 = 2.25 x
    assert buffers.nbytes == held * 3 // 2 * 3 // 2
    feeds = buffers.concat(_rows([float(v) for v in range(8)]))
    assert buffers.nbytes == held * 3 // 2 * 3 // 2
    np.testing.assert_array_equal(feeds["x"][:, 0], np.arange(8.0))


def test_buffers_leave_object_arrays_to_numpy() -> None:
    buffers = BatchBuffers()
    items = [{"s": np.array([[b"a" * 10]] * 70_000, dtype=object)} for _ in range(2)]
    feeds = buffers.concat(items)
    assert feeds["s"].shape == (140_000, 1) and buffers.nbytes == 0


def test_detach_copies_the_outputs_that_alias_a_buffer() -> None:
    buffers = BatchBuffers()
    feeds = buffers.concat(_rows([1.0, 2.0, 3.0, 4.0]))
    alias = feeds["x"][:, :10]  # as an Identity from input to output might return
    own = np.ones((4, 10), np.float32)
    outputs = buffers.detach({"alias": alias, "own": own})
    assert outputs["own"] is own
    assert not np.may_share_memory(outputs["alias"], feeds["x"])
    np.testing.assert_array_equal(outputs["alias"], alias)
    untouched = {"own": own}
    assert buffers.detach(untouched) is untouched


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64, np.bool_, np.int8, np.uint64, np.complex64])
@pytest.mark.parametrize("width", [4, 4096])  # under and over GIL_FREE_BYTES a piece
def test_gather_equals_numpy_concatenate_for_every_dtype(dtype: Any, width: int) -> None:
    rng = np.random.default_rng(width)
    pieces = [(rng.standard_normal((int(n), width)) * 100).astype(dtype) for n in rng.integers(1, 4, size=9)]
    pieces[3] = np.asfortranarray(np.repeat(pieces[3], 2, axis=0))  # not C-contiguous
    pieces[5] = (rng.standard_normal((2 * width, 3)) * 100).astype(dtype).T[:, ::2]  # a strided view
    expected = np.concatenate(pieces, axis=0)
    got = gather(pieces)
    assert got.dtype == expected.dtype and got.shape == expected.shape and got.flags.c_contiguous
    np.testing.assert_array_equal(got, expected)
    out = np.empty_like(expected)
    assert gather(pieces, out) is out
    np.testing.assert_array_equal(out, expected)


def test_gather_into_a_non_contiguous_out_still_fills_it() -> None:
    pieces = [np.full((2, 2048), float(i), np.float32) for i in range(3)]
    out = np.empty((6, 4096), np.float32)[:, ::2]
    gather(pieces, out)
    np.testing.assert_array_equal(out, np.concatenate(pieces))


def test_gather_leaves_object_arrays_to_numpy() -> None:
    pieces = [np.array([[b"x" * 2000]], dtype=object), np.array([[b"y"]], dtype=object)]
    assert gather(pieces).tolist() == [[b"x" * 2000], [b"y"]]


@pytest.mark.parametrize("width", [1, 4096])  # numpy's concatenate path, and the GIL-held copy
@pytest.mark.parametrize("dtype", [np.float32, np.int64, object])
def test_gather_pads_with_copies_of_the_last_row(dtype: Any, width: int) -> None:
    rng = np.random.default_rng(width)
    pieces = [rng.integers(0, 100, (n, width)).astype(dtype) for n in (2, 1, 3)]
    out = gather(pieces, rows=8)
    assert out.shape == (8, width) and out.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(out[:6], np.concatenate(pieces))
    np.testing.assert_array_equal(out[6:], np.repeat(pieces[-1][-1:], 2, axis=0))
    assert gather(pieces, rows=3).shape == (6, width)  # fewer rows than the pieces: no padding


def test_buffers_pad_a_single_request_and_large_batches_in_kept_memory() -> None:
    buffers = BatchBuffers()
    one = {"x": np.arange(6, dtype=np.float32).reshape(2, 3)}
    assert buffers.concat([one]) is one and buffers.concat([one], 2) is one
    padded = buffers.concat([one], 4)["x"]
    np.testing.assert_array_equal(padded, [[0, 1, 2], [3, 4, 5], [3, 4, 5], [3, 4, 5]])
    assert buffers.nbytes == 0  # small: a new array
    row = 1 << 16  # 256 KiB of float32 per row
    big = [{"x": np.full((n, row), float(n), np.float32)} for n in (1, 2)]
    feeds = buffers.concat(big, 8)["x"]
    assert feeds.shape == (8, row) and buffers.nbytes >= feeds.nbytes
    assert (feeds[0] == 1).all() and (feeds[1:] == 2).all()


def test_split_drops_the_padding_rows() -> None:
    outputs = {"y": np.arange(8).reshape(8, 1)}
    parts = split_outputs(outputs, [2, 3], padded=8)
    assert [p["y"].ravel().tolist() for p in parts] == [[0, 1], [2, 3, 4]]
    (alone,) = split_outputs(outputs, [5], padded=8)
    assert alone["y"].ravel().tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="cannot split 6 batch rows"):
        split_outputs(outputs, [2, 3], padded=6)
