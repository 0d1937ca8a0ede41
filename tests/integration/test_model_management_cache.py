"""The response cache in a real server: hits skip the model, statistics count them, the bound
evicts, a reloaded version never answers from its predecessor's entries, concurrency is exact."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ortserve_client.proto import grpc_service_pb2 as pb
from tests import models
from tests.harness import RunningServer, serve_in_thread
from tests.wire import add_sub_inputs, check_add_sub, infer_request, model_stats, outputs_of, write_config

CACHED = "response_cache { enable: true }\n"
ENTRIES = 12
ENTRY_BYTES = 256 + 1 + 12  # ortserve.repository.cache: overhead + output name "y" + [1, 3] FP32
"""The scale model's answer to one [1, 3] request, as the cache charges it."""


@pytest.fixture
def srv(repo: Path) -> Iterator[tuple[RunningServer, Path]]:
    models.save(models.scale(2.0), repo, "cached")
    write_config(repo, "cached", CACHED)
    models.save(models.scale(2.0), repo, "plain")
    models.save(models.add_sub(), repo, "add_sub")
    write_config(repo, "add_sub", CACHED)
    with serve_in_thread(repo, http_port=-1, response_cache_bytes=ENTRIES * ENTRY_BYTES) as running:
        yield running, repo


def ask(stub: Any, name: str, value: float, version: str = "") -> Any:
    x = np.array([[value + 1, value + 2, value + 3]], np.float32)
    y = outputs_of(stub.ModelInfer(infer_request(name, {"x": x}, version=version), timeout=30))["y"]
    return y / x


def counts(stub: Any, name: str) -> tuple[int, int, int, int]:
    """(cache hits, cache misses, requests computed by the model, successes)."""
    s = model_stats(stub, name)
    return (s.inference_stats.cache_hit.count, s.inference_stats.cache_miss.count, s.inference_count,
            s.inference_stats.success.count)


def test_a_repeated_request_is_answered_from_the_cache(srv: tuple[RunningServer, Path]) -> None:
    server, _ = srv
    np.testing.assert_array_equal(ask(server.stub, "cached", 1.0), [[2, 2, 2]])
    np.testing.assert_array_equal(ask(server.stub, "cached", 1.0), [[2, 2, 2]])
    np.testing.assert_array_equal(ask(server.stub, "cached", 1.0, version="1"), [[2, 2, 2]])
    assert counts(server.stub, "cached") == (2, 1, 1, 3)  # Triton: hits count as successes, not inferences
    stats = model_stats(server.stub, "cached")
    assert stats.execution_count == 1
    assert stats.inference_stats.cache_hit.ns > 0 and stats.inference_stats.cache_miss.ns > 0
    ask(server.stub, "plain", 1.0)
    ask(server.stub, "plain", 1.0)
    assert counts(server.stub, "plain") == (0, 0, 2, 2)  # not enabled: never cached


def test_requested_outputs_are_part_of_the_key(srv: tuple[RunningServer, Path]) -> None:
    server, _ = srv
    a, b = add_sub_inputs(2, np.random.default_rng(5))
    both = infer_request("add_sub", {"INPUT0": a, "INPUT1": b})
    one = infer_request("add_sub", {"INPUT0": a, "INPUT1": b}, outputs=["OUTPUT1"])
    check_add_sub(server.stub.ModelInfer(both), a, b)
    only = outputs_of(server.stub.ModelInfer(one))
    assert list(only) == ["OUTPUT1"]
    np.testing.assert_array_equal(only["OUTPUT1"], a - b)
    check_add_sub(server.stub.ModelInfer(both), a, b)
    assert counts(server.stub, "add_sub")[:2] == (1, 2)


def test_the_cache_is_bounded_and_evicts_the_least_recently_used(srv: tuple[RunningServer, Path]) -> None:
    server, _ = srv
    for value in range(ENTRIES):
        ask(server.stub, "cached", float(value))
    ask(server.stub, "cached", 0.0)  # a hit: 0 becomes the most recently used
    for value in range(ENTRIES, ENTRIES + 2):
        ask(server.stub, "cached", float(value))  # two more: 1 and 2 are evicted
    hits = counts(server.stub, "cached")[0]
    ask(server.stub, "cached", 0.0)
    assert counts(server.stub, "cached")[0] == hits + 1
    ask(server.stub, "cached", 1.0)
    assert counts(server.stub, "cached")[0] == hits + 1  # evicted: computed again


def test_a_reloaded_version_never_answers_from_its_predecessor(srv: tuple[RunningServer, Path]) -> None:
    server, repo = srv
    np.testing.assert_array_equal(ask(server.stub, "cached", 3.0), [[2, 2, 2]])
    np.testing.assert_array_equal(ask(server.stub, "cached", 3.0), [[2, 2, 2]])
    models.save(models.scale(5.0), repo, "cached")  # same version number, new model file
    server.stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="cached"))
    np.testing.assert_array_equal(ask(server.stub, "cached", 3.0), [[5, 5, 5]])
    assert counts(server.stub, "cached")[:2] == (0, 1)  # a fresh version, fresh statistics


def test_concurrent_identical_and_different_requests_get_their_own_answers(srv: tuple[RunningServer, Path]) -> None:
    server, _ = srv
    rng = np.random.default_rng(11)
    pool = [rng.standard_normal((int(rng.integers(1, 4)), 3)).astype(np.float32) for _ in range(8)]
    sent = []
    for _ in range(200):
        x = pool[int(rng.integers(0, len(pool)))]
        sent.append((x, server.stub.ModelInfer.future(infer_request("cached", {"x": x}), timeout=60)))
    for x, future in sent:
        np.testing.assert_array_equal(outputs_of(future.result())["y"], x * np.float32(2.0))
    hits, misses, _, successes = counts(server.stub, "cached")
    # How many identical requests miss depends on how many arrive before the first of them is
    # answered (nothing coalesces them, as in Triton): every distinct input misses at least once.
    assert successes == 200 and hits + misses == 200 and misses >= len(pool)
    for x in pool:  # all answered now, so each is in the cache
        np.testing.assert_array_equal(outputs_of(server.stub.ModelInfer(infer_request("cached", {"x": x})))["y"], x * 2)
    assert counts(server.stub, "cached")[:2] == (hits + len(pool), misses)


def test_with_the_server_cache_off_nothing_is_cached(repo: Path) -> None:
    models.save(models.scale(2.0), repo, "cached")
    write_config(repo, "cached", CACHED)
    with serve_in_thread(repo, http_port=-1, response_cache_bytes=0) as server:
        ask(server.stub, "cached", 1.0)
        ask(server.stub, "cached", 1.0)
        assert counts(server.stub, "cached") == (0, 0, 2, 2)
