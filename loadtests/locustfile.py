"""Locust gRPC load test of ortserve, with latency targets that fail the run when missed.

    locust -f loadtests/locustfile.py --headless -H localhost:8001 -u 8 -r 8 -t 30s \
        [--targets loadtests/targets.toml] [--shape steady|step|spike|knee] [--models iris:3,other]

(`loadtests/run.sh` does this against a server it starts; `locust -f loadtests/locustfile.py
--help` lists every option under "ortserve", each also an ORTSERVE_LOADTEST_* variable.)

1. At import, `grpc.experimental.gevent.init_gevent()` makes gRPC's blocking calls yield to
   other greenlets (Locust runs on gevent); it precedes every channel.
2. `init`, on a local run or the master: read the targets, wait for the server, choose the models
   (`--models`, else the targets file's, else every ready one) and check that each one's requests
   can be made. A problem ends the run here with exit code 2, before any load.
3. `test_start`, where users run (a local run, each worker): one SDK client per process, a pool of
   seeded requests per model (or a .npz's rows) and one weighted `TaskSet` per model. A worker
   builds its workload from its master's options, which arrive with the spawn message. Where the
   verdict is made (local run, master): forget earlier samples, snapshot ModelStatistics.
4. Each task makes one ModelInfer and fires Locust's `request` event (type "ModelInfer", the
   model as name, response time, exception). A listener also records it in 1 %-resolution
   histograms (`recorder.py`), which workers ship to their master in their reports.
5. The load shape (`OrtserveShape` over `shapes.py`) sets the users at each tick and ends the run.
6. `quitting`, on a local run or the master only (a worker never judges): judge each model
   (`verdict.py`), snapshot ModelStatistics again for the server-side split (`server_stats.py`),
   write the CSVs beside Locust's; exit code 3 when a target was missed. The tables are printed
   on `quit`, after Locust's own summary.
"""

from __future__ import annotations

import importlib.util
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gevent
import grpc.experimental.gevent
from locust import LoadTestShape, TaskSet, User, constant, constant_throughput, events, task
from locust import log as locust_log
from locust.env import Environment
from locust.runners import WORKER_REPORT_INTERVAL, MasterRunner, WorkerRunner

from ortserve_client import InferenceClient
from ortserve_client.proto import grpc_service_pb2 as pb

grpc.experimental.gevent.init_gevent()  # step 1: before any channel

if importlib.util.find_spec("loadtests") is None:  # `locust -f path/to/loadtests/locustfile.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from loadtests import inputs, options, report, server_stats, shapes, verdict  # noqa: E402
from loadtests.recorder import Recorder  # noqa: E402
from loadtests.targets import Targets, TargetsError  # noqa: E402
from loadtests.workload import ModelLoad, SetupError, build_loads, choose_models, make_client, wait_ready  # noqa: E402

log = logging.getLogger("ortserve.loadtest")

RPC = "ModelInfer"
"""The request type of the request events (the "Type" column of Locust's tables)."""
EXIT_SETUP = 2
EXIT_MISSED = 3


@events.init_command_line_parser.add_listener
def _options(parser: Any) -> None:
    options.add_arguments(parser.add_argument_group("ortserve", "the ortserve load test (loadtests/options.py)"))


# -- per-process state ----------------------------------------------------------------------------


@dataclass
class Process:
    """What this Locust process holds from one event to the next."""

    recorder: Recorder = field(default_factory=Recorder)
    options: Any = None
    host: str = ""
    client: InferenceClient | None = None
    targets: Targets | None = None
    models: list[str] = field(default_factory=list)
    failure: str = ""
    """Why this process's workload could not be built."""
    start_ts: float = 0.0
    stats_start: server_stats.Snapshot | None = None
    stats_clients: dict[str, InferenceClient] = field(default_factory=dict)
    plan: shapes.Plan | None = None
    tables: list[str] = field(default_factory=list)


PROCESS = Process()


# -- the users ------------------------------------------------------------------------------------


class ModelTasks(TaskSet):
    """The requests of one model; `tasks_for` makes a subclass per model when the test starts.

    Each visit makes one request and hands control back (interrupt), so that the user's weighted
    pick of a model and its wait time apply between any two requests.
    """

    load: ModelLoad

    @task
    def infer(self) -> None:
        load, client = self.load, PROCESS.client
        assert client is not None
        request = next(load.cycle)
        exception: Exception | None = None
        length = 0
        start = time.perf_counter()
        try:
            result = client.infer(load.name, request)
            length = sum(array.nbytes for array in result.values())
        except Exception as exc:  # noqa: BLE001 - any failure is a failed request in the stats
            exception = exc
        self.user.environment.events.request.fire(
            request_type=RPC,
            name=load.name,
            response_time=(time.perf_counter() - start) * 1000.0,
            response_length=length,
            exception=exception,
            context={},
        )
        self.interrupt(reschedule=False)


