"""One real server for the client tests, with the models they need, and a client on it.

Tests that change a model's state (unload, load) use models no other test touches.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ortserve_client import InferenceClient
from tests import models
from tests.harness import RunningServer, serve_in_thread
from tests.wire import SleeperClock, sleeper

# KServe datatype -> name of its identity model (dims: batch x a x b, all variable).
IDENTITY = {datatype: f"id_{datatype.lower()}" for datatype in models.ONNX_TYPES}


@pytest.fixture(scope="package")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    repo = tmp_path_factory.mktemp("client")
    for datatype, name in IDENTITY.items():
        models.save(models.identity(datatype, dims=("batch", "a", "b")), repo, name)
    models.save(models.add_sub(), repo, "add_sub")
    models.save(models.add_sub(), repo, "counted")  # only the invalid-input retry test infers on it
    models.save(sleeper(), repo, "sleeper")
    models.save(sleeper(), repo, "sleeper_cancel")  # only the cancellation test infers on it
    for name in ("flaky", "flaky_sync", "breaker", "unloaded"):  # tests unload and load these
        models.save(models.identity("FP32", dims=("batch", 4)), repo, name)
    with serve_in_thread(repo, http_port=-1) as running:
        yield running


@pytest.fixture(scope="package")
def client(srv: RunningServer) -> Iterator[InferenceClient]:
    with InferenceClient(srv.grpc_target) as c:
        yield c


@pytest.fixture(scope="package")
def clock(srv: RunningServer) -> SleeperClock:
    return SleeperClock(srv.stub)
