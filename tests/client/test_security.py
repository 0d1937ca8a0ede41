"""The client against ortserve's own TLS, mTLS and bearer-token authentication (real server,
certificates and keys made in the test)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import jwt
import numpy as np
import pytest

from ortserve_client import (
    InferenceClient,
    PermissionDeniedError,
    ServerUnavailableError,
    TlsConfig,
    UnauthenticatedError,
)
from tests import models
from tests.client.certs import TlsFiles, make_tls_files
from tests.client.test_cli import command
from tests.harness import RunningServer, serve_in_thread

X = np.ones((1, 4), np.float32)
INFER_KEY = "osk_infer-and-metadata-0123456789abcdef"
ADMIN_KEY = "osk_admin-0123456789abcdef0123456789ab"
JWT_SECRET = b"a-test-secret-of-at-least-32-bytes!!"


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("secure")
    models.save(models.identity("FP32", dims=("batch", 4)), path, "echo")
    return path


def _keys_file(folder: Path) -> Path:
    path = folder / "keys.toml"
    path.write_text(
        f'[[key]]\nid = "app"\nsha256 = "{hashlib.sha256(INFER_KEY.encode()).hexdigest()}"\n'
        'scopes = ["inference", "metadata"]\n'
        f'[[key]]\nid = "ops"\nsha256 = "{hashlib.sha256(ADMIN_KEY.encode()).hexdigest()}"\n'
        'scopes = ["inference", "metadata", "model_control"]\n'
    )
    return path


@pytest.fixture(scope="module")
def secure(repo: Path, tls: TlsFiles) -> Iterator[RunningServer]:
    """TLS, mTLS and API-key or JWT authentication, all on."""
    secret = tls.folder / "jwt.secret"
    secret.write_bytes(JWT_SECRET)
    with serve_in_thread(
        repo,
        http_port=-1,
        tls_cert=tls.path("server.crt"),
        tls_key=tls.path("server.key"),
        tls_client_ca=tls.path("ca.crt"),
        auth_api_keys_file=_keys_file(tls.folder),
        auth_jwt_secret_file=secret,
    ) as running:
        yield running


def localhost(srv: RunningServer) -> str:
    return "localhost:" + srv.grpc_target.rsplit(":", 1)[1]


def mtls(tls: TlsFiles) -> TlsConfig:
    return TlsConfig.from_files(ca=tls.path("ca.crt"), cert=tls.path("client.crt"), key=tls.path("client.key"))


def test_tls_only(repo: Path, tls: TlsFiles) -> None:
    with serve_in_thread(repo, http_port=-1, tls_cert=tls.path("server.crt"), tls_key=tls.path("server.key")) as srv:
        with InferenceClient(localhost(srv), tls=TlsConfig.from_files(ca=tls.path("ca.crt"))) as client:
            np.testing.assert_array_equal(client.infer("echo", {"x": X})["y"], X)
        with InferenceClient(localhost(srv), retry=None, default_timeout_s=5) as plain:
            with pytest.raises(ServerUnavailableError):
                plain.is_server_live()


def test_mtls_and_api_keys(secure: RunningServer, tls: TlsFiles) -> None:
    target = localhost(secure)
    with InferenceClient(target, tls=mtls(tls), token=INFER_KEY) as app:
        np.testing.assert_array_equal(app.infer("echo", {"x": X})["y"], X)
        assert app.model_metadata("echo").name == "echo"
        with pytest.raises(PermissionDeniedError) as denied:
            app.unload_model("echo")
        assert "model_control" in denied.value.details
    with InferenceClient(target, tls=mtls(tls)) as anonymous:
        assert anonymous.is_server_live() and anonymous.is_server_ready()  # health stays open
        with pytest.raises(UnauthenticatedError):
            anonymous.infer("echo", {"x": X})
    with InferenceClient(target, tls=mtls(tls), token="osk_wrong") as wrong:
        with pytest.raises(UnauthenticatedError) as info:
            wrong.infer("echo", {"x": X})
        assert "osk_wrong" not in info.value.details
    with InferenceClient(target, tls=mtls(tls), token=ADMIN_KEY) as ops:
        ops.unload_model("echo")
        ops.load_model("echo")
        assert ops.is_model_ready("echo")
    no_cert = TlsConfig.from_files(ca=tls.path("ca.crt"))
    stranger = TlsConfig(tls.ca.cert, tls.stranger.cert, tls.stranger.key)
    for refused in (no_cert, stranger):
        with InferenceClient(target, tls=refused, token=INFER_KEY, retry=None, default_timeout_s=5) as client:
            with pytest.raises(ServerUnavailableError):
                client.is_server_live()


def test_jwt_bearer_token(secure: RunningServer, tls: TlsFiles) -> None:
    now = int(time.time())
    token = jwt.encode({"sub": "svc-a", "exp": now + 300, "scope": "inference"}, JWT_SECRET, "HS256")
    with InferenceClient(localhost(secure), tls=mtls(tls), token=token) as client:
        np.testing.assert_array_equal(client.infer("echo", {"x": X})["y"], X)
        with pytest.raises(PermissionDeniedError):
            client.model_config("echo")
    expired = jwt.encode({"sub": "svc-a", "exp": now - 3600, "scope": "inference"}, JWT_SECRET, "HS256")
    with InferenceClient(localhost(secure), tls=mtls(tls), token=expired) as client:
        with pytest.raises(UnauthenticatedError):
            client.infer("echo", {"x": X})


def test_cli_with_tls_flags_and_token(secure: RunningServer, tls: TlsFiles) -> None:
    flags = [
        "--url", localhost(secure),
        "--tls-ca", str(tls.path("ca.crt")),
        "--tls-cert", str(tls.path("client.crt")),
        "--tls-key", str(tls.path("client.key")),
    ]
    env = {**os.environ, "ORTSERVE_TOKEN": INFER_KEY}
    done = subprocess.run([*command(), *flags, "models"], capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("echo\t1\tREADY")
    done = subprocess.run(
        [*command(), *flags, "--token", "osk_nope", "metadata", "echo"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1 and "UNAUTHENTICATED" in done.stderr
