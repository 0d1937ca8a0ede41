"""Every kustomization renders with `kubectl kustomize`, and every object it renders is valid:
built-in kinds against the Kubernetes schemas with `kubernetes-validate --strict` (oldest and newest
Kubernetes the manifests support), custom resources against tests/deploy/crd_schemas.py."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml

from tests.deploy.crd_schemas import PROMETHEUS_THRESHOLD, SCHEMAS
from tests.deploy.recipe import ADAPTER, CRD_KINDS, K8S, OVERLAYS, render


def _newest_schemas() -> str:
    try:
        from kubernetes_validate.utils import latest_version
    except ImportError:
        return "1.27.0"
    return str(latest_version())


KUBERNETES_VERSIONS = ("1.27.0", _newest_schemas())
"""1.27: native gRPC probes, matchLabelKeys and unhealthyPodEvictionPolicy on by default; and the
newest Kubernetes whose schemas the installed kubernetes-validate ships."""

KUSTOMIZATIONS = [K8S / "base", *(K8S / "overlays" / name for name in OVERLAYS), ADAPTER]


def _validator() -> str:
    path = shutil.which("kubernetes-validate")
    if path is None:
        pytest.skip("kubernetes-validate is not installed (pip install kubernetes-validate; it is in the dev extra)")
    return path


def _validate(files: list[Path], version: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_validator(), "--strict", "-k", version, *map(str, files)],
        capture_output=True, text=True, timeout=120, check=False,
    )


def test_the_overlays_are_the_documented_ones() -> None:
    assert {"gpu", "cpu", "gpu-keda"} <= set(OVERLAYS)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_rendered_builtin_object_passes_kubernetes_validate_strict(tmp_path: Path, version: str) -> None:
    files: list[Path] = []
    expected: dict[Path, set[str]] = {}
    for kustomization in KUSTOMIZATIONS:
        rendered = render(kustomization)
        path = tmp_path / (rendered.name.replace("/", "_") + ".yaml")
        path.write_text(yaml.safe_dump_all(rendered.objects))
        files.append(path)
        expected[path] = {
            f"{o['kind'].lower()}/{o['metadata']['name']}"
            for o in rendered.objects
            if (o["apiVersion"], o["kind"]) not in CRD_KINDS
        }
    done = _validate(files, version)
    assert done.returncode == 0, done.stdout + done.stderr
    for path, names in expected.items():
        passed = {
            line.split(" for resource ")[1].split(" against ")[0]
            for line in done.stdout.splitlines()
            if line.startswith(f"INFO {path} passed")
        }
        assert passed == names, f"{path.name}: validated {sorted(passed)}, expected {sorted(names)}\n{done.stdout}"
    # A schema it could not find is only a warning to kubernetes-validate: allow it for our CRDs only,
    # so that a misspelt apiVersion of a built-in kind cannot slip through unvalidated.
    for line in done.stdout.splitlines():
        if line.startswith("WARN"):
            assert any(f"kind {kind} with api version {api}" in line for api, kind in CRD_KINDS), line


def test_strict_validation_rejects_an_unknown_field(tmp_path: Path) -> None:
    """The negative control: --strict really closes the schemas the test above relies on."""
    deployment = render(K8S / "overlays" / "gpu").deployment
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["grpcc"] = {"port": 8001}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(deployment))
    done = _validate([path], KUBERNETES_VERSIONS[-1])
    assert done.returncode != 0 and "grpcc" in done.stdout, done.stdout


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_custom_resources_match_their_crd_schemas(overlay: str) -> None:
    rendered = render(K8S / "overlays" / overlay)
    custom = [o for o in rendered.objects if (o["apiVersion"], o["kind"]) in CRD_KINDS]
    assert any(o["kind"] == "ServiceMonitor" for o in custom)
    for obj in custom:
        jsonschema.validate(obj, SCHEMAS[(obj["apiVersion"], obj["kind"])])
        if obj["kind"] == "ScaledObject":
            for trigger in obj["spec"]["triggers"]:
                assert trigger["type"] == "prometheus"
                assert {"serverAddress", "query", "threshold"} <= set(trigger["metadata"])
                assert jsonschema.Draft202012Validator({"pattern": PROMETHEUS_THRESHOLD}).is_valid(
                    trigger["metadata"]["threshold"]
                )


def test_the_crd_schemas_are_closed() -> None:
    """A misplaced field in a custom resource fails, as --strict fails it in a built-in one."""
    monitor = next(o for o in render(K8S / "overlays" / "gpu").objects if o["kind"] == "ServiceMonitor")
    monitor["spec"]["endpoints"][0]["intervall"] = "15s"
    with pytest.raises(jsonschema.ValidationError, match="intervall"):
        jsonschema.validate(monitor, SCHEMAS[("monitoring.coreos.com/v1", "ServiceMonitor")])
