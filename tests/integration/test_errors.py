"""The error contract of DESIGN.md against a real server: codes, messages, and recovery.

Every bad request must get its status code and a message that names the tensor and what was
expected, and the server must serve a good request right after it.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable, Iterator

import grpc
import numpy as np
import pytest

from ortserve.batching.controller import RETRY_JITTER, RETRY_TARGETS
from ortserve_client.proto import grpc_service_pb2 as pb
from tests import models
from tests.harness import RunningServer, serve_in_thread
from tests.wire import (
    Busy,
    SleeperClock,
    add_sub_inputs,
    check_add_sub,
    encode_bytes,
    infer_request,
    model_stats,
    outputs_of,
    rpc_error,
    sleep_request,
    sleeper,
    wait_for,
    while_busy,
    write_config,
)

ONE = np.ones((1, 4), np.float32)
StatusCode = grpc.StatusCode


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    repo = tmp_path_factory.mktemp("errors")
    models.save(models.add_sub(), repo, "add_sub")
    models.save(models.identity("BYTES"), repo, "strings")
    models.save(models.identity("INT8"), repo, "int8")
    models.save(models.identity("FP16"), repo, "half")
    models.save(models.identity("FP32", dims=(2, 3)), repo, "fixed")
    models.save(sleeper(), repo, "sleeper")
    # BYTES requests that arrive within 300 ms of each other run as one batch.
    models.save(models.identity("BYTES"), repo, "strings_batched")
    write_config(
        repo,
        "strings_batched",
        "max_batch_size: 8\ndynamic_batching { max_queue_delay_microseconds: 300000 }\n",
    )
    # Requests that arrive within 300 ms of each other run as one batch; an index out of the table fails its run.
    models.save(models.lookup(), repo, "lookup_batched")
    write_config(
        repo, "lookup_batched", "max_batch_size: 8\ndynamic_batching { max_queue_delay_microseconds: 300000 }\n"
    )
    # The same, with its own instance's rerun budget to spend.
    models.save(models.lookup(), repo, "lookup_budget")
    write_config(
        repo, "lookup_budget", "max_batch_size: 8\ndynamic_batching { max_queue_delay_microseconds: 300000 }\n"
    )
    # Under a 50 ms latency target: once its cost model has seen ~60 ms batches, a request
    # queued behind a busy instance cannot make the target and is refused at once.
    models.save(sleeper(batchable=True), repo, "sleeper_target")
    write_config(
        repo,
        "sleeper_target",
        "max_batch_size: 8\ndynamic_batching { }\n"
        'parameters { key: "latency_target_ms" value { string_value: "50" } }\n',
    )
    # The same under a 200 ms target, for a request admitted in time that the batch before it delays.
    models.save(sleeper(batchable=True), repo, "sleeper_target_late")
    write_config(
        repo,
        "sleeper_target_late",
        "max_batch_size: 8\ndynamic_batching { }\n"
        'parameters { key: "latency_target_ms" value { string_value: "200" } }\n',
    )
    with serve_in_thread(repo, http_port=-1) as running:
        yield running


@pytest.fixture(scope="module")
def clock(srv: RunningServer) -> SleeperClock:
    return SleeperClock(srv.stub)


def assert_still_serves(srv: RunningServer) -> None:
    a, b = add_sub_inputs(2, np.random.default_rng())
    check_add_sub(srv.stub.ModelInfer(infer_request("add_sub", {"INPUT0": a, "INPUT1": b})), a, b)


def add_sub_request(**overrides: np.ndarray) -> pb.ModelInferRequest:
    inputs = {"INPUT0": ONE, "INPUT1": ONE, **overrides}
    return infer_request("add_sub", inputs)


def strings_request(raw: bytes, shape: list[int]) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="strings")
    request.inputs.add(name="x", datatype="BYTES", shape=shape)
    request.raw_input_contents.append(raw)
    return request


# -- bad requests: (request builder, code, substrings of the message) -------------------------


def _unknown_version() -> pb.ModelInferRequest:
    request = add_sub_request()
    request.model_version = "7"
    return request


def _non_numeric_version() -> pb.ModelInferRequest:
    request = add_sub_request()
    request.model_version = "latest"
    return request


def _unknown_model() -> pb.ModelInferRequest:
    request = add_sub_request()
    request.model_name = "nope"
    return request


def _duplicate_input() -> pb.ModelInferRequest:
    request = add_sub_request()
    request.inputs.add(name="INPUT0", datatype="FP32", shape=[1, 4])
    request.raw_input_contents.append(ONE.tobytes())
    return request


def _datatype_string(value: str) -> Callable[[], pb.ModelInferRequest]:
    def build() -> pb.ModelInferRequest:
        request = add_sub_request()
        request.inputs[0].datatype = value
        return request

    return build


def _shape(shape: list[int]) -> Callable[[], pb.ModelInferRequest]:
    """INPUT0 declared with `shape` and raw content of exactly that many FP32 elements."""

    def build() -> pb.ModelInferRequest:
        request = add_sub_request()
        request.inputs[0].ClearField("shape")
        request.inputs[0].shape.extend(shape)
        request.raw_input_contents[0] = np.zeros(max(int(np.prod(shape)), 0), np.float32).tobytes()
        return request

    return build


def _raw_size(size: int) -> pb.ModelInferRequest:
    request = add_sub_request()
    request.raw_input_contents[0] = b"\0" * size
    return request


def _raw_count() -> pb.ModelInferRequest:
    request = add_sub_request()
    del request.raw_input_contents[1]
    return request


def _contents_and_raw() -> pb.ModelInferRequest:
    request = add_sub_request()
    request.inputs[0].contents.fp32_contents.extend([1.0] * 4)
    return request


def _typed(datatype: str, field: str, values: list[float], shape: list[int]) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="add_sub")
    for name in ("INPUT0", "INPUT1"):
        tensor = request.inputs.add(name=name, datatype=datatype, shape=shape)
        getattr(tensor.contents, field).extend(values)
    return request


def _typed_count() -> pb.ModelInferRequest:
    request = _typed("FP32", "fp32_contents", [1.0] * 4, [1, 4])
    del request.inputs[0].contents.fp32_contents[3]
    return request


def _fp16_typed() -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="half")
    request.inputs.add(name="x", datatype="FP16", shape=[1, 4]).contents.fp32_contents.extend([1.0] * 4)
    return request


def _int8_out_of_range() -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="int8")
    request.inputs.add(name="x", datatype="INT8", shape=[1, 4]).contents.int_contents.extend([1, 2, 200, 3])
    return request


def _outputs(*names: str) -> Callable[[], pb.ModelInferRequest]:
    def build() -> pb.ModelInferRequest:
        request = add_sub_request()
        for name in names:
            request.outputs.add(name=name)
        return request

    return build


def _timeout_parameter(kind: str) -> pb.ModelInferRequest:
    request = add_sub_request()
    if kind == "negative":
        request.parameters["timeout"].int64_param = -5
    else:
        request.parameters["timeout"].string_param = "10ms"
    return request


def _fixed_shape() -> pb.ModelInferRequest:
    return infer_request("fixed", {"x": np.zeros((1, 2, 3), np.float32)})


CASES: dict[str, tuple[Callable[[], pb.ModelInferRequest], StatusCode, list[str]]] = {
    "unknown model": (_unknown_model, StatusCode.NOT_FOUND, ["unknown model 'nope'", "'add_sub'"]),
    "unknown version": (
        _unknown_version, StatusCode.NOT_FOUND, ["model 'add_sub' has no version 7", "loaded versions are 1"],
    ),
    "non-numeric version": (
        _non_numeric_version, StatusCode.NOT_FOUND, ["model 'add_sub'", "'latest' is not a version number"],
    ),
    "unknown input name": (
        lambda: add_sub_request(INPUT2=ONE),
        StatusCode.INVALID_ARGUMENT,
        ["model 'add_sub' has no input 'INPUT2'", "'INPUT0' (FP32 [-1,4])", "'INPUT1' (FP32 [-1,4])"],
    ),
    "missing input": (
        lambda: infer_request("add_sub", {"INPUT0": ONE}),
        StatusCode.INVALID_ARGUMENT,
        ["input 'INPUT1' is missing", "expected FP32 [-1,4]"],
    ),
    "duplicate input": (_duplicate_input, StatusCode.INVALID_ARGUMENT, ["input 'INPUT0' appears twice"]),
    "wrong datatype": (
        lambda: add_sub_request(INPUT1=np.ones((1, 4), np.int32)),
        StatusCode.INVALID_ARGUMENT,
        ["input 'INPUT1'", "expected FP32 [-1,4], got INT32 [1,4]"],
    ),
    "unknown datatype string": (
        _datatype_string("FLOAT32"),
        StatusCode.INVALID_ARGUMENT,
        ["input 'INPUT0'", "unknown datatype 'FLOAT32'", "expected one of BOOL", "FP32"],
    ),
    "wrong rank": (
        _shape([4]), StatusCode.INVALID_ARGUMENT, ["input 'INPUT0'", "expected FP32 [-1,4], got FP32 [4]"],
    ),
    "wrong dims": (
        _shape([1, 5]), StatusCode.INVALID_ARGUMENT, ["input 'INPUT0'", "expected FP32 [-1,4], got FP32 [1,5]"],
    ),
    "batch over max_batch_size": (
        _shape([33, 4]),
        StatusCode.INVALID_ARGUMENT,
        ["input 'INPUT0'", "batch size 33 is outside 1..32", "max_batch_size"],
    ),
    "batch of zero rows": (
        _shape([0, 4]), StatusCode.INVALID_ARGUMENT, ["input 'INPUT0'", "batch size 0 is outside 1..32"],
    ),
    "inputs disagree on the batch": (
        lambda: add_sub_request(INPUT1=np.ones((2, 4), np.float32)),
        StatusCode.INVALID_ARGUMENT,
        ["inputs disagree on the batch size", "'INPUT1'", "same first dimension"],
    ),
    "negative dim": (
        _shape([-1, 4]), StatusCode.INVALID_ARGUMENT, ["input 'INPUT0'", "[-1, 4] has a negative dimension"],
    ),
    "raw size too small": (
        lambda: _raw_size(12),
        StatusCode.INVALID_ARGUMENT,
        ["input 'INPUT0'", "FP32 [1, 4] needs 16 bytes of raw content, got 12"],
    ),
    "raw size too large": (
        lambda: _raw_size(20),
        StatusCode.INVALID_ARGUMENT,
        ["input 'INPUT0'", "FP32 [1, 4] needs 16 bytes of raw content, got 20"],
    ),
    "raw count differs from inputs count": (
        _raw_count,
        StatusCode.INVALID_ARGUMENT,
        ["2 inputs but 1 raw_input_contents", "one raw entry per input"],
    ),
    "contents and raw for one input": (
        _contents_and_raw,
        StatusCode.INVALID_ARGUMENT,
        ["input 'INPUT0' has both contents and raw_input_contents", "send one of them"],
    ),
    "typed contents count": (
        _typed_count,
        StatusCode.INVALID_ARGUMENT,
        ["input 'INPUT0'", "FP32 [1, 4] needs 4 values in contents.fp32_contents, got 3"],
    ),
    "no data at all": (
        lambda: _typed("FP32", "fp32_contents", [], [1, 4]),
        StatusCode.INVALID_ARGUMENT,
        ["input 'INPUT0'", "needs 4 values in contents.fp32_contents, got 0"],
    ),
    "FP16 as typed contents": (
        _fp16_typed,
        StatusCode.INVALID_ARGUMENT,
        ["input 'x'", "FP16 has no typed contents field", "raw_input_contents"],
    ),
    "typed value out of range": (
        _int8_out_of_range,
        StatusCode.INVALID_ARGUMENT,
        ["input 'x'", "value 200 does not fit INT8", "-128..127"],
    ),
    "unknown requested output": (
        _outputs("OUTPUT9"),
        StatusCode.INVALID_ARGUMENT,
        ["model 'add_sub' has no output 'OUTPUT9'", "'OUTPUT0', 'OUTPUT1'"],
    ),
    "output requested twice": (
        _outputs("OUTPUT0", "OUTPUT0"), StatusCode.INVALID_ARGUMENT, ["model 'add_sub'", "requested twice"],
    ),
    "BYTES length prefix past the end": (
        lambda: strings_request(struct.pack("<I", 100) + b"abc" + encode_bytes([b""] * 3), [1, 4]),
        StatusCode.INVALID_ARGUMENT,
        ["input 'x'", "BYTES element 0 claims 100 bytes but only 15 remain"],
    ),
    "BYTES truncated prefix": (
        lambda: strings_request(encode_bytes([b"abcdefgh", b"", b""]) + b"\x01\x00", [1, 4]),
        StatusCode.INVALID_ARGUMENT,
        ["input 'x'", "BYTES element 3 has no length prefix"],
    ),
    "BYTES leftover bytes": (
        lambda: strings_request(encode_bytes([b"a", b"b", b"c", b"d"]) + b"xyz", [1, 4]),
        StatusCode.INVALID_ARGUMENT,
        ["input 'x'", "3 bytes left over after the 4 BYTES elements of shape [1, 4]"],
    ),
    "BYTES shorter than its prefixes": (
        lambda: strings_request(b"\0" * 12, [1, 4]),
        StatusCode.INVALID_ARGUMENT,
        ["input 'x'", "BYTES [1, 4] needs at least 16 bytes"],
    ),
    "BYTES not UTF-8": (
        lambda: strings_request(encode_bytes([b"ok", b"\xff\xfe", b"", b""]), [1, 4]),
        StatusCode.INVALID_ARGUMENT,
        ["input 'x'", "element 1 is not valid UTF-8"],
    ),
    "non-batching model, batched shape": (
        _fixed_shape,
        StatusCode.INVALID_ARGUMENT,
        ["model 'fixed' input 'x'", "expected FP32 [2,3], got FP32 [1,2,3]"],
    ),
    "negative timeout parameter": (
        lambda: _timeout_parameter("negative"),
        StatusCode.INVALID_ARGUMENT,
        ["parameter 'timeout'", "non-negative int64 of microseconds", "-5"],
    ),
    "string timeout parameter": (
        lambda: _timeout_parameter("string"),
        StatusCode.INVALID_ARGUMENT,
        ["parameter 'timeout'", "'10ms'"],
    ),
}


def _case_id(case: str) -> str:
    return case.replace(" ", "-")


@pytest.mark.parametrize("case", list(CASES), ids=_case_id)
def test_bad_request_gets_its_code_and_a_helpful_message(srv: RunningServer, case: str) -> None:
    build, code, fragments = CASES[case]
    error = rpc_error(lambda: srv.stub.ModelInfer(build(), timeout=30))
    assert error.code() is code, error.details()
    for fragment in fragments:
        assert fragment in error.details()
    assert_still_serves(srv)


@pytest.mark.parametrize("case", ["wrong dims", "unknown model", "BYTES leftover bytes"], ids=_case_id)
def test_bad_request_in_a_stream_gets_the_same_message(srv: RunningServer, case: str) -> None:
    build, _, fragments = CASES[case]
    request = build()
    request.id = "bad-one"
    (response,) = srv.stub.ModelStreamInfer(iter([request]), timeout=30)
    assert response.infer_response.id == "bad-one"
    for fragment in fragments:
        assert fragment in response.error_message


def test_unimplemented_rpc(srv: RunningServer) -> None:
    method = srv.channel.unary_unary("/inference.GRPCInferenceService/Trace")  # Triton's trace settings: not served
    error = rpc_error(lambda: method(b"", timeout=10))
    assert error.code() is StatusCode.UNIMPLEMENTED
    assert_still_serves(srv)


def test_a_bad_request_fails_only_itself_when_batched_with_good_ones(srv: RunningServer) -> None:
    """A BYTES element that is not UTF-8 must not fail the other requests of its batch."""

    def request(items: list[bytes], request_id: str) -> pb.ModelInferRequest:
        array = np.array(items, dtype=object).reshape(1, 4)
        return infer_request("strings_batched", {"x": array}, request_id=request_id)

    good = [[f"r{i}".encode(), "é".encode(), b"", b"z"] for i in range(3)]
    bad = [b"a", b"\xc3\x28", b"b", b"c"]
    before = model_stats(srv.stub, "strings_batched")
    futures = [srv.stub.ModelInfer.future(request(items, f"g{i}"), timeout=30) for i, items in enumerate(good)]
    bad_future = srv.stub.ModelInfer.future(request(bad, "bad"), timeout=30)
    for items, future in zip(good, futures, strict=True):
        assert outputs_of(future.result())["y"].reshape(-1).tolist() == items
    error = rpc_error(bad_future.result)
    assert error.code() is StatusCode.INVALID_ARGUMENT
    assert "input 'x'" in error.details() and "not valid UTF-8" in error.details()
    after = model_stats(srv.stub, "strings_batched")
    assert after.inference_count == before.inference_count + 3
    assert after.inference_stats.success.count == before.inference_stats.success.count + 3
    assert after.inference_stats.fail.count == before.inference_stats.fail.count + 1


def test_a_request_the_model_fails_on_fails_alone_and_its_batch_mates_are_answered(srv: RunningServer) -> None:
    """ONNX Runtime's Gather rejects an index out of the table: the run of the whole batch fails, and
    the batch is run again in parts so that only the request with that index fails, with
    INVALID_ARGUMENT and ONNX Runtime's account of what was wrong."""

    def request(index: int, request_id: str) -> pb.ModelInferRequest:
        return infer_request("lookup_batched", {"idx": np.array([[index]], np.int64)}, request_id=request_id)

    before = model_stats(srv.stub, "lookup_batched")
    futures = [srv.stub.ModelInfer.future(request(i, f"g{i}"), timeout=30) for i in (0, 3, 1)]
    bad_future = srv.stub.ModelInfer.future(request(99, "bad"), timeout=30)
    for i, future in zip((0, 3, 1), futures, strict=True):
        assert outputs_of(future.result())["y"].tolist() == [[10.0 + i]]
    error = rpc_error(bad_future.result)
    assert error.code() is StatusCode.INVALID_ARGUMENT  # ONNX Runtime's own verdict on the value
    assert "cannot take the request's input values" in error.details()
    assert "Gather" in error.details() and "idx=99" in error.details()
    after = model_stats(srv.stub, "lookup_batched")
    assert after.inference_stats.success.count == before.inference_stats.success.count + 3
    assert after.inference_stats.fail.count == before.inference_stats.fail.count + 1
    assert after.execution_count == before.execution_count + 1  # the four ran as one batch, rerun in parts
    assert_still_serves(srv)


