"""What receiving large requests costs one server process: ResNet-50-sized inputs on a free model.

    python -m benchmarks.bigrequest [--rounds 3] [--concurrency 32] [--requests 3000] [--size 224]
                                    [--arms echo,ortserve,ortserve-malloc-untouched] [--json FILE]

The GPU target (issue 3) needs one server process to take ~4000 one-image requests a second
(602 KB each); on a GPU the model's cost leaves the CPU, and what remains is this. Serves
`image_mean` (models.py: FP32 [b, 3, 224, 224] -> mean, almost no compute) and drives each arm
with perf_analyzer (closed loop, one-image requests), the arms interleaved round by round, one
fresh server per arm and round. For each it reads, over the measurement: requests answered a
second, the CPU per request of the server's main thread (the event loop, which receives every
message) and of the whole process, and the minor page faults per request. Arms:

- `echo`: the bare grpc.aio server answering a precomputed response (the RPC ceiling at this size);
- `ortserve`: `ortserve serve` as shipped (batching on, one CPU instance);
- `ortserve-malloc-untouched`: the same with glibc malloc's dynamic thresholds, as a process
  gets them without `ortserve.app.tune_malloc` (opted out through GLIBC_TUNABLES);
- `ortserve-shm`: ortserve as shipped, perf_analyzer with `--shared-memory system` (the tensors
  in /dev/shm regions, Triton's extension: what a same-host client can have; not in the default arms).

Prints `median [min-max]` per arm and column; `--json` writes every round.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass
from pathlib import Path

from benchmarks import loadgen, models, servers
from benchmarks.machine import cpu_times

MODEL = "image_mean"
UNTOUCHED_ENV = {"GLIBC_TUNABLES": "glibc.malloc.check=0"}
"""Names a glibc.malloc tunable (its default value), so tune_malloc leaves malloc alone."""


@dataclass(slots=True)
class Round:
    arm: str
    infer_per_s: float
    loop_us: float
    """CPU of the server's main thread (its event loop) per request answered."""
    process_us: float
    minflt: float
    """Minor page faults of the server process per request answered."""
    p50_ms: float
    others_pct: float = 0.0
    """CPU the rest of the machine used during the measurement (not server, not perf_analyzer), % of a core."""
    error: str = ""


def _read(proc: servers.Proc) -> tuple[int, float, float, int]:
    """(requests answered, loop thread CPU s, process CPU s, minor faults) so far."""
    loop_cpu = proc.thread_cpu_s().get(proc.pid, ("", 0.0))[1]
    return servers.counts(proc.target, MODEL).inferences, loop_cpu, proc.cpu_s(), proc.minor_faults()


def measure(
    proc: servers.Proc, pa: Path, concurrency: int, requests: int, arm: str, extra: Sequence[str] = ()
) -> Round:
    loadgen.measure(pa, proc.target, MODEL, concurrency, max(200, requests // 10), extra=extra)  # warm-up
    before, busy0 = _read(proc), cpu_times()[0]
    m = loadgen.measure(pa, proc.target, MODEL, concurrency, requests, extra=extra)
    after, busy1 = _read(proc), cpu_times()[0]
    n = max(1, after[0] - before[0])
    server_s = after[2] - before[2]
    return Round(
        arm=arm,
        infer_per_s=m.infer_per_s,
        loop_us=(after[1] - before[1]) * 1e6 / n,
        process_us=server_s * 1e6 / n,
        minflt=(after[3] - before[3]) / n,
        p50_ms=m.p50_ms,
        others_pct=max(0.0, 100 * (busy1 - busy0 - server_s - m.client_cpu_s) / m.wall_s) if m.wall_s else 0.0,
        error=m.error,
    )


Arm = tuple[Callable[[], AbstractContextManager[servers.Proc]], Sequence[str]]
"""How to start the arm's server, and perf_analyzer's extra arguments."""
SHM_ARGS = ("--shared-memory", "system", "--output-shared-memory-size", "64")


def _arms(repo: Path, threads: int) -> dict[str, Arm]:
    return {
        "echo": (lambda: servers.bare(repo, "echo", threads), ()),
        "ortserve": (lambda: servers.ortserve(repo, threads), ()),
        "ortserve-malloc-untouched": (lambda: servers.ortserve(repo, threads, env=UNTOUCHED_ENV), ()),
        "ortserve-shm": (lambda: servers.ortserve(repo, threads), SHM_ARGS),
    }


def summarize(rounds: list[Round], arm: str) -> dict[str, tuple[float, float, float]]:
    """Per column of one arm: (median, min, max) over its rounds without errors."""
    mine = [r for r in rounds if r.arm == arm and not r.error]
    out: dict[str, tuple[float, float, float]] = {}
    for column in ("infer_per_s", "loop_us", "process_us", "minflt", "p50_ms", "others_pct"):
        values = [getattr(r, column) for r in mine]
        if values:
            out[column] = (statistics.median(values), min(values), max(values))
    return out


def _table(rounds: list[Round], arms: list[str]) -> Iterator[str]:
    yield "| arm | infer/s | loop µs/req | process µs/req | minor faults/req | p50 ms | others % |"
    yield "|:--|--:|--:|--:|--:|--:|--:|"
    for arm in arms:
        s = summarize(rounds, arm)
        if not s:
            yield f"| {arm} | failed: {'; '.join(r.error for r in rounds if r.arm == arm)} |"
            continue
        cells = [
            f"{s[c][0]:.{d}f} [{s[c][1]:.{d}f}-{s[c][2]:.{d}f}]"
            for c, d in (
                ("infer_per_s", 0),
                ("loop_us", 0),
                ("process_us", 0),
                ("minflt", 1),
                ("p50_ms", 2),
                ("others_pct", 0),
            )
        ]
        yield f"| {arm} | " + " | ".join(cells) + " |"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bigrequest", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--requests", type=int, default=3000, help="requests per perf_analyzer count window")
    parser.add_argument("--size", type=int, default=224, help="image side: requests of 3 x size x size FP32")
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads")
    parser.add_argument("--arms", default="echo,ortserve,ortserve-malloc-untouched")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    pa = loadgen.find_perf_analyzer()
    rounds: list[Round] = []
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp)
        models.write_model(repo, MODEL, models.image_mean(args.size), "dynamic_batching { }")
        arms = _arms(repo, args.threads)
        chosen = [a.strip() for a in args.arms.split(",") if a.strip()]
        unknown = [a for a in chosen if a not in arms]
        if unknown:
            parser.error(f"unknown arm(s) {unknown}; choose from {sorted(arms)}")
        for index in range(args.rounds):
            for arm in chosen:
                start, extra = arms[arm]
                with start() as proc:
                    r = measure(proc, pa, args.concurrency, args.requests, arm, extra)
                rounds.append(r)
                print(
                    f"round {index + 1} {arm}: {r.infer_per_s:.0f} infer/s, loop {r.loop_us:.0f} µs/req, "
                    f"process {r.process_us:.0f} µs/req, {r.minflt:.1f} faults/req, "
                    f"others {r.others_pct:.0f} % {r.error}",
                    flush=True,
                )
    kib = 3 * args.size * args.size * 4 / 1024
    print(f"\n{kib:.0f} KiB requests, concurrency {args.concurrency}, {args.rounds} rounds, median [range]:")
    for line in _table(rounds, chosen):
        print(line)
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in rounds], indent=1))
    return 0 if all(not r.error for r in rounds) else 1


if __name__ == "__main__":
    sys.exit(main())
