"""The server-side breakdown: ModelStatistics deltas, against a real server and across pods."""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from loadtests.recorder import Measured
from loadtests.server_stats import Counters, addresses, breakdown, breakdowns, by_model, delta, take_snapshot
from ortserve_client import InferenceClient
from ortserve_client.proto import grpc_service_pb2 as pb
from tests import models
from tests.harness import serve_in_thread

CLIENT = Measured(10, 0, 1.0, 2.0, 3.0, 1.5, 100.0)


def stats(name: str, version: str, success: int, queue_ns: int, rows: int, batches: int) -> pb.ModelStatistics:
    message = pb.ModelStatistics(name=name, version=version, inference_count=rows, execution_count=batches)
    message.inference_stats.success.count = success
    message.inference_stats.success.ns = success * 1_000_000
    message.inference_stats.queue.count = success
    message.inference_stats.queue.ns = queue_ns
    return message


def test_versions_of_a_model_add_up() -> None:
    totals = by_model([stats("m", "1", 3, 30, 6, 2), stats("m", "2", 1, 10, 1, 1), stats("n", "1", 5, 0, 5, 5)])
    assert totals["m"] == Counters(success_count=4, success_ns=4_000_000, queue_ns=40, inference_count=7,
                                   execution_count=3)
    assert totals["n"].success_count == 5


def test_deltas_sum_the_pods_a_new_pod_from_zero_a_gone_pod_left_out() -> None:
    start = {"a:1": {"m": Counters(success_count=10)}, "gone:1": {"m": Counters(success_count=99)}}
    end = {"a:1": {"m": Counters(success_count=25)}, "new:1": {"m": Counters(success_count=7)}}
    assert delta(start, end) == {"m": Counters(success_count=22)}


def test_addresses_are_every_address_of_a_dns_target() -> None:
    assert addresses("127.0.0.1:8001") == ["127.0.0.1:8001"]
    assert addresses("grpcs://ortserve.example:443") == ["grpcs://ortserve.example:443"]
    found = addresses("dns:///localhost:8001")
    assert "127.0.0.1:8001" in found and all(a.endswith(":8001") for a in found)


def test_an_idle_model_has_no_split_rather_than_a_division_by_zero() -> None:
    row = breakdown("m", Counters(), CLIENT)
    assert row.requests == 0 and math.isnan(row.server_ms) and math.isnan(row.rows_per_batch)
    assert [b.model for b in breakdowns({"a": Counters()}, {"b": CLIENT})] == ["a", "b"]


def test_the_breakdown_of_real_traffic(add_sub_repo: Path) -> None:
    """32 concurrent requests of 2 rows: the deltas count them, batches gather them, the parts add up."""
    models.save(models.identity(), add_sub_repo, "untouched")
    with serve_in_thread(add_sub_repo) as server, InferenceClient(server.grpc_target) as client:

        def read(address: str, model: str) -> list[pb.ModelStatistics]:
            assert address == server.grpc_target
            return client.model_statistics(model)

        client.infer("add_sub", {"INPUT0": np.ones((2, 4), np.float32), "INPUT1": np.ones((2, 4), np.float32)})
        before = take_snapshot(read, server.grpc_target, ["add_sub", "untouched"])
        x = np.ones((2, 4), np.float32)
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda _: client.infer("add_sub", {"INPUT0": x, "INPUT1": x}), range(32)))
        after = take_snapshot(read, server.grpc_target, ["add_sub", "untouched"])
    counters = delta(before, after)
    assert counters["add_sub"].success_count == 32 and counters["add_sub"].inference_count == 64
    assert counters["untouched"] == Counters()
    row = breakdown("add_sub", counters["add_sub"], CLIENT)
    assert 1 <= row.batches <= 32 and row.rows_per_batch == pytest.approx(64 / row.batches)
    assert row.requests_per_batch == pytest.approx(32 / row.batches)
    assert 0 < row.queue_ms + row.compute_ms <= row.server_ms
    assert row.compute_infer_ms <= row.compute_ms and row.other_server_ms >= 0