def test_reruns_stop_once_a_model_fails_everything_and_resume_after_answers(srv: RunningServer) -> None:
    """Batch after batch of indices out of the table: the first batches are rerun in parts until
    the instance's rerun budget is spent, the later ones fail in their one run (still each caller
    with INVALID_ARGUMENT); answered requests refill it, and a batch with one bad index is again
    rerun so that only that request fails."""

    def batch(indices: list[int]) -> list[grpc.Future]:  # eight at once: one full batch
        return [
            srv.stub.ModelInfer.future(
                infer_request("lookup_budget", {"idx": np.array([[i]], np.int64)}, request_id=f"r{n}"), timeout=30
            )
            for n, i in enumerate(indices)
        ]

    def reruns() -> float:
        found = srv.metrics.get_sample_value("ortserve_batches_rerun_total", {"model": "lookup_budget", "version": "1"})
        return found or 0.0

    counts = []
    for _ in range(10):
        for future in batch([99] * 8):
            error = rpc_error(future.result)
            assert error.code() is StatusCode.INVALID_ARGUMENT and "idx=99" in error.details()
        counts.append(reruns())
    assert 1 <= counts[0] and counts[6] <= 7  # rerun while the budget lasted (64 runs; 14 a batch of 8)
    assert counts[6] == counts[9]  # then no more: a batch costs its one run
    for _ in range(8):  # 64 answers give the budget back
        for future in batch([0, 1, 2, 3, 0, 1, 2, 3]):
            future.result()
    futures = batch([0, 1, 2, 99, 3, 0, 1, 2])
    for i, future in zip([0, 1, 2, 99, 3, 0, 1, 2], futures, strict=True):
        if i == 99:
            assert rpc_error(future.result).code() is StatusCode.INVALID_ARGUMENT
        else:
            assert outputs_of(future.result())["y"].tolist() == [[10.0 + i]]
    assert reruns() == counts[9] + 1
    assert_still_serves(srv)


