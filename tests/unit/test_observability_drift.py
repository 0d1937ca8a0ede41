"""Input drift: KS and PSI against scipy and by hand, and the monitor on real data.

The real data is scikit-learn's bundled Wisconsin breast-cancer table (569 rows, 30 features,
no download): split at random it shows no drift; benign reference against malignant traffic
(a real subpopulation shift) and one rescaled feature show drift where it is.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry
from scipy import special, stats
from sklearn.datasets import load_breast_cancer

from ortserve.dataplane import DataPlane, InferRequest
from ortserve.observability import DriftCollector, DriftMonitor, DriftOptions
from ortserve.observability.drift import ROWS_PER_SAMPLE, kolmogorov_sf, ks_2samp, psi, psi_bins
from ortserve.repository import ModelRegistry
from ortserve.runtime import RuntimeOptions
from tests import models

OPTIONS = DriftOptions(interval_s=60, window_rows=2048, psi_threshold=0.2, pvalue_threshold=0.001)


def feed(monitor: DriftMonitor, rows: np.ndarray, name: str = "x") -> None:
    """Offer `rows` as requests of ROWS_PER_SAMPLE rows (the monitor samples every one: gap 0)."""
    for start in range(0, len(rows), ROWS_PER_SAMPLE):
        monitor.offer({name: rows[start : start + ROWS_PER_SAMPLE]})


@pytest.fixture(scope="module")
def cancer() -> tuple[np.ndarray, np.ndarray]:
    data = load_breast_cancer()
    return data.data.astype(np.float32), data.target


# -- the statistics ------------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "m", "shift"), [(5000, 2048, 0.0), (2000, 500, 0.1), (569, 300, 0.3), (300, 250, 0.0)])
def test_ks_matches_scipy(n: int, m: int, shift: float) -> None:
    rng = np.random.default_rng(n + m)
    for _ in range(10):
        a, b = rng.standard_normal(n), rng.standard_normal(m) + shift
        statistic, pvalue = ks_2samp(np.sort(a), b)
        expected = stats.ks_2samp(a, b, method="asymp")
        assert statistic == pytest.approx(expected.statistic, abs=1e-12)
        assert pvalue == pytest.approx(expected.pvalue, abs=0.01)


def test_ks_with_ties_matches_scipy() -> None:
    rng = np.random.default_rng(3)
    a, b = rng.integers(0, 5, 800).astype(float), rng.integers(0, 6, 400).astype(float)
    statistic, _ = ks_2samp(np.sort(a), b)
    assert statistic == pytest.approx(stats.ks_2samp(a, b).statistic)


@pytest.mark.parametrize("x", [0.0, 0.2, 0.5, 0.8, 1.0, 1.17, 1.19, 1.5, 2.0, 3.0])
def test_kolmogorov_survival_function_matches_scipy(x: float) -> None:
    assert kolmogorov_sf(x) == pytest.approx(float(special.kolmogorov(x)), abs=1e-12)


def test_psi_by_hand() -> None:
    reference = np.array([1.0, 2.0, 3.0, 4.0])
    edges, expected = psi_bins(reference, bins=2)  # median 2.5: halves
    assert edges.tolist() == [2.5] and expected.tolist() == [0.5, 0.5]
    sample = np.array([1.0, 3.0, 3.5, 4.0])  # a quarter below, three quarters above
    assert psi(edges, expected, sample) == pytest.approx(0.25 * np.log(0.5) * -1 + 0.25 * np.log(1.5))


def test_psi_of_a_sample_of_the_same_distribution_is_small_and_of_a_shift_large() -> None:
    rng = np.random.default_rng(4)
    edges, expected = psi_bins(rng.standard_normal(5000))
    assert psi(edges, expected, rng.standard_normal(2000)) < 0.02
    assert psi(edges, expected, rng.standard_normal(2000) + 1) > 0.5


def test_psi_keeps_finite_when_a_bin_is_empty() -> None:
    edges, expected = psi_bins(np.arange(100.0))
    assert np.isfinite(psi(edges, expected, np.full(300, 5.0)))


# -- the monitor on real data -----------------------------------------------------------------------


def test_no_drift_between_two_random_halves_of_real_data(cancer: tuple[np.ndarray, np.ndarray]) -> None:
    x, _ = cancer
    order = np.random.default_rng(0).permutation(len(x))
    reference, live = x[order[:284]], x[order[284:]]
    monitor = DriftMonitor("cancer", "1", {"x": reference}, OPTIONS, sample_gap_ns=0)
    feed(monitor, live)
    results = monitor.evaluate()
    assert len(results) == 30 and all(r.rows == len(live) for r in results)
    assert not [r for r in results if r.drifted], [r for r in results if r.drifted]
    assert max(r.psi for r in results) < 0.2 and min(r.ks_pvalue for r in results) > 0.001


def test_a_real_subpopulation_shift_is_detected(
    cancer: tuple[np.ndarray, np.ndarray], caplog: pytest.LogCaptureFixture
) -> None:
    x, target = cancer
    benign, malignant = x[target == 1], x[target == 0]  # 357 and 212 rows
    monitor = DriftMonitor("cancer", "1", {"x": benign}, OPTIONS, sample_gap_ns=0)
    feed(monitor, malignant)
    with caplog.at_level(logging.WARNING, logger="ortserve.observability"):
        results = {r.feature: r for r in monitor.evaluate()}
    names = list(load_breast_cancer().feature_names)
    for feature in ("mean radius", "mean perimeter", "worst area", "worst concave points"):
        r = results[names.index(feature)]
        assert r.drifted and r.psi > 1.0 and r.ks_statistic > 0.5 and r.ks_pvalue < 1e-20, (feature, r)
    # features that do not separate the classes are not flagged
    for feature in ("texture error", "smoothness error", "symmetry error"):
        assert not results[names.index(feature)].drifted, feature
    warnings = [rec.getMessage() for rec in caplog.records if rec.getMessage().startswith("input drift:")]
    assert len(warnings) == sum(r.drifted for r in results.values())
    assert any("input 'x' feature 0:" in w for w in warnings)


def test_one_rescaled_feature_drifts_alone_and_is_logged_once_then_cleared(
    cancer: tuple[np.ndarray, np.ndarray], caplog: pytest.LogCaptureFixture
) -> None:
    x, _ = cancer
    order = np.random.default_rng(1).permutation(len(x))
    reference, live = x[order[:284]], x[order[284:]].copy()
    shifted = live.copy()
    shifted[:, 3] *= 1.5  # mean area read in other units, say
    monitor = DriftMonitor("cancer", "1", {"x": reference}, DriftOptions(window_rows=285), sample_gap_ns=0)
    with caplog.at_level(logging.INFO, logger="ortserve.observability"):
        feed(monitor, shifted)
        assert [r.feature for r in monitor.evaluate() if r.drifted] == [3]
        monitor.evaluate()  # still drifted: not logged again
        feed(monitor, live)  # the window (285 rows) now holds only unshifted rows
        assert not [r for r in monitor.evaluate() if r.drifted]
    messages = [r.getMessage() for r in caplog.records]
    assert len([m for m in messages if m.startswith("input drift: ")]) == 1
    assert len([m for m in messages if m.startswith("input drift cleared: ")]) == 1


def test_the_window_keeps_the_latest_rows_and_needs_enough_of_them() -> None:
    rng = np.random.default_rng(2)
    monitor = DriftMonitor("m", "1", {"x": rng.standard_normal((1000, 2))}, DriftOptions(window_rows=200),
                           sample_gap_ns=0)
    feed(monitor, rng.standard_normal((150, 2)))
    assert monitor.evaluate() == []  # fewer than MIN_ROWS sampled
    feed(monitor, rng.standard_normal((400, 2)) + 5)  # wraps the ring twice
    results = monitor.evaluate()
    assert [r.rows for r in results] == [200, 200] and all(r.drifted for r in results)


def test_sampling_gap_spreads_window_rows_over_the_interval() -> None:
    reference = {"x": np.random.default_rng(0).standard_normal((1000, 1))}
    spaced = DriftMonitor("m", "1", reference, DriftOptions(interval_s=1000, window_rows=1000))  # 1 s per row
    eager = DriftMonitor("m", "1", reference, DriftOptions(interval_s=1000, window_rows=1000), sample_gap_ns=0)
    for _ in range(60):
        request = {"x": np.random.default_rng(1).standard_normal((4, 1))}
        spaced.offer(request)  # the first request is sampled; the rest fall in its 4 s gap
        eager.offer(request)
    assert spaced.evaluate() == []  # 4 rows: too few to compare
    assert [r.rows for r in eager.evaluate()] == [240]


def test_inputs_of_another_shape_or_type_are_not_sampled() -> None:
    monitor = DriftMonitor("m", "1", {"x": np.zeros((300, 3))}, OPTIONS, sample_gap_ns=0)
    for _ in range(60):
        monitor.offer({"x": np.ones((8, 4))})  # 4 features, the reference has 3
        monitor.offer({"x": np.array([["a", "b", "c"]] * 8, dtype=object)})
        monitor.offer({"y": np.ones((8, 3))})
    assert monitor.evaluate() == []


def test_more_features_than_watched_are_cut_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="ortserve.observability"):
        monitor = DriftMonitor("m", "1", {"x": np.zeros((300, 10, 10))}, OPTIONS, sample_gap_ns=0)
    assert "watches the first 64" in caplog.text
    feed(monitor, np.zeros((240, 10, 10)))
    assert len(monitor.evaluate()) == 64


# -- reference.npz, exposition, a loaded model --------------------------------------------------------


def test_load_reads_the_usable_inputs_and_ignores_the_rest(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "reference.npz"
    assert DriftMonitor.load(path, "m", "1", ["x"], OPTIONS) is None  # no file: no monitor
    np.savez(path, x=np.zeros((300, 2)), unknown=np.zeros((300, 2)), few=np.zeros((3, 2)), text=np.array(["a"] * 300))
    with caplog.at_level(logging.WARNING, logger="ortserve.observability"):
        monitor = DriftMonitor.load(path, "m", "1", ["x", "few", "text"], OPTIONS)
    assert monitor is not None and monitor.inputs == ["x"]
    assert "'unknown', which is not an input" in caplog.text and "'few'] must be numeric" in caplog.text
    path.write_bytes(b"not a zip")
    assert DriftMonitor.load(path, "m", "1", ["x"], OPTIONS) is None


def test_collector_exposes_each_feature(cancer: tuple[np.ndarray, np.ndarray]) -> None:
    x, target = cancer
    monitor = DriftMonitor("cancer", "1", {"x": x[target == 1][:, :2]}, OPTIONS, sample_gap_ns=0)
    feed(monitor, x[target == 0][:, :2])
    monitor.evaluate()
    registry = CollectorRegistry()
    registry.register(DriftCollector(lambda: [monitor]))
    labels = {"model": "cancer", "version": "1", "input": "x", "feature": "0"}
    assert (registry.get_sample_value("ortserve_drift_psi", labels) or 0) > 1
    assert (registry.get_sample_value("ortserve_drift_ks_statistic", labels) or 0) > 0.5
    assert (registry.get_sample_value("ortserve_drift_ks_pvalue", labels) or 1) < 1e-20
    rows = registry.get_sample_value("ortserve_drift_window_rows", {"model": "cancer", "version": "1", "input": "x"})
    assert rows == 212
    assert registry.get_sample_value("ortserve_drift_evaluations_total", {"model": "cancer", "version": "1"}) == 1


def test_a_model_shipping_reference_npz_is_watched_and_still_serves(repo: Path) -> None:
    path = models.save(models.add_sub(), repo, "add_sub")
    np.savez(path.parent / "reference.npz", INPUT0=np.random.default_rng(0).standard_normal((500, 4)))

    async def main() -> None:
        registry = ModelRegistry(
            repo, RuntimeOptions(device="cpu", intra_op_threads=1), default_max_batch_size=8,
            on_load=lambda model: model.instrument(None, OPTIONS),
        )
        await registry.load_all()
        try:
            model = registry.get("add_sub")
            assert model.drift is not None and model.drift.inputs == ["INPUT0"]
            ones = np.ones((2, 4), dtype=np.float32)
            request = InferRequest("add_sub", "", "r", {"INPUT0": ones, "INPUT1": ones})
            response = await DataPlane(registry).infer(request)
            assert response.outputs[0][1].tolist() == [[2.0] * 4] * 2
        finally:
            await registry.close(timeout_s=1.0)

    asyncio.run(main())
