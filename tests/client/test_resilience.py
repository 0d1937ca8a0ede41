"""Deadlines, retries, the circuit breaker and cancellation, against a real server (and a
scripted one where the number of attempts must be counted)."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import grpc
import numpy as np
import pytest

from ortserve_client import (
    AsyncInferenceClient,
    CircuitBreaker,
    CircuitOpenError,
    DeadlineExceededError,
    InferenceClient,
    InferenceServerError,
    InferRequest,
    InternalServerError,
    InvalidInputError,
    ModelNotFoundError,
    ResourceExhaustedError,
    RetryPolicy,
    ServerUnavailableError,
    UnauthenticatedError,
)
from ortserve_client.resilience import retry_after_s
from tests.client.scripted import scripted_server
from tests.harness import RunningServer
from tests.wire import SleeperClock, model_stats, wait_for

X = np.ones((1, 4), np.float32)
FAST_RETRY = RetryPolicy(max_attempts=4, initial_backoff_s=0.01, max_backoff_s=0.02)
StatusCode = grpc.StatusCode


def sleep_input(iterations: int) -> dict[str, Any]:
    return {"x": np.array([iterations], np.int64)}


# -- deadlines --------------------------------------------------------------------------------


def test_default_deadline_and_per_call_override(srv: RunningServer, clock: SleeperClock) -> None:
    iterations = clock.iterations(1.5)
    with InferenceClient(srv.grpc_target, default_timeout_s=0.2) as short:
        start = time.monotonic()
        with pytest.raises(DeadlineExceededError) as info:
            short.infer("sleeper", sleep_input(iterations))
        assert time.monotonic() - start < 1.2  # the deadline, not the 1.5 s of compute
        assert info.value.code is StatusCode.DEADLINE_EXCEEDED
        assert isinstance(info.value.__cause__, grpc.RpcError)
        # The same client, one call given its own deadline.
        result = short.infer("sleeper", sleep_input(iterations), timeout=60)
        assert result["y"].tolist() == [iterations]
    with InferenceClient(srv.grpc_target, default_timeout_s=60) as patient:
        with pytest.raises(DeadlineExceededError):
            patient.infer("sleeper", sleep_input(iterations), timeout=0.2)


def test_async_deadline(srv: RunningServer, clock: SleeperClock) -> None:
    iterations = clock.iterations(1.0)

    async def body() -> None:
        async with AsyncInferenceClient(srv.grpc_target, default_timeout_s=0.2) as short:
            with pytest.raises(DeadlineExceededError):
                await short.infer("sleeper", sleep_input(iterations))
            assert (await short.infer("sleeper", sleep_input(3), timeout=60))["y"].tolist() == [3]

    asyncio.run(body())


# -- retries ----------------------------------------------------------------------------------


def test_retry_rides_out_an_unloaded_model(srv: RunningServer, client: InferenceClient) -> None:
    """The model is unloaded (UNAVAILABLE) when the call starts and loaded while it retries."""
    client.unload_model("flaky_sync")
    with InferenceClient(srv.grpc_target, retry=None) as no_retry:
        with pytest.raises(ServerUnavailableError):
            no_retry.infer("flaky_sync", {"x": X})
    # Full jitter: retries at U(0,1), +U(0,2), +U(0,4), +U(0,4) s; the load takes a fraction of a second.
    policy = RetryPolicy(max_attempts=5, initial_backoff_s=1.0, max_backoff_s=4.0, backoff_multiplier=2.0)
    outcome: list[Any] = []
    with InferenceClient(srv.grpc_target, retry=policy) as retrying:
        assert retrying.is_server_ready()  # connected: the first attempt goes out at once

        def call() -> None:
            try:
                outcome.append(retrying.infer("flaky_sync", {"x": X}, timeout=60))
            except Exception as exc:  # noqa: BLE001 - reported below
                outcome.append(exc)

        caller = threading.Thread(target=call)
        started = time.monotonic()
        caller.start()
        time.sleep(0.3)
        assert not outcome, f"the call ended before the model was loaded: {outcome}"
        client.load_model("flaky_sync")
        caller.join(60)
    assert len(outcome) == 1 and not isinstance(outcome[0], Exception), outcome
    np.testing.assert_array_equal(outcome[0]["y"], X)
    assert time.monotonic() - started >= 0.3


def test_invalid_input_is_not_retried_by_the_real_server(srv: RunningServer) -> None:
    """The server counts one failed request, not max_attempts of them."""
    before = model_stats(srv.stub, "counted").inference_stats.fail.count
    with InferenceClient(srv.grpc_target, retry=RetryPolicy(max_attempts=5, initial_backoff_s=0.01)) as c:
        with pytest.raises(InvalidInputError):
            c.infer("counted", {"INPUT0": X.astype(np.float64), "INPUT1": X})
    wait_for(lambda: model_stats(srv.stub, "counted").inference_stats.fail.count == before + 1)
    time.sleep(0.2)
    assert model_stats(srv.stub, "counted").inference_stats.fail.count == before + 1


def test_unavailable_is_retried_with_bounded_attempts() -> None:
    unavailable = [StatusCode.UNAVAILABLE] * 2
    with scripted_server(unavailable) as server, InferenceClient(server.target, retry=FAST_RETRY) as c:
        assert c.infer("m", {"x": X}, request_id="r").id == "r"
        assert len(server.servicer.attempts) == 3
    # Exactly max_attempts: retried by the client alone, never by gRPC as well (that would multiply them).
    for policy, attempts_made in ((FAST_RETRY, 4), (None, 1), (RetryPolicy(max_attempts=1), 1)):
        with scripted_server([StatusCode.UNAVAILABLE] * 20) as server:
            with InferenceClient(server.target, retry=policy) as c, pytest.raises(ServerUnavailableError):
                c.infer("m", {"x": X})
            assert len(server.servicer.attempts) == attempts_made


def test_async_unavailable_is_retried_with_bounded_attempts() -> None:
    async def body(target: str) -> None:
        async with AsyncInferenceClient(target, retry=FAST_RETRY) as c:
            assert (await c.infer("m", {"x": X}, request_id="r")).id == "r"
            with pytest.raises(ServerUnavailableError):
                await c.infer("m", {"x": X})

    with scripted_server([StatusCode.UNAVAILABLE] * 2 + [None] + [StatusCode.UNAVAILABLE] * 20) as server:
        asyncio.run(body(server.target))
        assert len(server.servicer.attempts) == 3 + 4


@pytest.mark.parametrize("asynchronous", [False, True])
def test_retries_stay_within_the_deadline(asynchronous: bool) -> None:
    """Backoffs of up to 5 s against a 0.3 s deadline: the call gives up at the deadline."""
    slow = RetryPolicy(max_attempts=5, initial_backoff_s=5.0, max_backoff_s=5.0)
    with scripted_server([StatusCode.UNAVAILABLE] * 20) as server:
        start = time.monotonic()
        with pytest.raises((ServerUnavailableError, DeadlineExceededError)):
            if asynchronous:

                async def body() -> None:
                    async with AsyncInferenceClient(server.target, retry=slow, default_timeout_s=0.3) as c:
                        await c.infer("m", {"x": X})

                asyncio.run(body())
            else:
                with InferenceClient(server.target, retry=slow, default_timeout_s=0.3) as c:
                    c.infer("m", {"x": X})
        assert time.monotonic() - start < 1.5


def _infer_once(target: str, asynchronous: bool, timeout_s: float = 10.0) -> Any:
    if asynchronous:

        async def body() -> Any:
            async with AsyncInferenceClient(target, retry=FAST_RETRY, default_timeout_s=timeout_s) as c:
                return await c.infer("m", {"x": X}, request_id="r")

        return asyncio.run(body())
    with InferenceClient(target, retry=FAST_RETRY, default_timeout_s=timeout_s) as c:
        return c.infer("m", {"x": X}, request_id="r")


@pytest.mark.parametrize("asynchronous", [False, True])
def test_a_retry_waits_as_long_as_the_servers_retry_after_hint(asynchronous: bool) -> None:
    # FAST_RETRY alone comes back within 20 ms; the refusal asks for 300 ms.
    with scripted_server([(StatusCode.UNAVAILABLE, "300"), None]) as server:
        assert _infer_once(server.target, asynchronous).id == "r"
        first, second = server.servicer.times
    assert second - first >= 0.3


@pytest.mark.parametrize("asynchronous", [False, True])
def test_a_hint_that_ends_past_the_deadline_is_not_waited_for(asynchronous: bool) -> None:
    # The backoff alone would retry at once and succeed; the hint says 5 s, the deadline is 2 s.
    with scripted_server([(StatusCode.UNAVAILABLE, "5000"), None]) as server:
        with pytest.raises(ServerUnavailableError):
            _infer_once(server.target, asynchronous, timeout_s=2.0)
        assert len(server.servicer.attempts) == 1


def test_retry_after_reads_the_trailing_metadata_and_ignores_what_is_not_a_wait() -> None:
    class Refusal(grpc.RpcError):
        def __init__(self, *trailing: tuple[str, str]) -> None:
            self.trailing = trailing

        def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
            return self.trailing

    assert retry_after_s(Refusal(("x", "1"), ("retry-after-ms", "250"))) == pytest.approx(0.25)
    assert retry_after_s(Refusal(("retry-after-ms", "soon"))) is None
    assert retry_after_s(Refusal(("retry-after-ms", "-5"))) is None
    assert retry_after_s(Refusal()) is None
    assert retry_after_s(grpc.RpcError()) is None  # no trailing metadata at all


def test_a_refused_stream_is_not_retried() -> None:
    """Streams are not retried (gRPC's stream retry lost a stream's last request now and then):
    a stream refused UNAVAILABLE fails at once, with one attempt, and the next stream works."""
    requests = [InferRequest("m", {"x": X}, request_id=str(i)) for i in range(3)]
    with scripted_server([StatusCode.UNAVAILABLE]) as server:
        with InferenceClient(server.target, retry=FAST_RETRY) as c:
            with pytest.raises(ServerUnavailableError):
                list(c.infer_stream(requests))
            assert len(server.servicer.attempts) == 1
            assert sorted(r.id for r in c.infer_stream(requests)) == ["0", "1", "2"]

        async def body() -> list[str]:
            async with AsyncInferenceClient(server.target, retry=FAST_RETRY) as c:
                # UNAVAILABLE, or INTERNAL when grpc.aio's request writer hits the call the server
                # already closed before its status arrives (grpc.aio then reports its own error).
                with pytest.raises((ServerUnavailableError, InternalServerError)):
                    [r async for r in c.infer_stream(requests)]
                return sorted([r.id async for r in c.infer_stream(requests)])

        server.servicer.codes[:] = [StatusCode.UNAVAILABLE]
        assert asyncio.run(body()) == ["0", "1", "2"]
        assert len(server.servicer.attempts) == 4


@pytest.mark.parametrize(
    ("code", "error"),
    [
        (StatusCode.NOT_FOUND, ModelNotFoundError),
        (StatusCode.INVALID_ARGUMENT, InvalidInputError),
        (StatusCode.INTERNAL, InternalServerError),
        (StatusCode.DEADLINE_EXCEEDED, DeadlineExceededError),
        (StatusCode.RESOURCE_EXHAUSTED, ResourceExhaustedError),
        (StatusCode.UNAUTHENTICATED, UnauthenticatedError),
        (StatusCode.ABORTED, InferenceServerError),
    ],
)
def test_other_codes_are_not_retried(code: grpc.StatusCode, error: type[InferenceServerError]) -> None:
    with scripted_server([code] * 5) as server, InferenceClient(server.target, retry=FAST_RETRY) as c:
        with pytest.raises(error) as info:
            c.infer("m", {"x": X})
        assert type(info.value) is error and info.value.code is code
        assert info.value.details == f"scripted {code.name}"
        assert len(server.servicer.attempts) == 1


# -- circuit breaker --------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_circuit_breaker_opens_and_probes_after_the_cool_down(srv: RunningServer, client: InferenceClient) -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=3, reset_timeout_s=5.0, clock=clock)
    client.unload_model("breaker")
    with InferenceClient(srv.grpc_target, retry=None, circuit_breaker=breaker) as guarded:
        for _ in range(3):
            with pytest.raises(ServerUnavailableError) as info:
                guarded.infer("breaker", {"x": X})
            assert not isinstance(info.value, CircuitOpenError)
        assert breaker.state("breaker") == "open"
        with pytest.raises(CircuitOpenError) as opened:
            guarded.infer("breaker", {"x": X})
        assert opened.value.retry_after_s == 5.0 and opened.value.__cause__ is None
        assert "3 consecutive UNAVAILABLE" in opened.value.details
        # Other models have their own circuit; health checks are never guarded.
        np.testing.assert_array_equal(guarded.infer("flaky", {"x": X})["y"], X)
        assert guarded.is_server_ready()
        # Cool-down over: one probe goes through; the model is still unloaded, so it opens again.
        clock.now += 5.0
        assert breaker.state("breaker") == "half_open"
        with pytest.raises(ServerUnavailableError) as probe:
            guarded.infer("breaker", {"x": X})
        assert not isinstance(probe.value, CircuitOpenError)
        with pytest.raises(CircuitOpenError):
            guarded.infer("breaker", {"x": X})
        # The model comes back; after the next cool-down the probe succeeds and closes the circuit.
        client.load_model("breaker")
        clock.now += 5.0
        np.testing.assert_array_equal(guarded.infer("breaker", {"x": X})["y"], X)
        assert breaker.state("breaker") == "closed"
        guarded.infer("breaker", {"x": X})


def test_open_circuit_sends_nothing() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=2, reset_timeout_s=1.0, clock=clock)
    with scripted_server([StatusCode.UNAVAILABLE] * 3) as server:
        with InferenceClient(server.target, retry=None, circuit_breaker=breaker) as c:
            for _ in range(2):
                with pytest.raises(ServerUnavailableError):
                    c.infer("m", {"x": X})
            for _ in range(5):
                with pytest.raises(CircuitOpenError):
                    c.infer("m", {"x": X})
            assert len(server.servicer.attempts) == 2
            clock.now += 1.0
            with pytest.raises(ServerUnavailableError):  # the probe: the third scripted UNAVAILABLE
                c.infer("m", {"x": X})
            clock.now += 1.0
            assert c.infer("m", {"x": X}).model_name == "m"
            assert len(server.servicer.attempts) == 4


def test_breaker_counts_a_call_once_whatever_its_retries() -> None:
    breaker = CircuitBreaker(failure_threshold=2, reset_timeout_s=60.0, clock=FakeClock())
    with scripted_server([StatusCode.UNAVAILABLE] * 20) as server:
        with InferenceClient(server.target, retry=FAST_RETRY, circuit_breaker=breaker) as c:
            with pytest.raises(ServerUnavailableError):
                c.infer("m", {"x": X})
            assert breaker.state("m") == "closed" and len(server.servicer.attempts) == 4
            with pytest.raises(ServerUnavailableError):
                c.infer("m", {"x": X})
            assert breaker.state("m") == "open" and len(server.servicer.attempts) == 8
            with pytest.raises(CircuitOpenError):
                c.infer("m", {"x": X})
            assert len(server.servicer.attempts) == 8


def test_async_circuit_breaker(srv: RunningServer) -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=1, reset_timeout_s=2.0, clock=clock)

    async def body() -> None:
        async with AsyncInferenceClient(srv.grpc_target, retry=None, circuit_breaker=breaker) as c:
            with pytest.raises(ModelNotFoundError):  # an answer, not UNAVAILABLE: stays closed
                await c.infer("no_such_model", {"x": X})
            assert breaker.state("no_such_model") == "closed"
            await c.unload_model("flaky")
            with pytest.raises(ServerUnavailableError):
                await c.infer("flaky", {"x": X})
            with pytest.raises(CircuitOpenError):
                await c.infer("flaky", {"x": X})
            await c.load_model("flaky")
            clock.now += 2.0
            assert (await c.infer("flaky", {"x": X}))["y"].tolist() == X.tolist()

    asyncio.run(body())


# -- cancellation -----------------------------------------------------------------------------


def test_cancelled_async_call_is_never_computed(srv: RunningServer, clock: SleeperClock) -> None:
    """The instance is busy; a queued call whose task is cancelled never runs on the server."""

    async def attempt(seconds: float) -> bool:
        before = model_stats(srv.stub, "sleeper_cancel")
        async with AsyncInferenceClient(srv.grpc_target) as c:
            busy_iterations = clock.iterations(seconds)
            busy = asyncio.ensure_future(c.infer("sleeper_cancel", sleep_input(busy_iterations), timeout=120))
            await asyncio.sleep(0.2)  # reaches the instance
            victim = asyncio.ensure_future(c.infer("sleeper_cancel", sleep_input(7)))
            await asyncio.sleep(0.2)  # queued behind it
            victim.cancel()
            cancelled_at = time.monotonic()
            with pytest.raises(asyncio.CancelledError):
                await victim
            assert (await busy)["y"].tolist() == [busy_iterations]
            busy_ended = time.monotonic()
        if busy_ended - cancelled_at < 0.05:
            return False  # the slow request had ended already: inconclusive, try longer
        failed = before.inference_stats.fail.count + 1  # the cancelled call, counted as CANCELED
        wait_for(lambda: model_stats(srv.stub, "sleeper_cancel").inference_stats.fail.count == failed)
        after = model_stats(srv.stub, "sleeper_cancel")
        assert after.execution_count == before.execution_count + 1  # only the busy request ran
        assert after.inference_count == before.inference_count + 1
        assert after.inference_stats.success.count == before.inference_stats.success.count + 1
        return True

    seconds = 1.0
    for _ in range(3):
        if asyncio.run(attempt(seconds)):
            return
        seconds *= 2
    raise AssertionError("the busy request never outlasted the cancellation")
