"""Read what the deployment tests check: rendered kustomize overlays, Dockerfiles, .dockerignore.

`render(path)` runs the real `kubectl kustomize` (skipping the test when kubectl is absent);
`Dockerfile` parses a Dockerfile into stages of (instruction, arguments) the way Docker joins
continuation lines; `DockerIgnore` answers whether the build context holds a path.
"""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "k8s"
OVERLAYS = sorted(p.name for p in (K8S / "overlays").iterdir() if (p / "kustomization.yaml").is_file())
"""Every overlay directory: gpu, cpu, gpu-keda, ..."""
ADAPTER = K8S / "prometheus-adapter"

PENDING_METRIC = "ortserve_pending_requests_per_instance"
"""The server's per-pod autoscaling gauge (model, version labels)."""
GPU_METRIC = "DCGM_FI_DEV_GPU_UTIL"
"""GPU utilisation in percent, as NVIDIA's DCGM exporter names it."""
CRD_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor"), ("keda.sh/v1alpha1", "ScaledObject")}
"""Custom resources: no Kubernetes schema, checked against tests/deploy/crd_schemas.py instead."""


def kubectl() -> str:
    path = shutil.which("kubectl")
    if path is None:
        pytest.skip("kubectl is not installed: the manifests are rendered with `kubectl kustomize` (kubectl >= 1.27)")
    return path


@functools.cache
def _render(path: Path) -> tuple[dict[str, Any], ...]:
    done = subprocess.run(
        [kubectl(), "kustomize", str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, f"kubectl kustomize {path} failed:\n{done.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(done.stdout) if doc)


@dataclass
class Rendered:
    """The objects one kustomization renders to."""

    name: str
    objects: list[dict[str, Any]]

    def all(self, kind: str) -> list[dict[str, Any]]:
        return [o for o in self.objects if o["kind"] == kind]

    def one(self, kind: str, name: str | None = None) -> dict[str, Any]:
        found = [o for o in self.all(kind) if name is None or o["metadata"]["name"] == name]
        assert len(found) == 1, f"{self.name}: expected one {kind} {name or ''}, found {len(found)}"
        return found[0]

    def maybe(self, kind: str) -> dict[str, Any] | None:
        found = self.all(kind)
        return found[0] if found else None

    # The server's pod, container and settings.
    @property
    def deployment(self) -> dict[str, Any]:
        return self.one("Deployment", "ortserve")

    @property
    def pod(self) -> dict[str, Any]:
        return dict(self.deployment["spec"]["template"]["spec"])

    @property
    def pod_labels(self) -> dict[str, str]:
        return dict(self.deployment["spec"]["template"]["metadata"]["labels"])

    @property
    def server(self) -> dict[str, Any]:
        return next(c for c in self.pod["containers"] if c["name"] == "ortserve")

    def container_port(self, name: str) -> int:
        return int(next(p["containerPort"] for p in self.server["ports"] if p["name"] == name))

    def config_map(self, ref: str) -> dict[str, str]:
        return dict(self.one("ConfigMap", ref).get("data", {}))

    @property
    def settings_env(self) -> dict[str, str]:
        """The server container's environment from its ConfigMaps and `env` (what the server reads)."""
        env: dict[str, str] = {}
        for source in self.server.get("envFrom", []):
            if "configMapRef" in source:
                env.update(self.config_map(source["configMapRef"]["name"]))
        env.update({e["name"]: e["value"] for e in self.server.get("env", []) if "value" in e})
        return env


def render(path: Path) -> Rendered:
    return Rendered(path.relative_to(K8S).as_posix(), [dict(o) for o in _render(path)])


def render_overlay(name: str) -> Rendered:
    return render(K8S / "overlays" / name)


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


# -- Dockerfiles --------------------------------------------------------------------------------


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]

    def one(self, keyword: str) -> str:
        found = self.all(keyword)
        assert len(found) == 1, f"expected one {keyword} in stage {self.name or self.base}, found {len(found)}"
        return found[0]


@dataclass
class Dockerfile:
    path: Path
    args: dict[str, str]
    """Global ARG defaults (before the first FROM)."""
    stages: list[Stage]
    comments: list[str]

    @classmethod
    def read(cls, path: Path) -> Dockerfile:
        args: dict[str, str] = {}
        stages: list[Stage] = []
        comments: list[str] = []
        pending = ""
        for raw in path.read_text().splitlines():
            line = raw.strip()
            if line.startswith("#"):
                comments.append(line.lstrip("# "))
                continue  # Docker drops comment lines, inside continuations too
            if not line and not pending:
                continue
            if line.endswith("\\"):
                pending += line[:-1].rstrip() + " "
                continue
            keyword, _, rest = (pending + line).partition(" ")
            pending = ""
            keyword, rest = keyword.upper(), rest.strip()
            if keyword == "FROM":
                words = rest.split()
                stages.append(Stage(words[0], words[2] if len(words) == 3 and words[1].upper() == "AS" else None))
            elif stages:
                stages[-1].instructions.append((keyword, rest))
            elif keyword == "ARG" and "=" in rest:
                name, _, value = rest.partition("=")
                args[name] = value
        return cls(path, args, stages, comments)

    @property
    def build(self) -> Stage:
        return next(s for s in self.stages if s.name == "build")

    @property
    def runtime(self) -> Stage:
        return self.stages[-1]

    def expand(self, text: str) -> str:
        """Substitute ${ARG} / $ARG with the global ARG defaults."""
        return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: self.args.get(m[1] or m[2], m[0]), text)


def env_pairs(instruction: str) -> dict[str, str]:
    """ENV a=1 b=2 (the key=value form) as a dict."""
    return dict(pair.split("=", 1) for pair in instruction.split())


# -- .dockerignore --------------------------------------------------------------------------------


class DockerIgnore:
    """The build context's filter, as Docker applies .dockerignore.

    Patterns are matched against the path relative to the context and against each of its parent
    directories; the last matching pattern decides, and a `!` pattern takes a path back in.
    """

    def __init__(self, text: str) -> None:
        self.rules: list[tuple[bool, re.Pattern[str]]] = []
        for line in text.splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            keep = line.startswith("!")
            pattern = line.lstrip("!").strip().strip("/")
            self.rules.append((keep, re.compile(self._regex(pattern))))

    @staticmethod
    def _regex(pattern: str) -> str:
        out, i = "", 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                out, i = out + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                out, i = out + ".*", i + 2
            elif pattern[i] == "*":
                out, i = out + "[^/]*", i + 1
            elif pattern[i] == "?":
                out, i = out + "[^/]", i + 1
            else:
                out, i = out + re.escape(pattern[i]), i + 1
        return out

    def excluded(self, relative: str) -> bool:
        parts = relative.strip("/").split("/")
        prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
        result = False
        for keep, rx in self.rules:
            if any(rx.fullmatch(p) for p in prefixes):
                result = not keep
        return result
