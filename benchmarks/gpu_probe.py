"""Where a served batch's time goes on a GPU: ortserve on ResNet-50 under a few loads, watched from outside.

    python -m benchmarks.gpu_probe [--device cuda] [--py-spy PATH] [--variant ARGS ...]

The H200 runs of 2026-11-27 (docs/performance.md) found ortserve's `session.run` of a 64-image
batch at ~120 ms in the server, ~16-row batches at ~110 ms, while the same OrtInstance path
takes 20 ms in one process (runpaths.py), with no new batch shapes and the event loop's thread
at a third of a core. This probe separates the candidates. For each server variant (`--variant`:
extra `ortserve serve` flags; the first is the plain server) and each load:

- `C=1, 64-row requests`: one 64-image request at a time. The batch is one request (no batch
  assembly) and nothing else arrives while it runs: if `session.run` is slow here too, the cost
  is in the server process's session, not in the load.
- `C=128, one-row requests`: the benchmark's load (batches of ~64 gathered from 64 requests).

it reports, from ModelStatistics, the mean `session.run` time per batch and the mean batch; from
/proc, the CPU share of the server's busiest threads (by name); from `nvidia-smi` sampled every
200 ms, the GPU's mean utilisation and SM clock during the load; and with `--py-spy`, six
`py-spy dump --native` snapshots of the server taken during the C=128 load (the native stacks
say where the batch worker's thread is: in cuDNN kernels' launch, a memcpy, a lock or the GIL).
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from benchmarks import loadgen, resnet, servers
from benchmarks.gpu import MODEL, config_text, executed


@dataclass(slots=True)
class Load:
    name: str
    concurrency: int
    batch: int
    requests: int
    """Requests per perf_analyzer count window."""


LOADS = (
    Load("C=1, 64-row requests", 1, 64, 40),
    Load("C=128, one-row requests", 128, 1, 600),
)


@dataclass(slots=True)
class GpuSampler:
    """nvidia-smi's utilisation and SM clock every 200 ms, in a background process."""

    samples: list[tuple[float, float, float]] = field(default_factory=list)
    """(time, utilization.gpu %, clocks.sm MHz)."""
    process: subprocess.Popen[str] | None = None

    def start(self) -> None:
        if shutil.which("nvidia-smi") is None:
            return
        self.process = subprocess.Popen(
            [
                "nvidia-smi",
                "--query-gpu=utilization.gpu,clocks.sm",
                "--format=csv,noheader,nounits",
                "-lms",
                "200",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for line in self.process.stdout:
            try:
                util, clock = (float(x) for x in line.split(","))
            except ValueError:
                continue
            self.samples.append((time.perf_counter(), util, clock))

    def between(self, start: float, end: float) -> str:
        inside = [(u, c) for t, u, c in self.samples if start <= t <= end]
        if not inside:
            return "GPU not sampled"
        return (
            f"GPU util {sum(u for u, _ in inside) / len(inside):.0f}% (max {max(u for u, _ in inside):.0f}), "
            f"SM clock {sum(c for _, c in inside) / len(inside):.0f} MHz, {len(inside)} samples"
        )

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()


def dumps(py_spy: str, pid: int, count: int, gap_s: float, out: list[str]) -> None:
    """`count` native stack dumps of `pid`, appended to `out`."""
    for i in range(count):
        time.sleep(gap_s)
        done = subprocess.run(
            [py_spy, "dump", "--native", "--pid", str(pid)], capture_output=True, text=True, timeout=30
        )
        out.append(f"--- py-spy dump {i + 1} (exit {done.returncode})\n{done.stdout}{done.stderr}")


def worker_stacks(dump: str, lines: int) -> list[str]:
    """From one py-spy dump: its header, the batch workers' threads (named `<model>_<version>-<i>`)
    whole up to `lines` lines each, and the first 6 frames of the event loop's thread."""
    out: list[str] = []
    block: list[str] = []
    blocks: list[list[str]] = []
    for line in dump.splitlines():
        if line.startswith("Thread "):
            blocks.append(block := [line])
        elif blocks:
            block.append(line)
        elif line.startswith("---"):
            out.append(line)
    for b in blocks:
        if f'"{MODEL}_1-' in b[0]:
            out += b[:lines]
        elif '"MainThread"' in b[0]:
            out += b[:7]
    return out


def busiest(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]], wall: float, pid: int) -> str:
    used = sorted(
        ((cpu - before.get(tid, (name, 0.0))[1], name, tid) for tid, (name, cpu) in after.items()), reverse=True
    )
    return ", ".join(f"{'loop' if tid == pid else name} {cpu / wall:.2f}" for cpu, name, tid in used[:4])


