"""A real Prometheus server scrapes a running ortserve; promtool lints its metrics and our rules.

Prometheus and promtool come from Debian's `prometheus` package (scripts/setup-prometheus.sh,
called by scripts/test.sh, exports PROMETHEUS_BIN_DIR). Without them the tests skip, except
in CI, where they fail.

The server runs as `ortserve serve` in a subprocess with a model that ships reference.npz, while
a client thread sends requests whose INPUT0 is shifted from that reference; Prometheus (on
127.0.0.1, a temporary TSDB, 1 s scrapes, our rule files loaded) then answers PromQL for the
request rate, the p95 latency from the histogram, the drift of the shifted feature, and every
query of the Grafana dashboard.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from ortserve_client.proto import grpc_service_pb2 as pb
from ortserve_client.proto import grpc_service_pb2_grpc as pb_grpc
from tests import models
from tests.harness import ServerProcess, serve_in_subprocess

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "rules.yml"
RULES_TEST = ROOT / "deploy" / "prometheus" / "rules_test.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "ortserve.json"
SHIFT = 3.0
"""How far the traffic's INPUT0 features sit from the reference's (in standard deviations)."""


def tool(name: str) -> str:
    directory = os.environ.get("PROMETHEUS_BIN_DIR")
    found = shutil.which(name, path=directory) if directory else shutil.which(name)
    if found is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is missing: scripts/setup-prometheus.sh installs it")
        pytest.skip(f"{name} is not installed (run scripts/setup-prometheus.sh)")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)


# -- the server, its traffic and Prometheus -------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repo = tmp_path_factory.mktemp("models")
    path = models.save(models.add_sub(), repo, "add_sub")
    rng = np.random.default_rng(5)
    np.savez(path.parent / "reference.npz", INPUT0=rng.standard_normal((2000, 4)).astype(np.float32))
    args = ["--model-repository", str(repo), "--host", "127.0.0.1", "--grpc-port", "0", "--http-port", "0",
            "--drift-interval-seconds", "1", "--drift-window-rows", "200", "--log-format", "json"]
    with serve_in_subprocess(args) as process:
        yield process


@pytest.fixture(scope="module")
def traffic(server: ServerProcess) -> Iterator[dict[str, int]]:
    """Requests of 4 rows, INPUT0 shifted by SHIFT, from a thread until the module's tests end."""
    stop = threading.Event()
    sent = {"ok": 0, "failed": 0}

    def run() -> None:
        rng = np.random.default_rng(6)
        with grpc.insecure_channel(server.grpc_target) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            deadline = time.monotonic() + 240  # bounded, whatever happens to the tests
            while not stop.is_set() and time.monotonic() < deadline:
                request = pb.ModelInferRequest(model_name="add_sub")
                for name, values in (("INPUT0", rng.standard_normal((4, 4)) + SHIFT), ("INPUT1", np.ones((4, 4)))):
                    request.inputs.add(name=name, datatype="FP32", shape=[4, 4])
                    request.raw_input_contents.append(values.astype(np.float32).tobytes())
                try:
                    stub.ModelInfer(request, timeout=10)
                    sent["ok"] += 1
                except grpc.RpcError:
                    sent["failed"] += 1
                time.sleep(0.002)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    yield sent
    stop.set()
    thread.join(30)


