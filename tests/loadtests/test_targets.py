"""Targets as data: the TOML format, its errors, the defaults, and the verdict."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from loadtests.recorder import Measured
from loadtests.targets import Target, Targets, TargetsError, judge, verdict

REPO = Path(__file__).resolve().parents[2]


def measured(p50: float = 1.0, p95: float = 2.0, p99: float = 3.0, requests: int = 1000, errors: int = 0,
             rps: float = 500.0) -> Measured:
    return Measured(requests, errors, p50, p95, p99, 1.2, rps)


def test_models_override_the_defaults_key_by_key() -> None:
    targets = Targets.parse(
        """
        [defaults]
        max_error_ratio = 0.01
        p99_ms = 50
        [models.iris]
        p99_ms = 5
        min_throughput_rps = 100
        """
    )
    assert targets.for_model("iris") == Target(p99_ms=5, max_error_ratio=0.01, min_throughput_rps=100)
    assert targets.for_model("other") == Target(p99_ms=50, max_error_ratio=0.01)
    assert Targets.parse("").for_model("x").is_empty()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[models.iris]\np99 = 5", "unknown key 'p99'"),
        ("[models.iris]\np99_ms = -1", "p99_ms: expected a finite number >= 0"),
        ("[models.iris]\np99_ms = true", "p99_ms: expected a finite number >= 0"),
        ("[models.iris]\np99_ms = '5'", "p99_ms: expected a finite number >= 0"),
        ("[models.iris]\np99_ms = nan", "p99_ms: expected a finite number >= 0"),
        ("[models.iris]\nmax_error_ratio = 2", "a ratio is at most 1"),
        ("[model.iris]\np99_ms = 5", "unknown table(s) ['model']"),
        ("models = 3", "one table per model"),
        ("[models]\niris = 3", "[models.iris]: expected a table"),
        ("[models.iris\np99_ms = 5", "not valid TOML"),
    ],
)
def test_a_malformed_file_names_the_table_and_the_key(text: str, message: str) -> None:
    with pytest.raises(TargetsError, match="^t.toml: .*") as caught:
        Targets.parse(text, "t.toml")
    assert message in str(caught.value)


def test_a_missing_file_is_a_targets_error(tmp_path: Path) -> None:
    with pytest.raises(TargetsError, match="cannot read the targets file"):
        Targets.load(tmp_path / "nope.toml")


@pytest.mark.parametrize("path", ["loadtests/targets.toml", "k8s/loadtest/targets.toml"])
def test_the_shipped_targets_files_parse_and_judge_the_demo_model(path: str) -> None:
    targets = Targets.load(REPO / path)
    iris = targets.for_model("iris")
    assert None not in (iris.p50_ms, iris.p95_ms, iris.p99_ms, iris.max_error_ratio, iris.min_throughput_rps)
    assert iris.p50_ms <= iris.p95_ms <= iris.p99_ms  # type: ignore[operator]


def test_judge_checks_each_target_it_has() -> None:
    target = Target(p50_ms=2, p95_ms=2, p99_ms=2, max_error_ratio=0.001, min_throughput_rps=600)
    checks = judge("iris", target, measured(errors=2))
    by = {c.metric: c for c in checks}
    assert [c.metric for c in checks] == ["p50", "p95", "p99", "error ratio", "throughput"]
    assert by["p50"].passed and by["p95"].passed and by["p99"].passed is False
    assert by["error ratio"].passed is False and by["error ratio"].measured == "0.0020 (2/1000)"
    assert by["throughput"].passed is False and by["throughput"].target == ">= 600 req/s"
    assert not verdict(checks)


def test_an_impossible_target_misses() -> None:
    checks = judge("iris", Target(p99_ms=0.001), measured(p99=0.4))
    assert [c.passed for c in checks] == [False] and not verdict(checks)


def test_no_samples_miss_every_target() -> None:
    empty = Measured(0, 0, math.nan, math.nan, math.nan, math.nan, math.nan)
    checks = judge("iris", Target(p99_ms=1e9, max_error_ratio=1, min_throughput_rps=0), empty)
    assert [c.passed for c in checks] == [False, False, False]
    assert {c.measured for c in checks} == {"no samples", "no requests"}


def test_a_model_without_targets_is_shown_but_not_judged() -> None:
    checks = judge("free", Target(), measured())
    assert [(c.metric, c.passed) for c in checks] == [("-", None)]
    assert verdict(checks)
