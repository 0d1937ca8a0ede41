"""Latency targets as data (a TOML file), and the verdict of a run against them.

    # every key carries its unit; a missing key is not checked
    [defaults]                   # for every model without a table of its own (optional)
    max_error_ratio = 0.001

    [models.iris]                # overrides the defaults key by key
    p50_ms = 5
    p95_ms = 15
    p99_ms = 30
    max_error_ratio = 0          # failed / all requests
    min_throughput_rps = 100     # successful requests per second, over the run

A file is read and checked whole when Locust starts (an unknown key, a negative or non-numeric
value stops the run before any load is sent). Pure Python: the unit tests import it directly.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from loadtests.recorder import Measured


class TargetsError(ValueError):
    """The targets file is malformed; the message names the file, the table and the key."""


@dataclass(frozen=True, slots=True)
class Target:
    """One model's targets; None: not checked."""

    p50_ms: float | None = None
    p95_ms: float | None = None
    p99_ms: float | None = None
    max_error_ratio: float | None = None
    min_throughput_rps: float | None = None

    def is_empty(self) -> bool:
        return all(getattr(self, f.name) is None for f in fields(self))

    def over(self, base: Target) -> Target:
        """These targets, with `base` filling the keys they leave out."""
        return Target(
            **{
                f.name: getattr(self, f.name) if getattr(self, f.name) is not None else getattr(base, f.name)
                for f in fields(self)
            }
        )


KEYS = tuple(f.name for f in fields(Target))


def _target(table: Any, where: str) -> Target:
    if not isinstance(table, Mapping):
        raise TargetsError(f"{where}: expected a table of {', '.join(KEYS)}, got {table!r}")
    values: dict[str, float] = {}
    for key, value in table.items():
        if key not in KEYS:
            raise TargetsError(f"{where}: unknown key {key!r}; expected one of {', '.join(KEYS)}")
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
            raise TargetsError(f"{where}.{key}: expected a finite number >= 0, got {value!r}")
        values[key] = float(value)
    if values.get("max_error_ratio", 0.0) > 1:
        raise TargetsError(f"{where}.max_error_ratio: a ratio is at most 1, got {values['max_error_ratio']}")
    return Target(**values)


@dataclass(frozen=True, slots=True)
class Targets:
    """Every model's targets, and the defaults for the others."""

    models: Mapping[str, Target]
    defaults: Target = Target()
    source: str = ""

    @classmethod
    def parse(cls, text: str, source: str = "<targets>") -> Targets:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise TargetsError(f"{source}: not valid TOML: {exc}") from None
        unknown = set(data) - {"defaults", "models"}
        if unknown:
            raise TargetsError(f"{source}: unknown table(s) {sorted(unknown)}; expected [defaults] and [models.NAME]")
        defaults = _target(data.get("defaults", {}), f"{source}: [defaults]")
        models = data.get("models", {})
        if not isinstance(models, Mapping):
            raise TargetsError(f"{source}: 'models' must hold one table per model, [models.NAME]")
        return cls({name: _target(t, f"{source}: [models.{name}]") for name, t in models.items()}, defaults, source)

    @classmethod
    def load(cls, path: str | Path) -> Targets:
        path = Path(path)
        try:
            text = path.read_text()
        except OSError as exc:
            raise TargetsError(f"cannot read the targets file {path}: {exc.strerror}") from None
        return cls.parse(text, str(path))

    def for_model(self, model: str) -> Target:
        own = self.models.get(model)
        return self.defaults if own is None else own.over(self.defaults)


@dataclass(frozen=True, slots=True)
class Check:
    """One row of the verdict: a target and what was measured against it."""

    model: str
    metric: str
    """p50, p95, p99, error ratio, throughput."""
    target: str
    """As printed: '<= 30 ms', '>= 100 req/s'."""
    measured: str
    passed: bool | None
    """None: nothing to judge (no target for the model)."""


def _ms(value: float) -> str:
    if math.isnan(value):
        return "no samples"
    return f"{value:.3f} ms" if value < 10 else f"{value:.1f} ms"


def judge(model: str, target: Target, measured: Measured) -> list[Check]:
    """Each of the model's targets against its measurements; a missing sample misses the target."""
    if target.is_empty():
        return [Check(model, "-", "no targets", f"{measured.requests} requests", None)]
    checks: list[Check] = []
    for name, limit, value in (
        ("p50", target.p50_ms, measured.p50_ms),
        ("p95", target.p95_ms, measured.p95_ms),
        ("p99", target.p99_ms, measured.p99_ms),
    ):
        if limit is not None:
            checks.append(Check(model, name, f"<= {limit:g} ms", _ms(value), not math.isnan(value) and value <= limit))
    if target.max_error_ratio is not None:
        ratio = measured.error_ratio
        shown = "no requests" if math.isnan(ratio) else f"{ratio:.4f} ({measured.errors}/{measured.requests})"
        checks.append(
            Check(
                model,
                "error ratio",
                f"<= {target.max_error_ratio:g}",
                shown,
                not math.isnan(ratio) and ratio <= target.max_error_ratio,
            )
        )
    if target.min_throughput_rps is not None:
        rate = measured.throughput_rps
        shown = "no requests" if math.isnan(rate) else f"{rate:.1f} req/s"
        checks.append(
            Check(
                model,
                "throughput",
                f">= {target.min_throughput_rps:g} req/s",
                shown,
                not math.isnan(rate) and rate >= target.min_throughput_rps,
            )
        )
    return checks


def verdict(checks: list[Check]) -> bool:
    """True when no judged target was missed."""
    return all(c.passed is not False for c in checks)
