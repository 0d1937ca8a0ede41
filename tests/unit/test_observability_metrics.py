"""The ortserve_* families, Triton's pending gauge and nv_gpu_*: values after known traffic.

Traffic runs through the real DataPlane, registry, batcher and ONNX Runtime (no gRPC, no
ports): successes of known batch sizes and every failure reason. Each test scrapes its own
injected CollectorRegistry.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from ortserve.app import OrtServer
from ortserve.batching.controller import ADMIT_FRACTION, RETRY_TARGETS, LatencyController
from ortserve.batching.hold import BatchHold
from ortserve.config import ServerSettings
from ortserve.dataplane import DataPlane, InferRequest
from ortserve.errors import InternalError, InvalidInputError
from ortserve.observability import GpuCollector, Histogram, ModelStats, OrtserveCollector, StatsCollector
from ortserve.observability.exposition import exposition, metrics_app, plain
from ortserve.observability.histograms import LATENCY_BUCKETS_S, batch_size_histogram, latency_histogram
from ortserve.repository import ModelRegistry
from ortserve.runtime import RuntimeOptions
from tests import models
from tests.wire import sleeper

ORTSERVE_FAMILIES = {
    "ortserve_requests": "counter",
    "ortserve_request_failures": "counter",
    "ortserve_inference_rows": "counter",
    "ortserve_request_duration_seconds": "histogram",
    "ortserve_queue_duration_seconds": "histogram",
    "ortserve_compute_duration_seconds": "histogram",
    "ortserve_batch_size": "histogram",
    "ortserve_pending_requests_per_instance": "gauge",
    "ortserve_batches_rerun": "counter",
    "ortserve_batches_stopped": "counter",
    "ortserve_batch_handoff_seconds": "gauge",
    "ortserve_batch_holds": "counter",
    "ortserve_batch_hold_seconds": "counter",
    "ortserve_latency_target_seconds": "gauge",
    "ortserve_latency_target_admission_bound_seconds": "gauge",
    "ortserve_latency_target_batch_cap": "gauge",
    "ortserve_latency_target_retry_after_seconds": "gauge",
}


def families_of(registry: CollectorRegistry) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(generate_latest(registry).decode())}


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    found: float | None = registry.get_sample_value(name, labels)
    return found


# -- Histogram ----------------------------------------------------------------------------


def test_a_value_on_a_bound_counts_in_that_bucket_as_prometheus_le_says() -> None:
    h = Histogram((10, 20, 30))
    for v in (0, 10, 11, 20, 30, 31, 1000):
        h.observe(v)
    assert h.counts == [2, 2, 1, 2]  # <=10, <=20, <=30, overflow
    buckets, total = h.snapshot()
    assert buckets == [("10.0", 2.0), ("20.0", 4.0), ("30.0", 5.0), ("+Inf", 7.0)]
    assert total == 1102 and h.count == 7


def test_latency_buckets_are_exposed_in_seconds() -> None:
    h = latency_histogram()
    h.observe(150_000)  # 150 us
    h.observe(3_000_000_000)  # 3 s
    buckets, total = h.snapshot(1e9)
    assert [le for le, _ in buckets[:-1]] == [repr(b) for b in LATENCY_BUCKETS_S]
    assert dict(buckets)["0.00025"] == 1.0 and dict(buckets)["2.5"] == 1.0 and dict(buckets)["5.0"] == 2.0
    assert total == pytest.approx(3.00015)


def test_bounds_must_increase() -> None:
    with pytest.raises(ValueError, match="strictly increasing"):
        Histogram((1, 1, 2))


def test_record_calls_fill_the_histograms() -> None:
    stats = ModelStats()
    stats.record_success(2, 2_000_000, 500_000, 10, 20, 30)
    stats.record_failure(9_000_000, "BACKEND")  # failures are counted by reason, not timed here
    stats.record_batch(5, 1_000, 2_000, 3_000)
    assert stats.request_duration.count == 1 and stats.request_duration.total == 2_000_000
    assert stats.queue_duration.count == 1 and stats.queue_duration.total == 500_000
    assert stats.compute_duration.count == 1 and stats.compute_duration.total == 6_000
    assert stats.batch_rows.counts == batch_size_histogram().counts[:3] + [1] + [0] * 8  # le=8 bucket


# -- OrtserveCollector on hand-made statistics ----------------------------------------------


@dataclass
class Load:
    queued_requests: int
    running_requests: int
    instances: int
    controller: LatencyController | None = None
    hold: BatchHold | None = None
    batches_rerun: int = 0
    batches_stopped: int = 0


def test_ortserve_families_from_known_statistics() -> None:
    stats = ModelStats()
    for _ in range(3):
        stats.record_success(1, 3_000_000, 1_000_000, 100, 1_000_000, 100)
    stats.record_batch(3, 100, 1_000_000, 100)
    stats.record_failure(1_000, "REJECTED")
    registry = CollectorRegistry()
    registry.register(OrtserveCollector(lambda: [("m", "1", stats)], lambda: [("m", "1", Load(6, 2, 4))]))
    families = families_of(registry)
    assert {name: f.type for name, f in families.items()} == ORTSERVE_FAMILIES
    labels = {"model": "m", "version": "1"}
    assert value(registry, "ortserve_requests_total", **labels) == 4
    assert value(registry, "ortserve_request_failures_total", reason="REJECTED", **labels) == 1
    assert value(registry, "ortserve_inference_rows_total", **labels) == 3
    assert value(registry, "ortserve_request_duration_seconds_count", **labels) == 3
    assert value(registry, "ortserve_request_duration_seconds_sum", **labels) == pytest.approx(0.009)
    assert value(registry, "ortserve_request_duration_seconds_bucket", le="0.0025", **labels) == 0
    assert value(registry, "ortserve_request_duration_seconds_bucket", le="0.005", **labels) == 3
    assert value(registry, "ortserve_queue_duration_seconds_bucket", le="0.001", **labels) == 3
    assert value(registry, "ortserve_compute_duration_seconds_count", **labels) == 1
    assert value(registry, "ortserve_batch_size_bucket", le="2.0", **labels) == 0
    assert value(registry, "ortserve_batch_size_bucket", le="4.0", **labels) == 1
    assert value(registry, "ortserve_batch_size_sum", **labels) == 3
    assert value(registry, "ortserve_pending_requests_per_instance", **labels) == 2.0  # (6 + 2) / 4
    text = generate_latest(registry).decode()
    assert "_created" not in text


def test_without_models_every_family_is_still_described() -> None:
    registry = CollectorRegistry()
    registry.register(OrtserveCollector(lambda: [], lambda: []))
    text = generate_latest(registry).decode()
    for name, kind in ORTSERVE_FAMILIES.items():
        assert f"# TYPE {name}{'_total' if kind == 'counter' else ''} {kind}" in text


def test_latency_target_gauges_follow_the_controller_of_a_targeted_version_only() -> None:
    controller = LatencyController(target_ms=50, instances=1, max_batch_size=64)
    registry = CollectorRegistry()
    stats = [("t", "1", ModelStats()), ("g", "1", ModelStats())]
    loads = [("t", "1", Load(0, 0, 1, controller)), ("g", "1", Load(0, 0, 1))]
    registry.register(OrtserveCollector(lambda: stats, lambda: loads))
    t = {"model": "t", "version": "1"}
    bound = ADMIT_FRACTION * 0.05
    assert value(registry, "ortserve_latency_target_seconds", **t) == pytest.approx(0.05)
    assert value(registry, "ortserve_latency_target_admission_bound_seconds", **t) == pytest.approx(bound)
    assert value(registry, "ortserve_latency_target_batch_cap", **t) == 64  # not calibrated yet: no cap
    assert value(registry, "ortserve_latency_target_retry_after_seconds", **t) == pytest.approx(RETRY_TARGETS * 0.05)
    assert value(registry, "ortserve_latency_target_seconds", model="g", version="1") is None  # no target, no gauges
    for rows in (1, 2, 4, 8):
        controller.observe(rows, rows * 2_000_000)  # 2 ms a row: two batches of 7 fill 0.6 of the target
    for _ in range(30):  # half of every batch over the setpoint: the admission bound shrinks
        controller.observe_latencies(over=5, answered=10, now_ns=0)
    assert value(registry, "ortserve_latency_target_batch_cap", **t) == 7
    shrunk = value(registry, "ortserve_latency_target_admission_bound_seconds", **t)
    assert shrunk is not None and shrunk < 0.5 * bound


def test_batch_hold_families_follow_the_hold_of_a_version_that_has_one() -> None:
    hold = BatchHold()
    hold.observe(300_000)
    hold.holds, hold.held_ns = 7, 2_500_000
    registry = CollectorRegistry()
    stats = [("h", "1", ModelStats()), ("g", "1", ModelStats())]
    loads = [("h", "1", Load(0, 0, 1, hold=hold)), ("g", "1", Load(0, 0, 1))]
    registry.register(OrtserveCollector(lambda: stats, lambda: loads))
    h = {"model": "h", "version": "1"}
    assert value(registry, "ortserve_batch_handoff_seconds", **h) == pytest.approx(0.0003)
    assert value(registry, "ortserve_batch_holds_total", **h) == 7
    assert value(registry, "ortserve_batch_hold_seconds_total", **h) == pytest.approx(0.0025)
    assert value(registry, "ortserve_batch_holds_total", model="g", version="1") is None  # strictly greedy: none


def test_triton_pending_count_is_the_queue_only() -> None:
    registry = CollectorRegistry()
    registry.register(StatsCollector(lambda: [("m", "1", ModelStats())], lambda: [("m", "1", Load(5, 3, 1))]))
    assert value(registry, "nv_inference_pending_request_count", model="m", version="1") == 5
    assert "# TYPE nv_inference_pending_request_count gauge" in generate_latest(registry).decode()


# -- real traffic through the DataPlane ----------------------------------------------------------


def idx(*values: int) -> dict[str, np.ndarray]:
    return {"idx": np.array(values, dtype=np.int64).reshape(-1, 1)}


async def with_dataplane(repo: Path, body: Any) -> Any:
    registry = ModelRegistry(repo, RuntimeOptions(device="cpu", intra_op_threads=1), default_max_batch_size=8)
    await registry.load_all()
    try:
        return await body(registry, DataPlane(registry))
    finally:
        await registry.close(timeout_s=1.0)


def collectors(registry: ModelRegistry) -> CollectorRegistry:
    def batchers() -> Iterator[tuple[str, str, Any]]:
        for m in registry.loaded():
            yield m.name, m.version_str, m.batcher

    metrics = CollectorRegistry()
    metrics.register(OrtserveCollector(registry.stats, batchers))
    metrics.register(StatsCollector(registry.stats, batchers))
    return metrics


def snapshot(metrics: CollectorRegistry) -> CollectorRegistry:
    """A registry holding what `metrics` exposes now."""
    families = list(metrics.collect())

    class Frozen(Collector):
        def collect(self) -> Iterator[Metric]:
            return iter(families)

    frozen = CollectorRegistry()
    frozen.register(Frozen())
    return frozen


def test_every_family_after_successes_of_known_batch_sizes_and_every_failure_reason(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    models.save(models.lookup(), repo, "lookup")
    models.save(models.allocating(), repo, "allocating")

    async def traffic(registry: ModelRegistry, dp: DataPlane) -> CollectorRegistry:
        metrics = collectors(registry)
        def request(inputs: dict[str, np.ndarray], **kw: Any) -> InferRequest:
            return InferRequest("lookup", "", "r", inputs, **kw)

        for i in range(3):  # one at a time: three executions of 1 row
            response = await dp.infer(request(idx(i)))
            assert response.outputs[0][1].tolist() == [[10.0 + i]]
        # One execution of 4 rows, which holds the instance while the next request queues behind it.
        running = asyncio.create_task(dp.infer(request(idx(0, 1, 2, 3))))
        task = asyncio.create_task(dp.infer(request(idx(0))))
        await asyncio.sleep(0)  # the first runs, the second is queued, awaiting its slice
        assert registry.get("lookup").batcher.queued_requests == 1
        task.cancel()  # CANCELED: the client went away
        with pytest.raises(asyncio.CancelledError):
            await task
        await running
        with pytest.raises(InvalidInputError):  # REJECTED: a bad tensor
            await dp.infer(request({"idx": np.zeros((1, 1), dtype=np.float32)}))
        with pytest.raises(Exception, match="deadline"):  # REJECTED: the deadline has passed
            await dp.infer(request(idx(0), deadline_ns=1))
        with pytest.raises(InvalidInputError, match="out of data bounds"):  # REJECTED: a value the model rejects
            await dp.infer(request(idx(99)))
        with pytest.raises(InternalError, match="onnxruntime run failed"):  # BACKEND: the model's run fails
            await dp.infer(InferRequest("allocating", "", "r", {"n": np.array([[2**50]], np.int64)}))
        model = registry.get("lookup")

        async def broken(*args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("not an ortserve error")

        monkeypatch.setattr(model, "infer", broken)
        with pytest.raises(RuntimeError):  # OTHER
            await dp.infer(request(idx(0)))
        return snapshot(metrics)  # before the models unload

    metrics = asyncio.run(with_dataplane(repo, traffic))
    labels = {"model": "lookup", "version": "1"}
    # ortserve_*
    assert value(metrics, "ortserve_requests_total", **labels) == 4 + 5
    def failures_of(model: str) -> dict[str, float]:
        samples = families_of(metrics)["ortserve_request_failures"].samples
        return {s.labels["reason"]: s.value for s in samples if s.labels["model"] == model}

    failures = failures_of("lookup")
    assert failures == {"REJECTED": 3, "CANCELED": 1, "OTHER": 1}
    assert failures_of("allocating") == {"BACKEND": 1}
    assert value(metrics, "nv_inference_request_failure", reason="BACKEND", model="allocating", version="1") == 1
    assert value(metrics, "ortserve_inference_rows_total", **labels) == 7
    for family in ("ortserve_request_duration_seconds", "ortserve_queue_duration_seconds"):
        assert value(metrics, f"{family}_count", **labels) == 4  # successes only
        assert (value(metrics, f"{family}_sum", **labels) or 0) > 0
    assert value(metrics, "ortserve_compute_duration_seconds_count", **labels) == 4  # executions that ran
    assert value(metrics, "ortserve_batch_size_count", **labels) == 4
    assert value(metrics, "ortserve_batch_size_sum", **labels) == 7
    assert value(metrics, "ortserve_batch_size_bucket", le="1.0", **labels) == 3
    assert value(metrics, "ortserve_batch_size_bucket", le="2.0", **labels) == 3
    assert value(metrics, "ortserve_batch_size_bucket", le="4.0", **labels) == 4
    assert value(metrics, "ortserve_pending_requests_per_instance", **labels) == 0
    # Triton's, from the same counters
    assert value(metrics, "nv_inference_request_success", **labels) == 4
    assert value(metrics, "nv_inference_count", **labels) == 7
    assert value(metrics, "nv_inference_exec_count", **labels) == 4
    for reason, count in failures.items():
        assert value(metrics, "nv_inference_request_failure", reason=reason, **labels) == count
    assert value(metrics, "nv_inference_pending_request_count", **labels) == 0
    for family in ("request", "queue", "compute_input", "compute_infer", "compute_output"):
        name = f"nv_inference_{family}_duration_us"
        assert value(metrics, name, **labels) is not None, name


def test_batches_rerun_and_stopped_count_real_failed_and_abandoned_runs(repo: Path) -> None:
    """A Gather batch with one index out of the table is rerun in parts; a long run whose caller
    went away is stopped: each is counted on its version."""
    models.save(models.lookup(), repo, "lookup")
    (repo / "lookup" / "config.pbtxt").write_text(
        "max_batch_size: 8\ndynamic_batching { max_queue_delay_microseconds: 300000 }\n"
    )
    models.save(sleeper(), repo, "sleeper")

    async def traffic(registry: ModelRegistry, dp: DataPlane) -> CollectorRegistry:
        metrics = collectors(registry)
        good, bad = await asyncio.gather(
            dp.infer(InferRequest("lookup", "", "good", idx(2))),
            dp.infer(InferRequest("lookup", "", "bad", idx(99))),
            return_exceptions=True,
        )
        assert not isinstance(good, BaseException) and good.outputs[0][1].tolist() == [[12.0]]
        assert isinstance(bad, InvalidInputError)
        endless = asyncio.create_task(dp.infer(InferRequest("sleeper", "", "r", {"x": np.array([100_000], np.int64)})))
        batcher = registry.get("sleeper").batcher
        while batcher.running_batches == 0:
            await asyncio.sleep(0.001)
        endless.cancel()
        with pytest.raises(asyncio.CancelledError):
            await endless
        while batcher.running_batches:  # stopped: long before its 100000 iterations
            await asyncio.sleep(0.001)
        return snapshot(metrics)

    metrics = asyncio.run(with_dataplane(repo, traffic))
    assert value(metrics, "ortserve_batches_rerun_total", model="lookup", version="1") == 1
    assert value(metrics, "ortserve_batches_stopped_total", model="lookup", version="1") == 0
    assert value(metrics, "ortserve_batches_stopped_total", model="sleeper", version="1") == 1
    assert value(metrics, "ortserve_batches_rerun_total", model="sleeper", version="1") == 0


def test_pending_requests_per_instance_rises_while_requests_wait(repo: Path) -> None:
    models.save(models.slow_matmul(), repo, "slow")

    async def traffic(registry: ModelRegistry, dp: DataPlane) -> tuple[float, float, float]:
        metrics = collectors(registry)
        x = np.ones((1, 1024), dtype=np.float32)
        tasks = [asyncio.create_task(dp.infer(InferRequest("slow", "", str(i), {"x": x}))) for i in range(12)]
        batcher = registry.get("slow").batcher
        for _ in range(200):
            await asyncio.sleep(0.001)
            if batcher.running_requests:
                break
        expected = (batcher.queued_requests + batcher.running_requests) / batcher.instances
        seen = value(metrics, "ortserve_pending_requests_per_instance", model="slow", version="1")
        await asyncio.gather(*tasks)
        after = value(metrics, "ortserve_pending_requests_per_instance", model="slow", version="1")
        assert seen is not None and after is not None
        return expected, seen, after

    expected, seen, after = asyncio.run(with_dataplane(repo, traffic))
    assert seen == expected and seen >= 1
    assert after == 0


def test_a_model_with_a_latency_target_shows_its_controller(repo: Path) -> None:
    models.save(models.lookup(), repo, "lookup")
    target = 'parameters { key: "latency_target_ms" value { string_value: "40" } }'
    (repo / "lookup" / "config.pbtxt").write_text(f"max_batch_size: 8\ndynamic_batching {{ }}\n{target}\n")
    labels = {"model": "lookup", "version": "1"}

    async def traffic(registry: ModelRegistry, dp: DataPlane) -> list[float | None]:
        await dp.infer(InferRequest("lookup", "", "r", idx(1, 2)))
        metrics = collectors(registry)
        return [
            value(metrics, f"ortserve_latency_target_{name}", **labels)
            for name in ("seconds", "retry_after_seconds", "batch_cap")
        ]

    seconds, retry_after, cap = asyncio.run(with_dataplane(repo, traffic))
    assert seconds == pytest.approx(0.04) and retry_after == pytest.approx(0.08)
    assert cap is not None and 1 <= cap <= 8


# -- the triton_metrics switch --------------------------------------------------------------------


@pytest.mark.parametrize("triton", [True, False])
def test_triton_metrics_switch_keeps_or_drops_every_nv_family(repo: Path, triton: bool) -> None:
    metrics = CollectorRegistry()
    OrtServer(ServerSettings(model_repository=repo, triton_metrics=triton), metrics_registry=metrics)
    names = set(families_of(metrics))
    assert ("nv_inference_request_success" in names) is triton
    assert ("nv_inference_pending_request_count" in names) is triton
    assert not triton or all(n.startswith(("nv_", "ortserve_")) for n in names)
    assert set(ORTSERVE_FAMILIES) <= names
    assert any(n.startswith("ortserve_drift_") for n in names)


# -- nv_gpu_* ------------------------------------------------------------------------------------


def test_without_a_gpu_the_gpu_collector_yields_nothing() -> None:
    # This machine has no NVIDIA driver: the real nvidia-ml-py raises NVMLError_LibraryNotFound.
    collector = GpuCollector()
    registry = CollectorRegistry()
    registry.register(collector)
    assert not collector.available
    assert "nv_gpu" not in generate_latest(registry).decode()
    assert "nv_gpu" not in generate_latest(registry).decode()  # remembered, not retried per scrape
    collector.close()


class FakeNVMLError(Exception):
    pass


def fake_nvml(power_supported: bool = True) -> Any:
    """The slice of pynvml the collector uses: two GPUs, the second without power readings."""
    calls = {"init": 0}

    def init() -> None:
        calls["init"] += 1

    def power(handle: int) -> int:
        if handle == 1 or not power_supported:
            raise FakeNVMLError("Not Supported")
        return 123_456  # mW

    return SimpleNamespace(
        NVMLError=FakeNVMLError,
        calls=calls,
        nvmlInit=init,
        nvmlShutdown=lambda: None,
        nvmlDeviceGetCount=lambda: 2,
        nvmlDeviceGetHandleByIndex=lambda i: i,
        nvmlDeviceGetUUID=lambda h: f"GPU-{h}aaa".encode() if h == 0 else f"GPU-{h}bbb",
        nvmlDeviceGetMemoryInfo=lambda h: SimpleNamespace(total=85_899_345_920, used=1_073_741_824 * (h + 1)),
        nvmlDeviceGetUtilizationRates=lambda h: SimpleNamespace(gpu=37 + h),
        nvmlDeviceGetPowerUsage=power,
        nvmlDeviceGetPowerManagementLimit=lambda h: 700_000,
    )


def test_gpu_families_per_uuid_in_triton_units_as_plain_decimals() -> None:
    nvml = fake_nvml()
    registry = CollectorRegistry()
    registry.register(GpuCollector(nvml))
    text = exposition(registry).decode()  # what /metrics serves
    g0, g1 = {"gpu_uuid": "GPU-0aaa"}, {"gpu_uuid": "GPU-1bbb"}
    assert value(registry, "nv_gpu_utilization", **g0) == 0.37
    assert value(registry, "nv_gpu_utilization", **g1) == 0.38
    assert value(registry, "nv_gpu_memory_total_bytes", **g0) == 85_899_345_920
    assert value(registry, "nv_gpu_memory_used_bytes", **g1) == 2_147_483_648
    assert value(registry, "nv_gpu_power_usage", **g0) == 123.456
    assert value(registry, "nv_gpu_power_usage", **g1) is None  # not supported: left out, the rest kept
    assert value(registry, "nv_gpu_power_limit", **g1) == 700.0
    assert 'nv_gpu_memory_total_bytes{gpu_uuid="GPU-0aaa"} 85899345920' in text.splitlines()  # no exponent
    assert "e+" not in text and "e+10" in generate_latest(registry).decode()  # prometheus_client's own would
    assert nvml.calls["init"] == 1


# -- the /metrics text ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("written", "expected"),
    [(b"8.589934592e+10", b"85899345920"), (b"1.234567e+06", b"1234567"), (b"1e-05", b"0.00001"),
     (b"3.0", b"3.0"), (b"+Inf", b"+Inf"), (b"NaN", b"NaN")],
)
def test_values_are_rewritten_as_plain_decimals(written: bytes, expected: bytes) -> None:
    assert plain(written) == expected


def test_exposition_keeps_everything_but_the_exponents() -> None:
    stats = ModelStats()
    stats.record_success(1, 2_500_000_000_000, 0, 0, 0, 0)  # 2.5e9 us in nv_inference_request_duration_us
    registry = CollectorRegistry()
    registry.register(StatsCollector(lambda: [("m", "1", stats)]))
    ours, theirs = exposition(registry).decode(), generate_latest(registry).decode()
    assert 'nv_inference_request_duration_us{model="m",version="1"} 2500000000' in ours.splitlines()
    assert "2.5e+09" in theirs
    parsed = {s.name: s.value for f in text_string_to_metric_families(ours) for s in f.samples}
    assert parsed == {s.name: s.value for f in text_string_to_metric_families(theirs) for s in f.samples}


def test_metrics_app_serves_text_and_gzip() -> None:
    import gzip

    registry = CollectorRegistry()
    registry.register(StatsCollector(lambda: [("m", "1", ModelStats())]))
    app = metrics_app(registry)
    answers: list[tuple[str, dict[str, str]]] = []

    def start(status: str, headers: list[tuple[str, str]]) -> None:
        answers.append((status, dict(headers)))

    body = b"".join(app({"REQUEST_METHOD": "GET"}, start))
    assert answers[-1][0] == "200 OK" and answers[-1][1]["Content-Type"].startswith("text/plain; version=0.0.4")
    zipped = b"".join(app({"REQUEST_METHOD": "GET", "HTTP_ACCEPT_ENCODING": "gzip, deflate"}, start))
    assert answers[-1][1]["Content-Encoding"] == "gzip" and gzip.decompress(zipped) == body
    assert b"nv_inference_count" in body
    b"".join(app({"REQUEST_METHOD": "POST"}, start))
    assert answers[-1][0].startswith("405")
