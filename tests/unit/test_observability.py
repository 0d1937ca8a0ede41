"""ModelStats counters and their Prometheus exposition under Triton's family names.

Every test scrapes its own injected CollectorRegistry; nothing touches the global one.
"""

from __future__ import annotations

import time

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from ortserve.observability import BatchSizeStats, Duration, ModelStats, StatsCollector

FAMILIES = [
    "nv_inference_request_success",
    "nv_inference_request_failure",
    "nv_inference_count",
    "nv_inference_exec_count",
    "nv_inference_request_duration_us",
    "nv_inference_queue_duration_us",
    "nv_inference_compute_input_duration_us",
    "nv_inference_compute_infer_duration_us",
    "nv_inference_compute_output_duration_us",
    "nv_cache_num_hits_per_model",
    "nv_cache_num_misses_per_model",
    "nv_cache_hit_duration_per_model",
    "nv_cache_miss_duration_per_model",
]


def scrape(rows: list[tuple[str, str, ModelStats]]) -> str:
    registry = CollectorRegistry()
    registry.register(StatsCollector(lambda: rows))
    return generate_latest(registry).decode()


def busy_stats() -> ModelStats:
    """Three requests of 1 row each in one batch of 3, and one failure."""
    stats = ModelStats()
    for _ in range(3):
        stats.record_success(1, 10_500, 2_000, 1_000, 4_000, 500)
    stats.record_batch(3, 1_000, 4_000, 500)
    stats.record_failure(7_000, "BACKEND")
    return stats


# -- ModelStats ---------------------------------------------------------------------------


def test_duration_adds_counts_and_nanoseconds() -> None:
    d = Duration()
    d.add(100)
    d.add(50, count=3)
    assert (d.count, d.ns) == (4, 150)


def test_record_success_counts_the_request_its_rows_and_times() -> None:
    stats = ModelStats()
    before_ms = time.time_ns() // 1_000_000
    stats.record_success(4, 1_000, 200, 30, 400, 50)
    stats.record_success(2, 3_000, 0, 10, 600, 50)
    assert (stats.success.count, stats.success.ns) == (2, 4_000)
    assert (stats.queue.count, stats.queue.ns) == (2, 200)
    assert (stats.compute_input.count, stats.compute_input.ns) == (2, 40)
    assert (stats.compute_infer.count, stats.compute_infer.ns) == (2, 1_000)
    assert (stats.compute_output.count, stats.compute_output.ns) == (2, 100)
    assert stats.inference_count == 6  # rows, not requests
    assert stats.execution_count == 0  # executions are counted per batch, not per request
    assert (stats.fail.count, stats.failures_by_reason) == (0, {})
    assert before_ms <= stats.last_inference_ms <= time.time_ns() // 1_000_000


def test_record_failure_counts_by_reason() -> None:
    stats = ModelStats()
    stats.record_failure(100, "REJECTED")
    stats.record_failure(200, "BACKEND")
    stats.record_failure(300, "REJECTED")
    assert (stats.fail.count, stats.fail.ns) == (3, 600)
    assert stats.failures_by_reason == {"REJECTED": 2, "BACKEND": 1}
    assert stats.success.count == 0 and stats.inference_count == 0
    assert stats.last_inference_ms > 0


def test_record_batch_counts_executions_per_batch_size() -> None:
    stats = ModelStats()
    stats.record_batch(4, 10, 100, 1)
    stats.record_batch(4, 20, 200, 2)
    stats.record_batch(1, 5, 50, 0)
    assert stats.execution_count == 3
    assert sorted(stats.batch_sizes) == [1, 4]
    four = stats.batch_sizes[4]
    assert isinstance(four, BatchSizeStats)
    assert (four.compute_input.count, four.compute_input.ns) == (2, 30)
    assert (four.compute_infer.count, four.compute_infer.ns) == (2, 300)
    assert (four.compute_output.count, four.compute_output.ns) == (2, 3)
    assert stats.batch_sizes[1].compute_infer.ns == 50
    assert stats.inference_count == 0  # rows are counted per request


def test_fresh_stats_do_not_share_state() -> None:
    a, b = ModelStats(), ModelStats()
    a.record_failure(1, "OTHER")
    a.record_batch(2, 1, 1, 1)
    assert b.failures_by_reason == {} and b.batch_sizes == {} and b.fail.count == 0


# -- StatsCollector ----------------------------------------------------------------------


