"""`ortserve validate`: the gate a model version passes before it serves.

    ortserve validate MODEL_DIR --data held_out.npz [--labels KEY] [--min-accuracy X] [--max-rmse X]
                      [--max-p99-ms Y] [--version N] [--batch-sizes 1,8] [--output NAME] [--no-record]

1. Load the version as the server does: `read_config`, the version policy, the ONNX Runtime
   sessions, `complete_config` (which checks the config's tensors against the graph) and the
   warm-up (`ModelVersion.load_blocking`, the very code the server runs).
2. Check the data against the signature: one array per model input, by name, the first axis
   indexing the examples; an array whose type can be cast without changing kind (FP64 -> FP32)
   is cast and the cast noted, anything else is refused.
3. Run the data at each batch size (default: 1, the preferred batch sizes and max_batch_size),
   `--repeats` timed passes, and check every output against the signature (type and dims) and
   for NaN/Inf. The answers of every batch size are compared with the first's (reported only).
4. With `--labels`: accuracy for classification (integer labels; an integer output of one value
   per example, else the argmax of a float output), RMSE, MAE and R^2 for regression (float labels).
5. Judge the thresholds, print a report, write `<version>/validation.json` (repository/validation.py)
   and exit 0 (passed), 1 (a threshold or check failed) or 2 (the model or the data cannot be used).

Latencies are of the model execution alone (concatenated batch in, outputs out), per batch size.
"""

from __future__ import annotations

import argparse
import datetime
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from time import perf_counter_ns
from typing import Any

import numpy as np

from ortserve import __version__
from ortserve.config import ServerSettings
from ortserve.errors import OrtserveError
from ortserve.repository import ModelVersion, Signature
from ortserve.repository.model_config import model_filename, read_config
from ortserve.repository.validation import file_sha256, write_record
from ortserve.repository.versions import default_version, list_versions, select_versions
from ortserve.runtime import RuntimeOptions

Array = np.ndarray[Any, Any]

MAX_TIMED_RUNS = 2000
"""Timed executions per batch size at most, whatever the data size and --repeats."""


class DataError(Exception):
    """The data cannot be used with this model (exit 2)."""


