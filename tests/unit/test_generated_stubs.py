"""The committed stubs are exactly what scripts/generate_stubs.py makes from protos/."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "client" / "ortserve_client" / "proto"


def test_committed_stubs_match_protos(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools", reason="grpcio-tools is a dev dependency")
    subprocess.run([sys.executable, str(ROOT / "scripts" / "generate_stubs.py"), "--out", str(tmp_path)], check=True)
    fresh = {p.relative_to(tmp_path / "ortserve_client" / "proto"): p.read_bytes()
             for p in (tmp_path / "ortserve_client" / "proto").iterdir() if p.is_file()}
    committed = {p.relative_to(COMMITTED): p.read_bytes()
                 for p in COMMITTED.iterdir() if p.is_file() and p.name != "__init__.py"}
    assert sorted(map(str, fresh)) == sorted(map(str, committed)), "stub files added or removed"
    stale = [str(name) for name, data in fresh.items() if committed[name] != data]
    assert not stale, f"stale stubs {stale}: run `python scripts/generate_stubs.py` and commit the result"


def test_the_client_distribution_needs_only_grpc_protobuf_numpy() -> None:
    code = (
        "import sys, ortserve_client.proto.grpc_service_pb2_grpc, ortserve_client.proto.model_config_pb2\n"
        "heavy = [m for m in ('onnxruntime', 'ortserve', 'onnx', 'prometheus_client') if m in sys.modules]\n"
        "print(','.join(heavy))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == ""


def test_service_is_wire_compatible_with_triton() -> None:
    from ortserve_client.proto import grpc_service_pb2 as pb

    service = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert service.full_name == "inference.GRPCInferenceService"
    methods = {m.name: (m.input_type.full_name, m.output_type.full_name) for m in service.methods}
    assert methods["ModelInfer"] == ("inference.ModelInferRequest", "inference.ModelInferResponse")
    assert methods["ModelStreamInfer"] == ("inference.ModelInferRequest", "inference.ModelStreamInferResponse")
    request = pb.ModelInferRequest.DESCRIPTOR.fields_by_name
    assert {n: f.number for n, f in request.items()} == {
        "model_name": 1, "model_version": 2, "id": 3, "parameters": 4, "inputs": 5, "outputs": 6,
        "raw_input_contents": 7,
    }
