"""CircuitBreaker and error mapping, on an injected clock and without a server."""

from __future__ import annotations

import grpc
import pytest

from ortserve_client import CircuitBreaker, CircuitOpenError, errors

UNAVAILABLE, OK = grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.OK


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def fail(breaker: CircuitBreaker, key: str = "m", times: int = 1) -> None:
    for _ in range(times):
        breaker.admit(key)
        breaker.record(key, UNAVAILABLE)


def test_opens_after_the_threshold_of_consecutive_unavailable() -> None:
    clock = Clock()
    breaker = CircuitBreaker(failure_threshold=3, reset_timeout_s=10, clock=clock)
    fail(breaker, times=2)
    breaker.admit("m")
    breaker.record("m", grpc.StatusCode.NOT_FOUND)  # an answer resets the count
    fail(breaker, times=2)
    assert breaker.state("m") == "closed"
    fail(breaker)
    assert breaker.state("m") == "open" and breaker.state("other") == "closed"
    clock.now = 4.0
    with pytest.raises(CircuitOpenError) as info:
        breaker.admit("m")
    assert info.value.retry_after_s == pytest.approx(6.0) and info.value.code is UNAVAILABLE
    assert "model 'm'" in str(info.value) and "next probe in 6.0 s" in str(info.value)
    breaker.admit("other")


def test_half_open_lets_one_probe_through() -> None:
    clock = Clock()
    breaker = CircuitBreaker(failure_threshold=1, reset_timeout_s=5, clock=clock)
    fail(breaker)
    clock.now = 5.0
    assert breaker.state("m") == "half_open"
    breaker.admit("m")  # the probe
    with pytest.raises(CircuitOpenError, match="probe call is in flight"):
        breaker.admit("m")
    breaker.record("m", UNAVAILABLE)  # the probe failed: open for another cool-down
    assert breaker.state("m") == "open"
    clock.now = 9.9
    with pytest.raises(CircuitOpenError):
        breaker.admit("m")
    clock.now = 10.0
    breaker.admit("m")
    breaker.record("m", None)  # the probe was cancelled: the next call may probe
    breaker.admit("m")
    breaker.record("m", OK)
    assert breaker.state("m") == "closed"
    breaker.admit("m")


def test_server_key_and_validation() -> None:
    breaker = CircuitBreaker(failure_threshold=1, reset_timeout_s=1)
    fail(breaker, key="")
    with pytest.raises(CircuitOpenError, match="the server"):
        breaker.admit("")
    with pytest.raises(ValueError):
        CircuitBreaker(failure_threshold=0)
    with pytest.raises(ValueError):
        CircuitBreaker(reset_timeout_s=-1)


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        (grpc.StatusCode.NOT_FOUND, errors.ModelNotFoundError),
        (grpc.StatusCode.INVALID_ARGUMENT, errors.InvalidInputError),
        (grpc.StatusCode.OUT_OF_RANGE, errors.InvalidInputError),
        (grpc.StatusCode.UNAVAILABLE, errors.ServerUnavailableError),
        (grpc.StatusCode.DEADLINE_EXCEEDED, errors.DeadlineExceededError),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, errors.ResourceExhaustedError),
        (grpc.StatusCode.UNAUTHENTICATED, errors.UnauthenticatedError),
        (grpc.StatusCode.PERMISSION_DENIED, errors.PermissionDeniedError),
        (grpc.StatusCode.CANCELLED, errors.RequestCancelledError),
        (grpc.StatusCode.UNIMPLEMENTED, errors.UnimplementedError),
        (grpc.StatusCode.INTERNAL, errors.InternalServerError),
        (grpc.StatusCode.UNKNOWN, errors.InternalServerError),
        (grpc.StatusCode.DATA_LOSS, errors.InternalServerError),
        (grpc.StatusCode.ALREADY_EXISTS, errors.InferenceServerError),
    ],
)
def test_error_classes(code: grpc.StatusCode, cls: type[errors.InferenceServerError]) -> None:
    class Failed(grpc.RpcError):
        def code(self) -> grpc.StatusCode:
            return code

        def details(self) -> str:
            return "what went wrong"

    error = errors.error_from_rpc(Failed())
    assert type(error) is cls and error.code is code and error.details == "what went wrong"
    assert str(error) == f"{code.name}: what went wrong"
    assert errors.error_from_rpc(grpc.RpcError()).code is grpc.StatusCode.UNKNOWN
