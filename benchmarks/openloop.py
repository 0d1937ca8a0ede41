"""Open-loop load on ortserve's batcher: Poisson arrivals at fixed rates, the batch hold on and off.

    python -m benchmarks.openloop [--model mlp|cnn] [--rates 1000,3000,4000,5000] [--seconds 3]
                                  [--repeats 2] [--threads 2]

Real traffic does not wait for answers. The suite's closed loop (perf_analyzer at concurrency C)
sends more slowly when the server slows; an open loop keeps sending, so a server past its
capacity builds a queue without bound. One ortserve serves two copies of the suite's model with
`dynamic_batching { }`, one with `batch_hold` auto (the default) and one with it off (strictly
greedy); every rate is measured on both, interleaved, with perf_analyzer `--request-rate-range
R:R --request-distribution poisson` (16 threads, to keep the schedule), three count windows of
about `--seconds` each. It prints answered/s, p50 and p99 and the mean executed batch, as
`median [min-max]` over the repeats. A rate past the server's capacity shows as perf_analyzer's
error (it gives up on the backlog): that config's capacity is below that rate.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from benchmarks import loadgen, models, servers
from benchmarks.report import markdown_table, summary

CONFIGS = {"hold": {}, "greedy": {"batch_hold": "off"}}
"""Model name -> its extra config parameters."""

LABELS = {"hold": "batch_hold auto (default)", "greedy": "batch_hold off"}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["mlp", "cnn"], default="mlp")
    parser.add_argument("--rates", default="1000,3000,4000,5000", help="requests/s, comma-separated")
    parser.add_argument("--seconds", type=float, default=3.0, help="length of one count window")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads")
    args = parser.parse_args(argv)
    rates = [float(r) for r in args.rates.split(",") if r]
    spec = models.mlp() if args.model == "mlp" else models.cnn()
    pa = loadgen.find_perf_analyzer()
    samples: dict[tuple[float, str], list[tuple[loadgen.Measurement, float]]] = defaultdict(list)
    errors: dict[tuple[float, str], str] = {}
    with tempfile.TemporaryDirectory(prefix="ortserve-openloop-") as tmp:
        repo = Path(tmp)
        for name, parameters in CONFIGS.items():
            models.write_model(repo, name, spec, "dynamic_batching { }", parameters)
        with servers.ortserve(repo, args.threads) as proc:
            for r in range(args.repeats):
                for rate in rates:
                    for name in CONFIGS if r % 2 == 0 else reversed(CONFIGS):
                        before = servers.counts(proc.target, name)
                        m = loadgen.measure(
                            pa, proc.target, name, 1, max(int(rate * args.seconds), 10), 120, max_threads=16, rate=rate
                        )
                        after = servers.counts(proc.target, name)
                        batch = (after.inferences - before.inferences) / max(after.executions - before.executions, 1)
                        if m.error:
                            errors[(rate, name)] = m.error
                        else:
                            samples[(rate, name)].append((m, batch))
                        shown = m.error[:80] or (
                            f"{m.infer_per_s:6.0f}/s p50 {m.p50_ms:7.2f} p99 {m.p99_ms:7.2f} ms batch {batch:4.1f}"
                        )
                        where = f"[{r + 1}/{args.repeats}] {args.model} {rate:6.0f}/s {LABELS[name]:<26}"
                        print(f"  {where} {shown}", flush=True)
    rows = []
    for rate in rates:
        for name in CONFIGS:
            got = samples.get((rate, name), [])
            if not got:
                error = errors.get((rate, name), "?").replace("|", ";")[:60]
                rows.append([f"{rate:.0f}", LABELS[name], f"error: {error}", "", "", ""])
                continue
            rows.append(
                [
                    f"{rate:.0f}",
                    LABELS[name],
                    summary([m.infer_per_s for m, _ in got]),
                    summary([m.p50_ms for m, _ in got], 2),
                    summary([m.p99_ms for m, _ in got], 2),
                    summary([b for _, b in got], 1),
                ]
                + ([f"{len(got)} of {args.repeats}"] if len(got) < args.repeats else [""])
            )
    header = ["offered/s", "ortserve", "answered/s", "p50 ms", "p99 ms", "mean batch", "failed runs"]
    rows = [row + [""] * (len(header) - len(row)) for row in rows]
    print(f"\n{args.model}, open loop (Poisson), perf_analyzer, {args.repeats} repeat(s), median [min-max]:\n")
    print(markdown_table(header, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
