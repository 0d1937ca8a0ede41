"""Scopes and the principal an authenticated call acts as."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Scope(StrEnum):
    """What a call may do. Health checks (grpc.health, ServerLive, ServerReady) need none."""

    INFERENCE = "inference"
    """ModelInfer and ModelStreamInfer."""
    METADATA = "metadata"
    """Server and model metadata, config, statistics, readiness of a model, the repository index."""
    MODEL_CONTROL = "model_control"
    """RepositoryModelLoad and RepositoryModelUnload."""


ALL_SCOPES = frozenset(Scope)


def parse_scopes(values: object, *, where: str) -> frozenset[Scope]:
    """Scopes from a list of names (a configuration file); an unknown name is an error."""
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise ValueError(f"{where}: scopes must be a list of names out of {', '.join(Scope)}")
    unknown = [v for v in values if v not in Scope.__members__.values()]
    if unknown:
        raise ValueError(f"{where}: unknown scope {unknown[0]!r}; expected {', '.join(Scope)}")
    return frozenset(Scope(v) for v in values)


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a call acts as: `key:<id>`, `jwt:<sub>`, or `peer:<address>` when nobody authenticated."""

    identity: str
    scopes: frozenset[Scope]