# -- deadlines --------------------------------------------------------------------------------


def test_a_run_whose_caller_went_away_is_stopped_and_the_instance_takes_the_next(
    srv: RunningServer, clock: SleeperClock
) -> None:
    """The gRPC deadline passes while the model computes the request: nobody waits for that answer,
    so the run is stopped (ONNX Runtime's terminate flag) instead of computed to its end. The next
    request runs, and the stopped run is no execution in the statistics."""
    before = model_stats(srv.stub, "sleeper")
    iterations = clock.iterations(5.0)  # seconds, computed to the end
    error = rpc_error(lambda: srv.stub.ModelInfer(sleep_request(iterations), timeout=0.3))
    assert error.code() is StatusCode.DEADLINE_EXCEEDED
    assert outputs_of(srv.stub.ModelInfer(sleep_request(3), timeout=60))["y"].tolist() == [3]
    after = model_stats(srv.stub, "sleeper")
    assert after.execution_count == before.execution_count + 1, "the abandoned run was computed to its end"
    assert after.inference_stats.success.count == before.inference_stats.success.count + 1
    assert_still_serves(srv)


@pytest.mark.parametrize("deadline_s", [0.3, 1.3])
def test_client_deadline_passing_in_the_queue(srv: RunningServer, clock: SleeperClock, deadline_s: float) -> None:
    """The only instance is busy; a request whose gRPC deadline passes while queued never runs.

    0.3 s: the batcher's own deadline timer fails it; 1.3 s (beyond the batcher's 1 s timer
    horizon): gRPC cancels the call at its deadline, which withdraws it from the queue. Either
    way it counts as a deadline failure (REJECTED), not as a cancellation.
    """
    stats = srv.server.dataplane.model("sleeper").stats

    def attempt(seconds: float) -> bool:
        before = model_stats(srv.stub, "sleeper")
        rejected, cancelled = (stats.failures_by_reason.get(r, 0) for r in ("REJECTED", "CANCELED"))
        busy = Busy(srv.stub, clock, seconds)
        sent = time.monotonic()
        try:
            srv.stub.ModelInfer(sleep_request(1), timeout=deadline_s)
            error = None
        except grpc.RpcError as exc:
            error = exc
        busy.finish()
        if not busy.busy_until(sent + deadline_s + 0.05):
            return False
        assert error is not None, "the request ran although its deadline passed in the queue"
        assert error.code() is StatusCode.DEADLINE_EXCEEDED
        wait_for(
            lambda: model_stats(srv.stub, "sleeper").inference_stats.fail.count
            == before.inference_stats.fail.count + 1
        )
        after = model_stats(srv.stub, "sleeper")
        assert after.execution_count == before.execution_count + 1  # the expired request never ran
        assert after.inference_count == before.inference_count + 1
        assert stats.failures_by_reason.get("REJECTED", 0) == rejected + 1
        assert stats.failures_by_reason.get("CANCELED", 0) == cancelled
        return True

    while_busy(attempt, seconds=max(1.5, 2 * deadline_s))
    assert_still_serves(srv)