def probe(args: argparse.Namespace) -> int:
    pa = loadgen.find_perf_analyzer()
    spec = resnet.resnet(**resnet.TINY) if args.tiny else resnet.resnet()
    sampler = GpuSampler()
    sampler.start()
    try:
        with tempfile.TemporaryDirectory(prefix="ortserve-probe-") as tmp:
            version = Path(tmp) / MODEL / "1"
            version.mkdir(parents=True)
            onnx.save(spec.proto, str(version / "model.onnx"))
            (version.parent / "config.pbtxt").write_text(
                config_text(spec, 128, args.device, 1, args.cudnn_search)
            )
            for variant in args.variant or [""]:
                extra = shlex.split(variant)
                print(f"== server {variant or '(plain)'}", flush=True)
                with servers.ortserve(Path(tmp), args.threads, args.device, extra) as proc:
                    for line in proc.lines:
                        if "providers" in line or "warmed up" in line:
                            print(f"  server: {line.rstrip()}", flush=True)
                    for load in args.loads:
                        for attempt in ("warm-up", "measured"):
                            snapshots: list[str] = []
                            spy = None
                            if attempt == "measured" and args.py_spy and load.concurrency > 1:
                                spy = threading.Thread(
                                    target=dumps, args=(args.py_spy, proc.pid, 6, 0.4, snapshots), daemon=True
                                )
                            before, threads_before = executed(proc.target), proc.thread_cpu_s()
                            started = time.perf_counter()
                            if spy is not None:
                                spy.start()
                            m = loadgen.measure(
                                pa, proc.target, MODEL, load.concurrency, load.requests, 120, 4, load.batch
                            )
                            wall = time.perf_counter() - started
                            if spy is not None:
                                spy.join(60)
                            after, threads_after = executed(proc.target), proc.thread_cpu_s()
                            runs = after.executions - before.executions
                            rows_per_s = m.infer_per_s
                            print(
                                f"  {load.name} ({attempt}): {rows_per_s:.0f} images/s, p50 {m.p50_ms:.1f} ms, "
                                f"{runs} batches, run {(after.infer_ns - before.infer_ns) / max(runs, 1) / 1e6:.1f} "
                                f"ms/batch, host {(after.host_ns - before.host_ns) / max(runs, 1) / 1e6:.1f} ms/batch; "
                                f"threads: {busiest(threads_before, threads_after, wall, proc.pid)}; "
                                f"{sampler.between(started, started + wall)}" + (f"; {m.error}" if m.error else ""),
                                flush=True,
                            )
                            for text in snapshots:
                                print("\n".join(worker_stacks(text, args.dump_lines)), flush=True)
    finally:
        sampler.stop()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_probe", description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--tiny", action="store_true", help="a scaled-down ResNet (smoke runs)")
    parser.add_argument("--threads", type=int, default=min(len(os.sched_getaffinity(0)), 8))
    parser.add_argument("--cudnn-search", default="HEURISTIC")
    parser.add_argument(
        "--variant", action="append", default=[], help="extra `ortserve serve` flags of one server (repeatable)"
    )
    parser.add_argument("--py-spy", default=shutil.which("py-spy") or "", help="py-spy binary for native dumps")
    parser.add_argument("--dump-lines", type=int, default=40, help="most lines of a worker thread's stack")
    parser.add_argument("--quick", action="store_true", help="small windows (smoke runs)")
    args = parser.parse_args(argv)
    args.loads = [Load(x.name, x.concurrency, x.batch, 5 if args.quick else x.requests) for x in LOADS]
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    return probe(args)


if __name__ == "__main__":
    sys.exit(main())
