"""ModelRegistry: which models the repository holds, their versions, states and routing.

A model directory is `<root>/<model>/` with version subdirectories holding `model.onnx`
(or the config's `default_model_filename`) and an optional `config.pbtxt`. A model
that fails to load is kept in the index as UNAVAILABLE with its reason; the other models
keep serving. Loading (session creation, warm-up) runs in worker threads so the event
loop keeps answering health checks meanwhile.

(Re)loading a model, in steps (`load`), under the model's own lock:

1. Read the config (config.pbtxt, or the one sent with the load request) and the version
   directories (or the files sent with the request, staged in a temporary directory); parse
   the version weights. A failure here changes nothing: the versions serving keep serving.
2. For each version the policy selects: a version already serving with the same files and the
   same config (routing fields aside) is kept as it is, with its statistics and cache; any
   other is loaded and warmed up in a worker thread (with `require_validation`, only if a
   passing validation record vouches for its model file). A version whose reload fails keeps
   its previous incarnation serving, with the failure as its reason in the index.
3. Swap: one assignment puts the new set of versions and its router in place, so a request
   sees either the old set or the new one, never a mix. Versions no longer served then close:
   their queued and running requests finish first. If a version failed, the load still reports
   it as failed (ModelLoadError naming each version), after the versions that did load took over.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ortserve.errors import (
    ModelLoadError,
    ModelNotFoundError,
    ModelNotReadyError,
    OrtserveError,
)
from ortserve.observability import ModelStats
from ortserve.repository.cache import ResponseCache
from ortserve.repository.files import Fingerprint, stage_upload, version_fingerprint
from ortserve.repository.model import ModelVersion
from ortserve.repository.model_config import model_filename, read_config
from ortserve.repository.routing import WEIGHTS_PARAMETER, VersionRouter, config_weights, effective_routing
from ortserve.repository.validation import check_record, record_passed
from ortserve.repository.versions import default_version, list_versions, select_versions
from ortserve.runtime import RuntimeOptions
from ortserve_client.proto import model_config_pb2 as mc

log = logging.getLogger("ortserve.repository")

READY, LOADING, UNAVAILABLE, UNLOADING = "READY", "LOADING", "UNAVAILABLE", "UNLOADING"

_Key = tuple[bytes, Fingerprint]
"""What a loaded version depends on: its config (routing fields aside) and its files."""


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
    router: VersionRouter[ModelVersion] | None = None
    """Set only when the config weights the versions; requests naming no version use it."""
    keys: dict[int, _Key] = field(default_factory=dict)
    notes: dict[int, str] = field(default_factory=dict)
    """Why a serving version is not what the last load asked for (its reload failed)."""
    model_notes: list[str] = field(default_factory=list)
    """Notes about the whole model (ignored weights, a failed reload), shown on its READY rows."""


@dataclass(frozen=True, slots=True)
class _Source:
    """A model's config and versions as read in step 1 of a load."""

    config: mc.ModelConfig
    model_dir: Path
    wanted: list[int]
    weights: dict[int, float]
    keys: dict[int, _Key]
    waiting: tuple[int, ...] = ()
    """Versions a `latest` policy passed over: no passing validation record yet (require_validation)."""


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
        cache: ResponseCache | None = None,
        require_validation: bool = False,
    ) -> None:
        """`on_load` is called in the loading thread with each version once loaded and warmed
        up, before it serves (the app attaches tracing and drift monitoring there). `cache` is the
        response cache of the models that enable it; `require_validation` promotes only versions
        with a passing validation record (repository/validation.py)."""
        self.root = root
        self._options = options
        self._default_max_batch_size = default_max_batch_size
        self._default_latency_target_ms = default_latency_target_ms
        self._on_load = on_load
        self.cache = cache
        self.require_validation = require_validation
        self._models: dict[str, _Model] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    def discover(self) -> list[str]:
        """Names of the model directories in the repository, sorted."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))

    async def load_all(self, names: list[str] | None = None) -> None:
        """Load every model in the repository (or those named); failures are recorded, not raised."""
        names = self.discover() if names is None else names
        for name in names:
            self._models.setdefault(name, _Model(name))
        results = await asyncio.gather(*(self.load(name) for name in names), return_exceptions=True)
        for name, result in zip(names, results, strict=True):
            if isinstance(result, BaseException) and not isinstance(result, OrtserveError):
                log.error("model %r: unexpected load failure", name, exc_info=result)
            elif isinstance(result, ModelNotFoundError):
                self._models.pop(name, None)
                log.error("%s", result)

    async def load(
        self, name: str, config: mc.ModelConfig | None = None, files: Mapping[str, bytes] | None = None
    ) -> None:
        """(Re)load a model (the steps in the module docstring).

        `config` replaces config.pbtxt for this load; `files` (relative path -> bytes, e.g.
        "1/model.onnx") replace the model directory for this load and need `config`, as in
        Triton. Raises ModelNotFoundError if the directory does not exist and ModelLoadError if
        no version could be loaded; a model already serving keeps its old versions then.
        """
        # The name comes from a client and is joined to a path: only a directory that discover()
        # would list may load, never "", "..", "../elsewhere" or "a/b" (a model outside the repository).
        plain = bool(name) and not name.startswith(".") and not any(c in name for c in "/\\\0")
        model_dir = self.root / name
        if not plain or (not files and not model_dir.is_dir()):
            raise ModelNotFoundError(
                f"model {name!r} is not in the repository {self.root}: a model name is the name of a "
                "directory directly inside it"
            )
        if files and config is None:
            raise ModelLoadError(f"model {name!r}: files sent with a load request need a config with them")
        async with self._lock(name):
            old = self._models.get(name)
            entry = _Model(name)
            if old is None or not old.versions:
                self._models[name] = entry
            staging: Path | None = None
            try:
                if files:
                    staging = await asyncio.to_thread(stage_upload, name, files)
                source_dir = model_dir if staging is None else staging / name
                source = await asyncio.to_thread(self._read_source, name, source_dir, config)
                failures = await self._load_versions(entry, source, old)
            except ModelLoadError as exc:
                entry.state, entry.reason = UNAVAILABLE, str(exc)
                log.error("model %r failed to load: %s", name, exc)
                if old is not None and old.versions:
                    old.model_notes = [f"the last load failed, the versions loaded before keep serving: {exc}"]
                    raise ModelLoadError(f"{exc}; the previously loaded versions keep serving") from exc
                self._models[name] = entry
                raise
            except BaseException:
                if old is not None:
                    self._models[name] = old
                else:
                    self._models.pop(name, None)
                raise
            finally:
                if staging is not None:
                    await asyncio.to_thread(shutil.rmtree, staging, True)
            self._models[name] = entry  # the atomic switch
            if old is not None:
                kept = {id(v) for v in entry.versions.values()}
                await self._close_versions([v for v in old.versions.values() if id(v) not in kept])
            if failures:  # the versions that loaded serve; the request still learns what did not
                raise ModelLoadError(f"model {name!r}: " + "; ".join(failures))

    async def unload(self, name: str) -> None:
        """Stop serving a model: refuse new requests, finish queued ones, free the sessions."""
        async with self._lock(name):
            model = self._models.get(name)
            if model is None:
                if name in self.discover():
                    return  # in the repository but not loaded: already unloaded
                raise ModelNotFoundError(f"model {name!r} is not loaded and not in the repository")
            model.state, model.reason, model.router = UNLOADING, "unloading", None
            versions = list(model.versions.values())
            model.versions, model.default = {}, None
            await self._close_versions(versions)
            if name in self.discover():
                self._models[name] = _Model(name, UNAVAILABLE, "unloaded")
            else:  # removed from the repository (or loaded from uploaded files): forget it
                del self._models[name]

    async def close(self, timeout_s: float | None = None) -> None:
        """Unload everything (server shutdown)."""
        versions = [v for m in self._models.values() for v in m.versions.values()]
        for model in self._models.values():
            model.versions, model.default, model.router = {}, None, None
        await self._close_versions(versions, timeout_s)

    def route(self, name: str, version: str = "") -> ModelVersion:
        """The version to infer with: the one named, else a weighted choice, else the policy's default."""
        if not version:
            model = self._models.get(name)
            if model is not None:
                router = model.router
                if router is not None:
                    return router.choose()
                default = model.default
                if default is not None and model.state == READY:  # get()'s answer, without its second lookup
                    return model.versions[default]
        return self.get(name, version)

    def get(self, name: str, version: str = "") -> ModelVersion:
        """The ready model version named, or the policy's default one (metadata, config, statistics)."""
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
                    notes = [model.notes[number]] if number in model.notes else []
                    rows.append(IndexEntry(name, str(number), READY, "; ".join(notes + model.model_notes)))
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

    def _read_source(self, name: str, model_dir: Path, override: mc.ModelConfig | None) -> _Source:
        """Step 1 (blocking): the config, the versions it selects, their weights and keys."""
        if override is None:
            config = read_config(model_dir)
        else:
            if override.name and override.name != name:
                raise ModelLoadError(
                    f"model '{name}': the config sent with the load request says name \"{override.name}\"; "
                    f"expected '{name}' or none"
                )
            config = override
        model_filename(config, name)
        weights = config_weights(config)
        available = list_versions(model_dir)
        waiting: list[int] = []
        if self.require_validation and config.version_policy.WhichOneof("policy_choice") in (None, "latest"):
            # The newest *validated* versions: one still waiting for its record is not published yet.
            # (A record is checked in full, bytes included, when its version loads; `all` and `specific`
            # name versions outright, so an unvalidated one among them fails its load instead.)
            waiting = [v for v in available if not record_passed(model_dir / str(v))]
            available = [v for v in available if v not in waiting]
            if waiting and not available:
                raise ModelLoadError(
                    f"model '{name}': no version has a passing validation record (require_validation); "
                    f"versions {waiting} wait for `ortserve validate`"
                )
        wanted = select_versions(config.version_policy, available, model_name=name)
        serving = _serving_config(config).SerializeToString(deterministic=True)
        keys = {v: (serving, version_fingerprint(model_dir / str(v))) for v in wanted}
        return _Source(config, model_dir, wanted, weights, keys, tuple(v for v in waiting if v > max(wanted)))

    def _load_one(self, name: str, version: int, source: _Source) -> ModelVersion:
        """Step 2 for one version (blocking): validation gate, sessions, warm-up, instrumentation."""
        path = source.model_dir / str(version) / model_filename(source.config, name)
        if self.require_validation:
            try:
                check_record(name, version, path)
            except ModelLoadError:
                if path.is_file():
                    raise
                # A missing model file is the plainer reason; let the loader report it.
        model = ModelVersion.load_blocking(
            name,
            version,
            source.config,
            path,
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

    async def _load_versions(self, entry: _Model, source: _Source, old: _Model | None) -> list[str]:
        """Steps 2 and 3 up to the swap; returns what failed among versions that did not stop the load."""
        name = entry.name
        failures: list[str] = []
        previous = old.versions if old is not None else {}
        reuse = {
            v: previous[v]
            for v in source.wanted
            if v in previous and old is not None and old.keys.get(v) == source.keys[v]
        }
        fresh = [v for v in source.wanted if v not in reuse]
        results = await asyncio.gather(
            *(asyncio.to_thread(self._load_one, name, v, source) for v in fresh), return_exceptions=True
        )
        for version, model in reuse.items():
            model.config = _with_routing(model.config, source.config)
            entry.versions[version], entry.keys[version] = model, source.keys[version]
        enable_cache = source.config.response_cache.enable
        if enable_cache and self.cache is None:
            log.warning("model %r: response_cache is enabled but the server's response cache is off "
                        "(response_cache_bytes 0); answers are not cached", name)
        for version, result in zip(fresh, results, strict=True):
            if isinstance(result, ModelVersion):
                if enable_cache and self.cache is not None:
                    result.cache = self.cache.view()
                result.start()
                entry.versions[version], entry.keys[version] = result, source.keys[version]
                log.info("model %r version %d ready on %s", name, version, result.device)
                continue
            if isinstance(result, OrtserveError):
                reason = str(result)
                log.error("model %r version %d failed to load: %s", name, version, result)
            else:
                reason = f"unexpected error: {result!r}"
                log.error("model %r version %d failed to load", name, version, exc_info=result)
            if old is not None and version in previous:
                kept = previous[version]
                kept.config = _with_routing(kept.config, source.config)
                entry.versions[version], entry.keys[version] = kept, old.keys[version]
                entry.notes[version] = f"the reload failed, the version loaded before keeps serving: {reason}"
                failures.append(
                    f"version {version} failed to reload (the version loaded before keeps serving): {reason}"
                )
            else:
                entry.failed_versions[version] = reason
                failures.append(f"version {version} failed to load: {reason}")
        if not entry.versions:
            raise ModelLoadError(
                f"model {name!r}: no version could be loaded: "
                + "; ".join(f"version {v}: {why}" for v, why in sorted(entry.failed_versions.items()))
            )
        entry.default = default_version(sorted(entry.versions))
        routing = effective_routing(source.weights, sorted(entry.versions))
        for note in routing.notes:
            log.warning("model %r: %s", name, note)
        entry.model_notes = list(routing.notes)
        if source.waiting:
            entry.model_notes.append(
                f"version(s) {', '.join(map(str, source.waiting))} not validated yet (require_validation): "
                "the newest validated versions serve"
            )
            log.warning("model %r: %s", name, entry.model_notes[-1])
        if routing.weights and set(routing.weights) != {entry.default}:
            entry.router = VersionRouter(entry.versions, routing.weights)
            log.info("model %r: requests naming no version go to %s", name, ", ".join(
                f"version {v} ({entry.router.share(v):.0%})" for v in sorted(routing.weights)))
        entry.state, entry.reason = READY, ""
        return failures

    async def _close_versions(self, versions: list[ModelVersion], timeout_s: float | None = None) -> None:
        await asyncio.gather(*(v.close(timeout_s) for v in versions))


def _serving_config(config: mc.ModelConfig) -> mc.ModelConfig:
    """The config without what only routes requests (version policy, weights)."""
    serving = mc.ModelConfig()
    serving.CopyFrom(config)
    serving.ClearField("version_policy")
    if WEIGHTS_PARAMETER in serving.parameters:
        del serving.parameters[WEIGHTS_PARAMETER]
    return serving


def _with_routing(completed: mc.ModelConfig, source: mc.ModelConfig) -> mc.ModelConfig:
    """A kept version's completed config with the routing fields of the new source config."""
    updated = mc.ModelConfig()
    updated.CopyFrom(completed)
    if source.HasField("version_policy"):
        updated.version_policy.CopyFrom(source.version_policy)
    else:
        updated.ClearField("version_policy")
        updated.version_policy.latest.num_versions = 1
    if WEIGHTS_PARAMETER in updated.parameters:
        del updated.parameters[WEIGHTS_PARAMETER]
    if WEIGHTS_PARAMETER in source.parameters:
        updated.parameters[WEIGHTS_PARAMETER].CopyFrom(source.parameters[WEIGHTS_PARAMETER])
    return updated