@dataclass
class Report:
    """What one validation found; `record()` is the JSON record."""

    model: str
    version: int
    model_file: str
    model_sha256: str = ""
    device: str = ""
    rows: int = 0
    notes: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    latency_ms: dict[str, dict[str, float]] = field(default_factory=dict)
    sanity: dict[str, Any] = field(default_factory=dict)
    thresholds: dict[str, float] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)

    def record(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "version": self.version,
            "model_file": self.model_file,
            "model_sha256": self.model_sha256,
            "passed": not self.failures,
            "failures": self.failures,
            "notes": self.notes,
            "metrics": self.metrics,
            "latency_ms": self.latency_ms,
            "sanity": self.sanity,
            "thresholds": self.thresholds,
            "data": self.data,
            "device": self.device,
            "ortserve": __version__,
            "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        }


def run(args: argparse.Namespace) -> int:
    """The `validate` subcommand (see the module docstring); returns the exit status."""
    model_dir: Path = args.model_dir
    name = model_dir.name
    try:
        config = read_config(model_dir)
        available = list_versions(model_dir)
        version = args.version or default_version(select_versions(config.version_policy, available, model_name=name))
        if version not in available:
            raise DataError(f"model '{name}' has no version {version}: found versions {available}")
        filename = model_filename(config, name)
    except (OrtserveError, DataError) as exc:
        print(f"ortserve validate: error: {exc}", file=sys.stderr)
        return 2
    path = model_dir / str(version) / filename
    report = Report(name, version, filename, thresholds=_thresholds(args))
    try:
        report.model_sha256 = file_sha256(path)
        model = ModelVersion.load_blocking(
            name, version, config, path, RuntimeOptions(device=args.device),
            ServerSettings().default_max_batch_size,
        )
    except (OSError, OrtserveError) as exc:
        report.failures.append(f"the model does not load: {exc}")
        return _finish(args, report, status=2)
    try:
        report.device = model.device
        _validate(args, model, report)
    except DataError as exc:
        report.failures.append(str(exc))
        return _finish(args, report, status=2)
    finally:
        model.onnx.close()
    return _finish(args, report, status=1 if report.failures else 0)


def _thresholds(args: argparse.Namespace) -> dict[str, float]:
    given = {"min_accuracy": args.min_accuracy, "max_rmse": args.max_rmse, "max_p99_ms": args.max_p99_ms}
    return {key: float(value) for key, value in given.items() if value is not None}


def _validate(args: argparse.Namespace, model: ModelVersion, report: Report) -> None:
    signature = model.signature
    try:
        data = dict(np.load(args.data, allow_pickle=False))
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read {args.data} as .npz: {exc}") from exc
    report.data = {"file": str(args.data), "sha256": file_sha256(args.data), "labels": args.labels}
    inputs = _inputs(signature, data, args.labels, report)
    rows = len(next(iter(inputs.values())))
    report.rows = report.data["rows"] = rows
    sizes = _batch_sizes(args.batch_sizes, model, rows)
    reference: dict[str, Array] | None = None
    consistency: dict[str, float] = {}
    for size in sizes:
        outputs, timings = _run_at(model, inputs, rows, size, args.repeats)
        report.latency_ms[str(size)] = _percentiles(timings)
        if reference is None:
            reference = outputs
            _check_outputs(signature, outputs, report)
        else:
            consistency[str(size)] = _max_difference(reference, outputs)
    assert reference is not None
    if consistency:
        report.sanity["max_abs_difference_vs_batch_size_" + str(sizes[0])] = consistency
    if args.labels:
        _score(args, signature, reference, data[args.labels], report)
    _judge(report)


def _inputs(signature: Signature, data: dict[str, Array], labels: str, report: Report) -> dict[str, Array]:
    missing = [spec.name for spec in signature.inputs if spec.name not in data]
    if missing:
        raise DataError(f"the data has no array for input(s) {missing}; it holds {sorted(data)}")
    if labels and labels not in data:
        raise DataError(f"the data has no labels {labels!r}; it holds {sorted(data)}")
    unused = sorted(set(data) - {s.name for s in signature.inputs} - {labels})
    if unused:
        report.notes.append(f"arrays not used: {unused}")
    inputs: dict[str, Array] = {}
    rows = {len(data[spec.name]) if data[spec.name].ndim else 0 for spec in signature.inputs}
    if len(rows) != 1 or 0 in rows:
        raise DataError("every input array needs the same number of examples along its first axis")
    for spec in signature.inputs:
        array = data[spec.name]
        want = spec.dtype.numpy
        if array.dtype != want:
            if spec.dtype.name == "BYTES" or not np.can_cast(array.dtype, want, "same_kind"):
                raise DataError(f"input {spec.name!r}: the data is {array.dtype}, the model takes {spec.dtype.name}")
            report.notes.append(f"input {spec.name!r} cast from {array.dtype} to {want}")
            array = array.astype(want)
        dims = array.shape[1:]
        fits = len(dims) == len(spec.dims) and all(w in (-1, d) for w, d in zip(spec.dims, dims, strict=True))
        if not fits:
            raise DataError(
                f"input {spec.name!r}: examples of shape {list(dims)}; the model takes {list(spec.dims)}"
            )
        inputs[spec.name] = np.ascontiguousarray(array)
    return inputs


def _batch_sizes(text: str, model: ModelVersion, rows: int) -> list[int]:
    limit = model.config.max_batch_size
    if not limit:
        return [1]
    if text:
        sizes = sorted({int(part) for part in text.split(",") if part.strip()})
        bad = [s for s in sizes if not 1 <= s <= limit]
        if bad:
            raise DataError(f"batch sizes {bad} are outside 1..{limit} (the model's max_batch_size)")
    else:
        sizes = sorted({1, limit, *model.config.dynamic_batching.preferred_batch_size})
    return sorted({min(s, rows) for s in sizes})  # more than the data holds: all of it at once


def _run_at(model: ModelVersion, inputs: dict[str, Array], rows: int, size: int, repeats: int) -> tuple[
    dict[str, Array], list[int]
]:
    """All the data in batches of `size` (examples one by one for a model without a batch dim)."""
    instance = model.onnx.instances[0]
    batched = model.config.max_batch_size > 0
    starts = list(range(0, rows, size))
    collected: dict[str, list[Array]] = {}
    timings: list[int] = []
    passes = max(1, min(repeats, math.ceil(MAX_TIMED_RUNS / max(len(starts), 1))))
    for attempt in range(passes):
        for start in starts:
            if batched:
                feeds = {k: v[start : start + size] for k, v in inputs.items()}
            else:
                feeds = {k: v[start] for k, v in inputs.items()}
            began = perf_counter_ns()
            outputs = instance.run(feeds)
            if len(timings) < MAX_TIMED_RUNS and (not batched or start + size <= rows):
                timings.append(perf_counter_ns() - began)
            if attempt == 0:
                for key, value in outputs.items():
                    collected.setdefault(key, []).append(value if batched else value[np.newaxis])
    return {k: np.concatenate(v) for k, v in collected.items()}, timings


def _percentiles(timings_ns: Sequence[int]) -> dict[str, float]:
    if not timings_ns:
        return {"runs": 0.0}
    ms = np.asarray(timings_ns, dtype=np.float64) / 1e6
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    return {"runs": float(len(ms)), "mean": float(ms.mean()), "p50": float(p50), "p90": float(p90),
            "p99": float(p99), "max": float(ms.max())}


def _check_outputs(signature: Signature, outputs: dict[str, Array], report: Report) -> None:
    nonfinite: dict[str, int] = {}
    for spec in signature.outputs:
        array = outputs.get(spec.name)
        if array is None:
            report.failures.append(f"output {spec.name!r} declared by the config is not produced")
            continue
        dims = array.shape[1:]
        fits = len(dims) == len(spec.dims) and all(w in (-1, d) for w, d in zip(spec.dims, dims, strict=True))
        if array.dtype != spec.dtype.numpy and spec.dtype.name != "BYTES":
            report.failures.append(f"output {spec.name!r} is {array.dtype}; the config says {spec.dtype.name}")
        if not fits:
            report.failures.append(f"output {spec.name!r} has dims {list(dims)}; the config says {list(spec.dims)}")
        if array.dtype.kind in "fc":
            bad = int(array.size - np.count_nonzero(np.isfinite(array)))
            nonfinite[spec.name] = bad
            if bad:
                report.failures.append(f"output {spec.name!r} holds {bad} NaN or Inf values")
    report.sanity["nonfinite_values"] = nonfinite


def _max_difference(reference: dict[str, Array], outputs: dict[str, Array]) -> float:
    worst = 0.0
    for key, expected in reference.items():
        got = outputs[key]
        if expected.dtype.kind in "fciub" and got.shape == expected.shape:
            a, b = got.astype(np.float64), expected.astype(np.float64)
            same = (a == b) | (np.isnan(a) & np.isnan(b))  # NaN in both: no difference
            with np.errstate(invalid="ignore"):
                diff = np.nan_to_num(np.where(same, 0.0, np.abs(a - b)), nan=np.inf)
            worst = max(worst, float(diff.max()) if diff.size else 0.0)
        elif not np.array_equal(got, expected):
            worst = math.inf
    return worst


def _score(args: argparse.Namespace, signature: Signature, outputs: dict[str, Array], labels: Array,
           report: Report) -> None:
    labels = labels.reshape(len(labels), -1)
    if labels.shape[1] != 1 or len(labels) != report.rows:
        raise DataError(f"labels {args.labels!r}: expected one value per example ({report.rows}), "
                        f"got shape {list(labels.shape)}")
    truth = labels[:, 0]
    task = args.task if args.task != "auto" else ("classification" if truth.dtype.kind in "iub" else "regression")
    names = [args.output] if args.output else [spec.name for spec in signature.outputs]
    unknown = [n for n in names if n not in outputs]
    if unknown:
        raise DataError(f"--output {unknown[0]!r} is not an output of the model: {sorted(outputs)}")
    if task == "classification":
        predicted, used = _predicted_classes(outputs, names)
        correct = int(np.count_nonzero(predicted == truth.astype(np.int64)))
        report.metrics = {"task": task, "output": used, "accuracy": correct / len(truth), "correct": correct,
                          "examples": len(truth)}
    else:
        value, used = _regression_output(outputs, names)
        error = value - truth.astype(np.float64)
        total = float(np.sum((truth - truth.mean()) ** 2))
        report.metrics = {"task": task, "output": used, "rmse": float(np.sqrt(np.mean(error**2))),
                          "mae": float(np.mean(np.abs(error))), "examples": len(truth),
                          "r2": 1.0 - float(np.sum(error**2)) / total if total > 0 else math.nan}


def _predicted_classes(outputs: dict[str, Array], names: list[str]) -> tuple[Array, str]:
    for name in names:  # a label output first: integers, one per example
        array = outputs[name]
        if array.dtype.kind in "iu" and array.reshape(len(array), -1).shape[1] == 1:
            return array.reshape(-1).astype(np.int64), name
    for name in names:  # then scores: argmax over the classes
        array = outputs[name]
        flat = array.reshape(len(array), -1)
        if array.dtype.kind == "f" and flat.shape[1] > 1:
            return np.argmax(flat, axis=1).astype(np.int64), name
        if array.dtype.kind == "f":
            return (flat[:, 0] >= 0.5).astype(np.int64), name
    raise DataError(f"no output of {names} gives classes (an integer label or float scores)")


def _regression_output(outputs: dict[str, Array], names: list[str]) -> tuple[Array, str]:
    for name in names:
        array = outputs[name]
        if array.dtype.kind == "f" and array.reshape(len(array), -1).shape[1] == 1:
            return array.reshape(-1).astype(np.float64), name
    raise DataError(f"no output of {names} gives one float value per example to compare with the labels")


def _judge(report: Report) -> None:
    limits, metrics = report.thresholds, report.metrics
    if "min_accuracy" in limits:
        if "accuracy" not in metrics:
            raise DataError("--min-accuracy needs --labels with integer classes (classification)")
        if metrics["accuracy"] < limits["min_accuracy"]:
            report.failures.append(
                f"accuracy {metrics['accuracy']:.4f} is below --min-accuracy {limits['min_accuracy']}"
            )
    if "max_rmse" in limits:
        if "rmse" not in metrics:
            raise DataError("--max-rmse needs --labels with float targets (regression)")
        if not metrics["rmse"] <= limits["max_rmse"]:
            report.failures.append(f"RMSE {metrics['rmse']:.4g} is above --max-rmse {limits['max_rmse']}")
    if "max_p99_ms" in limits:
        for size, stats in report.latency_ms.items():
            if stats.get("p99", 0.0) > limits["max_p99_ms"]:
                report.failures.append(
                    f"p99 latency {stats['p99']:.3f} ms at batch size {size} is above "
                    f"--max-p99-ms {limits['max_p99_ms']}"
                )


def _finish(args: argparse.Namespace, report: Report, *, status: int) -> int:
    out = sys.stdout
    print(f"model {report.model} version {report.version} ({report.model_file}, sha256 {report.model_sha256[:12]}) "
          f"on {report.device or args.device}", file=out)
    if report.rows:
        print(f"data {args.data}: {report.rows} examples", file=out)
    for note in report.notes:
        print(f"note: {note}", file=out)
    for size, stats in report.latency_ms.items():
        if stats.get("runs"):
            print(f"latency at batch size {size}: p50 {stats['p50']:.3f} ms, p90 {stats['p90']:.3f} ms, "
                  f"p99 {stats['p99']:.3f} ms ({int(stats['runs'])} runs)", file=out)
    metrics = report.metrics
    if "accuracy" in metrics:
        print(f"accuracy {metrics['accuracy']:.4f} ({metrics['correct']}/{metrics['examples']}) "
              f"from output {metrics['output']!r}", file=out)
    if "rmse" in metrics:
        print(f"RMSE {metrics['rmse']:.4g}, MAE {metrics['mae']:.4g}, R^2 {metrics['r2']:.4f} "
              f"from output {metrics['output']!r}", file=out)
    for failure in report.failures:
        print(f"FAIL: {failure}", file=out)
    if not report.failures:
        print("PASS", file=out)
    if args.record:
        version_dir = args.model_dir / str(report.version)
        try:
            print(f"wrote {write_record(version_dir, report.record())}", file=out)
        except OSError as exc:
            print(f"ortserve validate: error: cannot write the record in {version_dir}: {exc}", file=sys.stderr)
            return 2
    return status
