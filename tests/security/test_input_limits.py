"""Hostile input: element limits (RESOURCE_EXHAUSTED), overflowing and over-deep shapes, NaN/Inf where
a model refuses them, and the global in-flight bound; in the codec and through a real server."""

from __future__ import annotations

import struct
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from ortserve.errors import InvalidInputError, ResourceExhaustedError
from ortserve.protocol.codec import DecodeLimits, decode_request
from ortserve_client.proto import grpc_service_pb2 as pb
from tests import models
from tests.harness import serve_in_thread
from tests.wire import (
    Busy,
    SleeperClock,
    infer_request,
    outputs_of,
    rpc_error,
    sleep_request,
    sleeper,
    while_busy,
    write_config,
)

LIMITS = DecodeLimits(max_tensor_elements=100)


def raw(datatype: str, shape: list[int], data: bytes) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="m")
    request.inputs.add(name="x", datatype=datatype, shape=shape)
    request.raw_input_contents.append(data)
    return request


@pytest.mark.parametrize(
    "request_",
    [
        raw("FP32", [101], b"\0" * 404),
        raw("INT8", [10, 11], b"\0" * 110),
        raw("BYTES", [101], struct.pack("<I", 0) * 101),
    ],
)
def test_a_well_formed_tensor_over_the_element_limit_is_resource_exhausted(request_: pb.ModelInferRequest) -> None:
    with pytest.raises(ResourceExhaustedError, match=r"input 'x': \d+ elements exceed this server's limit of 100 "
                       r"per tensor \(max_tensor_elements\); split the request"):
        decode_request(request_, None, LIMITS)
    assert decode_request(raw("FP32", [100], b"\0" * 400), None, LIMITS).inputs["x"].shape == (100,)


def test_typed_contents_over_the_limit_are_refused_before_conversion() -> None:
    request = pb.ModelInferRequest(model_name="m")
    request.inputs.add(name="x", datatype="FP64", shape=[200]).contents.fp64_contents.extend([0.5] * 200)
    with pytest.raises(ResourceExhaustedError, match="200 elements exceed"):
        decode_request(request, None, LIMITS)


def test_a_claimed_size_that_disagrees_with_the_bytes_is_malformed_not_too_big() -> None:
    with pytest.raises(InvalidInputError, match="needs 4000000 bytes of raw content, got 8"):
        decode_request(raw("FP32", [1000, 1000], b"\0" * 8), None, LIMITS)


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ([0, 2**62, 2**62], r"shape \[0, 4611686018427387904, 4611686018427387904\] overflows"),
        ([2**63 - 1, 0], "overflows"),
        ([1] * 33, "shape has 33 dimensions; at most 32 are supported"),
        ([0] * 70, "shape has 70 dimensions"),
    ],
)
def test_shapes_numpy_cannot_describe_are_invalid_argument(shape: list[int], message: str) -> None:
    for datatype in ("FP32", "BYTES"):
        with pytest.raises(InvalidInputError, match=message):
            decode_request(raw(datatype, shape, b""))


def test_zero_sized_tensors_with_sane_dims_still_decode() -> None:
    assert decode_request(raw("FP32", [0, 2**20], b"")).inputs["x"].shape == (0, 2**20)


# -- through a server ---------------------------------------------------------------------------


def test_limits_and_shapes_over_grpc(add_sub_repo: Path) -> None:
    with serve_in_thread(add_sub_repo, max_tensor_elements=64) as server:
        big = np.zeros((17, 4), np.float32)  # 68 elements
        error = rpc_error(lambda: server.stub.ModelInfer(infer_request("add_sub", {"INPUT0": big, "INPUT1": big})))
        assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "input 'INPUT0': 68 elements exceed this server's limit of 64" in error.details()
        overflow = raw("FP32", [0, 2**62, 2**62], b"")
        overflow.model_name = "add_sub"
        error = rpc_error(lambda: server.stub.ModelInfer(overflow))
        assert error.code() is grpc.StatusCode.INVALID_ARGUMENT and "overflows" in error.details()
        ok = np.ones((16, 4), np.float32)
        response = server.stub.ModelInfer(infer_request("add_sub", {"INPUT0": ok, "INPUT1": ok}))
        np.testing.assert_array_equal(outputs_of(response)["OUTPUT0"], ok * 2)


def test_reject_nonfinite_fails_only_the_request_that_carries_one(repo: Path) -> None:
    models.save(models.add_sub(), repo, "strict")
    write_config(repo, "strict", 'parameters { key: "reject_nonfinite" value: { string_value: "true" } }\n'
                 "dynamic_batching { max_queue_delay_microseconds: 20000 }\n")
    models.save(models.add_sub(), repo, "lenient")
    with serve_in_thread(repo) as server:
        good = np.ones((1, 4), np.float32)
        bad = good.copy()
        bad[0, 2] = np.nan
        results: dict[int, object] = {}

        def send(i: int, a: np.ndarray) -> None:
            try:
                results[i] = server.stub.ModelInfer(infer_request("strict", {"INPUT0": a, "INPUT1": good}))
            except grpc.RpcError as exc:
                results[i] = exc

        # Sent together, so that the good ones could share a batch with the bad one.
        threads = [threading.Thread(target=send, args=(i, bad if i == 3 else good)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        error = results.pop(3)
        assert isinstance(error, grpc.RpcError) and error.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "model 'strict' input 'INPUT0': element 2 is nan; the model refuses NaN and Inf" in error.details()
        for response in results.values():
            assert isinstance(response, pb.ModelInferResponse)
            np.testing.assert_array_equal(outputs_of(response)["OUTPUT0"], good * 2)
        inf = good.copy()
        inf[0, 0] = -np.inf
        error = rpc_error(lambda: server.stub.ModelInfer(infer_request("strict", {"INPUT0": good, "INPUT1": inf})))
        assert "input 'INPUT1': element 0 is -inf" in error.details()
        # A model that does not ask for it takes NaN as it is.
        response = server.stub.ModelInfer(infer_request("lenient", {"INPUT0": bad, "INPUT1": good}))
        assert np.isnan(outputs_of(response)["OUTPUT0"][0, 2])


def test_beyond_max_inflight_requests_unavailable_at_once(repo: Path) -> None:
    models.save(sleeper(), repo, "sleeper")
    models.save(models.add_sub(), repo, "add_sub")
    with serve_in_thread(repo, max_inflight_requests=1) as server:
        clock = SleeperClock(server.stub)

        def attempt(seconds: float) -> bool:
            busy = Busy(server.stub, clock, seconds)
            started = time.monotonic()
            error = rpc_error(lambda: server.stub.ModelInfer(sleep_request(1), timeout=30))
            elapsed = time.monotonic() - started
            conclusive = busy.busy_until(time.monotonic())
            busy.finish()
            if conclusive:
                assert error.code() is grpc.StatusCode.UNAVAILABLE
                assert "1 inference requests in flight reached the bound max_inflight_requests=1" in error.details()
                assert elapsed < 0.5
            return conclusive

        while_busy(attempt)
        assert server.stub.ServerReady(pb.ServerReadyRequest()).ready
        server.stub.ModelInfer(sleep_request(1), timeout=30)  # admitted again once the first is done
