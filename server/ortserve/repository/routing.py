"""Version routing: which loaded version answers a request that names none.

A request that names a version gets that version (the registry looks it up; nothing here runs).
A request that names none gets the version policy's default (the highest served version) unless
the model's config sets relative weights, Triton config syntax:

    parameters { key: "version_weights" value: { string_value: "1:90,2:10" } }

`VERSION:WEIGHT` pairs, comma-separated, whitespace ignored; weights are relative numbers >= 0
(they need not add up to 100). A served version the weights leave out gets weight 0: it answers
only requests that name it. A weighted version that is not served (not selected by the version
policy, or failed to load, or removed) is left out with a note, so that rollback by removing the
canary loses no request; if no served version keeps a weight above 0, the policy's default
answers everything.

The choice per request is one `random.random()` and one bisect over precomputed cumulative
weights: no lock, no allocation. A model without weights has no router at all.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from random import random
from typing import Final, Generic, TypeVar

from ortserve.errors import ModelLoadError
from ortserve_client.proto import model_config_pb2 as mc

WEIGHTS_PARAMETER: Final = "version_weights"
"""Model config parameter holding the version weights, e.g. "1:90,2:10"."""

T = TypeVar("T")


def parse_weights(text: str, *, model: str = "") -> dict[int, float]:
    """`"1:90, 2:10"` -> {1: 90.0, 2: 10.0}; ModelLoadError naming the bad part otherwise.

    An empty string means no weights ({}). Versions are positive integers, each given once;
    weights are finite numbers >= 0 and at least one is above 0.
    """
    where = f"model '{model}': " if model else ""
    expected = 'expected "VERSION:WEIGHT" pairs separated by commas, e.g. "1:90,2:10"'
    weights: dict[int, float] = {}
    if not text.strip():
        return weights
    for part in text.split(","):
        version_text, colon, weight_text = part.partition(":")
        version_text, weight_text = version_text.strip(), weight_text.strip()
        try:
            version = int(version_text) if version_text.isascii() and version_text.isdigit() else 0
            weight = float(weight_text) if colon else math.nan
        except ValueError:
            weight = math.nan
        if version < 1 or not (math.isfinite(weight) and weight >= 0):
            raise ModelLoadError(
                f"{where}parameter {WEIGHTS_PARAMETER} {text!r}: bad pair {part.strip()!r}; {expected}"
            )
        if version in weights:
            raise ModelLoadError(f"{where}parameter {WEIGHTS_PARAMETER} {text!r}: version {version} is given twice")
        weights[version] = weight
    if not any(w > 0 for w in weights.values()):
        raise ModelLoadError(
            f"{where}parameter {WEIGHTS_PARAMETER} {text!r}: every weight is 0; expected at least one above 0"
        )
    return weights


def config_weights(config: mc.ModelConfig) -> dict[int, float]:
    """The version weights of a config ({} when it sets none)."""
    parameter = config.parameters.get(WEIGHTS_PARAMETER)
    return {} if parameter is None else parse_weights(parameter.string_value, model=config.name)


@dataclass(frozen=True, slots=True)
class Routing:
    """The effective weights over the served versions, and what was left out and why."""

    weights: dict[int, float]
    """Version -> weight > 0, served versions only; {} = everything to the default version."""
    notes: tuple[str, ...] = ()
    """Why a configured weight is not in force (for the log and the repository index)."""


def effective_routing(weights: Mapping[int, float], served: Sequence[int]) -> Routing:
    """Keep the weights of served versions; note the others (see the module docstring)."""
    notes = [
        f"weight {weight:g} of version {version} ignored: version {version} is not served"
        for version, weight in sorted(weights.items())
        if version not in served and weight > 0
    ]
    kept = {v: w for v, w in sorted(weights.items()) if v in served and w > 0}
    if weights and not kept:
        notes.append("no served version has a weight above 0: the default version answers every request")
    return Routing(kept, tuple(notes))


class VersionRouter(Generic[T]):
    """A weighted choice among targets, precomputed once; `choose()` is lock-free and O(log n)."""

    __slots__ = ("_targets", "_cumulative", "_total", "weights")

    def __init__(self, targets: Mapping[int, T], weights: Mapping[int, float]) -> None:
        chosen = [(v, w) for v, w in sorted(weights.items()) if w > 0]
        if not chosen:
            raise ValueError("a router needs at least one weight above 0")
        missing = [v for v, _ in chosen if v not in targets]
        if missing:
            raise ValueError(f"weighted versions {missing} have no target")
        self.weights: dict[int, float] = dict(chosen)
        self._targets = [targets[v] for v, _ in chosen]
        cumulative: list[float] = []
        total = 0.0
        for _, weight in chosen:
            total += weight
            cumulative.append(total)
        self._cumulative = cumulative
        self._total = total

    def choose(self) -> T:
        """One target, each with probability weight / total."""
        index = bisect_right(self._cumulative, random() * self._total)
        # random() < 1 keeps the index in range, except for float rounding at the very top.
        return self._targets[index] if index < len(self._targets) else self._targets[-1]

    def share(self, version: int) -> float:
        """The fraction of unversioned requests `version` gets."""
        return self.weights.get(version, 0.0) / self._total
