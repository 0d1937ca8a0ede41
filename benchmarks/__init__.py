"""The benchmark suite of issue 3: ortserve against its ceilings, on one machine, in one run.

    python -m benchmarks [--quick] [--mode table|latency-target|all]

See benchmarks/suite.py for the design and docs/performance.md for the last results.
"""