def test_exposition_uses_triton_family_names_and_labels() -> None:
    text = scrape([("m", "1", busy_stats())])
    lines = text.splitlines()
    for expected in [
        'nv_inference_request_success{model="m",version="1"} 3.0',
        'nv_inference_count{model="m",version="1"} 3.0',
        'nv_inference_exec_count{model="m",version="1"} 1.0',
        # success 3 x 10.5 us + failure 7 us, in whole microseconds
        'nv_inference_request_duration_us{model="m",version="1"} 38.0',
        'nv_inference_queue_duration_us{model="m",version="1"} 6.0',
        'nv_inference_compute_input_duration_us{model="m",version="1"} 3.0',
        'nv_inference_compute_infer_duration_us{model="m",version="1"} 12.0',
        'nv_inference_compute_output_duration_us{model="m",version="1"} 1.0',
        'nv_inference_request_failure{model="m",reason="BACKEND",version="1"} 1.0',
    ]:
        assert expected in lines, f"{expected!r} missing from:\n{text}"
    for family in FAMILIES:
        assert f"# HELP {family} " in text
        assert f"# TYPE {family} untyped" in text
    assert "_total" not in text  # Triton's names carry no counter suffix
    assert "_created" not in text


def test_exposition_parses_and_has_exactly_the_triton_families() -> None:
    text = scrape([("m", "1", busy_stats()), ("m", "2", ModelStats()), ("other", "7", busy_stats())])
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert sorted(families) == sorted(FAMILIES)
    success = {
        (s.labels["model"], s.labels["version"]): s.value
        for s in families["nv_inference_request_success"].samples
    }
    assert success == {("m", "1"): 3.0, ("m", "2"): 0.0, ("other", "7"): 3.0}
    # A version without failures has no failure samples; the others one per reason.
    failures = [(s.labels["model"], s.labels["version"]) for s in families["nv_inference_request_failure"].samples]
    assert failures == [("m", "1"), ("other", "7")]


def test_failure_reasons_are_separate_samples_in_a_stable_order() -> None:
    stats = ModelStats()
    for reason in ["REJECTED", "BACKEND", "REJECTED", "CANCELED", "OTHER"]:
        stats.record_failure(1_000, reason)
    text = scrape([("m", "1", stats)])
    lines = [line for line in text.splitlines() if line.startswith("nv_inference_request_failure{")]
    assert lines == [
        'nv_inference_request_failure{model="m",reason="BACKEND",version="1"} 1.0',
        'nv_inference_request_failure{model="m",reason="CANCELED",version="1"} 1.0',
        'nv_inference_request_failure{model="m",reason="OTHER",version="1"} 1.0',
        'nv_inference_request_failure{model="m",reason="REJECTED",version="1"} 2.0',
    ]


def test_values_are_read_at_scrape_time() -> None:
    stats = ModelStats()
    loaded: list[tuple[str, str, ModelStats]] = []
    registry = CollectorRegistry()
    registry.register(StatsCollector(lambda: loaded))
    assert 'nv_inference_count{' not in generate_latest(registry).decode()  # nothing loaded yet
    loaded.append(("m", "1", stats))
    assert 'nv_inference_count{model="m",version="1"} 0.0' in generate_latest(registry).decode()
    stats.record_success(5, 1, 0, 0, 0, 0)
    assert 'nv_inference_count{model="m",version="1"} 5.0' in generate_latest(registry).decode()
    assert registry.get_sample_value("nv_inference_count", {"model": "m", "version": "1"}) == 5.0


def test_empty_source_still_describes_every_family() -> None:
    text = scrape([])
    for family in FAMILIES:
        assert f"# TYPE {family} untyped" in text
    assert not [line for line in text.splitlines() if not line.startswith("#")]


def test_durations_are_whole_microseconds_rounded_down() -> None:
    stats = ModelStats()
    stats.record_success(1, 1_999, 999, 0, 0, 0)
    text = scrape([("m", "1", stats)])
    assert 'nv_inference_request_duration_us{model="m",version="1"} 1.0' in text
    assert 'nv_inference_queue_duration_us{model="m",version="1"} 0.0' in text


@pytest.mark.parametrize("name", ['we"ird', "back\\slash", "new\nline"])
def test_label_values_are_escaped(name: str) -> None:
    text = scrape([(name, "1", busy_stats())])
    families = {f.name: f for f in text_string_to_metric_families(text)}
    (sample,) = families["nv_inference_count"].samples
    assert sample.labels == {"model": name, "version": "1"}


def test_collectors_on_separate_registries_do_not_interfere() -> None:
    a, b = busy_stats(), ModelStats()
    assert 'nv_inference_count{model="m",version="1"} 3.0' in scrape([("m", "1", a)])
    assert 'nv_inference_count{model="m",version="1"} 0.0' in scrape([("m", "1", b)])


def test_response_cache_hits_and_misses_use_tritons_cache_families() -> None:
    stats = ModelStats()
    stats.record_cache_hit(9_000, 2_500)
    stats.record_cache_hit(9_000, 1_500)
    stats.cache_miss.add(7_900)
    text = scrape([("m", "1", stats)])
    assert 'nv_cache_num_hits_per_model{model="m",version="1"} 2' in text
    assert 'nv_cache_num_misses_per_model{model="m",version="1"} 1' in text
    assert 'nv_cache_hit_duration_per_model{model="m",version="1"} 4' in text
    assert 'nv_cache_miss_duration_per_model{model="m",version="1"} 7' in text
