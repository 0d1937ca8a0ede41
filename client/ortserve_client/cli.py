"""`ortserve-client`: health, models, metadata and inference from a shell.

    ortserve-client [--url URL] [--tls-ca PEM [--tls-cert PEM --tls-key PEM]] [--token TOKEN] COMMAND
      health                                  live and ready? (exit 0 when ready)
      models [--ready]                        the repository index
      metadata MODEL [--version V] [--config] model metadata (or its config) as JSON
      infer MODEL --input NAME=FILE.npy ...   run one inference; print the outputs, or with
            [--output NAME ...] [--output-dir DIR]   --output-dir write them as DIR/NAME.npy

The URL and token may come from ORTSERVE_URL and ORTSERVE_TOKEN (a token in the
environment stays out of the process list). A failed call prints its status code and
message and exits 1.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from google.protobuf import json_format

from ortserve_client.channel import TlsConfig
from ortserve_client.client import InferenceClient
from ortserve_client.errors import InferenceServerError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ortserve-client", description="Talk to a KServe V2 / Triton gRPC inference server."
    )
    parser.add_argument(
        "--url",
        default=os.environ.get("ORTSERVE_URL") or "localhost:8001",
        help="host:port, grpcs://host:port or dns:///name:port (default: $ORTSERVE_URL or localhost:8001)",
    )
    parser.add_argument("--tls", action="store_true", help="use TLS with the system's trust store")
    parser.add_argument("--tls-ca", type=Path, help="PEM of the CA that signed the server's certificate (TLS)")
    parser.add_argument("--tls-cert", type=Path, help="PEM of the client certificate (mTLS)")
    parser.add_argument("--tls-key", type=Path, help="PEM of the client private key (mTLS)")
    parser.add_argument("--tls-server-name", help="name to check the server's certificate against")
    parser.add_argument(
        "--token", default=os.environ.get("ORTSERVE_TOKEN") or None, help="bearer token (default: $ORTSERVE_TOKEN)"
    )
    parser.add_argument("--timeout", type=float, default=60.0, help="deadline of each call, seconds (default 60)")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("health", help="is the server live and ready? (exit 0 when ready)")
    models = commands.add_parser("models", help="list the repository's models and their state")
    models.add_argument("--ready", action="store_true", help="only the models ready to serve")
    metadata = commands.add_parser("metadata", help="a model's metadata as JSON")
    metadata.add_argument("model")
    metadata.add_argument("--version", help="model version (default: the server's choice)")
    metadata.add_argument("--config", action="store_true", help="print the model's configuration instead")
    infer = commands.add_parser("infer", help="run one inference on .npy inputs")
    infer.add_argument("model")
    infer.add_argument(
        "--input", action="append", required=True, metavar="NAME=FILE.npy", help="an input tensor (repeatable)"
    )
    infer.add_argument("--output", action="append", metavar="NAME", help="an output to return (default: all)")
    infer.add_argument("--version", help="model version (default: the server's choice)")
    infer.add_argument("--output-dir", type=Path, help="write each output to DIR/NAME.npy instead of printing it")
    return parser


def _tls(args: argparse.Namespace) -> TlsConfig | None:
    if not (args.tls or args.tls_ca or args.tls_cert or args.tls_key or args.tls_server_name):
        return None
    return TlsConfig.from_files(args.tls_ca, args.tls_cert, args.tls_key, args.tls_server_name)


def _inputs(specs: Sequence[str]) -> dict[str, Any]:
    inputs: dict[str, Any] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise SystemExit(f"ortserve-client: --input wants NAME=FILE.npy, got {spec!r}")
        inputs[name] = np.load(path, allow_pickle=False)
    return inputs


def _savable(array: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    # .npy holds object arrays only through pickle: BYTES are written as fixed-width bytes ('S').
    return array.astype(bytes) if array.dtype == object else array


def _run(args: argparse.Namespace, client: InferenceClient) -> int:
    out = sys.stdout
    if args.command == "health":
        live = client.is_server_live()
        ready = client.is_server_ready()
        print(f"live: {str(live).lower()}\nready: {str(ready).lower()}", file=out)
        return 0 if live and ready else 1
    if args.command == "models":
        rows = client.repository_index(ready_only=args.ready)
        for row in rows:
            reason = f"  {row.reason}" if row.reason else ""
            print(f"{row.name}\t{row.version or '-'}\t{row.state}{reason}", file=out)
        return 0
    if args.command == "metadata":
        if args.config:
            config = client.model_config(args.model, args.version)
            print(json.dumps(json_format.MessageToDict(config), indent=2), file=out)
        else:
            print(json.dumps(dataclasses.asdict(client.model_metadata(args.model, args.version)), indent=2), file=out)
        return 0
    result = client.infer(args.model, _inputs(args.input), outputs=args.output, version=args.version)
    for name, array in result.items():
        if args.output_dir is not None:
            args.output_dir.mkdir(parents=True, exist_ok=True)
            path = args.output_dir / f"{name}.npy"
            np.save(path, _savable(array), allow_pickle=False)
            print(f"{name}: {result.datatype(name)} {list(array.shape)} -> {path}", file=out)
        else:
            print(f"{name}: {result.datatype(name)} {list(array.shape)}", file=out)
            print(np.array2string(array, threshold=1000), file=out)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        with InferenceClient(args.url, tls=_tls(args), token=args.token, default_timeout_s=args.timeout) as client:
            return _run(args, client)
    except InferenceServerError as exc:
        print(f"ortserve-client: {exc}", file=sys.stderr)
        return 1
    except (OSError, ValueError, TypeError) as exc:
        print(f"ortserve-client: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
