"""ModelRegistry: which models the repository holds, their versions and states.

A model directory is `<root>/<model>/` with version subdirectories holding `model.onnx`
(or the config's `default_model_filename`) and an optional `config.pbtxt`. A model
that fails to load is kept in the index as UNAVAILABLE with its reason; the other models
keep serving. Loading (session creation, warm-up) runs in worker threads so the event
loop keeps answering health checks meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ortserve.errors import (
    ModelLoadError,
    ModelNotFoundError,
    ModelNotReadyError,
    OrtserveError,
)
from ortserve.observability import ModelStats
from ortserve.repository.model import ModelVersion
from ortserve.repository.model_config import model_filename, read_config
from ortserve.repository.versions import default_version, list_versions, select_versions
from ortserve.runtime import RuntimeOptions

log = logging.getLogger("ortserve.repository")

READY, LOADING, UNAVAILABLE, UNLOADING = "READY", "LOADING", "UNAVAILABLE", "UNLOADING"


@dataclass(slots=True)
class IndexEntry:
    """One row of the repository index."""

    name: str
    version: str
    state: str
    reason: str


@dataclass(slots=True)
class _Model:
    name: str
    state: str = LOADING
    reason: str = ""
    versions: dict[int, ModelVersion] = field(default_factory=dict)
    failed_versions: dict[int, str] = field(default_factory=dict)
    default: int | None = None


class ModelRegistry:
    """Loads the models of one repository directory and finds them by name and version."""

    def __init__(
        self,
        root: Path,
        options: RuntimeOptions,
        *,
        default_max_batch_size: int,
        default_latency_target_ms: float = 0.0,
        on_load: Callable[[ModelVersion], None] | None = None,
    ) -> None:
        """`on_load` is called in the loading thread with each version once loaded and warmed
        up, before it serves (the app attaches tracing and drift monitoring there)."""
        self.root = root
        self._options = options
        self._default_max_batch_size = default_max_batch_size
        self._default_latency_target_ms = default_latency_target_ms
        self._on_load = on_load
        self._models: dict[str, _Model] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    def discover(self) -> list[str]:
        """Names of the model directories in the repository, sorted."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))

    async def load_all(self) -> None:
        """Load every model in the repository; failures are recorded, not raised."""
        names = self.discover()
        for name in names:
            self._models.setdefault(name, _Model(name))
        results = await asyncio.gather(*(self.load(name) for name in names), return_exceptions=True)
        for name, result in zip(names, results, strict=True):
            if isinstance(result, BaseException) and not isinstance(result, OrtserveError):
                log.error("model %r: unexpected load failure", name, exc_info=result)

    async def load(self, name: str) -> None:
        """(Re)load a model: every version its policy selects, then swap them in atomically.

        Raises ModelNotFoundError if the directory does not exist and ModelLoadError if no
        version could be loaded; a model already serving keeps its old versions then.
        """
        # The name comes from a client and is joined to a path: only a directory that discover()
        # would list may load, never "", "..", "../elsewhere" or "a/b" (a model outside the repository).
        plain = bool(name) and not name.startswith(".") and not any(c in name for c in "/\\\0")
        model_dir = self.root / name
        if not plain or not model_dir.is_dir():
            raise ModelNotFoundError(
                f"model {name!r} is not in the repository {self.root}: a model name is the name of a "
                "directory directly inside it"
            )
        async with self._lock(name):
            old = self._models.get(name)
            entry = _Model(name)
            if old is None or not old.versions:
                self._models[name] = entry
            try:
                await self._load_versions(entry, model_dir)
            except ModelLoadError as exc:
                entry.state, entry.reason = UNAVAILABLE, str(exc)
                log.error("model %r failed to load: %s", name, exc)
                if old is not None and old.versions:
                    raise ModelLoadError(f"{exc}; the previously loaded versions keep serving") from exc
                self._models[name] = entry
                raise
            self._models[name] = entry
            if old is not None:
                await self._close_versions(old)

    async def unload(self, name: str) -> None:
        """Stop serving a model: refuse new requests, finish queued ones, free the sessions."""
        async with self._lock(name):
            model = self._models.get(name)
            if model is None:
                if name in self.discover():
                    return  # in the repository but not loaded: already unloaded
                raise ModelNotFoundError(f"model {name!r} is not loaded and not in the repository")
            model.state, model.reason = UNLOADING, "unloading"
            await self._close_versions(model)
            self._models[name] = _Model(name, UNAVAILABLE, "unloaded")

    async def close(self, timeout_s: float | None = None) -> None:
        """Unload everything (server shutdown)."""
        await asyncio.gather(*(self._close_versions(m, timeout_s) for m in self._models.values()))

    def get(self, name: str, version: str = "") -> ModelVersion:
        """The ready model version to infer with; `version` "" means the policy's default."""
        model = self._models.get(name)
        if model is None:
            raise ModelNotFoundError(
                f"unknown model {name!r}: the repository holds "
                + (", ".join(repr(n) for n in sorted(self._models)) or "no models")
            )
        if model.state != READY or model.default is None:
            why = f": {model.reason}" if model.reason else ""
            raise ModelNotReadyError(f"model {name!r} is not ready ({model.state}){why}")
        if not version:
            return model.versions[model.default]
        try:
            number = int(version)
        except ValueError:
            raise ModelNotFoundError(
                f"model {name!r} version {version!r} is not a version number"
            ) from None
        found = model.versions.get(number)
        if found is None:
            if number in model.failed_versions:
                raise ModelNotReadyError(
                    f"model {name!r} version {number} failed to load: {model.failed_versions[number]}"
                )
            raise ModelNotFoundError(
                f"model {name!r} has no version {version}: loaded versions are "
                + ", ".join(str(v) for v in sorted(model.versions))
            )
        return found

    def ready_versions(self, name: str) -> list[str]:
        model = self._models.get(name)
        return [] if model is None else [str(v) for v in sorted(model.versions)]

    def index(self) -> list[IndexEntry]:
        """Every model of the repository (loaded or not) with the state of each version."""
        rows: list[IndexEntry] = []
        for name in sorted(set(self.discover()) | set(self._models)):
            model = self._models.get(name)
            if model is None:
                rows.append(IndexEntry(name, "", UNAVAILABLE, "not loaded"))
                continue
            numbers = sorted(set(model.versions) | set(model.failed_versions))
            if not numbers:
                rows.append(IndexEntry(name, "", model.state, model.reason))
            for number in numbers:
                if number in model.versions:
                    rows.append(IndexEntry(name, str(number), READY, ""))
                else:
                    rows.append(IndexEntry(name, str(number), UNAVAILABLE, model.failed_versions[number]))
        return rows

    def loaded(self) -> Iterator[ModelVersion]:
        for model in list(self._models.values()):
            yield from list(model.versions.values())

    def stats(self) -> Iterator[tuple[str, str, ModelStats]]:
        for version in self.loaded():
            yield version.name, version.version_str, version.stats

    # -- internals ----------------------------------------------------------------------

    def _lock(self, name: str) -> asyncio.Lock:
        lock = self._locks.get(name)
        if lock is None:
            lock = self._locks[name] = asyncio.Lock()
        return lock

    async def _load_versions(self, entry: _Model, model_dir: Path) -> None:
        name = entry.name
        config = await asyncio.to_thread(read_config, model_dir)
        wanted = select_versions(config.version_policy, list_versions(model_dir), model_name=name)
        filename = model_filename(config, name)

        def load(version: int) -> ModelVersion:
            model = ModelVersion.load_blocking(
                name,
                version,
                config,
                model_dir / str(version) / filename,
                self._options,
                self._default_max_batch_size,
                self._default_latency_target_ms,
            )
            if self._on_load is not None:
                try:
                    self._on_load(model)
                except BaseException:
                    model.onnx.close()
                    raise
            return model

        async def one(version: int) -> ModelVersion:
            return await asyncio.to_thread(load, version)

        results = await asyncio.gather(*(one(v) for v in wanted), return_exceptions=True)
        for version, result in zip(wanted, results, strict=True):
            if isinstance(result, ModelVersion):
                result.start()
                entry.versions[version] = result
                log.info("model %r version %d ready on %s", name, version, result.device)
            elif isinstance(result, OrtserveError):
                entry.failed_versions[version] = str(result)
                log.error("model %r version %d failed to load: %s", name, version, result)
            else:
                entry.failed_versions[version] = f"unexpected error: {result!r}"
                log.error("model %r version %d failed to load", name, version, exc_info=result)
        if not entry.versions:
            raise ModelLoadError(
                f"model {name!r}: no version could be loaded: "
                + "; ".join(f"version {v}: {why}" for v, why in sorted(entry.failed_versions.items()))
            )
        entry.default = default_version(sorted(entry.versions))
        entry.state, entry.reason = READY, ""

    async def _close_versions(self, model: _Model, timeout_s: float | None = None) -> None:
        versions = list(model.versions.values())
        model.versions = {}
        model.default = None
        await asyncio.gather(*(v.close(timeout_s) for v in versions))
