"""Cross-object consistency of every rendered overlay, against each other and against the server:
selectors and labels, ports and probes, settings names and values, shutdown timing, security,
autoscaling targets and metric names (HPA, prometheus-adapter rules, KEDA triggers)."""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
import yaml

from ortserve.app import SERVICE_NAME
from ortserve.config import ServerSettings, SettingsError, env_name
from tests.deploy.recipe import (
    ADAPTER,
    GPU_METRIC,
    OVERLAYS,
    PENDING_METRIC,
    Rendered,
    render,
    render_overlay,
    selects,
)

SETTING_ENV_NAMES = {env_name(f.name) for f in fields(ServerSettings)}
DEFAULTS = ServerSettings()
TEARDOWN_MARGIN_S = 10
"""After drain + grace the server closes its models (<= 1 s) and exits; CUDA teardown takes seconds."""


@pytest.fixture(params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> Rendered:
    return render_overlay(request.param)


def _settings(overlay: Rendered, tmp_path: Path) -> ServerSettings:
    """The server's settings as it would build them from the rendered environment."""
    env = dict(overlay.settings_env)
    if env.get("ORTSERVE_MODEL_REPOSITORY"):
        env["ORTSERVE_MODEL_REPOSITORY"] = str(tmp_path)  # the pod's mount does not exist here
    return ServerSettings.from_sources({}, environ=env)


def _quantity(value: Any) -> float:
    text = str(value)
    return int(text[:-1]) / 1000 if text.endswith("m") else float(text)


def _bytes(value: str) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
    return int(value[:-2]) * units[value[-2:]] if value[-2:] in units else int(value)


def _autoscaler_metric_names(overlay: Rendered) -> set[str]:
    names = set()
    for hpa in overlay.all("HorizontalPodAutoscaler"):
        names |= {m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"}
    for scaled in overlay.all("ScaledObject"):
        for trigger in scaled["spec"]["triggers"]:
            names |= set(re.findall(r"([A-Za-z_:][A-Za-z0-9_:]*)\{", trigger["metadata"]["query"]))
    return names


def _adapter_rules() -> list[dict[str, Any]]:
    config_map = render(ADAPTER).one("ConfigMap", "ortserve-adapter-rules")
    return list(yaml.safe_load(config_map["data"]["config.yaml"])["rules"])


# -- selectors and labels --------------------------------------------------------------------------


def test_selectors_match_the_pod_labels(overlay: Rendered) -> None:
    labels = overlay.pod_labels
    assert overlay.deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    services = overlay.all("Service")
    assert {s["metadata"]["name"] for s in services} == {"ortserve", "ortserve-headless"}
    for service in services:
        assert selects(service["spec"]["selector"], labels), service["metadata"]["name"]
    assert selects(overlay.one("PodDisruptionBudget")["spec"]["selector"]["matchLabels"], labels)
    for spread in overlay.pod["topologySpreadConstraints"]:
        assert selects(spread["labelSelector"]["matchLabels"], labels)
    assert {s["topologyKey"] for s in overlay.pod["topologySpreadConstraints"]} == {
        "topology.kubernetes.io/zone", "kubernetes.io/hostname"
    }


def test_every_object_lives_in_one_namespace_that_enforces_restricted(overlay: Rendered) -> None:
    namespace = overlay.one("Namespace")
    name = namespace["metadata"]["name"]
    assert {o["metadata"].get("namespace") for o in overlay.objects if o["kind"] != "Namespace"} == {name}
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_service_monitor_scrapes_the_metrics_port_of_exactly_one_service(overlay: Rendered) -> None:
    monitor = overlay.one("ServiceMonitor")
    selected = [
        s for s in overlay.all("Service")
        if selects(monitor["spec"]["selector"]["matchLabels"], s["metadata"].get("labels", {}))
    ]
    assert [s["metadata"]["name"] for s in selected] == ["ortserve"], "one target per pod, not two"
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["path"] == "/metrics"
    port = next(p for p in selected[0]["spec"]["ports"] if p["name"] == endpoint["port"])
    assert overlay.container_port(port["targetPort"]) == port["port"] == DEFAULTS.http_port


# -- ports and probes --------------------------------------------------------------------------------


def test_ports_are_the_server_defaults_and_the_configured_ones(overlay: Rendered, tmp_path: Path) -> None:
    settings = _settings(overlay, tmp_path)
    assert overlay.container_port("grpc") == settings.grpc_port == DEFAULTS.grpc_port == 8001
    assert overlay.container_port("http-metrics") == settings.http_port == DEFAULTS.http_port == 8002
    for service in overlay.all("Service"):
        for port in service["spec"]["ports"]:
            assert overlay.container_port(port["targetPort"]) == port["port"], service["metadata"]["name"]
    headless = overlay.one("Service", "ortserve-headless")
    assert headless["spec"]["clusterIP"] == "None"
    assert not headless["spec"].get("publishNotReadyAddresses", False)
    assert [p["port"] for p in headless["spec"]["ports"]] == [DEFAULTS.grpc_port]
    assert overlay.one("Service", "ortserve")["spec"].get("type", "ClusterIP") == "ClusterIP"


def test_probes_are_native_grpc_on_the_standard_health_service(overlay: Rendered) -> None:
    server = overlay.server
    probes = {kind: server[kind] for kind in ("startupProbe", "readinessProbe", "livenessProbe")}
    for kind, probe in probes.items():
        assert set(probe) & {"grpc", "httpGet", "tcpSocket", "exec"} == {"grpc"}, kind
        assert probe["grpc"]["port"] == overlay.container_port("grpc"), kind
    # The server registers exactly these two health services (app.OrtServer._set_health).
    assert probes["readinessProbe"]["grpc"]["service"] == SERVICE_NAME
    assert probes["startupProbe"]["grpc"]["service"] == SERVICE_NAME
    assert probes["livenessProbe"]["grpc"].get("service", "") == ""
    startup = probes["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300, "model load and warm-up need minutes"
    for probe in probes.values():
        assert probe["timeoutSeconds"] < probe["periodSeconds"]


def test_grace_period_covers_drain_and_grace(overlay: Rendered, tmp_path: Path) -> None:
    settings = _settings(overlay, tmp_path)
    pod = overlay.pod
    lifecycle = overlay.server.get("lifecycle", {})
    pre_stop = lifecycle.get("preStop", {})
    # The server drains by itself on SIGTERM, so no preStop sleep is needed; one would add to the budget.
    sleep_s = float(pre_stop.get("sleep", {}).get("seconds", 0))
    command = " ".join(pre_stop.get("exec", {}).get("command", []))
    sleep_s += sum(float(s) for s in re.findall(r"sleep\s+(\d+(?:\.\d+)?)", command))
    assert settings.drain_seconds > 0, "Kubernetes needs a drain window for endpoints to propagate"
    needed = sleep_s + settings.drain_seconds + settings.grace_seconds + TEARDOWN_MARGIN_S
    assert pod["terminationGracePeriodSeconds"] >= math.ceil(needed), (
        f"terminationGracePeriodSeconds {pod['terminationGracePeriodSeconds']} < preStop {sleep_s} + "
        f"drain {settings.drain_seconds} + grace {settings.grace_seconds} + margin {TEARDOWN_MARGIN_S}"
    )


# -- settings ----------------------------------------------------------------------------------------------


def test_server_environment_names_are_settings_and_values_validate(overlay: Rendered, tmp_path: Path) -> None:
    server = overlay.server
    for source in server.get("envFrom", []):
        ref = source.get("configMapRef") or source.get("secretRef")
        assert ref is not None
        if "configMapRef" in source:
            overlay.one("ConfigMap", ref["name"])  # the hashed name kustomize wrote exists
    env = overlay.settings_env
    ours = {name for name in env if name.startswith("ORTSERVE_")}
    assert ours == set(env), f"not a setting: {sorted(set(env) - ours)}"
    assert ours <= SETTING_ENV_NAMES, f"unknown settings: {sorted(ours - SETTING_ENV_NAMES)}"
    settings = _settings(overlay, tmp_path)  # raises SettingsError on a bad value
    assert settings.device in ("cuda", "cpu"), "a deployment names its device instead of guessing"
    # No client shares the pod's /dev/shm: the shared memory RPCs would only expose the server's own objects.
    assert settings.shared_memory == "off"


def test_a_bad_setting_value_would_be_caught(overlay: Rendered) -> None:
    """The negative control of the check above: the server refuses what the ConfigMap could say wrong."""
    with pytest.raises(SettingsError):
        ServerSettings.from_sources({}, environ={**overlay.settings_env, "ORTSERVE_DEVICE": "gpu"})


def test_model_repository_is_the_synced_volume(overlay: Rendered) -> None:
    repository = overlay.settings_env["ORTSERVE_MODEL_REPOSITORY"]
    mounts = {m["mountPath"]: m for m in overlay.server["volumeMounts"]}
    assert mounts[repository].get("readOnly") is True
    volume = mounts[repository]["name"]
    (sync,) = overlay.pod["initContainers"]
    assert any(m["name"] == volume and m["mountPath"] == repository for m in sync["volumeMounts"])
    assert repository in " ".join(sync["args"])
    source = next(s["configMapRef"]["name"] for s in sync["envFrom"] if "configMapRef" in s)
    assert overlay.config_map(source)["MODEL_SOURCE"]


def test_the_disk_request_covers_the_volumes(overlay: Rendered) -> None:
    sizes = [_bytes(v["emptyDir"]["sizeLimit"]) for v in overlay.pod["volumes"] if "emptyDir" in v]
    assert len(sizes) == len(overlay.pod["volumes"]), "every emptyDir is bounded"
    assert sum(sizes) <= _bytes(overlay.server["resources"]["requests"]["ephemeral-storage"])


def test_intra_op_threads_fit_the_cpu_request(overlay: Rendered, tmp_path: Path) -> None:
    threads = _settings(overlay, tmp_path).intra_op_threads
    resources = overlay.server["resources"]
    assert threads >= 1, "0 would count the node's cores, not the pod's"
    assert threads <= _quantity(resources["requests"]["cpu"])
    if "cpu" in resources.get("limits", {}):
        assert threads <= _quantity(resources["limits"]["cpu"])


def test_service_links_cannot_inject_settings(overlay: Rendered) -> None:
    assert overlay.pod["enableServiceLinks"] is False
    for service in overlay.all("Service"):
        prefix = service["metadata"]["name"].upper().replace("-", "_")
        injected = {f"{prefix}_SERVICE_HOST", f"{prefix}_SERVICE_PORT", f"{prefix}_PORT"}
        for port in service["spec"]["ports"]:
            injected |= {f"{prefix}_SERVICE_PORT_{port['name'].upper().replace('-', '_')}",
                         f"{prefix}_PORT_{port['port']}_TCP"}
        assert not injected & SETTING_ENV_NAMES, service["metadata"]["name"]


# -- security and resources ---------------------------------------------------------------------------------


def test_pods_run_non_root_read_only_without_capabilities(overlay: Rendered) -> None:
    pod = overlay.pod
    context = pod["securityContext"]
    assert context["runAsNonRoot"] is True and context["runAsUser"] > 0
    assert context["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod["automountServiceAccountToken"] is False
    assert overlay.one("ServiceAccount", pod["serviceAccountName"])
    writable = {v["name"] for v in pod["volumes"] if "emptyDir" in v}
    for container in pod["containers"] + pod["initContainers"]:
        sc = container["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False, container["name"]
        assert sc["readOnlyRootFilesystem"] is True, container["name"]
        assert sc["capabilities"] == {"drop": ["ALL"]}, container["name"]
        assert sc.get("privileged", False) is False
        tmp = next(m for m in container["volumeMounts"] if m["mountPath"] == "/tmp")
        assert tmp["name"] in writable, f"{container['name']}: /tmp must be writable"
        image = container["image"]
        assert ":" in image.rsplit("/", 1)[-1] and not image.endswith(":latest"), f"unpinned image {image}"
        assert container["resources"]["limits"]["memory"], f"{container['name']}: bounded memory"
    resources = overlay.server["resources"]
    assert resources["requests"]["memory"] == resources["limits"]["memory"], "never OOM-killed for a neighbour"


def test_gpu_overlays_claim_a_gpu_on_the_gpu_pool(overlay: Rendered, tmp_path: Path) -> None:
    pod, resources = overlay.pod, overlay.server["resources"]
    device = _settings(overlay, tmp_path).device
    if overlay.name.startswith("overlays/gpu"):
        assert device == "cuda"
        assert int(resources["limits"]["nvidia.com/gpu"]) >= 1
        assert pod["nodeSelector"]
        assert any(t["key"] == "nvidia.com/gpu" and t["effect"] == "NoSchedule" for t in pod["tolerations"])
        assert overlay.server["image"].endswith("-gpu")
    else:
        assert device == "cpu"
        assert not any("nvidia.com" in k for k in resources.get("limits", {}))
        assert "nodeSelector" not in pod and "tolerations" not in pod
        assert not overlay.server["image"].endswith("-gpu")


def test_rollout_keeps_capacity_and_the_budget_allows_drains(overlay: Rendered) -> None:
    spec = overlay.deployment["spec"]
    assert "replicas" not in spec, "the autoscaler owns replicas; a value here resets it on every apply"
    assert spec["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    budget = overlay.one("PodDisruptionBudget")["spec"]
    assert budget["maxUnavailable"] == 1 and budget["unhealthyPodEvictionPolicy"] == "AlwaysAllow"


# -- autoscaling -----------------------------------------------------------------------------------------------------


def test_exactly_one_autoscaler_targets_the_deployment(overlay: Rendered) -> None:
    hpas, scaled = overlay.all("HorizontalPodAutoscaler"), overlay.all("ScaledObject")
    assert len(hpas) + len(scaled) == 1, "two autoscalers on one Deployment fight"
    deployment = overlay.deployment["metadata"]["name"]
    if hpas:
        spec = hpas[0]["spec"]
        low, high, behavior = spec["minReplicas"], spec["maxReplicas"], spec["behavior"]
        assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": deployment}
    else:
        spec = scaled[0]["spec"]
        low, high = spec["minReplicaCount"], spec["maxReplicaCount"]
        behavior = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
        assert spec["scaleTargetRef"]["name"] == deployment
        assert spec["scaleTargetRef"].get("kind", "Deployment") == "Deployment"
    assert 2 <= low < high, "two replicas at least, so one can drain while the other serves"
    up, down = behavior["scaleUp"], behavior["scaleDown"]
    assert up["stabilizationWindowSeconds"] == 0 and down["stabilizationWindowSeconds"] >= 300
    assert up["selectPolicy"] == "Max" and down["selectPolicy"] == "Min"


def test_autoscalers_use_the_servers_signal_and_gpu_utilisation(overlay: Rendered) -> None:
    names = _autoscaler_metric_names(overlay)
    expected = {PENDING_METRIC, GPU_METRIC} if overlay.name.startswith("overlays/gpu") else {PENDING_METRIC}
    assert names == expected
    for hpa in overlay.all("HorizontalPodAutoscaler"):
        for metric in hpa["spec"]["metrics"]:
            assert metric["type"] == "Pods" and metric["pods"]["target"]["type"] == "AverageValue"


def test_adapter_rules_serve_exactly_the_hpa_metrics_per_pod() -> None:
    rules = _adapter_rules()
    served = {rule["name"]["as"] for rule in rules}
    wanted = set()
    for name in OVERLAYS:
        for hpa in render_overlay(name).all("HorizontalPodAutoscaler"):
            wanted |= {m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"]}
    assert served == wanted == {PENDING_METRIC, GPU_METRIC}
    for rule in rules:
        series = re.match(r"([A-Za-z_:][A-Za-z0-9_:]*)\{", rule["seriesQuery"])
        assert series and re.fullmatch(rule["name"]["matches"], series[1])
        assert series[1] == rule["name"]["as"], "served under the name the exporter publishes"
        resources = {v["resource"] for v in rule["resources"]["overrides"].values()}
        assert resources == {"namespace", "pod"}
        for label in rule["resources"]["overrides"]:
            assert f'{label}!=""' in rule["seriesQuery"]
        for part in ("<<.Series>>", "<<.LabelMatchers>>", "<<.GroupBy>>"):
            assert part in rule["metricsQuery"]
    pending = next(r for r in rules if r["name"]["as"] == PENDING_METRIC)
    assert pending["metricsQuery"].startswith("max by (<<.GroupBy>>)"), "a pod's value: its busiest model"
    # The ServiceMonitor's targets carry the namespace and pod labels the pending rule maps.
    assert set(pending["resources"]["overrides"]) == {"namespace", "pod"}
    gpu = next(r for r in rules if r["name"]["as"] == GPU_METRIC)
    assert set(gpu["resources"]["overrides"]) == {"exported_namespace", "exported_pod"}


def test_keda_queries_select_this_deployments_pods() -> None:
    overlay = render_overlay("gpu-keda")
    namespace = overlay.one("Namespace")["metadata"]["name"]
    deployment = overlay.deployment["metadata"]["name"]
    pod_name = f"{deployment}-7c9f8d6b5d-x2x7q"  # <deployment>-<pod-template-hash>-<suffix>
    scaled = overlay.one("ScaledObject")
    hpa_like = render_overlay("gpu").one("HorizontalPodAutoscaler")["spec"]
    targets = {m["pods"]["metric"]["name"]: m["pods"]["target"]["averageValue"] for m in hpa_like["metrics"]}
    monitor = overlay.one("ServiceMonitor")
    scraped_through = [
        s["metadata"]["name"] for s in overlay.all("Service")
        if selects(monitor["spec"]["selector"]["matchLabels"], s["metadata"].get("labels", {}))
    ]
    for trigger in scaled["spec"]["triggers"]:
        meta = trigger["metadata"]
        matchers = dict(re.findall(r'(\w+)=~?"([^"]*)"', meta["query"]))
        assert matchers.get("namespace", matchers.get("exported_namespace")) == namespace
        if "service" in matchers:  # our own metric, labelled by the ServiceMonitor's target
            assert [matchers["service"]] == scraped_through
        else:  # the DCGM exporter's, labelled with the pod holding the GPU
            pod_regex = matchers["exported_pod"]
            assert re.fullmatch(pod_regex, pod_name)
            assert not re.fullmatch(pod_regex, f"{deployment}-canary-7c9f8d6b5d-x2x7q")
        (metric,) = set(re.findall(r"([A-Za-z_:][A-Za-z0-9_:]*)\{", meta["query"]))
        assert trigger["metricType"] == "AverageValue" and meta["query"].startswith("sum(")
        assert meta["threshold"] == targets[metric], "the same target as the HPA"


def test_promql_of_the_adapter_and_keda_parses(tmp_path: Path) -> None:
    # scripts/setup-prometheus.sh installs it for CI and names its directory in PROMETHEUS_BIN_DIR.
    promtool = shutil.which("promtool", path=os.environ.get("PROMETHEUS_BIN_DIR")) or shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian package prometheus): PromQL syntax is not checked")
    queries = []
    for rule in _adapter_rules():
        # The adapter's template, filled in as it fills it for a pods query.
        queries.append(
            rule["metricsQuery"]
            .replace("<<.Series>>", rule["name"]["as"])
            .replace("<<.LabelMatchers>>", 'namespace="ortserve",pod=~"ortserve-a|ortserve-b"')
            .replace("<<.GroupBy>>", "pod")
        )
        queries.append(rule["seriesQuery"])
    for trigger in render_overlay("gpu-keda").one("ScaledObject")["spec"]["triggers"]:
        queries.append(trigger["metadata"]["query"])
    rules = {"groups": [{"name": "ortserve-autoscaling", "rules": [
        {"record": f"ortserve:query_{i}", "expr": q} for i, q in enumerate(queries)
    ]}]}
    path = tmp_path / "queries.yaml"
    path.write_text(yaml.safe_dump(rules))
    done = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
