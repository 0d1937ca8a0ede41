"""Every method of InferenceClient and AsyncInferenceClient against a real server."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import numpy as np
import pytest

from ortserve_client import (
    AsyncInferenceClient,
    InferenceClient,
    InferenceServerError,
    InferRequest,
    InvalidInputError,
    ModelNotFoundError,
    ServerUnavailableError,
    TensorMetadata,
)
from ortserve_client.proto import grpc_service_pb2 as pb
from tests.client.conftest import IDENTITY
from tests.harness import RunningServer

T = TypeVar("T")
A = np.arange(8, dtype=np.float32).reshape(2, 4)
B = np.ones((2, 4), np.float32)


def run(srv: RunningServer, body: Callable[[AsyncInferenceClient], Awaitable[T]], **kwargs: Any) -> T:
    """Run `body` with a fresh AsyncInferenceClient on a loop of this thread."""

    async def main() -> T:
        async with AsyncInferenceClient(srv.grpc_target, **kwargs) as client:
            return await body(client)

    return asyncio.run(main())


# -- health, metadata, config, statistics ---------------------------------------------------


def test_health(client: InferenceClient) -> None:
    assert client.is_server_live() is True
    assert client.is_server_ready() is True
    assert client.is_model_ready("add_sub") is True
    assert client.is_model_ready("add_sub", 1) is True
    assert client.is_model_ready("add_sub", "2") is False
    assert client.is_model_ready("no_such_model") is False


def test_server_and_model_metadata(client: InferenceClient) -> None:
    server = client.server_metadata()
    assert server.name == "ortserve" and "model_repository" in server.extensions
    meta = client.model_metadata("add_sub")
    assert meta.name == "add_sub" and meta.versions == ("1",) and meta.platform == "onnxruntime_onnx"
    assert meta.inputs == (TensorMetadata("INPUT0", "FP32", (-1, 4)), TensorMetadata("INPUT1", "FP32", (-1, 4)))
    assert [o.name for o in meta.outputs] == ["OUTPUT0", "OUTPUT1"]
    with pytest.raises(ModelNotFoundError) as info:
        client.model_metadata("no_such_model")
    assert "no_such_model" in info.value.details


def test_model_config_and_statistics(client: InferenceClient) -> None:
    config = client.model_config("add_sub")
    assert config.name == "add_sub" and config.max_batch_size == 32
    client.infer("add_sub", {"INPUT0": A, "INPUT1": B})
    (stats,) = client.model_statistics("add_sub")
    assert stats.name == "add_sub" and stats.version == "1" and stats.inference_count >= 2
    assert isinstance(stats, pb.ModelStatistics)
    everything = client.model_statistics()
    assert {s.name for s in everything} >= {"add_sub", "sleeper"}


def test_repository_index_load_and_unload(client: InferenceClient) -> None:
    rows = {(m.name, m.state) for m in client.repository_index()}
    assert ("unloaded", "READY") in rows
    client.unload_model("unloaded")
    assert client.is_model_ready("unloaded") is False
    assert ("unloaded", "READY") not in {(m.name, m.state) for m in client.repository_index(ready_only=True)}
    with pytest.raises(ServerUnavailableError):
        client.infer("unloaded", {"x": B})
    client.load_model("unloaded")
    assert client.is_model_ready("unloaded") is True
    np.testing.assert_array_equal(client.infer("unloaded", {"x": B})["y"], B)
    client.load_model("unloaded", config="{}")  # a config override: an empty config, auto-completed
    assert client.is_model_ready("unloaded") is True
    with pytest.raises(InvalidInputError, match="not a ModelConfig in JSON"):
        client.load_model("unloaded", config="{not json")
    with pytest.raises(ModelNotFoundError):
        client.load_model("no_such_model")


# -- infer ------------------------------------------------------------------------------------


def test_infer_with_every_option(client: InferenceClient) -> None:
    result = client.infer(
        "add_sub",
        {"INPUT0": A, "INPUT1": B},
        outputs=["OUTPUT1"],
        version=1,
        timeout=10,
        priority=1,
        request_id="req-7",
        parameters={"flag": True, "n": 3, "x": 0.5, "s": "text"},
    )
    assert (result.model_name, result.model_version, result.id) == ("add_sub", "1", "req-7")
    assert list(result) == ["OUTPUT1"] and len(result) == 1
    np.testing.assert_array_equal(result["OUTPUT1"], A - B)
    assert result.as_numpy("OUTPUT0") is None
    assert result.response.id == "req-7"


def test_infer_errors_map_to_their_classes(client: InferenceClient) -> None:
    with pytest.raises(ModelNotFoundError) as found:
        client.infer("no_such_model", {"x": A})
    assert found.value.code is not None and found.value.code.name == "NOT_FOUND"
    with pytest.raises(InvalidInputError) as bad:
        client.infer("add_sub", {"INPUT0": A.astype(np.float64), "INPUT1": B})
    error = bad.value
    assert "INPUT0" in error.details and "FP32" in error.details
    assert error.__cause__ is not None and error.__cause__.code() == error.code  # type: ignore[attr-defined]
    with pytest.raises(TypeError, match="complex"):
        client.infer("add_sub", {"INPUT0": A.astype(np.complex64), "INPUT1": B})


def test_dns_target_with_round_robin(srv: RunningServer) -> None:
    port = srv.grpc_target.rsplit(":", 1)[1]
    with InferenceClient(f"dns:///127.0.0.1:{port}") as dns_client:
        assert dns_client.is_server_ready()
        np.testing.assert_array_equal(dns_client.infer("add_sub", {"INPUT0": A, "INPUT1": B})["OUTPUT0"], A + B)
    with InferenceClient(f"grpc://127.0.0.1:{port}", load_balancing="pick_first") as plain:
        assert plain.is_server_live()


def test_gzip_compression(srv: RunningServer) -> None:
    big = np.zeros((4, 256, 256), np.float32)
    with InferenceClient(srv.grpc_target, compression="gzip") as gz:
        np.testing.assert_array_equal(gz.infer(IDENTITY["FP32"], {"x": big})["y"], big)


# -- streams ----------------------------------------------------------------------------------


def test_infer_stream(client: InferenceClient) -> None:
    requests = [
        InferRequest("add_sub", {"INPUT0": A * i, "INPUT1": B}, request_id=f"r{i}") for i in range(5)
    ] + [InferRequest("no_such_model", {"x": A}), InferRequest("add_sub", {"INPUT0": A, "INPUT1": B})]
    results = {r.id: r for r in client.infer_stream(requests)}
    assert set(results) == {"r0", "r1", "r2", "r3", "r4", "5", "6"}
    for i in range(5):
        np.testing.assert_array_equal(results[f"r{i}"].raise_for_error()["OUTPUT0"], A * i + B)
    failed = results["5"]
    assert failed.error is not None and "no_such_model" in failed.error and len(failed) == 0
    with pytest.raises(InferenceServerError, match="no_such_model"):
        failed.raise_for_error()


def test_infer_stream_surfaces_a_bad_request_iterator(client: InferenceClient) -> None:
    def requests() -> Any:
        yield InferRequest("add_sub", {"INPUT0": A, "INPUT1": B})
        yield InferRequest("add_sub", {"INPUT0": A.astype(np.complex64), "INPUT1": B})

    with pytest.raises(TypeError, match="complex"):
        list(client.infer_stream(requests()))


def test_async_infer_stream(srv: RunningServer) -> None:
    async def body(client: AsyncInferenceClient) -> dict[str, Any]:
        async def requests() -> Any:
            for i in range(4):
                yield InferRequest("add_sub", {"INPUT0": A, "INPUT1": B * i})

        return {r.id: r async for r in client.infer_stream(requests())}

    results = run(srv, body)
    assert sorted(results) == ["0", "1", "2", "3"]
    np.testing.assert_array_equal(results["3"]["OUTPUT1"], A - 3 * B)


# -- infer_many -------------------------------------------------------------------------------


def test_infer_many_keeps_the_order(client: InferenceClient) -> None:
    x = np.random.default_rng(3).standard_normal((101, 4)).astype(np.float32)
    joined = client.infer_many("add_sub", {"INPUT0": x, "INPUT1": -x}, batch_size=7, concurrency=5)
    np.testing.assert_array_equal(joined["OUTPUT0"], np.zeros_like(x))
    np.testing.assert_array_equal(joined["OUTPUT1"], 2 * x)
    # One array for a one-input model; batch_size from the model's max_batch_size (32).
    cube = np.arange(70 * 2 * 3, dtype=np.int32).reshape(70, 2, 3)
    np.testing.assert_array_equal(client.infer_many(IDENTITY["INT32"], cube)["y"], cube)
    with pytest.raises(ValueError, match="exactly one input"):
        client.infer_many("add_sub", x)


def test_infer_many_fails_on_the_first_error(client: InferenceClient) -> None:
    x = np.ones((10, 4), np.float32)
    with pytest.raises(InvalidInputError):
        client.infer_many("add_sub", {"INPUT0": x, "INPUT1": x.astype(np.float64)}, batch_size=2)


def test_async_methods(srv: RunningServer) -> None:
    async def body(client: AsyncInferenceClient) -> None:
        assert await client.is_server_live() and await client.is_server_ready()
        assert await client.is_model_ready("add_sub") and not await client.is_model_ready("nope")
        assert (await client.server_metadata()).name == "ortserve"
        assert (await client.model_metadata("add_sub")).inputs[0].name == "INPUT0"
        assert (await client.model_config("add_sub")).max_batch_size == 32
        assert (await client.model_statistics("add_sub"))[0].name == "add_sub"
        assert "flaky" in {m.name for m in await client.repository_index()}
        result = await client.infer("add_sub", {"INPUT0": A, "INPUT1": B}, request_id="a1", outputs=["OUTPUT0"])
        assert result.id == "a1" and list(result) == ["OUTPUT0"]
        np.testing.assert_array_equal(result["OUTPUT0"], A + B)
        x = np.arange(50 * 4, dtype=np.float32).reshape(50, 4)
        joined = await client.infer_many("add_sub", {"INPUT0": x, "INPUT1": x}, batch_size=3, concurrency=4)
        np.testing.assert_array_equal(joined["OUTPUT0"], 2 * x)
        with pytest.raises(ModelNotFoundError):
            await client.infer("nope", {"x": A})
        with pytest.raises(InvalidInputError):
            await client.infer_many("add_sub", {"INPUT0": x, "INPUT1": x.astype(np.int64)}, batch_size=5)
        await client.unload_model("unloaded")
        await client.load_model("unloaded")
        assert await client.is_model_ready("unloaded")

    run(srv, body)


def test_leaving_a_stream_early_cancels_it(client: InferenceClient) -> None:
    requests = (InferRequest("add_sub", {"INPUT0": A, "INPUT1": B}) for _ in range(1000))
    stream = client.infer_stream(requests)
    first = next(stream)
    assert first.error is None and len(first) == 2
    stream.close()  # what leaving a for loop early does
    assert client.infer("add_sub", {"INPUT0": A, "INPUT1": B}).model_name == "add_sub"