def _not_built(user: User) -> None:
    gevent.sleep(1)  # no hot loop of errors
    raise RuntimeError(f"the ortserve workload was not built: {PROCESS.failure or 'the test has not started'}")


class OrtserveUser(User):
    """A gRPC client of ortserve through the ortserve client SDK (one client shared per process)."""

    host = "localhost:8001"
    wait_time = constant(0)
    tasks: Any = [_not_built]


def tasks_for(loads: list[ModelLoad]) -> list[type[TaskSet]]:
    """One TaskSet class per model, repeated by its weight (Locust picks among `tasks` uniformly)."""
    classes: list[type[TaskSet]] = []
    for load in loads:
        classes += [type(f"ModelTasks[{load.name}]", (ModelTasks,), {"load": load})] * load.weight
    return classes


def use(loads: list[ModelLoad], options: Any) -> None:
    OrtserveUser.tasks = tasks_for(loads)
    OrtserveUser.wait_time = constant_throughput(options.user_rps) if options.user_rps > 0 else constant(0)


# -- events ---------------------------------------------------------------------------------------


def is_worker(environment: Environment) -> bool:
    return isinstance(environment.runner, WorkerRunner)


@events.init.add_listener
def _init(environment: Environment, **_: Any) -> None:
    if is_worker(environment):
        environment.events.report_to_master.add_listener(_report_to_master)
        return
    if isinstance(environment.runner, MasterRunner):
        environment.events.worker_report.add_listener(_worker_report)
    try:
        setup(environment, build=not isinstance(environment.runner, MasterRunner))
    except (SetupError, TargetsError, inputs.InputError) as exc:
        log.error("ortserve load test: %s", exc)
        sys.exit(EXIT_SETUP)


def connect(environment: Environment) -> InferenceClient:
    PROCESS.options = options = environment.parsed_options
    PROCESS.host = environment.host or OrtserveUser.host
    PROCESS.client = make_client(options, PROCESS.host)
    wait_ready(PROCESS.client, PROCESS.host, options.server_wait_s)
    return PROCESS.client


def setup(environment: Environment, *, build: bool) -> None:
    """Step 2: targets, server, models; with `build` (a local run), the users' workload too."""
    options = environment.parsed_options
    if options.targets and options.targets.lower() != "none":
        PROCESS.targets = Targets.load(options.targets)
    client = connect(environment)
    chosen = choose_models(options.models, PROCESS.targets, client)
    PROCESS.models = [c.name for c in chosen]
    if options.shape == "knee" and all(verdict.target_of(PROCESS.targets, m).p99_ms is None for m in PROCESS.models):
        raise SetupError("--shape knee looks for the most load at which the p99 targets hold: give p99_ms targets")
    # Custom options travel to the workers with each spawn message: they load the models chosen here.
    options.models = ",".join(f"{c.name}:{c.weight}" for c in chosen)
    loads = build_loads(options, client, chosen)  # on a master too: a bad input stops the run here
    if build:
        use(loads, options)


@events.test_start.add_listener
def _test_start(environment: Environment, **_: Any) -> None:
    PROCESS.recorder.clear()
    if is_worker(environment):
        try:
            client = PROCESS.client or connect(environment)
            options = PROCESS.options = environment.parsed_options
            use(build_loads(options, client, choose_models(options.models, None, client)), options)
            PROCESS.failure = ""
        except Exception as exc:
            PROCESS.failure = str(exc)
            raise
        return
    PROCESS.tables = []
    PROCESS.start_ts = time.time()
    PROCESS.stats_start = read_stats()


@events.request.add_listener
def _on_request(request_type: str, name: str, response_time: float, exception: Exception | None, **_: Any) -> None:
    if request_type == RPC:
        PROCESS.recorder.record(name, response_time, exception is None, time.time())


def _report_to_master(client_id: str, data: dict[str, Any]) -> None:
    data["ortserve"] = PROCESS.recorder.drain()


def _worker_report(client_id: str, data: dict[str, Any]) -> None:
    PROCESS.recorder.merge(data.get("ortserve", []))