@pytest.fixture(scope="module")
def prometheus(
    server: ServerProcess, traffic: dict[str, int], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A Prometheus server scraping ortserve every second, with our rules loaded; yields its URL."""
    binary = tool("prometheus")
    work = tmp_path_factory.mktemp("prometheus")
    shutil.copy(RULES, work / "rules.yml")
    (work / "prometheus.yml").write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "rule_files: [rules.yml]\n"
        "scrape_configs:\n"
        f"  - job_name: ortserve\n    static_configs:\n      - targets: ['127.0.0.1:{server.http_port}']\n"
    )
    port = free_port()
    log = (work / "prometheus.log").open("w")
    process = subprocess.Popen(
        [binary, f"--config.file={work / 'prometheus.yml'}", f"--web.listen-address=127.0.0.1:{port}",
         f"--storage.tsdb.path={work / 'data'}", "--log.level=warn"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:  # the first scrape takes seconds
            assert process.poll() is None, (work / "prometheus.log").read_text()
            try:
                targets = get_json(f"{url}/api/v1/targets")["data"]["activeTargets"]
                if targets and all(t["health"] == "up" for t in targets):
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, f"no healthy target: {(work / 'prometheus.log').read_text()}"
            time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def query(url: str, promql: str) -> list[dict[str, Any]]:
    answer = get_json(f"{url}/api/v1/query?" + urllib.parse.urlencode({"query": promql}))
    assert answer["status"] == "success", answer
    result: list[dict[str, Any]] = answer["data"]["result"]
    return result


def eventually(url: str, promql: str, timeout_s: float = 60) -> list[dict[str, Any]]:
    """The query's result once it is non-empty (rates need two scrapes in their window)."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = query(url, promql)
        if result and all(np.isfinite(float(r["value"][1])) for r in result):
            return result
        assert time.monotonic() < deadline, f"no result for {promql}"
        time.sleep(0.5)


# -- the tests ------------------------------------------------------------------------------------


def test_prometheus_answers_request_rate_and_p95_from_the_histograms(prometheus: str, traffic: dict[str, int]) -> None:
    (rate,) = eventually(prometheus, 'sum(rate(ortserve_requests_total{model="add_sub"}[10s]))')
    (p95,) = eventually(
        prometheus, 'histogram_quantile(0.95, sum by (le) (rate(ortserve_request_duration_seconds_bucket[10s])))'
    )
    (rows,) = eventually(
        prometheus, "sum(rate(ortserve_inference_rows_total[10s])) / sum(rate(ortserve_requests_total[10s]))"
    )
    assert traffic["ok"] > 0 and traffic["failed"] == 0
    assert float(rate["value"][1]) > 1  # the client sends hundreds a second
    assert 0 < float(p95["value"][1]) < 1.0  # a tiny model on loopback
    assert float(rows["value"][1]) == pytest.approx(4.0)  # every request carries 4 rows
    (batch,) = eventually(
        prometheus, "sum(rate(ortserve_batch_size_sum[10s])) / sum(rate(ortserve_batch_size_count[10s]))"
    )
    assert float(batch["value"][1]) >= 4.0
    (pending,) = eventually(prometheus, 'ortserve_pending_requests_per_instance{model="add_sub",version="1"}')
    assert float(pending["value"][1]) >= 0


def test_drift_of_the_shifted_input_is_exported_and_logged(prometheus: str, server: ServerProcess) -> None:
    result = eventually(prometheus, 'ortserve_drift_psi{model="add_sub",input="INPUT0"}')
    assert sorted(r["metric"]["feature"] for r in result) == ["0", "1", "2", "3"]
    assert all(float(r["value"][1]) > 1.0 for r in result)  # a 3-sigma shift: far above 0.2
    (pvalue,) = eventually(prometheus, 'max(ortserve_drift_ks_pvalue{model="add_sub"})')
    assert float(pvalue["value"][1]) < 1e-6
    drift_lines = [json.loads(line) for line in server.output().splitlines() if '"input drift:' in line]
    assert drift_lines, server.output()[-3000:]
    assert {"timestamp", "level", "logger", "message", "model", "version"} <= set(drift_lines[0])
    assert drift_lines[0]["level"] == "warning" and drift_lines[0]["model"] == "add_sub"


def test_every_dashboard_query_is_valid_promql_and_the_core_panels_have_data(prometheus: str) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert len(exprs) >= 15
    empty = []
    for expr in exprs:
        promql = expr.replace("$model", ".*").replace("$__rate_interval", "10s")
        if not query(prometheus, promql) and "nv_gpu" not in expr:
            empty.append(expr)
    # Only the failure panels may be empty (no request failed); GPU panels are empty on a CPU machine.
    assert all("ortserve_request_failures_total" in e for e in empty), empty


def test_our_rules_load_into_prometheus(prometheus: str) -> None:
    groups = get_json(f"{prometheus}/api/v1/rules")["data"]["groups"]
    rules = {r["name"]: r for g in groups for r in g["rules"]}
    assert {"OrtserveErrorRatioHigh", "OrtserveLatencyP95High", "OrtserveInputDriftPSI"} <= set(rules)
    assert all(r["health"] in ("ok", "unknown") for r in rules.values()), rules


def test_promtool_finds_no_problem_in_the_ortserve_families(server: ServerProcess) -> None:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.http_port}/metrics", timeout=10) as response:
        text = response.read().decode()
    ours = "".join(line + "\n" for line in text.splitlines() if re.match(r"(# (HELP|TYPE) )?ortserve_", line))
    assert "ortserve_request_duration_seconds_bucket" in ours and "ortserve_drift_psi" in ours
    checked = subprocess.run([tool("promtool"), "check", "metrics"], input=ours, capture_output=True, text=True)
    assert checked.returncode == 0 and not checked.stdout.strip() and not checked.stderr.strip(), (
        checked.stdout + checked.stderr
    )
    # Triton's families keep Triton's names and units on purpose; promtool would object to them.
    triton = "".join(line + "\n" for line in text.splitlines() if re.match(r"(# (HELP|TYPE) )?nv_inference_", line))
    assert triton and "e+" not in triton


def test_promtool_checks_and_unit_tests_the_alerting_rules() -> None:
    promtool = tool("promtool")
    checked = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = subprocess.run(
        [promtool, "test", "rules", RULES_TEST.name], cwd=RULES_TEST.parent, capture_output=True, text=True
    )
    assert tested.returncode == 0 and "SUCCESS" in tested.stdout, tested.stdout + tested.stderr
