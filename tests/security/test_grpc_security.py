"""TLS, mTLS, authentication, scopes, rate limits and the audit log against a real server."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import jwt
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ortserve.protocol.interceptors import METHOD_SCOPES, scope_of
from ortserve.protocol.status import RETRY_AFTER_MS
from ortserve.security import Scope
from ortserve.security.apikeys import hash_key, new_key
from ortserve_client.proto import grpc_service_pb2 as pb
from ortserve_client.proto import grpc_service_pb2_grpc as pb_grpc
from tests import models
from tests.harness import RunningServer, serve_in_thread
from tests.security import pki
from tests.wire import add_sub_inputs, check_add_sub, infer_request, rpc_error

SECRET = b"k" * 40
INFER_KEY, META_KEY, ADMIN_KEY = new_key(), new_key(), new_key()


def add_sub_request(rows: int = 2, seed: int = 0) -> tuple[pb.ModelInferRequest, Any, Any]:
    a, b = add_sub_inputs(rows, np.random.default_rng(seed))
    return infer_request("add_sub", {"INPUT0": a, "INPUT1": b}), a, b


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def token(**claims: Any) -> str:
    body: dict[str, Any] = {"sub": "alice", "exp": int(time.time()) + 300, "iss": "tests", "aud": "ortserve"}
    body.update(claims)
    return jwt.encode({k: v for k, v in body.items() if v is not None}, SECRET, "HS256")


def health_status(channel: grpc.Channel) -> str:
    response = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))


# -- TLS and mTLS ----------------------------------------------------------------------------


def secure_stub(port: int, root: bytes, client: pki.Issued | None = None) -> tuple[grpc.Channel, Any]:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=root,
        private_key=client.key_pem if client else None,
        certificate_chain=client.cert_pem if client else None,
    )
    channel = grpc.secure_channel(f"localhost:{port}", credentials)
    return channel, pb_grpc.GRPCInferenceServiceStub(channel)


def refused(port: int, root: bytes, client: pki.Issued | None = None) -> grpc.RpcError:
    channel, stub = secure_stub(port, root, client)
    with channel:
        return rpc_error(lambda: stub.ServerLive(pb.ServerLiveRequest(), timeout=5))


def test_tls_serves_and_refuses_plaintext_and_untrusted_servers(add_sub_repo: Path, tmp_path: Path) -> None:
    keys = pki.Pki.make()
    files = keys.write(tmp_path)
    with serve_in_thread(add_sub_repo, tls_cert=files["tls_cert"], tls_key=files["tls_key"]) as server:
        port = server.server.grpc_port
        channel, stub = secure_stub(port, keys.ca.cert_pem)
        with channel:
            request, a, b = add_sub_request()
            check_add_sub(stub.ModelInfer(request, timeout=10), a, b)
            assert health_status(channel) == "SERVING"
        # A client that does not trust the server's CA, and one that speaks plaintext, get nowhere.
        assert refused(port, keys.client_ca.cert_pem).code() is grpc.StatusCode.UNAVAILABLE
        plain = rpc_error(lambda: server.stub.ServerLive(pb.ServerLiveRequest(), timeout=5))
        assert plain.code() is grpc.StatusCode.UNAVAILABLE


def test_mtls_requires_a_client_certificate_from_the_client_ca(add_sub_repo: Path, tmp_path: Path) -> None:
    keys = pki.Pki.make()
    files = keys.write(tmp_path)
    stranger_ca = pki.certificate("stranger CA", ca=True)
    stranger = pki.certificate("client-1", issuer=stranger_ca)  # same name, wrong issuer
    with serve_in_thread(add_sub_repo, **files) as server:
        port = server.server.grpc_port
        channel, stub = secure_stub(port, keys.ca.cert_pem, keys.client)
        with channel:
            assert stub.ServerLive(pb.ServerLiveRequest(), timeout=10).live
        assert refused(port, keys.ca.cert_pem).code() is grpc.StatusCode.UNAVAILABLE  # no certificate
        assert refused(port, keys.ca.cert_pem, stranger).code() is grpc.StatusCode.UNAVAILABLE
        assert refused(port, keys.ca.cert_pem, keys.server).code() is grpc.StatusCode.UNAVAILABLE  # server CA's


def test_certificates_are_reloaded_when_the_files_change(add_sub_repo: Path, tmp_path: Path) -> None:
    keys = pki.Pki.make()
    files = keys.write(tmp_path)
    new_ca = pki.certificate("rotated CA", ca=True)
    rotated = pki.certificate("localhost", issuer=new_ca)
    new_client_ca = pki.certificate("rotated client CA", ca=True)
    new_client = pki.certificate("client-2", issuer=new_client_ca)
    with serve_in_thread(add_sub_repo, **files) as server:
        port = server.server.grpc_port
        assert refused(port, new_ca.cert_pem, keys.client).code() is grpc.StatusCode.UNAVAILABLE
        # Rotate without a restart; the certificate lands first, its key a moment later.
        files["tls_cert"].write_bytes(rotated.cert_pem)
        assert refused(port, new_ca.cert_pem, keys.client).code() is grpc.StatusCode.UNAVAILABLE
        channel, stub = secure_stub(port, keys.ca.cert_pem, keys.client)  # the old pair still serves
        with channel:
            assert stub.ServerLive(pb.ServerLiveRequest(), timeout=10).live
        files["tls_key"].write_bytes(rotated.key_pem)
        files["tls_client_ca"].write_bytes(new_client_ca.cert_pem)
        channel, stub = secure_stub(port, new_ca.cert_pem, new_client)
        with channel:
            assert stub.ServerLive(pb.ServerLiveRequest(), timeout=10).live
        assert refused(port, keys.ca.cert_pem, keys.client).code() is grpc.StatusCode.UNAVAILABLE
        assert refused(port, new_ca.cert_pem, keys.client).code() is grpc.StatusCode.UNAVAILABLE


# -- authentication and scopes ---------------------------------------------------------------


def keys_file(tmp_path: Path) -> Path:
    path = tmp_path / "keys.toml"
    path.write_text(
        "".join(
            f'[[key]]\nid = "{key_id}"\nsha256 = "{hash_key(key)}"\nscopes = {json.dumps(scopes)}\n'
            for key_id, key, scopes in (
                ("infer-only", INFER_KEY, ["inference"]),
                ("reader", META_KEY, ["metadata"]),
                ("admin", ADMIN_KEY, ["inference", "metadata", "model_control"]),
            )
        )
    )
    return path


@pytest.fixture
def secured(add_sub_repo: Path, tmp_path: Path) -> Iterator[RunningServer]:
    secret = tmp_path / "jwt.secret"
    secret.write_bytes(SECRET)
    models.save(models.scale(), add_sub_repo, "scale")
    with serve_in_thread(
        add_sub_repo,
        auth_api_keys_file=keys_file(tmp_path),
        auth_jwt_secret_file=secret,
        auth_jwt_issuer="tests",
        auth_jwt_audience="ortserve",
        auth_jwt_leeway_seconds=5.0,
        audit_log_file=tmp_path / "audit.jsonl",
    ) as server:
        server.extra["audit"] = tmp_path / "audit.jsonl"
        yield server


def test_every_method_of_the_service_has_a_scope_decided() -> None:
    methods = {f"/inference.GRPCInferenceService/{m.name}" for m in pb.DESCRIPTOR.services_by_name[
        "GRPCInferenceService"].methods}
    assert methods == set(METHOD_SCOPES)
    assert scope_of("/grpc.health.v1.Health/Check") is None
    assert scope_of("/inference.GRPCInferenceService/SomethingNew") is Scope.MODEL_CONTROL  # deny by default


def test_health_stays_open(secured: RunningServer) -> None:
    assert secured.stub.ServerLive(pb.ServerLiveRequest()).live
    assert secured.stub.ServerReady(pb.ServerReadyRequest()).ready
    assert health_status(secured.channel) == "SERVING"


@pytest.mark.parametrize(
    ("make_metadata", "message"),
    [
        (lambda: (), "missing credentials: send the metadata 'authorization: Bearer <token>'"),
        (lambda: (("authorization", "Basic YWxhZGRpbjpvcGVuc2VzYW1l"),), "must be 'Bearer <token>'"),
        (lambda: bearer("osk_made-up"), "invalid API key"),
        (lambda: bearer(token(exp=int(time.time()) - 60)), "invalid token: it has expired"),
        (lambda: bearer(token(nbf=int(time.time()) + 60)), "invalid token: it is not valid yet"),
        (lambda: bearer(token(iss="elsewhere")), "invalid token: the issuer is not 'tests'"),
        (lambda: bearer(token(aud="another-service")), "invalid token: the audience should be 'ortserve'"),
        (lambda: bearer(token(exp=None)), "invalid token: the 'exp' claim is missing"),
        (lambda: bearer(token()[:-4] + "AAAA"), "invalid token: the signature does not verify"),
        (lambda: bearer(jwt.encode({"sub": "x", "exp": int(time.time()) + 60}, None, "none")), "algorithm 'none'"),
    ],
)
def test_each_authentication_failure_is_unauthenticated(
    secured: RunningServer, make_metadata: Callable[[], tuple[tuple[str, str], ...]], message: str
) -> None:
    metadata = make_metadata()  # tokens are made when the test runs: their times are relative to now
    request, _, _ = add_sub_request()
    for call in (
        lambda: secured.stub.ModelInfer(request, metadata=metadata, timeout=10),
        lambda: secured.stub.ModelMetadata(pb.ModelMetadataRequest(name="add_sub"), metadata=metadata, timeout=10),
        lambda: secured.stub.RepositoryModelUnload(
            pb.RepositoryModelUnloadRequest(model_name="add_sub"), metadata=metadata, timeout=10
        ),
    ):
        error = rpc_error(call)
        assert error.code() is grpc.StatusCode.UNAUTHENTICATED, error.details()
        assert message in error.details()
    assert secured.stub.ModelReady(
        pb.ModelReadyRequest(name="add_sub"), metadata=bearer(ADMIN_KEY)
    ).ready  # nothing was unloaded


def test_scopes_separate_inference_metadata_and_model_control(secured: RunningServer) -> None:
    stub = secured.stub
    request, a, b = add_sub_request()
    check_add_sub(stub.ModelInfer(request, metadata=bearer(INFER_KEY)), a, b)
    check_add_sub(stub.ModelInfer(request, metadata=bearer(token(scope="inference"))), a, b)
    assert stub.ServerMetadata(pb.ServerMetadataRequest(), metadata=bearer(META_KEY)).name == "ortserve"
    # Shared memory regions carry an inference client's tensors: the inference scope.
    assert not stub.SystemSharedMemoryStatus(pb.SystemSharedMemoryStatusRequest(), metadata=bearer(INFER_KEY)).regions
    denied = [
        (lambda: stub.SystemSharedMemoryRegister(
            pb.SystemSharedMemoryRegisterRequest(name="r", key="/k", byte_size=4), metadata=bearer(META_KEY)),
         "key:reader", "inference"),
        (lambda: stub.ModelInfer(request, metadata=bearer(META_KEY)), "key:reader", "inference"),
        (lambda: stub.ModelConfig(pb.ModelConfigRequest(name="add_sub"), metadata=bearer(INFER_KEY)),
         "key:infer-only", "metadata"),
        (lambda: stub.RepositoryIndex(pb.RepositoryIndexRequest(), metadata=bearer(token(scope="inference"))),
         "jwt:alice", "metadata"),
        (lambda: stub.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="scale"),
                                            metadata=bearer(INFER_KEY)), "key:infer-only", "model_control"),
        (lambda: stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="scale"),
                                          metadata=bearer(token(scope="inference metadata"))), "jwt:alice",
         "model_control"),
    ]
    for call, who, scope in denied:
        error = rpc_error(call)
        assert error.code() is grpc.StatusCode.PERMISSION_DENIED, error.details()
        assert f"{who} may not call" in error.details() and f"needs the scope '{scope}'" in error.details()
    stub.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="scale"), metadata=bearer(ADMIN_KEY))
    stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="scale"), metadata=bearer(ADMIN_KEY))


def test_streams_are_authenticated_at_open(secured: RunningServer) -> None:
    request, a, b = add_sub_request()
    responses = list(secured.stub.ModelStreamInfer(iter([request, request]), metadata=bearer(INFER_KEY)))
    assert [r.error_message for r in responses] == ["", ""]
    check_add_sub(responses[0].infer_response, a, b)
    error = rpc_error(lambda: list(secured.stub.ModelStreamInfer(iter([request]), metadata=bearer(META_KEY))))
    assert error.code() is grpc.StatusCode.PERMISSION_DENIED


def test_no_token_or_secret_is_ever_logged(secured: RunningServer, caplog: pytest.LogCaptureFixture) -> None:
    good, expired = token(scope="inference model_control"), token(exp=int(time.time()) - 60)
    request, _, _ = add_sub_request()
    with caplog.at_level(logging.DEBUG):
        secured.stub.ModelInfer(request, metadata=bearer(good))
        secured.stub.ModelInfer(request, metadata=bearer(INFER_KEY))
        for credential in (expired, "osk_wrong-key", good + "x"):
            rpc_error(lambda c=credential: secured.stub.ModelInfer(request, metadata=bearer(c)))  # type: ignore[misc]
        secured.stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="scale"), metadata=bearer(good))
    logged = caplog.text + secured.extra["audit"].read_text()
    assert "jwt:alice" in logged  # the audit entry is there ...
    for secret in (good, expired, INFER_KEY, "osk_wrong-key", SECRET.decode(), good.split(".")[2]):
        assert secret not in logged  # ... but no credential


# -- audit -----------------------------------------------------------------------------------


def audit_entries(server: RunningServer) -> list[dict[str, Any]]:
    path: Path = server.extra["audit"]
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_control_actions_are_audited_with_who_what_when_and_result(secured: RunningServer) -> None:
    stub = secured.stub
    stub.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="scale"), metadata=bearer(ADMIN_KEY))
    stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="scale"), metadata=bearer(ADMIN_KEY))
    rpc_error(lambda: stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="nope"),
                                               metadata=bearer(ADMIN_KEY)))
    rpc_error(lambda: stub.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="scale"),
                                                 metadata=bearer(INFER_KEY)))
    rpc_error(lambda: stub.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="scale")))
    overrides = pb.RepositoryModelLoadRequest(model_name="scale")
    overrides.parameters["config"].string_param = '{"max_batch_size": 4}'
    try:  # a config override: whatever its outcome, the entry names the parameter, not its value
        stub.RepositoryModelLoad(overrides, metadata=bearer(token(scope="model_control")))
    except grpc.RpcError:
        pass
    stub.ModelInfer(add_sub_request()[0], metadata=bearer(INFER_KEY))  # not a control action: not audited
    entries = audit_entries(secured)
    rows = [(e["who"], e["action"], e["model"], e["result"]) for e in entries]
    assert rows[:5] == [
        ("key:admin", "unload", "scale", "OK"),
        ("key:admin", "load", "scale", "OK"),
        ("key:admin", "load", "nope", "NOT_FOUND"),
        ("key:infer-only", "unload", "scale", "PERMISSION_DENIED"),
        ("unauthenticated", "unload", "scale", "UNAUTHENTICATED"),
    ]
    assert rows[5][:3] == ("jwt:alice", "load", "scale")
    assert entries[5]["parameters"] == ["config"]
    assert len(entries) == 6
    assert all(e["peer"].startswith("ipv4:127.0.0.1:") and e["duration_ms"] >= 0 for e in entries)
    assert "model_control" in entries[3]["message"]
    stamps = [e["time"] for e in entries]
    assert stamps == sorted(stamps)


# -- rate limits -----------------------------------------------------------------------------


def test_rate_limit_per_client_and_scope_with_retry_hint(add_sub_repo: Path, tmp_path: Path) -> None:
    with serve_in_thread(
        add_sub_repo,
        auth_api_keys_file=keys_file(tmp_path),
        rate_limit_inference_per_s=0.5,
        rate_limit_inference_burst=2,
    ) as server:
        request, _, _ = add_sub_request()
        for _ in range(2):
            server.stub.ModelInfer(request, metadata=bearer(INFER_KEY))
        call = server.stub.ModelInfer.with_call
        with pytest.raises(grpc.RpcError) as info:
            call(request, metadata=bearer(INFER_KEY))
        error: Any = info.value
        assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "rate limit for inference exceeded by key:infer-only: 0.5 requests/s, burst 2" in error.details()
        hint = dict(error.trailing_metadata())[RETRY_AFTER_MS]
        assert 1000 <= int(hint) <= 2000
        # Another client, and another scope of the same client, are not affected.
        server.stub.ModelInfer(request, metadata=bearer(ADMIN_KEY))
        server.stub.ModelMetadata(pb.ModelMetadataRequest(name="add_sub"), metadata=bearer(ADMIN_KEY))
        assert server.stub.ServerReady(pb.ServerReadyRequest()).ready  # health is never limited


def test_rate_limit_by_peer_without_authentication_and_streams_paced(add_sub_repo: Path) -> None:
    with serve_in_thread(add_sub_repo, rate_limit_inference_per_s=10.0, rate_limit_inference_burst=1,
                         rate_limit_metadata_per_s=1.0) as server:
        request, a, b = add_sub_request()
        server.stub.ModelInfer(request)
        error = rpc_error(lambda: server.stub.ModelInfer(request))
        assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED and "peer:ipv4:127.0.0.1" in error.details()
        time.sleep(0.15)
        started = time.monotonic()
        responses = list(server.stub.ModelStreamInfer(iter([request] * 5), timeout=30))
        elapsed = time.monotonic() - started
        assert [r.error_message for r in responses] == [""] * 5  # paced, none refused
        assert elapsed >= 0.3
        server.stub.ModelMetadata(pb.ModelMetadataRequest(name="add_sub"))
        assert rpc_error(lambda: server.stub.ModelMetadata(
            pb.ModelMetadataRequest(name="add_sub"))).code() is grpc.StatusCode.RESOURCE_EXHAUSTED


def test_audit_without_authentication_names_the_peer_and_leaves_inference_alone(
    add_sub_repo: Path, tmp_path: Path
) -> None:
    models.save(models.scale(), add_sub_repo, "scale")
    path = tmp_path / "audit.jsonl"
    with serve_in_thread(add_sub_repo, audit_log_file=path) as server:
        request, a, b = add_sub_request()
        check_add_sub(server.stub.ModelInfer(request), a, b)
        server.stub.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="scale"))
        server.extra["audit"] = path
        entries = audit_entries(server)
    assert [(e["who"], e["action"], e["result"]) for e in entries] == [("peer:ipv4:127.0.0.1", "unload", "OK")]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--tls-cert", "server.pem"], "tls_cert and tls_key go together: give both or neither"),
        (["--auth-api-keys-file", "missing.toml"], "auth_api_keys_file missing.toml: cannot read it"),
    ],
)
def test_bad_security_settings_stop_the_server_at_start(repo: Path, flags: list[str], message: str) -> None:
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "ortserve", "serve", "--model-repository", str(repo), "--grpc-port", "0",
         "--http-port", "-1", *flags],
        capture_output=True, text=True, timeout=60, cwd=repo,
    )
    assert done.returncode == 1
    assert message in done.stderr
