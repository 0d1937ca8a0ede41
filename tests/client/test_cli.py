"""The `ortserve-client` command end to end, against `ortserve serve` in a subprocess; and the
client README's quickstart, run as a new user would."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests import models
from tests.harness import ServerProcess, serve_in_subprocess

README = Path(__file__).resolve().parents[2] / "client" / "README.md"


def command() -> list[str]:
    """The console script when installed beside this Python, else `python -m ortserve_client`."""
    script = Path(sys.executable).with_name("ortserve-client")
    if script.exists():
        return [str(script)]
    found = shutil.which("ortserve-client")
    return [found] if found else [sys.executable, "-m", "ortserve_client"]


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*command(), *args], capture_output=True, text=True, timeout=60, env={**os.environ, **(env or {})}
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repo = tmp_path_factory.mktemp("cli")
    models.save(models.add_sub(), repo, "add_sub")
    models.save(models.identity("BYTES", dims=("batch",)), repo, "words")
    with serve_in_subprocess(["--model-repository", str(repo), "--grpc-port", "0", "--http-port", "-1"]) as running:
        yield running


def test_health_and_models(server: ServerProcess) -> None:
    done = cli("--url", server.grpc_target, "health")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["live: true", "ready: true"]
    done = cli("models", env={"ORTSERVE_URL": f"grpc://{server.grpc_target}"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["add_sub\t1\tREADY", "words\t1\tREADY"]


def test_metadata(server: ServerProcess) -> None:
    done = cli("--url", server.grpc_target, "metadata", "add_sub")
    assert done.returncode == 0, done.stderr
    assert '"name": "INPUT0"' in done.stdout and '"datatype": "FP32"' in done.stdout
    done = cli("--url", server.grpc_target, "metadata", "add_sub", "--config")
    assert done.returncode == 0 and '"maxBatchSize": 32' in done.stdout
    done = cli("--url", server.grpc_target, "metadata", "nope")
    assert done.returncode == 1 and "NOT_FOUND" in done.stderr and "nope" in done.stderr


def test_infer_prints_or_writes_outputs(server: ServerProcess, tmp_path: Path) -> None:
    a = np.arange(8, dtype=np.float32).reshape(2, 4)
    np.save(tmp_path / "a.npy", a)
    np.save(tmp_path / "b.npy", np.ones_like(a))
    inputs = ["--input", f"INPUT0={tmp_path / 'a.npy'}", "--input", f"INPUT1={tmp_path / 'b.npy'}"]
    done = cli("--url", server.grpc_target, "infer", "add_sub", *inputs, "--output", "OUTPUT0")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("OUTPUT0: FP32 [2, 4]\n[[1. 2. 3. 4.]")
    out = tmp_path / "out"
    done = cli("--url", server.grpc_target, "infer", "add_sub", *inputs, "--output-dir", str(out))
    assert done.returncode == 0, done.stderr
    np.testing.assert_array_equal(np.load(out / "OUTPUT0.npy"), a + 1)
    np.testing.assert_array_equal(np.load(out / "OUTPUT1.npy"), a - 1)
    np.save(tmp_path / "w.npy", np.array(["ab", "c"]))
    words = ["--input", f"x={tmp_path / 'w.npy'}", "--output-dir", str(out)]
    done = cli("--url", server.grpc_target, "infer", "words", *words)
    assert done.returncode == 0, done.stderr
    assert np.load(out / "y.npy").tolist() == [b"ab", b"c"]


def test_errors_exit_1_with_the_status(server: ServerProcess, tmp_path: Path) -> None:
    np.save(tmp_path / "a.npy", np.ones((2, 4), np.float64))
    done = cli("--url", server.grpc_target, "infer", "add_sub", "--input", f"INPUT0={tmp_path / 'a.npy'}")
    assert done.returncode == 1 and "INVALID_ARGUMENT" in done.stderr and "INPUT0" in done.stderr
    done = cli("--url", server.grpc_target, "infer", "add_sub", "--input", "INPUT0")
    assert done.returncode != 0 and "NAME=FILE.npy" in done.stderr
    done = cli("--url", "127.0.0.1:1", "--timeout", "2", "health")
    assert done.returncode == 1 and "UNAVAILABLE" in done.stderr


def test_readme_quickstart_runs_against_the_demo() -> None:
    """The first python block of client/README.md, pointed at a bare `ortserve serve`."""
    quickstart = re.search(r"```python\n(.*?)```", README.read_text(), re.S)
    assert quickstart is not None
    with serve_in_subprocess(["--grpc-port", "0", "--http-port", "-1"]) as demo:
        code = quickstart.group(1).replace("localhost:8001", demo.grpc_target)
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "[0 2]" in done.stdout
