"""The channel: targets, options, service config, credentials and auth metadata; TLS, mTLS and
tokens on the wire against a scripted TLS server (ortserve's own TLS is tested in test_security)."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import numpy as np
import pytest

from ortserve_client import InferenceClient, RetryPolicy, ServerUnavailableError, TlsConfig
from ortserve_client.channel import ChannelSettings, auth_metadata, parse_url
from ortserve_client.policy import CallPolicy
from tests.client.certs import TlsFiles, make_tls_files
from tests.client.scripted import scripted_server

X = np.ones((1, 4), np.float32)


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("tls"))


def server_credentials(tls: TlsFiles, *, mutual: bool) -> grpc.ServerCredentials:
    return grpc.ssl_server_credentials(
        [(tls.server.key, tls.server.cert)], root_certificates=tls.ca.cert if mutual else None,
        require_client_auth=mutual,
    )


def test_parse_url() -> None:
    assert parse_url("localhost:8001") == ("localhost:8001", False)
    assert parse_url("grpc://h:1") == ("h:1", False)
    assert parse_url("grpcs://h:443/") == ("h:443", True)
    assert parse_url("dns:///svc.ns.svc.cluster.local:8001") == ("dns:///svc.ns.svc.cluster.local:8001", False)
    assert parse_url("unix:/tmp/s") == ("unix:/tmp/s", False)


def test_service_config_and_options() -> None:
    settings = ChannelSettings("dns:///svc:8001", retry=RetryPolicy(4, 0.05, 1.5, 3.0))
    # No gRPC retry filter (it costs every call; the clients retry unary calls themselves).
    assert json.loads(settings.service_config()) == {"loadBalancingConfig": [{"round_robin": {}}]}
    options = dict(settings.options())
    assert options["grpc.max_send_message_length"] == options["grpc.max_receive_message_length"] == 2**31 - 1
    assert options["grpc.keepalive_time_ms"] == 360_000 and options["grpc.keepalive_permit_without_calls"] == 0
    assert options["grpc.enable_retries"] == 0 and options["grpc.service_config_disable_resolution"] == 1
    assert "grpc.per_rpc_retry_buffer_size" not in options
    pick = ChannelSettings("h:1", load_balancing="pick_first", extra_options=[("grpc.keepalive_time_ms", 5)])
    assert json.loads(pick.service_config())["loadBalancingConfig"] == [{"pick_first": {}}]
    assert dict(pick.options())["grpc.keepalive_time_ms"] == 5  # extra options win
    assert ChannelSettings("h:1", compression="gzip").compression_algorithm() is grpc.Compression.Gzip
    with pytest.raises(ValueError, match="compression"):
        ChannelSettings("h:1", compression="zstd")
    with pytest.raises(ValueError, match="load_balancing"):
        ChannelSettings("h:1", load_balancing="random")
    with pytest.raises(ValueError, match="1..5"):
        RetryPolicy(max_attempts=6)


def test_backoff_schedule() -> None:
    """Full jitter under a bound that grows by the multiplier up to max_backoff_s (gRFC A6)."""
    policy = RetryPolicy(max_attempts=5, initial_backoff_s=0.1, max_backoff_s=0.3, backoff_multiplier=2.0)
    assert [policy.backoff_s(n, lambda: 1.0) for n in (1, 2, 3, 4)] == pytest.approx([0.1, 0.2, 0.3, 0.3])
    assert policy.backoff_s(2, lambda: 0.5) == pytest.approx(0.1)
    waits = [policy.backoff_s(1) for _ in range(200)]
    assert 0 <= min(waits) < 0.02 and 0.08 < max(waits) <= 0.1


def test_auth_metadata() -> None:
    assert auth_metadata() == ()
    assert auth_metadata(token="t0k") == (("authorization", "Bearer t0k"),)
    assert auth_metadata(api_key="k", api_key_header="X-Api-Key", headers={"X-Tenant": "a"}) == (
        ("x-api-key", "k"),
        ("x-tenant", "a"),
    )
    with pytest.raises(ValueError, match="ASCII"):
        auth_metadata(token="é")
    with pytest.raises(ValueError, match="ASCII"):
        auth_metadata(headers={"x": "a\nb"})


def test_call_policy_deadlines() -> None:
    policy = CallPolicy(5.0, (), None)
    assert policy.timeout(None) == 5.0 and policy.timeout(1.5) == 1.5 and policy.timeout(float("inf")) is None
    assert policy.stream_timeout(None) is None and policy.stream_timeout(3) == 3
    assert CallPolicy(None, (), None).timeout(None) is None
    assert policy.metadata() is None
    with pytest.raises(ValueError):
        policy.timeout(0)
    with pytest.raises(ValueError):
        CallPolicy(-1, (), None)


def test_tls_config(tls: TlsFiles) -> None:
    config = TlsConfig.from_files(
        ca=tls.path("ca.crt"), cert=tls.path("client.crt"), key=tls.path("client.key"), server_name="ortserve.test"
    )
    assert config.root_certificates == tls.ca.cert
    assert config.certificate_chain == tls.client.cert and config.private_key == tls.client.key
    assert isinstance(config.credentials(), grpc.ChannelCredentials)
    assert dict(ChannelSettings("h:1", tls=config).options())["grpc.ssl_target_name_override"] == "ortserve.test"
    with pytest.raises(ValueError, match="both"):
        TlsConfig(certificate_chain=tls.client.cert)
    assert InferenceClient("grpcs://localhost:1").settings.tls == TlsConfig()  # system roots


def test_tls_and_token_on_the_wire(tls: TlsFiles) -> None:
    with scripted_server(credentials=server_credentials(tls, mutual=False)) as server:
        port = server.target.rsplit(":", 1)[1]
        config = TlsConfig(root_certificates=tls.ca.cert)
        with InferenceClient(f"localhost:{port}", tls=config, token="s3cret", api_key="k1") as client:
            assert client.infer("m", {"x": X}, request_id="1").id == "1"
        seen = server.servicer.attempts[-1]
        assert seen["authorization"] == "Bearer s3cret" and seen["x-api-key"] == "k1"
        # The name checked against the certificate can be overridden (it names ortserve.test).
        named = TlsConfig(root_certificates=tls.ca.cert, server_name="ortserve.test")
        with InferenceClient(f"127.0.0.1:{port}", tls=named) as client:
            assert client.is_server_live()
        misnamed = TlsConfig(root_certificates=tls.ca.cert, server_name="elsewhere.test")
        with InferenceClient(f"127.0.0.1:{port}", tls=misnamed, retry=None, default_timeout_s=5) as client:
            with pytest.raises(ServerUnavailableError):
                client.is_server_live()
        # A plaintext client cannot talk to a TLS server; nor a client that does not trust its CA.
        with InferenceClient(f"localhost:{port}", retry=None, default_timeout_s=5) as plain:
            with pytest.raises(ServerUnavailableError):
                plain.infer("m", {"x": X})
        strange = TlsConfig(root_certificates=tls.stranger.cert)
        with InferenceClient(f"localhost:{port}", tls=strange, retry=None, default_timeout_s=5) as distrustful:
            with pytest.raises(ServerUnavailableError):
                distrustful.infer("m", {"x": X})


def test_mutual_tls_on_the_wire(tls: TlsFiles) -> None:
    with scripted_server(credentials=server_credentials(tls, mutual=True)) as server:
        port = server.target.rsplit(":", 1)[1]
        mtls = TlsConfig.from_files(ca=tls.path("ca.crt"), cert=tls.path("client.crt"), key=tls.path("client.key"))
        with InferenceClient(f"localhost:{port}", tls=mtls) as client:
            assert client.is_server_live()
        for refused in (
            TlsConfig(root_certificates=tls.ca.cert),  # no client certificate
            TlsConfig(tls.ca.cert, tls.stranger.cert, tls.stranger.key),  # one the server's CA did not sign
        ):
            with InferenceClient(f"localhost:{port}", tls=refused, retry=None, default_timeout_s=5) as client:
                with pytest.raises(ServerUnavailableError):
                    client.is_server_live()


def test_large_requests_stay_retryable(tmp_path: Path) -> None:
    """gRPC retries only what it buffered: the client raises the per-call buffer to 64 MiB."""
    big = np.zeros((4, 1024, 1024), np.float32)  # 16 MiB
    with scripted_server([grpc.StatusCode.UNAVAILABLE]) as server:
        with InferenceClient(server.target, retry=RetryPolicy(initial_backoff_s=0.01)) as client:
            client.infer("m", {"x": big})
        assert len(server.servicer.attempts) == 2
