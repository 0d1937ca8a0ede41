"""Issue 3's GPU target: ortserve against in-process ONNX Runtime with IO binding, ResNet-50.

    python -m benchmarks.gpu --json gpu.json            # CUDA, ResNet-50, 3 repeats
    python -m benchmarks.gpu --device cpu --tiny ...    # the same pipeline on CPU (smoke test)

Target: "On an H100-class GPU, a ResNet-50-sized model with the CUDA execution provider and IO
binding at concurrency 128 reaches >= 90% of in-process ONNX Runtime's best batched throughput."
Exit status: 0 the target is met (median over repeats), 3 missed, 2 the run cannot start (no CUDA
provider, no GPU in the session, no perf_analyzer), 1 anything else. On a lent GPU machine with no
network, benchmarks/gpu_device.sh installs what is missing there and runs this module.

Steps (`main`):

1. Build the model (resnet.py; `--tiny`: a scaled-down ResNet) into a temporary repository with a
   complete config.pbtxt: max_batch_size 128, `dynamic_batching { }`, one instance of KIND_GPU
   (KIND_CPU with `--device cpu`), and the cuda accelerator's cudnn_conv_algo_search (`--cudnn-search`,
   HEURISTIC by default; the in-process session gets the same). With ONNX Runtime's EXHAUSTIVE
   default every new batch shape pays a timed search of every cuDNN algorithm, and a batcher forms
   up to 128 shapes; the run prints what EXHAUSTIVE gives the in-process ceiling at the largest batch.
2. `--device cuda`: exit 2 unless onnxruntime has CUDAExecutionProvider and a session really holds
   it (`session.get_providers()`; onnxruntime-gpu falls back to CPU quietly).
3. Start `ortserve serve --device cuda|cpu` (servers.py). Its server side runs `session.run` with
   host numpy arrays: ortserve does not use IO binding yet, so every batch pays a host-to-device
   copy of its inputs and a device-to-host copy of its outputs inside `session.run`.
4. Warm up: the in-process session at every batch size; then time the ways one batch can reach
   ONNX Runtime in this process (runpaths.py, `--diagnose-batch`, 64 by default): IO binding,
   session.run, a freshly concatenated batch, ortserve's own OrtInstance, and that instance from
   a worker thread while the main thread holds the GIL busy, with Python's 5 ms switch interval and
   with 0.5 ms. Then per server and concurrency, a short perf_analyzer probe (sizes the windows from
   the server's own rate) and one discarded run that meets the batch shapes. Server lines echo
   each instance's providers from the server's log. `--server-arg` passes flags to `ortserve serve`.
   With `--instances 1,2` one server runs per instance count (each its own repository, all of them
   up at once, measured in turn within each repeat): two instances on one GPU let one batch's
   host-side work (concatenation, copies) overlap the other's compute. The verdict takes the best
   count. Each extra server costs its own warm-up (about as long as the first's). With
   `--processes P` each instance count is served by P identical `ortserve serve` processes on
   ports of their own, started at once and sharing the GPU, each driven by its own perf_analyzer at
   its share of the concurrency, all at the same time; a row adds up their images/s (p50/p99: the
   worst process's). One process's event loop and GIL bound the server at this request size (the
   H200 runs below); P processes have P of each.
5. For each repeat: sweep in-process ONNX Runtime over batch sizes in two IO-binding variants
   (`host`: the input is bound from host memory with `bind_cpu_input` at every run, so it is
   copied to the device each time, as a server must; `device`: bound once as a device OrtValue),
   outputs bound to the device, `run_with_iobinding`, `synchronize_outputs`; the ceiling is the
   best batch size of the `host` variant. Then ortserve under perf_analyzer (loadgen.py) at each
   concurrency, one-image requests, three count windows, reading ModelStatistics around each run.
6. Print (and with `--json`, write) the table: medians [min-max] over the repeats, the ratio of
   ortserve to the ceiling taken within each repeat, p50/p99, mean batch, where the server's time
   went (session.run ms per batch from ModelStatistics, batch assembly + output slicing ms, the share
   of wall time the instances ran, the busiest server thread's CPU share, the server's cores), the
   GPU and versions, and the verdict against `--target` at the highest concurrency.

H200 runs (docs/performance.md, "GPU runs"): at first ortserve reached 0.10 x the ceiling at
C=128, every batch rebuilding ONNX Runtime's cuDNN plans because batch sizes kept changing; with
batch shapes (server/ortserve/batching/shapes.py) 0.39 x, bounded by one process's GIL.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from benchmarks import loadgen, resnet, runpaths, servers
from benchmarks.machine import environment
from benchmarks.report import median, summary, text_table

CUDA = "CUDAExecutionProvider"
MODEL = "resnet"
VARIANTS = ("host", "device")
SERVER_NOTE = "ortserve runs session.run with host numpy arrays (no IO binding on the server side yet)"


class CannotStart(Exception):
    """The run cannot start on this machine (exit status 2)."""


def config_text(
    spec: resnet.ResNet,
    max_batch_size: int,
    device: str,
    instances: int = 1,
    cudnn_search: str = "",
    batch_shapes: str = "",
    batch_hold: str = "",
) -> str:
    dims = ", ".join(str(d) for d in spec.input_dims)
    kind = "KIND_GPU" if device == "cuda" else "KIND_CPU"
    return "\n".join(
        [
            f'name: "{MODEL}"',
            'platform: "onnxruntime_onnx"',
            f"max_batch_size: {max_batch_size}",
            f'input [ {{ name: "x" data_type: TYPE_FP32 dims: [ {dims} ] }} ]',
            f'output [ {{ name: "y" data_type: TYPE_FP32 dims: [ {spec.output_dims[0]} ] }} ]',
            f"instance_group [ {{ count: {instances} kind: {kind} gpus: [ 0 ] }} ]"
            if device == "cuda"
            else f"instance_group [ {{ count: {instances} kind: {kind} }} ]",
            "dynamic_batching { }",
            (
                "optimization { execution_accelerators { gpu_execution_accelerator: [ { name: \"cuda\" "
                f'parameters {{ key: "cudnn_conv_algo_search" value: "{cudnn_search}" }} }} ] }} }}'
            )
            if cudnn_search
            else "",
            f'parameters {{ key: "batch_shapes" value {{ string_value: "{batch_shapes}" }} }}' if batch_shapes else "",
            f'parameters {{ key: "batch_hold" value {{ string_value: "{batch_hold}" }} }}' if batch_hold else "",
            "",
        ]
    )


def make_session(path: Path, device: str, threads: int, cudnn_search: str = "") -> Any:
    """The session options ortserve gives a one-instance model (inprocess.py), on `device`."""
    import onnxruntime as ort

    from benchmarks.inprocess import session_options

    so = session_options(threads)
    # The providers ortserve asks for (runtime/providers.py): CUDA on GPU 0, CPU for the rest.
    options = {"device_id": 0, **({"cudnn_conv_algo_search": cudnn_search} if cudnn_search else {})}
    providers: list[Any] = [(CUDA, options), "CPUExecutionProvider"] if device == "cuda" else []
    session = ort.InferenceSession(str(path), so, providers=providers or ["CPUExecutionProvider"])
    if device == "cuda" and CUDA not in session.get_providers():
        raise CannotStart(
            f"the session holds only {session.get_providers()}: is a GPU visible (nvidia-smi) and are the "
            "CUDA and cuDNN libraries of this onnxruntime-gpu build on the library path?"
        )
    return session


@dataclass(slots=True)
class Point:
    batch: int
    images_per_s: float
    ms_per_batch: float


def measure_iobinding(session: Any, device: str, batch: int, variant: str, seconds: float) -> Point:
    """Images/s of back-to-back `run_with_iobinding` on `batch` images, after a warm-up."""
    import onnxruntime as ort

    where = "cuda" if device == "cuda" else "cpu"
    arg = session.get_inputs()[0]
    x = np.random.default_rng(batch).standard_normal((batch, *arg.shape[1:])).astype(np.float32)
    binding = session.io_binding()
    if variant == "device":
        binding.bind_ortvalue_input(arg.name, ort.OrtValue.ortvalue_from_numpy(x, where, 0))
    for out in session.get_outputs():
        binding.bind_output(out.name, where, 0)

    def run() -> None:
        if variant == "host":
            binding.bind_cpu_input(arg.name, x)  # copied to the device for this run
        session.run_with_iobinding(binding)
        binding.synchronize_outputs()

    warm_end = time.perf_counter() + seconds / 4
    for _ in range(3):  # the first run of a shape includes the cuDNN algorithm search
        run()
    while time.perf_counter() < warm_end:
        run()
    runs, start = 0, time.perf_counter()
    while runs < 3 or time.perf_counter() - start < seconds:
        run()
        runs += 1
    elapsed = time.perf_counter() - start
    return Point(batch, batch * runs / elapsed, 1000 * elapsed / runs)


@dataclass(slots=True)
class ServerSample:
    infer_per_s: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    mean_batch: float = 0.0
    batch_sizes_new: int = 0
    """Batch sizes the server executed for the first time during this measurement."""
    infer_ms_per_batch: float = 0.0
    """Mean `session.run` time of one batch (ModelStatistics compute_infer per execution)."""
    instance_busy: float = 0.0
    """Share of the measurement's wall time the instances spent in `session.run` (1.0: always)."""
    host_ms_per_batch: float = 0.0
    """Mean batch assembly + output slicing time (compute_input + compute_output per execution)."""
    busiest_thread: float = 0.0
    """CPU share of the server's busiest thread over the measurement."""
    loop_thread: float = 0.0
    """CPU share of the server's main thread, the one that runs the event loop."""
    server_cores: float = 0.0
    """CPU cores the whole server process used over the measurement."""
    busy_threads: int = 0
    """Server threads that used more than a quarter of a core (8+ on a GPU model: ONNX Runtime on CPU)."""
    loop_us_per_request: float = 0.0
    """CPU of the event loop's thread per request answered (one process's bound on requests/s)."""
    faults_per_request: float = 0.0
    """Minor page faults of the server per request answered (~147 a 602 KB request: every page refaulted)."""
    per_process: list[float] = field(default_factory=list)
    """Images/s of each server process (`--processes`; one entry for one process)."""
    error: str = ""


