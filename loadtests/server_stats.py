"""The server's side of a run: ModelStatistics before and after, and the split of its latency.

ModelStatistics counters are cumulative since the server started, so the breakdown is the
difference of two snapshots, one when the test starts and one when it ends, summed over the
model's versions. Triton's counts (which ortserve follows): `success`, `queue` and the three
`compute_*` durations are per request (a request is charged the compute time of the batch it
ran in); `execution_count` counts model executions (batches) and `inference_count` rows.

Against a `dns:///name:port` target (a headless Kubernetes Service) every address the name
resolves to is a pod, and each is asked for its own counters: the breakdown is their sum. A pod
that appears during the run counts from zero; one that is gone at the end is left out.
Needs only the ortserve client SDK (no Locust): the tests import it directly.
"""

from __future__ import annotations

import math
import socket
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields

from loadtests.recorder import Measured
from ortserve_client.proto import grpc_service_pb2 as pb


@dataclass(frozen=True, slots=True)
class Counters:
    """The ModelStatistics counters a breakdown needs (one model, all versions)."""

    success_count: int = 0
    success_ns: int = 0
    fail_count: int = 0
    queue_ns: int = 0
    compute_input_ns: int = 0
    compute_infer_ns: int = 0
    compute_output_ns: int = 0
    inference_count: int = 0
    execution_count: int = 0

    @classmethod
    def of(cls, stats: pb.ModelStatistics) -> Counters:
        s = stats.inference_stats
        return cls(
            success_count=s.success.count,
            success_ns=s.success.ns,
            fail_count=s.fail.count,
            queue_ns=s.queue.ns,
            compute_input_ns=s.compute_input.ns,
            compute_infer_ns=s.compute_infer.ns,
            compute_output_ns=s.compute_output.ns,
            inference_count=stats.inference_count,
            execution_count=stats.execution_count,
        )

    def __add__(self, other: Counters) -> Counters:
        return Counters(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))

    def __sub__(self, other: Counters) -> Counters:
        return Counters(*(getattr(self, f.name) - getattr(other, f.name) for f in fields(self)))


Snapshot = dict[str, dict[str, Counters]]
"""address (pod) -> model -> counters."""


def by_model(messages: Iterable[pb.ModelStatistics]) -> dict[str, Counters]:
    """Sum the versions of each model."""
    totals: dict[str, Counters] = {}
    for message in messages:
        totals[message.name] = totals.get(message.name, Counters()) + Counters.of(message)
    return totals


def addresses(host: str) -> list[str]:
    """The servers behind a target: every address of a `dns:///name:port` target, else the target itself."""
    if not host.startswith("dns:///"):
        return [host]
    name, _, port = host[len("dns:///") :].rpartition(":")
    found = sorted({str(info[4][0]) for info in socket.getaddrinfo(name, int(port), type=socket.SOCK_STREAM)})
    return [f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}" for ip in found] or [host]


StatsReader = Callable[[str, str], list[pb.ModelStatistics]]
"""(address, model) -> that server's ModelStatistics of the model (one per version)."""


def take_snapshot(read: StatsReader, host: str, models: Iterable[str]) -> Snapshot:
    wanted = list(models)
    return {address: by_model(m for model in wanted for m in read(address, model)) for address in addresses(host)}


def delta(start: Snapshot, end: Snapshot) -> dict[str, Counters]:
    """Per model, what every server did between the snapshots."""
    totals: dict[str, Counters] = {}
    for address, models in end.items():
        before = start.get(address, {})
        for model, counters in models.items():
            totals[model] = totals.get(model, Counters()) + (counters - before.get(model, Counters()))
    return totals


@dataclass(frozen=True, slots=True)
class Breakdown:
    """One model's server-side split over the run, beside the client's numbers."""

    model: str
    requests: int
    """Requests the server answered successfully."""
    failures: int
    batches: int
    rows_per_batch: float
    """The average batch size, in rows (what the model ran on)."""
    requests_per_batch: float
    server_ms: float
    """Average end-to-end time inside the server (receive to answer), per successful request."""
    queue_ms: float
    compute_ms: float
    """input + infer + output of the batch the request ran in."""
    compute_infer_ms: float
    client_mean_ms: float
    client_p50_ms: float
    client_p99_ms: float
    client_requests: int

    @property
    def other_server_ms(self) -> float:
        """Server time neither queued nor computing: decode, validate, schedule, split, encode."""
        return self.server_ms - self.queue_ms - self.compute_ms

    @property
    def outside_server_ms(self) -> float:
        """Client mean minus server mean: network, gRPC on both ends, the SDK, Locust's greenlets."""
        return self.client_mean_ms - self.server_ms


def _per(total_ns: int, count: int) -> float:
    return total_ns / count / 1e6 if count else math.nan


def breakdown(model: str, counters: Counters, client: Measured) -> Breakdown:
    n = counters.success_count
    return Breakdown(
        model=model,
        requests=n,
        failures=counters.fail_count,
        batches=counters.execution_count,
        rows_per_batch=counters.inference_count / counters.execution_count if counters.execution_count else math.nan,
        requests_per_batch=n / counters.execution_count if counters.execution_count else math.nan,
        server_ms=_per(counters.success_ns, n),
        queue_ms=_per(counters.queue_ns, n),
        compute_ms=_per(counters.compute_input_ns + counters.compute_infer_ns + counters.compute_output_ns, n),
        compute_infer_ms=_per(counters.compute_infer_ns, n),
        client_mean_ms=client.mean_ms,
        client_p50_ms=client.p50_ms,
        client_p99_ms=client.p99_ms,
        client_requests=client.requests,
    )


def breakdowns(deltas: Mapping[str, Counters], measured: Mapping[str, Measured]) -> list[Breakdown]:
    empty = Measured(0, 0, math.nan, math.nan, math.nan, math.nan, math.nan)
    models = sorted(set(deltas) | set(measured))
    return [breakdown(m, deltas.get(m, Counters()), measured.get(m, empty)) for m in models]
