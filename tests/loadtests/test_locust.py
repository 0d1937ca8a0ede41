"""Locust itself, as a subprocess (it monkey-patches its process with gevent), against real servers:
run.sh's smoke run, the verdict's exit codes, --processes, the shapes, and setup errors."""

from __future__ import annotations

import csv
import importlib.util
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from ortserve.demo import DEMO_REPOSITORY
from tests import models
from tests.harness import ServerProcess, serve_in_subprocess

REPO = Path(__file__).resolve().parents[2]
LOCUSTFILE = REPO / "loadtests" / "locustfile.py"
RUN_SH = REPO / "loadtests" / "run.sh"
# Generous enough for a loaded 2-core CI machine running the server and Locust side by side.
GENEROUS = """
[models.iris]
p50_ms = 1000
p95_ms = 2000
p99_ms = 5000
max_error_ratio = 0.01
min_throughput_rps = 1
"""

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("locust") is None, reason="Locust is not installed (it is in the dev extra)"
)


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """`ortserve serve` on the demo model and a batchable two-input model."""
    repo = tmp_path_factory.mktemp("loadtest") / "models"
    shutil.copytree(DEMO_REPOSITORY, repo)
    models.save(models.add_sub(), repo, "add_sub")
    with serve_in_subprocess(["--model-repository", str(repo), "--host", "127.0.0.1", "--grpc-port", "0",
                              "--http-port", "-1"]) as running:
        yield running


def locust(server: ServerProcess, cwd: Path, *args: str, env: dict[str, str] | None = None,
           timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--only-summary",
         "-H", server.grpc_target, *args],
        cwd=cwd, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}, check=False,
    )


def rows(path: Path) -> list[dict[str, str]]:
    with path.open() as file:
        return list(csv.DictReader(file))


def locust_counts(prefix: Path) -> dict[str, int]:
    """Request counts of Locust's own stats CSV, by name (type ModelInfer)."""
    return {r["Name"]: int(r["Request Count"]) for r in rows(Path(f"{prefix}_stats.csv")) if r["Type"] == "ModelInfer"}


def assert_close_to_locusts(locusts: dict[str, int], ours: dict[str, int]) -> None:
    """Locust rewrites its stats CSV once a second, so the file may miss the run's last moments."""
    assert locusts.keys() == ours.keys()
    for name, count in ours.items():
        assert 0.9 * count <= locusts[name] <= count, (locusts, ours)


def test_run_sh_smoke_starts_a_server_meets_generous_targets_and_reports(tmp_path: Path) -> None:
    """CI's smoke test: the README's one command, short, headless, generous targets."""
    out = tmp_path / "reports"
    started = time.monotonic()
    done = subprocess.run(
        [str(RUN_SH), "--time", "6s", "--users", "4", "--targets", str(write(tmp_path / "t.toml", GENEROUS)),
         "--out", str(out)],
        capture_output=True, text=True, timeout=120, check=False, cwd=tmp_path,
    )
    elapsed = time.monotonic() - started
    report = done.stdout + done.stderr
    assert done.returncode == 0, report
    assert elapsed < 30, f"the smoke run took {elapsed:.0f} s"
    assert "ortserve latency targets" in done.stdout and "): PASSED" in done.stdout, report
    table = [line for line in done.stdout.splitlines() if line.startswith("iris ")]
    assert [line.split()[1] for line in table] == ["p50", "p95", "p99", "error", "throughput"], report
    assert all(line.endswith(" ok") for line in table), report
    assert "ortserve server-side breakdown" in done.stdout
    for label in ("average batch size (rows)", "queued for a batch", "compute (input + infer + output)"):
        assert label in done.stdout, report
    for name in ("ortserve_stats.csv", "ortserve_targets.csv", "ortserve_server.csv", "report.html", "server.log"):
        assert (out / name).stat().st_size > 0, name
    assert {r["result"] for r in rows(out / "ortserve_targets.csv")} == {"ok"}
    # Locust's numbers and the breakdown's count the same requests; the server answered them all.
    server = rows(out / "ortserve_server.csv")[0]
    assert_close_to_locusts(locust_counts(out / "ortserve"), {"iris": int(server["client req"])})
    assert int(server["server req"]) >= int(server["client req"]) > 0
    assert "ortserve stopped" in (out / "server.log").read_text()  # run.sh stopped its server


def test_an_impossible_target_fails_the_run(server: ServerProcess, tmp_path: Path) -> None:
    targets = write(tmp_path / "t.toml", "[models.iris]\np99_ms = 0.001\n")
    done = locust(server, tmp_path, "-u", "2", "-r", "2", "-t", "3s", "--targets", str(targets), "--csv", "out/x")
    assert done.returncode == 3, done.stdout + done.stderr
    assert "ortserve latency targets" in done.stdout and "): MISSED" in done.stdout
    p99 = next(line for line in done.stdout.splitlines() if line.startswith("iris ") and " p99 " in line)
    assert "<= 0.001 ms" in p99 and p99.endswith("MISS")
    assert rows(tmp_path / "out" / "x_targets.csv")[0]["result"] == "MISS"