@dataclass(slots=True)
class Executed:
    """ModelStatistics' per-batch-size counters, summed over the batch sizes."""

    sizes: set[int]
    executions: int
    infer_ns: int
    host_ns: int


def executed(target: str) -> Executed:
    """The model's batch_stats: the batch sizes it has executed and its compute time so far."""
    import grpc

    from ortserve_client.proto import grpc_service_pb2 as pb
    from ortserve_client.proto import grpc_service_pb2_grpc as pb_grpc

    with grpc.insecure_channel(target) as channel:
        reply = pb_grpc.GRPCInferenceServiceStub(channel).ModelStatistics(
            pb.ModelStatisticsRequest(name=MODEL), timeout=10
        )
    stats = reply.model_stats[0].batch_stats
    return Executed(
        {b.batch_size for b in stats},
        sum(b.compute_infer.count for b in stats),
        sum(b.compute_infer.ns for b in stats),
        sum(b.compute_input.ns + b.compute_output.ns for b in stats),
    )


@dataclass(slots=True)
class _Reading:
    """One server process over one measurement: its perf_analyzer's result and its own counters."""

    m: loadgen.Measurement
    answered: int = 0
    executions: int = 0
    runs: int = 0
    infer_ns: int = 0
    host_ns: int = 0
    new_sizes: int = 0
    wall: float = 0.0
    used: list[float] = field(default_factory=list)
    """CPU seconds of each of its threads."""
    loop_s: float = 0.0
    faults: int = 0


