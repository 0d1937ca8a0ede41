"""Input drift: recent inputs compared with a model version's reference data, off the hot path.

A model version may ship `reference.npz` beside its model file: one array per input name,
`[N, *dims]` for a batchable model (rows of the training or validation data) or `[N, *shape]`
for one that is not. Each non-batch element is a feature (at most MAX_FEATURES per input).

The pipeline, in steps:

1. `DriftMonitor.offer` runs on the event loop for every request and is cheap: a clock
   comparison; once per sampling gap it copies a few rows into a fixed ring buffer per input
   (a try-lock: it skips the sample rather than wait while an evaluation snapshots the buffer).
   The gap spreads about `window_rows` sampled rows over each `interval_s`.
2. Every `interval_s`, `run_drift_schedule` calls `DriftMonitor.evaluate` in a worker thread:
   it snapshots the buffers and, per feature, computes the two-sample Kolmogorov-Smirnov
   statistic and p-value and the population stability index (PSI, 10 bins at the reference's
   deciles) against the reference.
3. The results are exposed by `DriftCollector` as `ortserve_drift_*` gauges at scrape time;
   a feature whose PSI reaches `psi_threshold` or whose KS p-value falls below
   `pvalue_threshold` is logged once as drifting (warning), and once more when it recovers.

KS and PSI are implemented here in numpy (about 40 lines, checked against scipy.stats in the
unit tests) rather than adding scipy, a 40 MB dependency, to the server. The p-value is the
asymptotic Kolmogorov distribution with Stephens' small-sample correction, accurate to about
0.01 for the window sizes used here.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from time import monotonic_ns

import numpy as np
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

log = logging.getLogger("ortserve.observability")

REFERENCE_FILE = "reference.npz"
MAX_FEATURES = 64
"""Features watched per input (bounds the metrics' label cardinality); the first ones are kept."""
MIN_ROWS = 200
"""Sampled rows needed before a window is compared (PSI's noise is about 10/rows)."""
ROWS_PER_SAMPLE = 8
"""At most this many rows of one request are copied per sample."""
PSI_BINS = 10
_EPS = 1e-4  # PSI's floor for an empty bin (the usual choice): keeps ln() finite


# -- the statistics ---------------------------------------------------------------------------


def kolmogorov_sf(x: float) -> float:
    """P(K > x) for the Kolmogorov distribution (the two-sided KS limit)."""
    if x <= 0:
        return 1.0
    k = np.arange(1, 101, dtype=np.float64)
    if x < 1.18:  # the theta-function form converges fast for small x
        terms = np.exp(-((2 * k - 1) ** 2) * math.pi**2 / (8 * x * x))
        return float(min(max(1.0 - math.sqrt(2 * math.pi) / x * terms.sum(), 0.0), 1.0))
    terms = 2 * (-1) ** (k - 1) * np.exp(-2 * k * k * x * x)
    return float(min(max(terms.sum(), 0.0), 1.0))


def ks_2samp(reference_sorted: np.ndarray, sample: np.ndarray) -> tuple[float, float]:
    """Two-sided two-sample KS statistic and asymptotic p-value (the first argument sorted)."""
    a = reference_sorted
    b = np.sort(sample)
    n, m = len(a), len(b)
    both = np.concatenate([a, b])
    cdf_a = np.searchsorted(a, both, side="right") / n
    cdf_b = np.searchsorted(b, both, side="right") / m
    d = float(np.max(np.abs(cdf_a - cdf_b)))
    en = math.sqrt(n * m / (n + m))
    return d, kolmogorov_sf((en + 0.12 + 0.11 / en) * d)


def psi_bins(reference: np.ndarray, bins: int = PSI_BINS) -> tuple[np.ndarray, np.ndarray]:
    """Interior bin edges at the reference's quantiles, and the reference's share of each bin."""
    edges = np.unique(np.quantile(reference, np.linspace(0, 1, bins + 1)[1:-1]))
    return edges, _shares(edges, reference)


def psi(edges: np.ndarray, expected: np.ndarray, sample: np.ndarray) -> float:
    """Population stability index of `sample` against the expected bin shares."""
    actual = _shares(edges, sample)
    return float(np.sum((actual - expected) * np.log(actual / expected)))


def _shares(edges: np.ndarray, values: np.ndarray) -> np.ndarray:
    counts = np.bincount(np.searchsorted(edges, values, side="right"), minlength=len(edges) + 1)
    return np.maximum(counts / max(len(values), 1), _EPS)


# -- the monitor ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DriftOptions:
    """How drift is watched (from the server settings)."""

    interval_s: float = 60.0
    window_rows: int = 2048
    psi_threshold: float = 0.2
    pvalue_threshold: float = 0.001


@dataclass(frozen=True, slots=True)
class FeatureDrift:
    """One feature's comparison with its reference, at the last evaluation."""

    input: str
    feature: int
    ks_statistic: float
    ks_pvalue: float
    psi: float
    rows: int
    drifted: bool


class _Ring:
    """The last `capacity` sampled rows of one input, as float64 features."""

    def __init__(self, capacity: int, width: int) -> None:
        self.data = np.zeros((capacity, width), dtype=np.float64)
        self.next = 0
        self.filled = 0

    def push(self, rows: np.ndarray) -> None:
        capacity = len(self.data)
        n = len(rows)
        end = self.next + n
        if end <= capacity:
            self.data[self.next : end] = rows
        else:
            split = capacity - self.next
            self.data[self.next :] = rows[:split]
            self.data[: n - split] = rows[split:]
        self.next = end % capacity
        self.filled = min(self.filled + n, capacity)

    def snapshot(self) -> np.ndarray:
        return self.data[: self.filled].copy()


@dataclass(slots=True)
class _Reference:
    width: int
    columns: list[np.ndarray]  # sorted reference values per feature
    bins: list[tuple[np.ndarray, np.ndarray]]  # PSI edges and shares per feature


class DriftMonitor:
    """Samples one model version's inputs and compares them with its reference (module docstring)."""

    def __init__(
        self,
        model: str,
        version: str,
        reference: Mapping[str, np.ndarray],
        options: DriftOptions,
        *,
        batched: bool = True,
        sample_gap_ns: int | None = None,
    ) -> None:
        self.model = model
        self.version = version
        self.options = options
        self._batched = batched
        self._reference: dict[str, _Reference] = {}
        self._rings: dict[str, _Ring] = {}
        for name, array in reference.items():
            table = np.asarray(array, dtype=np.float64).reshape(len(array), -1)
            width = table.shape[1]
            if width > MAX_FEATURES:
                log.warning(
                    "model %r version %s: reference input %r has %d features; drift watches the first %d",
                    model, version, name, width, MAX_FEATURES,
                )
            kept = table[:, :MAX_FEATURES]
            columns = [kept[:, j] for j in range(kept.shape[1])]
            self._reference[name] = _Reference(width, [np.sort(c) for c in columns], [psi_bins(c) for c in columns])
            self._rings[name] = _Ring(options.window_rows, kept.shape[1])
        per_row_ns = int(options.interval_s * 1e9 / options.window_rows)
        self._per_row_ns = per_row_ns if sample_gap_ns is None else sample_gap_ns
        self._next_ns = 0
        self._lock = threading.Lock()
        self._drifted: set[tuple[str, int]] = set()
        self.results: list[FeatureDrift] = []
        """The last evaluation, one entry per watched feature (read by the collector)."""
        self.evaluations = 0

    @property
    def inputs(self) -> list[str]:
        return sorted(self._reference)

    @classmethod
    def load(
        cls,
        path: Path,
        model: str,
        version: str,
        input_names: Iterable[str],
        options: DriftOptions,
        *,
        batched: bool = True,
    ) -> DriftMonitor | None:
        """The monitor for a model version's reference.npz, or None when there is none (blocking).

        A reference that cannot be used is logged and ignored: drift is a diagnostic and never
        keeps a model from serving.
        """
        if not path.is_file():
            return None
        names = set(input_names)
        try:
            with np.load(path, allow_pickle=False) as npz:
                arrays = {key: npz[key] for key in npz.files}
        except Exception as exc:  # noqa: BLE001 - a bad file only disables drift
            log.warning("model %r version %s: cannot read %s: %s; no drift monitoring", model, version, path, exc)
            return None
        usable: dict[str, np.ndarray] = {}
        for key, array in sorted(arrays.items()):
            if key not in names:
                log.warning("model %r version %s: %s holds %r, which is not an input; ignored", model, version,
                            path.name, key)
            elif array.dtype.kind not in "biuf" or array.ndim < 1 or len(array) < MIN_ROWS // 4:
                log.warning("model %r version %s: %s[%r] must be numeric with at least %d rows, got %s %s; ignored",
                            model, version, path.name, key, MIN_ROWS // 4, array.dtype, array.shape)
            else:
                usable[key] = array
        if not usable:
            return None
        monitor = cls(model, version, usable, options, batched=batched)
        log.info("model %r version %s: watching input drift of %s against %s", model, version,
                 ", ".join(repr(n) for n in monitor.inputs), path.name)
        return monitor

    def offer(self, inputs: Mapping[str, np.ndarray]) -> None:
        """Maybe sample a request's inputs (event loop; never blocks)."""
        now = monotonic_ns()
        if now < self._next_ns:
            return
        if not self._lock.acquire(blocking=False):
            return  # an evaluation is taking its snapshot: skip this one
        try:
            taken = 0
            for name, ring in self._rings.items():
                array = inputs.get(name)
                if array is None:
                    continue
                rows = array[:ROWS_PER_SAMPLE] if self._batched else array[np.newaxis]
                flat = rows.reshape(len(rows), -1)
                if flat.shape[1] != self._reference[name].width or flat.dtype.kind not in "biuf":
                    continue  # another shape than the reference's (a variable dim): not comparable
                ring.push(flat[:, : ring.data.shape[1]])
                taken = max(taken, len(flat))
            self._next_ns = now + self._per_row_ns * max(taken, 1)
        finally:
            self._lock.release()

    def evaluate(self) -> list[FeatureDrift]:
        """Compare each watched feature's sampled window with the reference (worker thread)."""
        with self._lock:
            windows = {name: ring.snapshot() for name, ring in self._rings.items()}
        results: list[FeatureDrift] = []
        opts = self.options
        for name in sorted(windows):
            window = windows[name]
            if len(window) < MIN_ROWS:
                continue
            reference = self._reference[name]
            for j, column in enumerate(reference.columns):
                values = window[:, j]
                statistic, pvalue = ks_2samp(column, values)
                index = psi(*reference.bins[j], values)
                drifted = index >= opts.psi_threshold or pvalue < opts.pvalue_threshold
                results.append(FeatureDrift(name, j, statistic, pvalue, index, len(values), drifted))
        self.results = results
        self.evaluations += 1
        self._log_changes(results)
        return results

    def _log_changes(self, results: list[FeatureDrift]) -> None:
        opts = self.options
        for r in results:
            key = (r.input, r.feature)
            if r.drifted and key not in self._drifted:
                self._drifted.add(key)
                log.warning(
                    "input drift: model %r version %s input %r feature %d: KS %.3f (p=%.3g), PSI %.3f over %d rows "
                    "(thresholds: PSI >= %g or p < %g)",
                    self.model, self.version, r.input, r.feature, r.ks_statistic, r.ks_pvalue, r.psi, r.rows,
                    opts.psi_threshold, opts.pvalue_threshold,
                    extra={"model": self.model, "version": self.version},
                )
            elif not r.drifted and key in self._drifted:
                self._drifted.discard(key)
                log.info(
                    "input drift cleared: model %r version %s input %r feature %d: KS %.3f (p=%.3g), PSI %.3f",
                    self.model, self.version, r.input, r.feature, r.ks_statistic, r.ks_pvalue, r.psi,
                    extra={"model": self.model, "version": self.version},
                )


# -- exposition and schedule ------------------------------------------------------------------

MonitorSource = Callable[[], Iterable[DriftMonitor]]
"""Yields the drift monitor of every loaded model version that has one."""


class DriftCollector(Collector):
    """ortserve_drift_* gauges from each monitor's last evaluation."""

    def __init__(self, source: MonitorSource) -> None:
        self._source = source

    def collect(self) -> Iterator[Metric]:
        labels = ("model", "version", "input", "feature")
        families = {
            "ks": GaugeMetricFamily(
                "ortserve_drift_ks_statistic",
                "Two-sample Kolmogorov-Smirnov statistic of a feature's recent inputs against the reference.",
                labels=labels,
            ),
            "p": GaugeMetricFamily(
                "ortserve_drift_ks_pvalue", "p-value of the Kolmogorov-Smirnov test (small: drifted).", labels=labels
            ),
            "psi": GaugeMetricFamily(
                "ortserve_drift_psi",
                "Population stability index of a feature's recent inputs against the reference "
                "(0.1-0.2 moderate, above 0.2 significant).",
                labels=labels,
            ),
        }
        rows = GaugeMetricFamily(
            "ortserve_drift_window_rows", "Sampled input rows compared at the last drift evaluation.",
            labels=("model", "version", "input"),
        )
        evaluations = CounterMetricFamily(
            "ortserve_drift_evaluations", "Drift evaluations of a model version.", labels=("model", "version")
        )
        for monitor in self._source():
            evaluations.add_metric((monitor.model, monitor.version), monitor.evaluations)
            seen: dict[str, int] = {}
            for r in monitor.results:
                key = (monitor.model, monitor.version, r.input, str(r.feature))
                families["ks"].add_metric(key, r.ks_statistic)
                families["p"].add_metric(key, r.ks_pvalue)
                families["psi"].add_metric(key, r.psi)
                seen[r.input] = r.rows
            for name, count in sorted(seen.items()):
                rows.add_metric((monitor.model, monitor.version, name), count)
        yield from families.values()
        yield rows
        yield evaluations


async def run_drift_schedule(source: MonitorSource, interval_s: float) -> None:
    """Evaluate every monitor each `interval_s`, in a worker thread, until cancelled."""
    while True:
        await asyncio.sleep(interval_s)
        for monitor in list(source()):
            try:
                await asyncio.to_thread(monitor.evaluate)
            except Exception:  # a failed evaluation must not end the schedule
                log.exception("drift evaluation of model %r version %s failed", monitor.model, monitor.version)
