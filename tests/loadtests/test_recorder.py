"""The latency recorder: percentiles within its 1 % resolution, windows that merge across workers."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from loadtests.recorder import Measured, Recorder, Window, bucket_of, bucket_value_ms, percentile_ms


@pytest.mark.parametrize("latency_ms", [0.0005, 0.001, 0.0137, 0.5, 1.0, 3.3, 47.0, 999.0, 60_000.0])
def test_a_bucket_stands_for_its_samples_within_half_a_percent(latency_ms: float) -> None:
    value = bucket_value_ms(bucket_of(latency_ms))
    if latency_ms >= 0.001:
        assert value == pytest.approx(latency_ms, rel=0.0051)
    else:
        assert value <= 0.0011  # everything under 1 µs shares bucket 0


def test_percentiles_match_numpy_within_the_resolution() -> None:
    rng = np.random.default_rng(3)
    samples = rng.lognormal(mean=0.0, sigma=1.2, size=50_000)  # ms, heavy tail
    recorder = Recorder()
    for i, latency in enumerate(samples):
        recorder.record("m", float(latency), True, 1000.0 + i * 1e-4)
    measured = recorder.measure("m", 1000.0)
    for q, got in ((0.50, measured.p50_ms), (0.95, measured.p95_ms), (0.99, measured.p99_ms)):
        assert got == pytest.approx(np.quantile(samples, q, method="inverted_cdf"), rel=0.011)
    assert measured.mean_ms == pytest.approx(samples.mean())
    assert measured.requests == len(samples) and measured.errors == 0


def test_failures_count_in_the_error_ratio_but_not_in_the_latencies() -> None:
    recorder = Recorder()
    for i in range(99):
        recorder.record("m", 10.0, True, 5.0 + i / 100)
    recorder.record("m", 0.001, False, 5.995)  # a fast failure must not pull the percentiles down
    measured = recorder.measure("m", 5.0)
    assert measured.requests == 100 and measured.errors == 1 and measured.error_ratio == 0.01
    assert measured.p50_ms == pytest.approx(10.0, rel=0.006) and measured.p99_ms == pytest.approx(10.0, rel=0.006)


def test_no_samples_are_nan_not_zero() -> None:
    measured = Recorder().measure("m", 0.0)
    assert measured.requests == 0
    assert all(math.isnan(v) for v in (measured.p50_ms, measured.p99_ms, measured.mean_ms, measured.error_ratio))
    assert math.isnan(percentile_ms({}, 0.5))


def test_drained_reports_merge_into_exactly_what_one_recorder_would_hold() -> None:
    rng = np.random.default_rng(5)
    direct, master = Recorder(), Recorder()
    workers = [Recorder() for _ in range(3)]
    for i in range(3000):
        model = ("a", "b")[i % 2]
        latency, ok, ts = float(rng.exponential(2.0)), bool(rng.random() > 0.01), 100.0 + i * 0.003
        direct.record(model, latency, ok, ts)
        workers[i % 3].record(model, latency, ok, ts)
        if i % 700 == 0:  # reports arrive now and then, in any order
            master.merge(workers[(i // 700) % 3].drain())
    for worker in workers:
        master.merge(worker.drain())
        assert worker.windows == {}
    for model in ("a", "b"):
        for span in ((100.0,), (101.2, 105.9)):
            merged, alone = master.measure(model, *span), direct.measure(model, *span)
            assert merged.mean_ms == pytest.approx(alone.mean_ms)  # sums in another order
            assert replace(merged, mean_ms=0) == replace(alone, mean_ms=0)


def test_a_span_counts_its_whole_seconds_and_a_run_counts_to_its_last_sample() -> None:
    recorder = Recorder()
    for second in range(10, 20):
        for k in range(100):  # 100 requests a second
            recorder.record("m", 1.0, True, second + k / 100)
    stage = recorder.measure("m", 12.5, 17.2)  # the seconds whose middle is inside: 12..16
    assert stage.requests == 500 and stage.throughput_rps == pytest.approx(100.0)
    assert recorder.measure("m", 12.6, 13.4).requests == 0  # no middle inside
    assert recorder.measure("m", 30.0, 40.0).throughput_rps == 0.0
    run = recorder.measure("m", 10.0)
    assert run.requests == 1000 and run.throughput_rps == pytest.approx(1000 / 9.99)


def test_windows_travel_as_plain_lists() -> None:
    window = Window()
    window.add(1.5, True, 3.25)
    window.add(2.5, False, 3.75)
    assert Window.from_wire(window.to_wire()) == window
    assert Measured.of([window], 1.0).requests == 2
