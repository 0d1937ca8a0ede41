"""The `ortserve` command.

    ortserve serve [--model-repository DIR] [--grpc-port N] [--http-port N] [--device auto|cpu|cuda] ...

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

from ortserve import __version__
from ortserve.config import DEVICES, EVENT_LOOPS, ServerSettings, SettingsError, env_name

_CHOICES = {"device": DEVICES, "event_loop": EVENT_LOOPS, "log_level": ("debug", "info", "warning", "error")}
_TYPES = {"int": int, "float": float, "str": str, "Path | None": Path}


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
        serve.add_argument(
            "--" + f.name.replace("_", "-"),
            dest=f.name,
            type=str.lower if f.name in _CHOICES else _TYPES.get(str(f.type), str),
            choices=_CHOICES.get(f.name),
            default=None,
            help=f"{docs.get(f.name, '')} [env {env_name(f.name)}; default {default}]",
        )
    return parser


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
    return 2
