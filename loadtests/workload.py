"""What a Locust process sends: its ortserve client, the models of the run and their requests.

Plain Python over the client SDK (no Locust): under Locust, `time.sleep` and the gRPC calls yield
to the other greenlets (gevent's monkey-patching and `init_gevent`); in the tests they block.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from loadtests import inputs
from loadtests.targets import Targets
from ortserve_client import InferenceClient, TlsConfig


class SetupError(RuntimeError):
    """The run cannot start; the message says why."""


@dataclass
class ModelLoad:
    """One model of the run: its weight and its pool of requests, cycled."""

    name: str
    weight: int
    requests: list[inputs.Inputs]
    cycle: Iterator[inputs.Inputs] = field(init=False)

    def __post_init__(self) -> None:
        self.cycle = itertools.cycle(self.requests)


def make_client(options: Any, target: str, server_name: str | None = None) -> InferenceClient:
    """A process's SDK client. No retries: each attempt's outcome is what is measured.

    `server_name`: the name to check a TLS certificate against when `target` is one pod's address.
    """
    tls = TlsConfig.from_files(ca=options.tls_ca, server_name=server_name) if options.tls_ca else None
    return InferenceClient(
        target, tls=tls, token=options.token or None, retry=None, default_timeout_s=options.request_timeout_s
    )


def wait_ready(client: InferenceClient, host: str, wait_s: float) -> None:
    """Return once the server reports ready; SetupError after `wait_s`."""
    deadline = time.monotonic() + wait_s
    last: Exception | None = None
    while True:
        try:
            if client.is_server_ready(timeout=2):
                return
        except Exception as exc:  # noqa: BLE001 - any failure means "not yet"; the last one is reported
            last = exc
        if time.monotonic() >= deadline:
            raise SetupError(f"the server at {host} is not ready after {wait_s:g} s" + (f": {last}" if last else ""))
        time.sleep(0.5)


def choose_models(spec: str, targets: Targets | None, client: InferenceClient) -> list[inputs.ModelChoice]:
    """`--models`, else the models the targets file names, else every model the server has ready."""
    chosen = inputs.parse_models(spec)
    if not chosen and targets is not None and targets.models:
        chosen = [inputs.ModelChoice(name) for name in targets.models]
    if not chosen:
        ready = sorted({m.name for m in client.repository_index(ready_only=True)})
        chosen = [inputs.ModelChoice(name) for name in ready]
    if not chosen:
        raise SetupError("the server has no ready model to load")
    return chosen


def build_loads(options: Any, client: InferenceClient, chosen: list[inputs.ModelChoice]) -> list[ModelLoad]:
    """Each chosen model's requests: from its .npz file (--inputs-npz), else generated from its metadata."""
    files = inputs.parse_npz_files(options.inputs_npz, [c.name for c in chosen])
    loads = []
    for choice in chosen:
        try:
            metadata = client.model_metadata(choice.name)
        except Exception as exc:
            raise SetupError(f"model {choice.name!r}: cannot read its metadata from the server: {exc}") from None
        if choice.name in files:
            requests = inputs.from_npz(metadata, files[choice.name], batch_size=options.batch_size)
        else:
            requests = inputs.generate(
                metadata,
                batch_size=options.batch_size,
                dim_size=options.dim_size,
                seed=options.seed,
                count=options.input_pool,
            )
        loads.append(ModelLoad(choice.name, choice.weight, requests))
    return loads
