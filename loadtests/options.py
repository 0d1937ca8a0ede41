"""The load test's own options, added to Locust's command line; each also an environment variable.

Locust's `--help` does not list a locustfile's options: `loadtests/run.sh --help` prints these
(`python -m loadtests.options`). Pure Python: importing it patches nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from loadtests.shapes import SHAPES

DEFAULT_TARGETS = Path(__file__).resolve().parent / "targets.toml"

OPTIONS: tuple[tuple[str, type, Any, str], ...] = (
    (
        "--targets",
        str,
        str(DEFAULT_TARGETS),
        "latency targets, TOML (see loadtests/targets.toml); 'none': judge nothing",
    ),
    ("--models", str, "", "NAME[:WEIGHT],... to load (default: the targets file's models, else every ready one)"),
    ("--shape", str, "steady", f"load shape: {', '.join(SHAPES)} (see loadtests/shapes.py)"),
    ("--batch-size", int, 1, "rows per request: the size of a leading -1 dimension"),
    ("--dim-size", int, 8, "the size of any other -1 dimension"),
    ("--seed", int, 0, "seed of the generated inputs"),
    ("--input-pool", int, 8, "distinct generated requests per model"),
    ("--inputs-npz", str, "", "[MODEL=]FILE.npz,...: inputs from files (arrays named after the inputs)"),
    ("--request-timeout-s", float, 10.0, "deadline of each request"),
    ("--user-rps", float, 0.0, "requests per second per user (0: back to back, a closed loop)"),
    ("--stages", int, 4, "step: the number of steps up to -u"),
    ("--stage-s", float, 10.0, "knee: seconds per stage (step and spike: their length without -t)"),
    ("--settle-s", float, 2.0, "knee: the first seconds of a stage, left unjudged"),
    ("--knee-start-users", int, 1, "knee: the users of the first stage"),
    ("--knee-factor", float, 2.0, "knee: users grow by this factor per stage until a stage misses"),
    ("--knee-resolution", int, 1, "knee: stop bisecting at this many users"),
    ("--spike-base-ratio", float, 0.25, "spike: the base load, as a fraction of -u"),
    ("--server-wait-s", float, 60.0, "wait this long for the server to report ready"),
    ("--tls-ca", str, "", "PEM file of the CA that signed the server's certificate (TLS)"),
    ("--token", str, "", "bearer token sent with every call"),
)
"""(flag, type, default, help)."""


def env_name(flag: str) -> str:
    """--batch-size -> ORTSERVE_LOADTEST_BATCH_SIZE; --token -> ORTSERVE_TOKEN (the client CLI's)."""
    if flag == "--token":
        return "ORTSERVE_TOKEN"
    return "ORTSERVE_LOADTEST_" + flag[2:].upper().replace("-", "_")


def add_arguments(group: Any) -> None:
    """Add every option to Locust's (configargparse) parser or one of its groups."""
    for flag, kind, default, text in OPTIONS:
        extra = {"choices": SHAPES} if flag == "--shape" else {}
        group.add_argument(flag, type=kind, default=default, env_var=env_name(flag), help=text, **extra)


def usage() -> str:
    """The options, for `run.sh --help`."""
    lines = ["Load test options (also as the environment variable shown):"]
    for flag, kind, default, text in OPTIONS:
        shown = "targets.toml beside the locustfile" if flag == "--targets" else repr(default)
        lines.append(f"  {flag} {kind.__name__.upper()}\n      {text}\n      default {shown}; env {env_name(flag)}")
    return "\n".join(lines)


if __name__ == "__main__":
    print(usage())