def test_processes_mode_master_alone_judges_every_worker_sample(server: ServerProcess, tmp_path: Path) -> None:
    """Two worker processes, two models weighted 3:1 (add_sub's inputs from a .npz), one impossible target."""
    x = np.arange(24, dtype=np.float32).reshape(6, 4)
    np.savez(tmp_path / "add_sub.npz", INPUT0=x, INPUT1=x)
    targets = write(tmp_path / "t.toml", "[models.iris]\np99_ms = 0.001\n[models.add_sub]\np99_ms = 5000\n")
    done = locust(
        server, tmp_path, "--processes", "2", "-u", "4", "-r", "4", "-t", "4s", "--targets", str(targets),
        "--models", "iris:3,add_sub:1", "--inputs-npz", f"add_sub={tmp_path / 'add_sub.npz'}", "--batch-size", "2",
        "--csv", "out/x",
    )
    report = done.stdout + done.stderr
    assert done.returncode == 3, report
    assert report.count("ortserve latency targets") == 1 and report.count("ortserve server-side breakdown") == 1
    results = {(r["model"], r["metric"]): r["result"] for r in rows(tmp_path / "out" / "x_targets.csv")}
    assert results == {("iris", "p99"): "MISS", ("add_sub", "p99"): "ok"}
    # Every worker's samples reached the master: its counts are Locust's (merged from the same reports).
    server_rows = {r["model"]: r for r in rows(tmp_path / "out" / "x_server.csv")}
    counts = {m: int(r["client req"]) for m, r in server_rows.items()}
    assert_close_to_locusts(locust_counts(tmp_path / "out" / "x"), counts)
    assert 2.0 <= counts["iris"] / counts["add_sub"] <= 4.5, counts
    assert float(server_rows["add_sub"]["avg batch rows"]) >= 2.0  # rows of the .npz, 2 per request


def test_knee_search_finds_the_most_users_within_the_p99_target(server: ServerProcess, tmp_path: Path) -> None:
    done = locust(
        server, tmp_path, "-u", "3", "--shape", "knee", "--stage-s", "1.5", "--settle-s", "0.5",
        "--targets", str(write(tmp_path / "t.toml", GENEROUS)), "--csv", "out/x",
    )
    report = done.stdout + done.stderr
    assert done.returncode == 0, report
    stages = rows(tmp_path / "out" / "x_knee.csv")
    # Every stage holds a generous target up to the cap of 3 users; the knee is the stage of the most
    # throughput (on a busy machine that need not be the most users).
    assert [(r["users"], r["holds"]) for r in stages] == [("1", "yes"), ("2", "yes"), ("3", "yes")], report
    knee = max(stages, key=lambda r: float(r["throughput req/s"]))["users"]
    assert "ortserve knee search" in done.stdout and f"knee: {knee} user" in done.stdout, report
    assert f"; the knee stage: {knee} user" in done.stdout


def test_a_shape_chosen_by_the_environment_drives_the_users(server: ServerProcess, tmp_path: Path) -> None:
    """The step shape in 2 stages, as ORTSERVE_LOADTEST_* variables (the same options as --shape, --stages)."""
    done = locust(server, tmp_path, "-u", "4", "-r", "4", "-t", "4s", "--targets", "none",
                  env={"ORTSERVE_LOADTEST_SHAPE": "step", "ORTSERVE_LOADTEST_STAGES": "2"})
    assert done.returncode == 0, done.stdout + done.stderr
    steps = [int(line.split("updating to ")[1].split()[0]) for line in done.stderr.splitlines()
             if "Shape test updating to" in line]
    assert steps == [2, 4], done.stderr
    assert "ortserve latency targets (no targets file; the whole run): PASSED" in done.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--models", "nosuch"], "model 'nosuch': cannot read its metadata"),
        (["--targets", "bad.toml"], "bad.toml: [models.iris]: unknown key 'p99'"),
        (["--shape", "knee", "--targets", "none"], "--shape knee looks for the most load"),
    ],
    ids=["unknown-model", "bad-targets", "knee-without-p99"],
)
def test_a_run_that_cannot_start_exits_2_before_any_load(
    server: ServerProcess, tmp_path: Path, args: list[str], message: str
) -> None:
    write(tmp_path / "bad.toml", "[models.iris]\np99 = 5\n")
    done = locust(server, tmp_path, "-u", "1", "-t", "5s", *args, timeout=60)
    assert done.returncode == 2, done.stdout + done.stderr
    assert message in done.stderr
    assert "Ramping to" not in done.stderr and "Shape test updating" not in done.stderr