def test_timeout_parameter_passing_in_the_queue(srv: RunningServer, clock: SleeperClock) -> None:
    """The `timeout` parameter alone (no gRPC deadline): the server answers DEADLINE_EXCEEDED."""

    def attempt(seconds: float) -> bool:
        before = model_stats(srv.stub, "sleeper")
        busy = Busy(srv.stub, clock, seconds)
        request = sleep_request(1, request_id="expires", parameters={"timeout": 200_000})  # 200 ms
        sent = time.monotonic()
        try:
            srv.stub.ModelInfer(request, timeout=60)
            error = None
        except grpc.RpcError as exc:
            error = exc
        busy.finish()
        if not busy.busy_until(sent + 0.25):
            return False
        assert error is not None, "the request ran although its timeout passed in the queue"
        assert error.code() is StatusCode.DEADLINE_EXCEEDED
        assert "model sleeper" in error.details() and "deadline passed" in error.details()
        after = model_stats(srv.stub, "sleeper")
        assert after.execution_count == before.execution_count + 1
        assert after.inference_stats.fail.count == before.inference_stats.fail.count + 1
        return True

    while_busy(attempt)
    assert_still_serves(srv)


def test_timeout_parameter_not_reached_lets_the_request_run(srv: RunningServer) -> None:
    request = sleep_request(3, parameters={"timeout": 30_000_000})
    np.testing.assert_array_equal(outputs_of(srv.stub.ModelInfer(request, timeout=30))["y"], [3])
    request = sleep_request(4, parameters={"timeout": 0})  # 0: no timeout
    np.testing.assert_array_equal(outputs_of(srv.stub.ModelInfer(request, timeout=30))["y"], [4])


