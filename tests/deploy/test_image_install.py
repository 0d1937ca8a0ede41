"""The image's Python part, performed here: the build stage's install step of `Dockerfile`, run as
written (wheels of this checkout's build context, installed with the `cpu` extra and the pinned
ONNX Runtime into a clean virtual environment), then the installed `ortserve serve` started with
the image's environment, asked by the image's HEALTHCHECK, used, and stopped the way Kubernetes does.

It downloads the dependencies from the package index (pip's cache makes reruns quick).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from ortserve_client.proto import grpc_service_pb2 as pb
from ortserve_client.proto import grpc_service_pb2_grpc as pb_grpc
from tests.deploy.recipe import REPO, Dockerfile, DockerIgnore, env_pairs

DOCKERFILE = Dockerfile.read(REPO / "Dockerfile")
LISTENING = re.compile(r"ortserve listening: gRPC [^:]+:(\d+), HTTP [^:]+:(\d+)")


def _build_context(target: Path) -> None:
    """Copy what the build stage's COPY lines take, filtered by .dockerignore, as Docker sends it."""
    ignore = DockerIgnore((REPO / ".dockerignore").read_text())
    for line in DOCKERFILE.build.all("COPY"):
        *sources, _ = line.split()
        for source in sources:
            path = REPO / source
            files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
            for file in files:
                relative = file.relative_to(REPO).as_posix()
                if not ignore.excluded(relative):
                    (target / relative).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(file, target / relative)


def _install_step(context: Path, venv: Path, wheels: Path) -> str:
    """The build stage's last RUN, with the image's paths mapped into the test's directory."""
    command = DOCKERFILE.expand(DOCKERFILE.build.all("RUN")[-1])
    command = command.replace("/opt/ortserve", str(venv)).replace("/wheels", str(wheels))
    return command.replace("python3 -m venv", f"{sys.executable} -m venv", 1)


@pytest.mark.timeout(600)
def test_the_image_install_serves_and_drains(tmp_path: Path) -> None:
    context, venv, wheels = tmp_path / "context", tmp_path / "opt" / "ortserve", tmp_path / "wheels"
    context.mkdir()
    _build_context(context)
    assert not (context / "tests").exists() and (context / "client" / "pyproject.toml").is_file()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHON", "ORTSERVE_"))}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if ".venv" not in p)
    done = subprocess.run(
        ["bash", "-o", "pipefail", "-c", _install_step(context, venv, wheels)],
        cwd=context, env=env, capture_output=True, text=True, timeout=540, check=False,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    python = venv / "bin" / "python"

    # The venv holds the wheels, not this checkout.
    where = subprocess.run(
        [str(python), "-c", "import ortserve, ortserve_client, onnxruntime; "
         "print(ortserve.__file__, ortserve_client.__file__, onnxruntime.__version__)"],
        cwd=tmp_path, env=env, capture_output=True, text=True, check=True,
    ).stdout.split()
    assert all(p.startswith(str(venv)) for p in where[:2]), where
    assert where[2] == DOCKERFILE.args["ONNXRUNTIME_VERSION"]

    # The runtime stage's environment, with /models as a copy of the demo repository.
    models = tmp_path / "models"
    shutil.copytree(REPO / "server" / "ortserve" / "demo" / "models", models)
    image_env = {k: v for line in DOCKERFILE.runtime.all("ENV") for k, v in env_pairs(line).items()}
    run_env = {**env, **image_env, "HOME": str(tmp_path), "PATH": f"{venv / 'bin'}{os.pathsep}{env['PATH']}"}
    run_env.update(ORTSERVE_MODEL_REPOSITORY=str(models), ORTSERVE_HOST="127.0.0.1", ORTSERVE_GRPC_PORT="0",
                   ORTSERVE_HTTP_PORT="0", ORTSERVE_DRAIN_SECONDS="3", ORTSERVE_GRACE_SECONDS="10")
    entrypoint = json.loads(DOCKERFILE.runtime.one("ENTRYPOINT")) + json.loads(DOCKERFILE.runtime.one("CMD"))
    process = subprocess.Popen(
        [str(venv / "bin" / entrypoint[0]), *entrypoint[1:]], cwd=tmp_path, env=run_env,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    lines: list[str] = []
    ready = threading.Event()

    def pump() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            lines.append(line)
            if "ortserve ready" in line:
                ready.set()
        ready.set()

    threading.Thread(target=pump, daemon=True).start()
    try:
        assert ready.wait(120) and process.poll() is None, "".join(lines)
        grpc_port = int(next(m[1] for line in lines if (m := LISTENING.search(line))))
        healthcheck = json.loads(DOCKERFILE.runtime.one("HEALTHCHECK").partition("CMD ")[2])
        probe_env = {**run_env, "ORTSERVE_GRPC_PORT": str(grpc_port)}

        def health() -> int:
            return subprocess.run(healthcheck, env=probe_env, capture_output=True, timeout=30, check=False).returncode

        assert health() == 0, "".join(lines)
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            flowers = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]], dtype=np.float32)
            request = pb.ModelInferRequest(model_name="iris")
            request.inputs.add(name="input", datatype="FP32", shape=flowers.shape)
            request.raw_input_contents.append(flowers.tobytes())
            reply = stub.ModelInfer(request, timeout=30)
            label = [o.name for o in reply.outputs].index("label")
            assert np.frombuffer(reply.raw_output_contents[label], np.int64).tolist() == [0, 2]

            # SIGTERM as the kubelet sends it: unhealthy at once, still serving through the drain, exit 0.
            started = time.monotonic()
            process.send_signal(signal.SIGTERM)
            deadline = started + 2
            while health() == 0 and time.monotonic() < deadline:
                time.sleep(0.1)
            assert health() == 1
            assert stub.ServerLive(pb.ServerLiveRequest(), timeout=5).live, "serves through the drain window"
            assert process.wait(30) == 0, "".join(lines)
            assert time.monotonic() - started >= 3 - 0.5
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
