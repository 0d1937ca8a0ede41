"""Where ortserve spends its CPU per request: py-spy on a server under the suite's load.

    python -m benchmarks.hotspots [--server ortserve|echo|baseline] [--model mlp|cnn] [--no-batching]
                                  [--concurrency 64] [--seconds 10] [--native] [--top 25] [--raw FILE]

Starts ortserve on the suite's model (as `python -m benchmarks` does; or, for comparison, the
RPC ceiling or the baseline of bare_server.py), drives it with perf_analyzer at the given
concurrency, samples it with py-spy (`record --format raw --nonblocking`: the server is not
paused) and prints each thread's CPU time and context switches per request (from /proc), then,
over the samples where a thread was running: the share per thread, the innermost ortserve
function of each sample, the top functions by self time (leaf frame) and by inclusive time, each
also in microseconds per request (samples x sampling interval / requests answered, from
ModelStatistics). `--native` adds C/C++ frames (gRPC core, uvloop, ONNX Runtime) but must pause
the process at each sample, and counts blocked threads as running.
Needs py-spy (`pip install py-spy`) and ptrace rights on the server process (root, or
kernel.yama.ptrace_scope 0).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks import loadgen, models, servers

_LINE = re.compile(r":\d+\)$")
OUTSIDE = "(no ortserve frame: gRPC aio, uvloop, asyncio)"


@dataclass
class Profile:
    """py-spy samples of running threads, by thread and by function (line numbers merged)."""

    total: int = 0
    threads: Counter[str] = field(default_factory=Counter)
    own: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    """Per thread: leaf function -> samples."""
    inclusive: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    """Per thread: function anywhere in the stack -> samples."""
    ortserve: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    """Per thread: the innermost ortserve function of each sample -> samples."""
    names: dict[int, str] = field(default_factory=dict)
    """Native thread id -> Python thread name."""


def parse_raw(text: str) -> Profile:
    """Read py-spy's raw format: `thread (TID): NAME;frame;...;leaf COUNT` (with --threads)."""
    profile = Profile()
    for line in text.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        thread = "?"
        if frames[0].startswith(("thread", "process")):
            head, _, thread = frames.pop(0).partition(": ")
            tid = head.rpartition("(")[2].rstrip(")")
            if tid.isdigit():
                profile.names[int(tid)] = thread
        frames = [_LINE.sub(")", f) for f in frames]
        profile.total += count
        profile.threads[thread] += count
        if frames:
            profile.own[thread][frames[-1]] += count
        for frame in set(frames):
            profile.inclusive[thread][frame] += count
        mine = [
            f for f in frames if "ortserve/" in f and "__main__" not in f and "cli.py" not in f and "app.py" not in f
        ]
        profile.ortserve[thread][mine[-1] if mine else OUTSIDE] += count
    return profile


def switch_delta(before: dict[int, tuple[int, int]], after: dict[int, tuple[int, int]]) -> dict[int, tuple[int, int]]:
    """Context switches per thread between two `Proc.thread_switches` readings (new threads from 0)."""
    delta: dict[int, tuple[int, int]] = {}
    for tid, (voluntary, involuntary) in after.items():
        v0, i0 = before.get(tid, (0, 0))
        delta[tid] = (voluntary - v0, involuntary - i0)
    return delta