def test_stream_request_with_expired_timeout(srv: RunningServer, clock: SleeperClock) -> None:
    """In a stream, a request whose `timeout` passes in the queue gets its error in-stream."""

    def attempt(seconds: float) -> bool:
        slow_iterations = clock.iterations(seconds)
        sent: list[float] = []

        def send() -> Iterator[pb.ModelInferRequest]:
            yield sleep_request(slow_iterations, request_id="slow")
            time.sleep(0.3)
            sent.append(time.monotonic())
            yield sleep_request(1, request_id="late", parameters={"timeout": 100_000})

        responses: dict[str, tuple[float, pb.ModelStreamInferResponse]] = {}
        for response in srv.stub.ModelStreamInfer(send(), timeout=120):
            responses[response.infer_response.id] = (time.monotonic(), response)
        assert sorted(responses) == ["late", "slow"]
        slow_at, slow = responses["slow"]
        assert slow.error_message == ""
        if slow_at <= sent[0] + 0.15:  # the slow request ended before "late" could expire behind it
            return False
        assert "deadline passed" in responses["late"][1].error_message
        return True

    while_busy(attempt, seconds=1.0)


def test_a_request_delayed_past_the_latency_target_in_the_queue_is_refused_not_computed(
    srv: RunningServer, clock: SleeperClock
) -> None:
    def batch_request(iterations: int) -> pb.ModelInferRequest:
        return infer_request("sleeper_target_late", {"x": np.array([[iterations]], np.int64)})

    for _ in range(8):  # the cost model learns that a batch takes ~10 ms: one queued request fits 200 ms
        srv.stub.ModelInfer(batch_request(clock.iterations(0.01)))
    before = model_stats(srv.stub, "sleeper_target_late").inference_stats

    def attempt(seconds: float) -> bool:
        busy = srv.stub.ModelInfer.future(batch_request(clock.iterations(seconds)), timeout=120)
        time.sleep(0.2)  # it reaches the instance, which then stays busy far past the target
        queued = srv.stub.ModelInfer.future(batch_request(7), timeout=120)  # admitted: ~15 ms estimated
        conclusive = not busy.done()
        time.sleep(0.05)
        conclusive = conclusive and not busy.done()  # still running once the queued request is in
        busy.result()
        if not conclusive:
            return False  # the busy batch ended too soon (a loaded machine skewed the calibration)
        error = queued.exception()
        assert error is not None, "computed although the batch before it kept it past the target"
        assert isinstance(error, grpc.Call) and error.code() is StatusCode.UNAVAILABLE, error
        assert "would be answered after the latency target of 200 ms; not computed" in error.details()
        assert int(dict(error.trailing_metadata() or ())["retry-after-ms"]) >= (1 - RETRY_JITTER) * RETRY_TARGETS * 200
        return True

    while_busy(attempt, seconds=0.6)
    after = model_stats(srv.stub, "sleeper_target_late").inference_stats
    assert after.fail.count > before.fail.count  # counted as a failure (Triton's REJECTED), never executed
    np.testing.assert_array_equal(  # the instance free again: admitted and computed
        outputs_of(srv.stub.ModelInfer(batch_request(1)))["y"], [[1]]
    )
    assert_still_serves(srv)


