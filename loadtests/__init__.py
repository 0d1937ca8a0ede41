"""Locust gRPC load tests of ortserve, with latency targets that fail the run when missed.

What this room owns: `locustfile.py` (the only module that imports Locust, and with it gevent's
monkey-patching: run it as `locust -f`, never import it into another process), and beside it
plain modules the tests import directly: `recorder` (1 %-resolution latency histograms per model
and second, mergeable across workers), `targets` (the TOML targets and the verdict), `inputs`
(requests from a model's metadata or a .npz), `shapes` (steady, step, spike, knee search),
`server_stats` (ModelStatistics deltas: queue vs compute, batch size) and `report` (the tables
and CSVs). `run.sh` is the one command; `README.md` the manual. It depends on the client SDK
(`ortserve_client`) only, never on the server package.
"""