def _load(pa: Path, target: str, model: str, concurrency: int) -> subprocess.Popen[bytes]:
    """perf_analyzer asked for far more requests than the profile needs: it runs until stopped."""
    command = [str(pa), "-m", model, "-i", "grpc", "-u", target, "-b", "1", "--async"]
    command += ["--concurrency-range", f"{concurrency}:{concurrency}", "--max-threads", "1"]
    command += ["--measurement-mode", "count_windows", "--measurement-request-count", "10000000"]
    command += ["-s", "100000", "-r", "3"]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _report(profile: Profile, label: str, requests: int, wall: float, cpu: float, rate_hz: int, top: int) -> None:
    total = max(profile.total, 1)
    us_per_sample = 1e6 / rate_hz / max(requests, 1)
    print(
        f"{label}: {requests / wall:.0f} infer/s, server CPU {100 * cpu / wall:.0f}% of a core, "
        f"{1e6 * cpu / max(requests, 1):.0f} us CPU per request (sampling included); {profile.total} samples"
    )
    print("\nsampled 'running' per thread (py-spy counts some blocked waits as running): % of all, us per request")
    for thread, n in profile.threads.most_common(8):
        print(f"  {100 * n / total:5.1f}%  {n * us_per_sample:6.1f} us  {thread}")
    for thread, _ in profile.threads.most_common(3):
        n_thread = profile.threads[thread]
        sections = (
            ("innermost ortserve function", profile.ortserve[thread]),
            ("self (leaf function)", profile.own[thread]),
            ("inclusive", profile.inclusive[thread]),
        )
        for title, counter in sections:
            print(f"\n{thread}: top {top} by {title}: % of this thread, us per request")
            for frame, n in counter.most_common(top):
                print(f"  {100 * n / n_thread:5.1f}%  {n * us_per_sample:6.1f} us  {frame[:140]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--server",
        choices=["ortserve", "echo", "baseline"],
        default="ortserve",
        help="profile ortserve, or for comparison the RPC ceiling (echo) or the baseline",
    )
    parser.add_argument("--model", choices=["mlp", "cnn"], default="mlp")
    parser.add_argument("--no-batching", action="store_true", help="ortserve: config without dynamic_batching")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--native", action="store_true", help="include native frames")
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--raw", type=Path, help="keep py-spy's raw output here")
    args = parser.parse_args(argv)
    py_spy = shutil.which("py-spy")
    if py_spy is None:
        raise SystemExit("py-spy is not installed: pip install py-spy")
    pa = loadgen.find_perf_analyzer()
    spec = models.mlp() if args.model == "mlp" else models.cnn()
    if args.server == "ortserve":
        name = f"{args.model}_{'nobatch' if args.no_batching else 'batching'}"
    else:
        name = args.model
    with tempfile.TemporaryDirectory(prefix="ortserve-hotspots-") as tmp:
        repo = Path(tmp) / "repo"
        models.write_model(
            repo, name, spec, "" if args.no_batching or args.server != "ortserve" else "dynamic_batching { }"
        )
        raw = args.raw or Path(tmp) / "pyspy.txt"
        if args.server == "ortserve":
            server = servers.ortserve(repo, args.threads)
        else:
            server = servers.bare(repo, "echo" if args.server == "echo" else "ort", args.threads)
        with server as proc:
            load = _load(pa, proc.target, name, args.concurrency)
            try:
                time.sleep(2)  # connections up, warm
                spy = [py_spy, "record", "--pid", str(proc.pid), "--duration", str(int(args.seconds))]
                spy += ["--rate", str(args.rate), "--format", "raw", "--output", str(raw), "--threads"]
                # Native stacks need the process paused at each sample (py-spy refuses --nonblocking).
                spy.append("--native" if args.native else "--nonblocking")
                counts0, cpu0, threads0 = servers.counts(proc.target, name), proc.cpu_s(), proc.thread_cpu_s()
                switches0 = proc.thread_switches()
                started = time.perf_counter()
                done = subprocess.run(spy, capture_output=True, text=True)
                wall = time.perf_counter() - started
                counts1, cpu = servers.counts(proc.target, name), proc.cpu_s() - cpu0
                threads = {
                    tid: (name, seconds - threads0.get(tid, (name, 0.0))[1])
                    for tid, (name, seconds) in proc.thread_cpu_s().items()
                }
                switches = switch_delta(switches0, proc.thread_switches())
            finally:
                load.terminate()
                load.wait(10)
        if done.returncode != 0:
            print(done.stdout + done.stderr, file=sys.stderr)
            return 1
        profile = parse_raw(raw.read_text())
    requests = counts1.inferences - counts0.inferences
    executions = counts1.executions - counts0.executions
    label = f"{args.server} {name}, C={args.concurrency}"
    if args.server == "ortserve":
        label += f", mean batch {requests / max(executions, 1):.1f}"
    print(
        f"CPU time and context switches (voluntary / involuntary) per thread, from /proc (exact; names from "
        f"py-spy): per request over {requests} requests"
    )
    per = max(requests, 1)
    for tid, (os_name, seconds) in sorted(threads.items(), key=lambda kv: -kv[1][1]):
        if seconds > 0:
            voluntary, involuntary = switches.get(tid, (0, 0))
            print(
                f"  {1e6 * seconds / per:7.1f} us  {voluntary / per:5.2f} / {involuntary / per:5.2f} switches  "
                f"{profile.names.get(tid, os_name)} ({tid})"
            )
    print()
    _report(profile, label, requests, wall, cpu, args.rate, args.top)
    return 0


if __name__ == "__main__":
    sys.exit(main())