def test_over_the_latency_target_is_refused_at_once_with_a_retry_hint(srv: RunningServer, clock: SleeperClock) -> None:
    def batch_request(iterations: int) -> pb.ModelInferRequest:
        return infer_request("sleeper_target", {"x": np.array([[iterations]], np.int64)})

    slow = clock.iterations(0.06)
    for _ in range(8):  # the cost model learns that a batch takes ~60 ms
        srv.stub.ModelInfer(batch_request(slow))

    def attempt(seconds: float) -> bool:
        busy = srv.stub.ModelInfer.future(batch_request(clock.iterations(seconds)), timeout=120)
        time.sleep(0.2)  # time for it to reach the instance
        start = time.monotonic()
        error = rpc_error(lambda: srv.stub.ModelInfer(batch_request(1)))
        took = time.monotonic() - start
        conclusive = not busy.done()
        busy.result()
        if not conclusive:
            return False
        assert error.code() is StatusCode.UNAVAILABLE, error
        assert "over the latency target of 50 ms" in error.details() and "retry after" in error.details()
        hint = dict(error.trailing_metadata() or ())["retry-after-ms"]
        assert int(hint) >= (1 - RETRY_JITTER) * RETRY_TARGETS * 50  # the floor (two targets), jittered
        assert took < 0.5  # refused at once, not after the busy batch
        return True

    while_busy(attempt)
    srv.stub.ModelInfer(batch_request(1))  # the instance free again: admitted
    assert_still_serves(srv)
