"""Closed JSON schemas for the custom resources the manifests use, which kubernetes-validate has no schema for.

Each covers the subset of its CRD's openAPIV3Schema that ortserve writes, with the CRD's required
fields and types, and `additionalProperties: false` everywhere, so a misspelt or misplaced field
fails as `--strict` would fail it (transcribed from prometheus-operator's
`monitoring.coreos.com_servicemonitors.yaml` and KEDA's `keda.sh_scaledobjects.yaml`).
Widen a schema from the upstream CRD when the manifests start using another field.
"""

from __future__ import annotations

from typing import Any

_DURATION = r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"
_NUMBER = r"(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
_QUANTITY = rf"^(\+|-)?{_NUMBER}(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?{_NUMBER}))?$"


def _closed(properties: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": properties, "additionalProperties": False}
    if required:
        schema["required"] = required
    return schema


_STRING = {"type": "string"}
_INT32 = {"type": "integer", "minimum": -(2**31), "maximum": 2**31 - 1}
_LABELS = {"type": "object", "additionalProperties": {"type": "string"}}
_METADATA = _closed(
    {"name": _STRING, "namespace": _STRING, "labels": _LABELS, "annotations": _LABELS}, ["name"]
)
_LABEL_SELECTOR = _closed(
    {
        "matchLabels": _LABELS,
        "matchExpressions": {
            "type": "array",
            "items": _closed(
                {"key": _STRING, "operator": _STRING, "values": {"type": "array", "items": _STRING}},
                ["key", "operator"],
            ),
        },
    }
)

SERVICE_MONITOR: dict[str, Any] = _closed(
    {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": _METADATA,
        "spec": _closed(
            {
                "selector": _LABEL_SELECTOR,
                "namespaceSelector": _closed({"any": {"type": "boolean"}, "matchNames": {"type": "array"}}),
                "jobLabel": _STRING,
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": _closed(
                        {
                            "port": _STRING,
                            "targetPort": {"anyOf": [_STRING, {"type": "integer"}]},
                            "path": _STRING,
                            "scheme": {"enum": ["http", "https", "HTTP", "HTTPS"]},
                            "interval": {"type": "string", "pattern": _DURATION},
                            "scrapeTimeout": {"type": "string", "pattern": _DURATION},
                            "honorLabels": {"type": "boolean"},
                        }
                    ),
                },
            },
            ["selector", "endpoints"],
        ),
    },
    ["apiVersion", "kind", "metadata", "spec"],
)

_SCALING_RULES = _closed(
    {
        "stabilizationWindowSeconds": {"type": "integer", "minimum": 0, "maximum": 3600},
        "selectPolicy": {"enum": ["Max", "Min", "Disabled"]},
        "policies": {
            "type": "array",
            "items": _closed(
                {
                    "type": {"enum": ["Pods", "Percent"]},
                    "value": {"type": "integer", "minimum": 1},
                    "periodSeconds": {"type": "integer", "minimum": 1, "maximum": 1800},
                },
                ["type", "value", "periodSeconds"],
            ),
        },
    }
)

SCALED_OBJECT: dict[str, Any] = _closed(
    {
        "apiVersion": {"const": "keda.sh/v1alpha1"},
        "kind": {"const": "ScaledObject"},
        "metadata": _METADATA,
        "spec": _closed(
            {
                "scaleTargetRef": _closed(
                    {"apiVersion": _STRING, "kind": _STRING, "name": _STRING, "envSourceContainerName": _STRING},
                    ["name"],
                ),
                "pollingInterval": _INT32,
                "cooldownPeriod": _INT32,
                "initialCooldownPeriod": _INT32,
                "idleReplicaCount": _INT32,
                "minReplicaCount": _INT32,
                "maxReplicaCount": _INT32,
                "advanced": _closed(
                    {
                        "restoreToOriginalReplicaCount": {"type": "boolean"},
                        "horizontalPodAutoscalerConfig": _closed(
                            {
                                "name": _STRING,
                                "behavior": _closed({"scaleUp": _SCALING_RULES, "scaleDown": _SCALING_RULES}),
                            }
                        ),
                    }
                ),
                "triggers": {
                    "type": "array",
                    "minItems": 1,
                    "items": _closed(
                        {
                            "type": _STRING,
                            "name": _STRING,
                            "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
                            "useCachedMetrics": {"type": "boolean"},
                            "metadata": {"type": "object", "additionalProperties": _STRING},
                            "authenticationRef": _closed({"name": _STRING, "kind": _STRING}, ["name"]),
                        },
                        ["type", "metadata"],
                    ),
                },
            },
            ["scaleTargetRef", "triggers"],
        ),
    },
    ["apiVersion", "kind", "metadata", "spec"],
)

SCHEMAS: dict[tuple[str, str], dict[str, Any]] = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): SERVICE_MONITOR,
    ("keda.sh/v1alpha1", "ScaledObject"): SCALED_OBJECT,
}

PROMETHEUS_THRESHOLD = _QUANTITY
"""KEDA's Prometheus trigger threshold is parsed as a Kubernetes quantity."""
