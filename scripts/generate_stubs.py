#!/usr/bin/env python3
"""Regenerate the committed gRPC/protobuf stubs of the client distribution from protos/.

    python scripts/generate_stubs.py            # rewrite client/ortserve_client/proto/
    python scripts/generate_stubs.py --out DIR  # write into DIR instead (the drift test uses this)

The path of each .proto under protos/ mirrors its Python package, so the generated
imports are package-qualified (`from ortserve_client.proto import model_config_pb2`)
without post-editing. The output depends on the grpcio-tools version pinned in the
`dev` extra of pyproject.toml; regenerate after changing that pin.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
DEFAULT_OUT = ROOT / "client"


def proto_files() -> list[Path]:
    return sorted(PROTO_ROOT.rglob("*.proto"))


def generate(out: Path) -> None:
    from grpc_tools import protoc  # a dev dependency, imported only when generating

    include = Path(protoc.__file__).parent / "_proto"
    files = [str(p.relative_to(PROTO_ROOT)) for p in proto_files()]
    out.mkdir(parents=True, exist_ok=True)
    with_services = [f for f in files if "\nservice " in (PROTO_ROOT / f).read_text()]
    base = ["protoc", f"-I{PROTO_ROOT}", f"-I{include}"]
    for args in (
        [*base, f"--python_out={out}", f"--pyi_out={out}", *files],
        [*base, f"--grpc_python_out={out}", *with_services],
    ):
        if protoc.main(args) != 0:
            raise SystemExit(f"protoc failed: {' '.join(args)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output root (default: client/)")
    generate(parser.parse_args(argv).out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