def _read_one(
    pa: Path,
    proc: servers.Proc,
    concurrency: int,
    requests: int,
    pa_threads: int,
    timeout_s: float,
    extra: Sequence[str],
) -> _Reading:
    before, done_before = servers.counts(proc.target, MODEL), executed(proc.target)
    threads_before, faults_before, started = proc.thread_cpu_s(), proc.minor_faults(), time.perf_counter()
    m = loadgen.measure(
        pa, proc.target, MODEL, concurrency, requests, timeout_s=timeout_s, max_threads=pa_threads, extra=extra
    )
    wall, threads_after, faults = time.perf_counter() - started, proc.thread_cpu_s(), proc.minor_faults()
    if m.error:
        return _Reading(m)
    after, done_after = servers.counts(proc.target, MODEL), executed(proc.target)
    used_by = {tid: cpu - threads_before.get(tid, (name, 0.0))[1] for tid, (name, cpu) in threads_after.items()}
    return _Reading(
        m,
        answered=after.inferences - before.inferences,
        executions=after.executions - before.executions,
        runs=done_after.executions - done_before.executions,
        infer_ns=done_after.infer_ns - done_before.infer_ns,
        host_ns=done_after.host_ns - done_before.host_ns,
        new_sizes=len(done_after.sizes - done_before.sizes),
        wall=wall,
        used=list(used_by.values()),
        loop_s=used_by.get(proc.pid, 0.0),
        faults=faults - faults_before,
    )


