"""Model control: which models load when, as Triton's `--model-control-mode` decides.

- `none`: every model of the repository loads at start. The load/unload requests still work
  (ortserve has always offered them; Triton refuses them in this mode).
- `poll`: every model loads at start, then the repository is scanned every
  `repository_poll_seconds`: a new model loads, a changed one (config.pbtxt, a version added,
  removed or rewritten, a validation record) reloads, a removed one unloads. The registry's
  reload keeps unchanged versions serving untouched. Load/unload requests are refused, as in
  Triton: the repository on disk is the truth.
- `explicit`: only the models named by `load_model` load at start ("*": all); the load and
  unload requests do the rest, and a load request may carry Triton's parameters:
  `config` (a ModelConfig as JSON, replacing config.pbtxt for this load) and
  `file:<version>/<path>` (bytes replacing the model directory for this load; needs `config`).

The poll scans the disk with `stat` only, in a worker thread: the event loop never waits on it.
Publish a version by writing it elsewhere and renaming it into place; a half-copied version
fails its load, keeps the previous versions serving and is retried when its files change again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from google.protobuf import json_format

from ortserve.errors import InvalidInputError, OrtserveError, UnavailableError
from ortserve.repository.files import Fingerprint, check_upload_path, model_fingerprint
from ortserve.repository.registry import ModelRegistry
from ortserve_client.proto import model_config_pb2 as mc

log = logging.getLogger("ortserve.repository")

NONE, POLL, EXPLICIT = "none", "poll", "explicit"
MODES: Final = (NONE, POLL, EXPLICIT)

Snapshot = dict[str, Fingerprint]
"""Model name -> fingerprint of its directory."""

ParamValue = bool | int | float | str | bytes


@dataclass(frozen=True, slots=True)
class LoadRequest:
    """The parameters of a RepositoryModelLoad request, checked."""

    config: mc.ModelConfig | None = None
    files: dict[str, bytes] = field(default_factory=dict)


def parse_load_parameters(name: str, parameters: Mapping[str, ParamValue]) -> LoadRequest:
    """Triton's load parameters: "config" (JSON ModelConfig) and "file:<version>/<path>" (bytes)."""
    config: mc.ModelConfig | None = None
    files: dict[str, bytes] = {}
    for key, value in sorted(parameters.items()):
        if key == "config":
            if not isinstance(value, str):
                raise InvalidInputError(f"load of model {name!r}: parameter 'config' must be a string (JSON)")
            config = mc.ModelConfig()
            try:
                json_format.Parse(value, config)
            except json_format.ParseError as exc:
                raise InvalidInputError(
                    f"load of model {name!r}: parameter 'config' is not a ModelConfig in JSON: {exc}"
                ) from None
        elif key.startswith("file:"):
            if not isinstance(value, bytes):
                raise InvalidInputError(f"load of model {name!r}: parameter {key!r} must be bytes (bytes_param)")
            check_upload_path(key[len("file:"):])
            files[key[len("file:"):]] = value
        else:
            raise InvalidInputError(
                f"load of model {name!r}: unknown parameter {key!r}; expected 'config' (a ModelConfig as JSON) "
                "or 'file:<version>/<path>' (the file's bytes)"
            )
    if files and config is None:
        raise InvalidInputError(
            f"load of model {name!r}: 'file:' parameters replace the model directory and need a 'config' "
            "parameter with them"
        )
    return LoadRequest(config, files)


def scan_repository(root: Path) -> Snapshot:
    """Every model directory of the repository and its fingerprint (blocking: stat calls only)."""
    if not root.is_dir():
        return {}
    return {
        entry.name: model_fingerprint(entry)
        for entry in sorted(root.iterdir())
        if entry.is_dir() and not entry.name.startswith(".")
    }


class ModelControl:
    """Loads models at start and afterwards, as the control mode says (module docstring)."""

    def __init__(
        self,
        registry: ModelRegistry,
        mode: str = NONE,
        *,
        poll_seconds: float = 15.0,
        startup_models: Sequence[str] = (),
        scan: Callable[[Path], Snapshot] = scan_repository,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"model control mode: expected one of {', '.join(MODES)}, got {mode!r}")
        self.registry = registry
        self.mode = mode
        self.poll_seconds = poll_seconds
        self.startup_models = [n.strip() for n in startup_models if n.strip()]
        self._scan = scan
        self._snapshot: Snapshot = {}
        self._poller: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """The initial load (failures are recorded per model), then the poller in poll mode."""
        if self.mode == EXPLICIT:
            names = self.registry.discover() if "*" in self.startup_models else self.startup_models
            await self.registry.load_all(list(dict.fromkeys(names)))
            return
        if self.startup_models:
            log.warning("load_model %s ignored: model control mode %r loads every model",
                        ",".join(self.startup_models), self.mode)
        if self.mode == POLL:
            # Before the load: a change made while models load is seen by the first poll.
            self._snapshot = await asyncio.to_thread(self._scan, self.registry.root)
        await self.registry.load_all()
        if self.mode == POLL:
            self._poller = asyncio.get_running_loop().create_task(self._poll_forever(), name="repository-poller")

    async def close(self) -> None:
        """Stop polling (a load in progress is cancelled with it)."""
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
            self._poller = None

    async def load(self, name: str, parameters: Mapping[str, ParamValue]) -> None:
        """A RepositoryModelLoad request."""
        self._check_requests_allowed("load")
        request = parse_load_parameters(name, parameters)
        await self.registry.load(name, request.config, request.files or None)

    async def unload(self, name: str) -> None:
        """A RepositoryModelUnload request."""
        self._check_requests_allowed("unload")
        await self.registry.unload(name)

    async def poll_once(self) -> list[tuple[str, str]]:
        """Scan once and act on the differences; returns the (action, model) pairs taken."""
        current = await asyncio.to_thread(self._scan, self.registry.root)
        previous, self._snapshot = self._snapshot, current
        actions = [("load", name) for name in sorted(current) if previous.get(name) != current[name]]
        actions += [("unload", name) for name in sorted(set(previous) - set(current))]
        if actions:
            await asyncio.gather(*(self._act(action, name) for action, name in actions))
        return actions

    def _check_requests_allowed(self, what: str) -> None:
        if self.mode == POLL:
            raise UnavailableError(
                f"model {what} requests are refused in model control mode 'poll': the server follows the "
                "repository on disk; change the files there (or run with model_control_mode explicit)"
            )

    async def _act(self, action: str, name: str) -> None:
        log.info("repository poll: %s model %r", action, name)
        try:
            if action == "load":
                await self.registry.load(name)
            else:
                await self.registry.unload(name)
        except OrtserveError as exc:
            log.error("repository poll: %s of model %r failed: %s", action, name, exc)

    async def _poll_forever(self) -> None:
        while True:
            await asyncio.sleep(self.poll_seconds)
            try:
                await self.poll_once()
            except Exception:  # noqa: BLE001 - the poller must outlive one bad scan
                log.exception("repository poll failed; polling again in %.1f s", self.poll_seconds)
