"""The response cache: keys, LRU eviction by bytes, private copies, owners, hashing cost."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest

from ortserve.repository.cache import ENTRY_OVERHEAD_BYTES, ResponseCache

Array = np.ndarray[Any, Any]


def x(*values: float) -> dict[str, Array]:
    return {"x": np.array([values], np.float32)}


def test_same_request_same_key_and_every_part_of_it_counts() -> None:
    view = ResponseCache(1 << 20).view()
    key = view.key(x(1, 2, 3), ["y"])
    assert view.key(x(1, 2, 3), ["y"]) == key
    different = [
        view.key(x(1, 2, 4), ["y"]),  # bytes
        view.key({"x": np.array([[1, 2, 3]], np.float64)}, ["y"]),  # dtype
        view.key({"x": np.array([1, 2, 3], np.float32)}, ["y"]),  # shape
        view.key({"z": np.array([[1, 2, 3]], np.float32)}, ["y"]),  # name
        view.key(x(1, 2, 3), []),  # requested outputs
        view.key(x(1, 2, 3), ["y", "w"]),
        ResponseCache(1 << 20).view().key(x(1, 2, 3), ["y"]),  # another loaded version
    ]
    assert key not in different and len(set(different)) == len(different)


def test_shape_and_bytes_cannot_be_traded_for_each_other() -> None:
    view = ResponseCache(1 << 20).view()
    flat = np.arange(6, dtype=np.int32)
    assert view.key({"x": flat.reshape(2, 3)}, []) != view.key({"x": flat.reshape(3, 2)}, [])
    # Names and values whose concatenations coincide still differ.
    assert view.key({"ab": np.zeros(1, np.uint8), "c": np.zeros(1, np.uint8)}, []) != view.key(
        {"a": np.zeros(1, np.uint8), "bc": np.zeros(1, np.uint8)}, []
    )


def test_bytes_tensors_are_keyed_by_their_elements() -> None:
    view = ResponseCache(1 << 20).view()

    def text(*items: bytes) -> dict[str, Array]:
        return {"t": np.array(items, dtype=object)}

    assert view.key(text(b"ab", b"c"), []) == view.key(text(b"ab", b"c"), [])
    assert view.key(text(b"ab", b"c"), []) != view.key(text(b"a", b"bc"), [])


def test_non_contiguous_inputs_hash_like_their_contiguous_copy() -> None:
    view = ResponseCache(1 << 20).view()
    base = np.arange(12, dtype=np.float32).reshape(3, 4)
    strided = base[:, ::2]
    assert not strided.flags.c_contiguous
    assert view.key({"x": strided}, []) == view.key({"x": np.ascontiguousarray(strided)}, [])


def test_put_keeps_a_private_read_only_copy() -> None:
    view = ResponseCache(1 << 20).view()
    key = view.key(x(1), [])
    batch = np.arange(8, dtype=np.float32).reshape(4, 2)
    answer = batch[1:2]  # a view into a batch, as the batcher hands it out
    assert view.put(key, [("y", answer)])
    batch[:] = -1  # the batch buffer is reused or changed: the cached answer is not
    (name, cached), = view.get(key) or []
    assert name == "y"
    np.testing.assert_array_equal(cached, [[2.0, 3.0]])
    assert cached.base is None or cached.base is not batch
    with pytest.raises(ValueError):
        cached[0, 0] = 7


def test_lru_eviction_by_bytes() -> None:
    entry = ENTRY_OVERHEAD_BYTES + 1 + 400  # name "y" + 100 float32
    cache = ResponseCache(3 * entry)
    view = cache.view()
    keys = [view.key(x(i), []) for i in range(4)]
    for key in keys[:3]:
        assert view.put(key, [("y", np.zeros(100, np.float32))])
    assert cache.used_bytes == 3 * entry and len(cache) == 3
    assert view.get(keys[0]) is not None  # 0 is now the most recently used
    view.put(keys[3], [("y", np.zeros(100, np.float32))])
    assert view.get(keys[1]) is None  # the least recently used went
    assert all(view.get(k) is not None for k in (keys[0], keys[2], keys[3]))
    assert cache.evictions == 1 and cache.used_bytes == 3 * entry


def test_an_answer_larger_than_the_cache_is_not_kept() -> None:
    cache = ResponseCache(1000)
    view = cache.view()
    small = view.key(x(1), [])
    view.put(small, [("y", np.zeros(10, np.float32))])
    assert view.put(view.key(x(2), []), [("y", np.zeros(1000, np.float32))]) is False
    assert view.get(small) is not None and len(cache) == 1


def test_replacing_an_entry_does_not_count_it_twice() -> None:
    cache = ResponseCache(1 << 20)
    view = cache.view()
    key = view.key(x(1), [])
    view.put(key, [("y", np.zeros(10, np.float32))])
    used = cache.used_bytes
    view.put(key, [("y", np.zeros(10, np.float32))])  # two identical misses both insert
    assert cache.used_bytes == used and len(cache) == 1


def test_clearing_a_view_drops_only_its_entries() -> None:
    cache = ResponseCache(1 << 20)
    old, other = cache.view(), cache.view()
    old.put(old.key(x(1), []), [("y", np.zeros(3, np.float32))])
    other.put(other.key(x(1), []), [("y", np.ones(3, np.float32))])
    old.clear()
    assert old.get(old.key(x(1), [])) is None
    assert other.get(other.key(x(1), [])) is not None
    assert len(cache) == 1 and cache.used_bytes > 0


def test_bytes_outputs_are_charged_by_their_length() -> None:
    cache = ResponseCache(1 << 20)
    view = cache.view()
    view.put(view.key(x(1), []), [("t", np.array([b"a" * 1000], dtype=object))])
    assert cache.used_bytes >= 1000


def test_hashing_reads_the_buffer_in_place() -> None:
    """Key cost grows with the bytes only: 4 MiB hash in well under 20 ms (BLAKE2b runs ~1 GB/s)."""
    view = ResponseCache(1 << 20).view()
    big = {"x": np.random.default_rng(0).standard_normal((1024, 1024)).astype(np.float32)}
    view.key(big, [])
    start = time.perf_counter()
    for _ in range(5):
        view.key(big, [])
    assert (time.perf_counter() - start) / 5 < 0.02


def test_capacity_must_not_be_negative() -> None:
    with pytest.raises(ValueError):
        ResponseCache(-1)