def read_stats() -> server_stats.Snapshot | None:
    """ModelStatistics of the run's models from every server; None (and a warning) when unreadable."""

    def read(address: str, model: str) -> list[pb.ModelStatistics]:
        client = PROCESS.client if address == PROCESS.host else PROCESS.stats_clients.get(address)
        if client is None:
            name = PROCESS.host.removeprefix("dns:///").rpartition(":")[0]  # the pods' certificate name
            client = PROCESS.stats_clients[address] = make_client(PROCESS.options, address, name)
        return client.model_statistics(model, timeout=10)

    try:
        return server_stats.take_snapshot(read, PROCESS.host, PROCESS.models)
    except Exception as exc:  # noqa: BLE001 - the breakdown informs; it never fails a run
        log.warning("ortserve load test: cannot read ModelStatistics: %s", exc)
        return None


@events.quitting.add_listener
def _quitting(environment: Environment, **_: Any) -> None:
    if is_worker(environment):
        # The master judges. A worker exits 0 unless it crashed, so that a Kubernetes Job of workers
        # completes rather than retrying against a master that is gone.
        if environment.process_exit_code is None and not locust_log.unhandled_greenlet_exception:
            environment.process_exit_code = 0
        return
    if not PROCESS.start_ts:
        return  # no test ran
    options, plan = environment.parsed_options, PROCESS.plan
    result = verdict.judge_run(PROCESS.recorder, PROCESS.models, PROCESS.targets, PROCESS.start_ts, plan)
    source = PROCESS.targets.source if PROCESS.targets is not None else "no targets file"
    PROCESS.tables = [report.targets_table(result.checks, result.passed, source, result.span)]
    if isinstance(plan, shapes.KneeSearch):
        PROCESS.tables.append(report.knee_table(plan.stages, result.knee, plan.stage_s, plan.settle_s))
    stats_end = read_stats()
    breakdowns: list[server_stats.Breakdown] = []
    if PROCESS.stats_start is not None and stats_end is not None:
        deltas = server_stats.delta(PROCESS.stats_start, stats_end)
        breakdowns = server_stats.breakdowns(
            {m: deltas.get(m, server_stats.Counters()) for m in PROCESS.models}, result.measured
        )
        servers = f"{len(stats_end)} server{'s' if len(stats_end) > 1 else ''} at {PROCESS.host}"
        PROCESS.tables.append(report.breakdown_table(breakdowns, servers))
    else:
        PROCESS.tables.append("ortserve server-side breakdown: unavailable (ModelStatistics could not be read)")
    if options.csv_prefix:
        report.write_all(options.csv_prefix, result.checks, breakdowns, plan)
    if not result.passed:
        environment.process_exit_code = EXIT_MISSED
    elif not locust_log.unhandled_greenlet_exception and all(
        not verdict.target_of(PROCESS.targets, m).is_empty() for m in PROCESS.models
    ):
        environment.process_exit_code = 0  # failed requests were judged by the error-ratio targets


@events.quit.add_listener
def _quit(exit_code: int, **_: Any) -> None:
    if PROCESS.tables:
        print("\n" + "\n\n".join(PROCESS.tables) + "\n", flush=True)


# -- the load shape -------------------------------------------------------------------------------


class OrtserveShape(LoadTestShape):
    """The shape named by --shape (ORTSERVE_LOADTEST_SHAPE): steady, step, spike or knee.

    Locust runs the one LoadTestShape of a locustfile (on the master), so this one builds the
    chosen plan of `shapes.py` when the test starts and asks it at every tick. It ends the run
    itself: Locust does not apply -t to a shape (the plans read -u, -r and -t).
    """

    use_common_options = True

    def reset_time(self) -> None:
        super().reset_time()
        PROCESS.plan = None

    def tick(self) -> shapes.Tick:
        if PROCESS.plan is None:
            assert self.runner is not None
            PROCESS.plan = make_plan(self.runner.environment)
        return PROCESS.plan.tick(time.time())


def make_plan(environment: Environment) -> shapes.Plan:
    options = environment.parsed_options
    users, rate = int(options.num_users or 1), float(options.spawn_rate or 1)
    run_time = float(options.run_time) if options.run_time else None
    if options.shape == "step":
        return shapes.Step(users, rate, options.stages, run_time / options.stages if run_time else options.stage_s)
    if options.shape == "spike":
        return shapes.Spike(users, rate, run_time or 5 * options.stage_s, options.spike_base_ratio)
    if options.shape == "knee":
        # A master sees a worker's samples up to one report interval late.
        lag_s = WORKER_REPORT_INTERVAL + 1.0 if isinstance(environment.runner, MasterRunner) else 0.5
        return shapes.KneeSearch(
            max_users=users,
            judge=verdict.stage_judge(PROCESS.recorder, PROCESS.models, PROCESS.targets),
            start_users=options.knee_start_users,
            factor=options.knee_factor,
            stage_s=options.stage_s,
            settle_s=options.settle_s,
            lag_s=lag_s,
            resolution=options.knee_resolution,
        )
    return shapes.Steady(users, rate, run_time)