def split_load(concurrency: int, requests: int, processes: int) -> list[tuple[int, int]]:
    """(concurrency, requests per window) of each process's perf_analyzer: C and the windows shared out."""
    share = [concurrency // processes + (i < concurrency % processes) for i in range(processes)]
    return [(c, max(10, requests * c // max(concurrency, 1))) for c in share]


def measure_server(
    pa: Path,
    procs: Sequence[servers.Proc],
    concurrency: int,
    requests: int,
    pa_threads: int,
    instances: int = 1,
    timeout_s: float = 240,
    extra: Sequence[str] = (),
) -> ServerSample:
    """One measurement of one server, or of several processes each loaded by its own perf_analyzer at once.

    With several processes the concurrency and the windows are shared out (split_load), images/s
    add up, p50 and p99 are the worst process's, and the per-batch and per-request columns are
    over all processes together.
    """
    loads = split_load(concurrency, requests, len(procs))
    with ThreadPoolExecutor(len(procs)) as pool:  # perf_analyzer runs in subprocesses: threads suffice
        futures = [
            pool.submit(_read_one, pa, proc, c, n, pa_threads, timeout_s, extra)
            for proc, (c, n) in zip(procs, loads, strict=True)
        ]
        readings = [f.result() for f in futures]
    errors = [r.m.error for r in readings if r.m.error]
    if errors:
        return ServerSample(error=errors[0] if len(procs) == 1 else f"{len(errors)} of {len(procs)}: {errors[0]}")
    wall = max(r.wall for r in readings)
    answered = sum(r.answered for r in readings)
    executions = sum(r.executions for r in readings)
    runs = sum(r.runs for r in readings)
    infer_ns, host_ns = sum(r.infer_ns for r in readings), sum(r.host_ns for r in readings)
    used = [u for r in readings for u in r.used]
    return ServerSample(
        sum(r.m.infer_per_s for r in readings),
        max(r.m.p50_ms for r in readings),
        max(r.m.p99_ms for r in readings),
        answered / executions if executions else 0.0,
        max(r.new_sizes for r in readings),
        infer_ns / runs / 1e6 if runs else 0.0,
        infer_ns / 1e9 / wall / (instances * len(procs)) if wall > 0 else 0.0,
        host_ns / runs / 1e6 if runs else 0.0,
        max(used, default=0.0) / wall if wall > 0 else 0.0,
        max(r.loop_s for r in readings) / wall if wall > 0 else 0.0,
        sum(used) / wall if wall > 0 else 0.0,
        sum(u > 0.25 * wall for u in used),
        sum(r.loop_s for r in readings) * 1e6 / answered if answered else 0.0,
        sum(r.faults for r in readings) / answered if answered else 0.0,
        [r.m.infer_per_s for r in readings],
    )


@dataclass
class Results:
    sweeps: list[dict[str, list[Point]]] = field(default_factory=list)
    """Per repeat: variant -> one Point per batch size."""
    server: dict[int, dict[int, list[ServerSample]]] = field(default_factory=dict)
    """Instance count -> concurrency -> one sample per repeat."""

    def ceiling(self, repeat: int, variant: str = "host") -> Point:
        return max(self.sweeps[repeat][variant], key=lambda p: p.images_per_s)


def gpu_name(device: str) -> str:
    try:
        done = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        if done.returncode == 0 and done.stdout.strip():
            name, driver, memory = (s.strip() for s in done.stdout.splitlines()[0].split(","))
            return f"{name} (driver {driver}, {memory})"
    except (OSError, subprocess.TimeoutExpired, ValueError):
        pass
    return "none found by nvidia-smi" + (" (CPU run)" if device == "cpu" else "")


def brief(s: ServerSample) -> str:
    """One measurement in a progress line (the table has them all)."""
    return (
        f"{s.infer_per_s:.0f} infer/s, batch {s.mean_batch:.1f}, run {s.infer_ms_per_batch:.1f} ms, "
        f"busy {s.instance_busy:.2f}, busiest thread {s.busiest_thread:.2f}, loop thread {s.loop_thread:.2f}, "
        f"{s.server_cores:.1f} cores in "
        f"{s.busy_threads} busy threads, loop {s.loop_us_per_request:.0f} µs/req, "
        f"{s.faults_per_request:.1f} faults/req, {s.batch_sizes_new} new sizes"
    )


def ratios(r: Results, instances: int, concurrency: int, variant: str = "host") -> list[float]:
    return [
        s.infer_per_s / r.ceiling(i, variant).images_per_s
        for i, s in enumerate(r.server[instances][concurrency])
        if not s.error and r.ceiling(i, variant).images_per_s > 0
    ]


def best_instances(r: Results, concurrency: int) -> int:
    """The instance count with the highest median ratio at `concurrency` (the first, if none measured)."""
    measured = {n: ratios(r, n, concurrency) for n in r.server}
    return max(r.server, key=lambda n: median(measured[n]) if measured[n] else -1.0)


SHM_ARGS = ("--shared-memory", "system", "--output-shared-memory-size", "16384")


def render(
    r: Results, batches: Sequence[int], target: float, verdict_c: int, shared_memory: bool = False, processes: int = 1
) -> tuple[list[str], str]:
    header = [
        "row",
        "C",
        "images/s",
        "x ceiling",
        "p50 ms",
        "p99 ms",
        "mean batch",
        "run ms/batch",
        "host ms/batch",
        "instances busy",
        "busiest thread",
        "loop thread",
        "server cores",
        "loop µs/req",
        "faults/req",
        "new batch sizes",
    ]
    rows = []
    for variant in VARIANTS:
        best = [r.ceiling(i, variant) for i in range(len(r.sweeps))]
        bs = [p.batch for p in best]
        rows.append(
            [
                f"in-process ORT, IO binding, {variant} input, best batch ({max(set(bs), key=bs.count)})",
                "-",
                summary([p.images_per_s for p in best]),
                summary([b.images_per_s / r.ceiling(i).images_per_s for i, b in enumerate(best)], 2),
                "",
                "",
                str(max(set(bs), key=bs.count)),
                f"{median([p.ms_per_batch for p in best]):.2f}",
                *[""] * 8,
            ]
        )
    for n, by_c in r.server.items():
        for c, samples in by_c.items():
            ok = [s for s in samples if not s.error]
            errors = [s.error for s in samples if s.error]
            rows.append(
                [
                    f"ortserve, dynamic_batching (session.run, host arrays), {n} instance{'s' if n > 1 else ''}"
                    + (f" in each of {processes} processes (a perf_analyzer each)" if processes > 1 else "")
                    + (", inputs in system shared memory" if shared_memory else "")
                    + (f" [{len(errors)} failed: {errors[-1]}]" if errors else ""),
                    str(c),
                    summary([s.infer_per_s for s in ok]),
                    summary(ratios(r, n, c), 2),
                    summary([s.p50_ms for s in ok], 2),
                    summary([s.p99_ms for s in ok], 2),
                    summary([s.mean_batch for s in ok], 1),
                    summary([s.infer_ms_per_batch for s in ok], 2),
                    summary([s.host_ms_per_batch for s in ok], 2),
                    summary([s.instance_busy for s in ok], 2),
                    summary([s.busiest_thread for s in ok], 2),
                    summary([s.loop_thread for s in ok], 2),
                    summary([s.server_cores for s in ok], 1),
                    summary([s.loop_us_per_request for s in ok]),
                    summary([s.faults_per_request for s in ok], 1),
                    summary([s.batch_sizes_new for s in ok]),
                ]
            )
    sweep_header = ["images/s by batch"] + [f"b{b}" for b in batches]
    sweep_rows = [
        [f"{v} input"] + [summary([sweep[v][j].images_per_s for sweep in r.sweeps]) for j in range(len(batches))]
        for v in VARIANTS
    ]
    chosen = best_instances(r, verdict_c)
    measured = ratios(r, chosen, verdict_c)
    met = bool(measured) and median(measured) >= target
    verdict = (
        f"verdict: ortserve{f' in {processes} processes' if processes > 1 else ''} at C={verdict_c}"
        f"{' (inputs in system shared memory)' if shared_memory else ''} "
        "/ in-process best (host input) = "
        f"{summary(measured, 2) if measured else 'n/a'} against >= {target:.2f}: "
        + ("met" if met else "missed" if measured else "not measured")
        + f" ({chosen} instance{'s' if chosen > 1 else ''}"
        + (f", the best of {', '.join(map(str, r.server))}" if len(r.server) > 1 else "")
        + f"; device-resident input: {summary(ratios(r, chosen, verdict_c, 'device'), 2)})"
    )
    lines = [text_table(header, rows), "", text_table(sweep_header, sweep_rows), "", f"note: {SERVER_NOTE}", verdict]
    return lines, "met" if met else "missed"


def processes_text(processes: int) -> str:
    return f", {processes} processes" if processes > 1 else ""


def start_servers(
    running: ExitStack, processes: int, repo: Path, threads: int, device: str, extra: Sequence[str]
) -> list[servers.Proc]:
    """`processes` servers of one repository, started at once (each warms its model up on its own),
    each stopped when `running` unwinds; a start that fails stops the others too."""
    managers = [servers.ortserve(repo, threads, device, extra) for _ in range(processes)]
    with ThreadPoolExecutor(processes) as pool:
        futures = [pool.submit(m.__enter__) for m in managers]
    started: list[servers.Proc] = []
    failure: BaseException | None = None
    for manager, future in zip(managers, futures, strict=True):
        try:
            started.append(future.result())
        except BaseException as exc:  # noqa: BLE001 - raised below, once the others are in `running`
            failure = failure or exc
            continue
        running.push(manager)  # its __exit__ stops the server on the way out
    if failure is not None:
        raise failure
    return started


def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    if args.device == "cuda":
        import onnxruntime as ort

        available = ort.get_available_providers()
        if CUDA not in available:
            raise CannotStart(
                f"--device cuda: this onnxruntime ({ort.__version__}, {ort.__file__}) has no {CUDA} "
                f"(available: {', '.join(available)}); install onnxruntime-gpu (benchmarks/gpu_device.sh "
                "does on a lent GPU machine) or run with --device cpu"
            )
    try:
        pa = loadgen.find_perf_analyzer()
    except SystemExit as err:
        raise CannotStart(str(err)) from err
    try:
        env = environment(pa)
    except OSError as err:  # e.g. no git on a bare GPU machine
        env = {"python": sys.version.split()[0], "environment": f"not read: {err}"}
    env.update({"gpu": gpu_name(args.device), "onnx": onnx.__version__})
    spec = resnet.resnet(**resnet.TINY) if args.tiny else resnet.resnet()
    env["model"] = spec.description
    print("\n".join(f"{k}: {v}" for k, v in env.items()), flush=True)
    results = Results(server={n: {c: [] for c in args.concurrency} for n in args.instances})
    # perf_analyzer puts the images in /dev/shm regions it registers (Triton's system shared memory).
    pa_extra = SHM_ARGS if args.shared_memory == "system" else ()
    with tempfile.TemporaryDirectory(prefix="ortserve-gpu-") as tmp, ExitStack() as running:
        path = Path(tmp) / "model.onnx"
        onnx.save(spec.proto, str(path))
        repos = {}
        for n in args.instances:  # one repository (and server) per instance count
            version = Path(tmp) / f"i{n}" / MODEL / "1"
            version.mkdir(parents=True)
            try:
                os.link(path, version / "model.onnx")  # ResNet-50 is ~100 MB: one copy on disk
            except OSError:
                shutil.copyfile(path, version / "model.onnx")
            (version.parent / "config.pbtxt").write_text(
                config_text(
                    spec, args.max_batch_size, args.device, n, args.cudnn_search, args.batch_shapes, args.batch_hold
                )
            )
            repos[n] = version.parent.parent
        print(f"model built in {time.perf_counter() - started:.0f} s; in-process session", flush=True)
        session = make_session(path, args.device, args.threads, args.cudnn_search)
        env["providers"] = ", ".join(session.get_providers())
        env["cudnn_conv_algo_search"] = args.cudnn_search or "EXHAUSTIVE (ONNX Runtime's default)"
        env["batch_shapes"] = args.batch_shapes or "auto (left out of the config)"
        env["batch_hold"] = args.batch_hold or "auto (left out of the config)"
        print(f"providers: {env['providers']}; warming up every batch size", flush=True)
        for b in args.batches:
            for variant in VARIANTS:
                measure_iobinding(session, args.device, b, variant, 0.05)
        rate = measure_iobinding(session, args.device, args.batches[-1], "host", 0.2).images_per_s
        if args.device == "cuda" and args.cudnn_search not in ("", "EXHAUSTIVE"):
            # What the search mode costs the ceiling: one shape with ONNX Runtime's default search.
            exhaustive = make_session(path, args.device, args.threads, "EXHAUSTIVE")
            t0 = time.perf_counter()
            point = measure_iobinding(exhaustive, args.device, args.batches[-1], "host", 1.0)
            env["exhaustive_search"] = (
                f"in-process at batch {point.batch}: {point.images_per_s:.0f} images/s with EXHAUSTIVE vs "
                f"{rate:.0f} with {args.cudnn_search}; its first run + 1.25 s of runs took "
                f"{time.perf_counter() - t0:.1f} s"
            )
            print(env["exhaustive_search"], flush=True)
            del exhaustive
        if args.diagnose_batch:
            shapes = runpaths.measure_new_shapes(
                session, path, args.device, args.diagnose_batch, args.threads, args.cudnn_search
            )
            env["new_shapes"] = [asdict(c) for c in shapes]
            print("\n".join(runpaths.render_shapes(shapes)), flush=True)
            paths = runpaths.measure(
                session, path, args.device, args.diagnose_batch, args.threads, args.cudnn_search, args.diagnose_s
            )
            env["run_paths"] = [asdict(p) for p in paths]
            print("\n".join(runpaths.render(paths, args.diagnose_batch)), flush=True)
        procs: dict[int, list[servers.Proc]] = {}
        guesses: dict[tuple[int, int], float] = {}
        for n, repo in repos.items():
            print(f"starting ortserve ({n} instance{'s' if n > 1 else ''}{processes_text(args.processes)})", flush=True)
            procs[n] = start_servers(running, args.processes, repo, args.threads, args.device, args.server_arg)
            shown = ("providers", "batch shapes", "warmed up")
            print(
                "\n".join(
                    f"  server{f' {i + 1}' if args.processes > 1 else ''}: {line.rstrip()}"
                    for i, proc in enumerate(procs[n])
                    for line in proc.lines
                    if any(k in line for k in shown)
                ),
                flush=True,
            )
            for c in args.concurrency:  # discarded: new batch shapes pay the cuDNN search here
                # A short probe first, so that a server far slower than the ceiling still fits the windows.
                probe = measure_server(pa, procs[n], c, max(50, 2 * c), args.pa_threads, n, args.pa_timeout_s, pa_extra)
                requests = max(50, int(min(rate, probe.infer_per_s or rate) * args.window_s))
                warm = measure_server(pa, procs[n], c, requests, args.pa_threads, n, args.pa_timeout_s, pa_extra)
                guesses[n, c] = warm.infer_per_s or probe.infer_per_s
                print(f"warm-up {n}x C={c}: probe {brief(probe)} {probe.error}", flush=True)
                print(f"warm-up {n}x C={c}: {brief(warm)} {warm.error}", flush=True)
        for repeat in range(args.repeats):
            sweep = {
                v: [measure_iobinding(session, args.device, b, v, args.sweep_s) for b in args.batches]
                for v in VARIANTS
            }
            results.sweeps.append(sweep)
            line = [f"repeat {repeat + 1}: in-process best {results.ceiling(repeat).images_per_s:.0f} images/s"]
            shift = repeat % len(args.concurrency)
            order = args.concurrency[shift:] + args.concurrency[:shift]
            counts = args.instances[repeat % len(args.instances) :] + args.instances[: repeat % len(args.instances)]
            for n in counts:
                for c in order:
                    previous = [s.infer_per_s for s in results.server[n][c] if not s.error]
                    guess = previous[-1] if previous else guesses.get((n, c)) or results.ceiling(repeat).images_per_s
                    requests = min(max(50, int(guess * args.window_s)), 50_000)
                    s = measure_server(pa, procs[n], c, requests, args.pa_threads, n, args.pa_timeout_s, pa_extra)
                    results.server[n][c].append(s)
                    line.append(f"{n}x C={c} {brief(s)}" + (f" ({s.error})" if s.error else ""))
            print("; ".join(line), flush=True)
    lines, verdict = render(
        results, args.batches, args.target, max(args.concurrency), args.shared_memory == "system", args.processes
    )
    elapsed = time.perf_counter() - started
    print("\n" + "\n".join(lines) + f"\n\n{elapsed:.0f} s", flush=True)
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "command": " ".join(["python -m benchmarks.gpu", *sys.argv[1:]]),
                    "env": env,
                    "server_side": SERVER_NOTE,
                    "server_args": args.server_arg,
                    "shared_memory": args.shared_memory,
                    "processes": args.processes,
                    "batches": args.batches,
                    "sweeps": [{v: [asdict(p) for p in s[v]] for v in VARIANTS} for s in results.sweeps],
                    "server": {
                        str(n): {str(c): [asdict(s) for s in v] for c, v in by_c.items()}
                        for n, by_c in results.server.items()
                    },
                    "ratio_host": {
                        str(n): {str(c): ratios(results, n, c) for c in by_c} for n, by_c in results.server.items()
                    },
                    "ratio_device": {
                        str(n): {str(c): ratios(results, n, c, "device") for c in by_c}
                        for n, by_c in results.server.items()
                    },
                    "best_instances": best_instances(results, max(args.concurrency)),
                    "target": args.target,
                    "verdict": verdict,
                    "elapsed_s": elapsed,
                },
                indent=1,
            )
        )
    return 0 if verdict == "met" else 3


def ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu", description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--tiny", action="store_true", help="a scaled-down ResNet (resnet.TINY) for smoke runs")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batches", type=ints, default=[1, 8, 16, 32, 64, 128], help="in-process batch sizes")
    parser.add_argument("--concurrency", type=ints, default=[32, 128], help="the verdict is at the highest")
    parser.add_argument(
        "--instances", type=ints, default=[1], help="instance counts of the model, one server each (e.g. 1,2)"
    )
    parser.add_argument(
        "--processes",
        type=int,
        default=1,
        help="serve each instance count from this many ortserve processes (each its own event loop and GIL, "
        "sharing the GPU), each loaded by its own perf_analyzer at its share of the concurrency",
    )
    parser.add_argument("--max-batch-size", type=int, default=128)
    parser.add_argument("--sweep-s", type=float, default=1.5, help="seconds per batch size and variant")
    parser.add_argument("--window-s", type=float, default=1.5, help="target seconds per perf_analyzer window")
    parser.add_argument("--threads", type=int, default=min(len(os.sched_getaffinity(0)), 8), help="intra-op threads")
    parser.add_argument("--pa-threads", type=int, default=4, help="perf_analyzer --max-threads")
    parser.add_argument(
        "--shared-memory",
        choices=["none", "system"],
        default="none",
        help="system: perf_analyzer sends the images in /dev/shm regions (Triton's extension), not in the requests",
    )
    parser.add_argument("--target", type=float, default=0.90)
    parser.add_argument(
        "--diagnose-batch", type=int, default=64, help="time the session.run paths (runpaths.py) at this batch; 0: skip"
    )
    parser.add_argument("--diagnose-s", type=float, default=1.0, help="seconds per session.run path")
    parser.add_argument(
        "--server-arg",
        action="append",
        default=[],
        help="an extra `ortserve serve` argument, e.g. --server-arg=--gil-switch-interval-ms=0.5 (repeatable)",
    )
    parser.add_argument("--pa-timeout-s", type=float, default=240, help="limit of one perf_analyzer run")
    parser.add_argument(
        "--cudnn-search",
        choices=["EXHAUSTIVE", "HEURISTIC", "DEFAULT", ""],
        default="HEURISTIC",
        help="cudnn_conv_algo_search for the in-process session and the server's config ('': leave it out); "
        "EXHAUSTIVE times every algorithm at each new batch shape, and a batcher forms up to 128 shapes",
    )
    parser.add_argument(
        "--batch-shapes",
        default="",
        help="the model's batch_shapes parameter (auto, off, or a list such as 1,8,64,128); '': left out (auto: "
        "on CUDA batches are padded to a few shapes, each warmed up at load)",
    )
    parser.add_argument(
        "--batch-hold",
        choices=["auto", "off", ""],
        default="",
        help="the model's batch_hold parameter ('': left out, i.e. auto: at high load a batch may wait for more "
        "rows while requests arrive faster than its handoff costs; off: strictly greedy)",
    )
    parser.add_argument("--json", type=Path, help="write every sample and the verdict here")
    args = parser.parse_args(argv)
    args.batches = sorted(b for b in args.batches if b <= args.max_batch_size)
    if args.processes < 1 or args.processes > min(args.concurrency):
        parser.error(f"--processes {args.processes}: expected 1 to the lowest --concurrency ({min(args.concurrency)})")
    # A time limit's SIGTERM (gpu_device.sh LIMIT_S) unwinds like an exception: servers and
    # perf_analyzer are stopped on the way out instead of left running on the GPU.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        return run(args)
    except CannotStart as err:
        print(f"cannot start: {err}", file=sys.stderr, flush=True)
        return 2


if __name__ == "__main__":
    sys.exit(main())
