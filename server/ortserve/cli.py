"""The `ortserve` command.

    ortserve serve [--model-repository DIR] [--grpc-port N] [--http-port N] [--device auto|cpu|cuda] ...
    ortserve validate MODEL_DIR --data HELD_OUT.npz [--labels KEY] [--min-accuracy X] [--max-p99-ms Y] ...

Every flag of `serve` is also read from the environment as ORTSERVE_<FLAG>
(e.g. ORTSERVE_GRPC_PORT); a flag given on the command line wins.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

from ortserve import __version__
from ortserve.config import DEVICES, EVENT_LOOPS, SHARED_MEMORY, ServerSettings, SettingsError, env_name

_CHOICES = {
    "device": DEVICES,
    "event_loop": EVENT_LOOPS,
    "log_level": ("debug", "info", "warning", "error"),
    "shared_memory": SHARED_MEMORY,
}
_TYPES = {"int": int, "float": float, "str": str, "Path | None": Path}
_REPEATABLE = {"load_model"}
"""Flags that may be given several times; from_sources joins their values with commas."""


def _field_docs() -> dict[str, str]:
    """The one-line docstrings under each ServerSettings field, for --help."""
    import inspect

    source = inspect.getsource(ServerSettings)
    docs: dict[str, str] = {}
    tree = ast.parse(source)
    body = tree.body[0].body  # type: ignore[attr-defined]
    for node, following in zip(body, body[1:], strict=False):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(following, ast.Expr)
            and isinstance(following.value, ast.Constant)
        ):
            docs[node.target.id] = str(following.value.value)
    return docs


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ortserve", description="KServe V2 / Triton-compatible gRPC server for ONNX models."
    )
    parser.add_argument("--version", action="version", version=f"ortserve {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser(
        "serve",
        help="serve a model repository (the bundled demo repository when none is given)",
        description="Serve a model repository. Every flag is also read from ORTSERVE_<FLAG>.",
    )
    docs = _field_docs()
    defaults = ServerSettings()
    for f in fields(ServerSettings):
        default = getattr(defaults, f.name)
        shape: dict[str, Any] = {}
        if str(f.type) == "bool":
            shape = {"nargs": "?", "const": "true"}  # a bare --flag means true
        elif f.name in _REPEATABLE:
            shape = {"action": "append"}
        serve.add_argument(
            "--" + f.name.replace("_", "-"),
            dest=f.name,
            type=str.lower if f.name in _CHOICES else _TYPES.get(str(f.type), str),
            choices=_CHOICES.get(f.name),
            default=None,
            help=f"{docs.get(f.name, '')} [env {env_name(f.name)}; default {default}]",
            **shape,
        )
    _add_validate(commands)
    return parser


def _add_validate(commands: Any) -> None:
    validate = commands.add_parser(
        "validate",
        help="validate a model version on held-out data before it serves (exit 1 below the thresholds)",
        description=(
            "Load one version of MODEL_DIR as the server would, check its signature, run held-out data "
            "through it, report the metric, latency percentiles per batch size and output sanity, and "
            "write <version>/validation.json. Exit 0 when every threshold holds, 1 when one does not, "
            "2 when the model or the data cannot be used."
        ),
    )
    add = validate.add_argument
    add("model_dir", type=Path, help="the model directory (<repository>/<model>)")
    add("--data", type=Path, required=True, help=".npz of held-out inputs: one array per model input, by name")
    add("--labels", default="", help="key of the expected answers in --data (default: no metric)")
    add("--version", type=int, default=0, help="version to validate (default: the version policy's default)")
    add("--output", default="", help="output compared with the labels (default: chosen from the signature)")
    add("--task", choices=("auto", "classification", "regression"), default="auto",
        help="how outputs meet labels (auto: integer labels classify, float labels regress)")
    add("--min-accuracy", type=float, default=None, help="fail below this accuracy (0..1, classification)")
    add("--max-rmse", type=float, default=None, help="fail above this root-mean-square error (regression)")
    add("--max-p99-ms", type=float, default=None, help="fail when any batch size's p99 latency exceeds this")
    add("--batch-sizes", default="", help="batch sizes to time, comma-separated "
        "(default: 1, the preferred batch sizes and max_batch_size)")
    add("--repeats", type=int, default=3, help="timed passes over the data per batch size (default 3)")
    add("--device", choices=DEVICES, default="cpu", help="execution device (default cpu)")
    add("--no-record", dest="record", action="store_false", help="do not write <version>/validation.json")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        flags = {k: v for k, v in vars(args).items() if k != "command"}
        try:
            settings = ServerSettings.from_sources(flags)
        except SettingsError as exc:
            print(f"ortserve: error: {exc}", file=sys.stderr)
            return 2
        from ortserve.app import serve

        return serve(settings)
    if args.command == "validate":
        from ortserve.validate import run

        return run(args)
    return 2
