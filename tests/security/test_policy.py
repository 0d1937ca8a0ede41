"""The security room's policy objects, without a server: API keys, JWTs, scopes, rate limits, files, TLS, audit."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
import pytest

from ortserve.config import ServerSettings
from ortserve.errors import AuthenticationError, PermissionDeniedError, RateLimitedError
from ortserve.security import (
    AccessPolicy,
    AuditEntry,
    AuditLog,
    Authenticator,
    JwtVerifier,
    Limit,
    RateLimiter,
    Scope,
    SecurityConfigError,
    build_policy,
    peer_host,
    tls_files,
)
from ortserve.security.apikeys import hash_key, new_key, parse_keys
from ortserve.security.apikeys import main as apikeys_main
from ortserve.security.files import WatchedFile
from ortserve.security.tls import TlsFiles
from tests.security import pki

SECRET = b"s" * 32


def keys_file(tmp_path: Path, entries: str) -> Path:
    path = tmp_path / "keys.toml"
    path.write_text(entries)
    return path


def key_entry(key_id: str, key: str, scopes: list[str]) -> str:
    return f'[[key]]\nid = "{key_id}"\nsha256 = "{hash_key(key)}"\nscopes = {json.dumps(scopes)}\n'


def claims(**extra: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"sub": "alice", "exp": int(time.time()) + 300, "scope": "inference metadata"}
    base.update(extra)
    return {k: v for k, v in base.items() if v is not None}


def reject(authenticate: Any, *args: Any) -> str:
    with pytest.raises(AuthenticationError) as info:
        authenticate(*args)
    return str(info.value)


# -- API keys -------------------------------------------------------------------------------


def test_api_keys_authenticate_by_hash_and_carry_their_scopes(tmp_path: Path) -> None:
    key = new_key()
    auth = Authenticator(api_keys_file=keys_file(tmp_path, key_entry("ci", key, ["inference"])))
    principal = auth.authenticate(f"Bearer {key}")
    assert principal.identity == "key:ci" and principal.scopes == {Scope.INFERENCE}
    assert auth.authenticate(f"bearer   {key} ").identity == "key:ci"  # scheme case and spaces
    assert key not in (tmp_path / "keys.toml").read_text()  # only the hash is stored


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (None, "missing credentials: send the metadata 'authorization: Bearer <token>'"),
        ("", "missing credentials"),
        ("Basic dXNlcjpwYXNz", "the authorization metadata must be 'Bearer <token>'"),
        ("Bearer", "must be 'Bearer <token>'"),
        ("Bearer osk_not-a-known-key", "invalid API key"),
    ],
)
def test_api_key_failures_are_unauthenticated_and_never_quote_the_token(
    tmp_path: Path, header: str | None, message: str
) -> None:
    auth = Authenticator(api_keys_file=keys_file(tmp_path, key_entry("ci", new_key(), ["inference"])))
    text = reject(auth.authenticate, header)
    assert message in text
    assert "osk_not-a-known-key" not in text and "dXNlcjpwYXNz" not in text


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ('[[key]]\nsha256 = "' + "a" * 64 + '"\nscopes = []\n', "key #1: needs a non-empty id"),
        ('[[key]]\nid = "x"\nsha256 = "abc"\nscopes = []\n', "key 'x': sha256 must be 64 hex digits"),
        ('[[key]]\nid = "x"\nsha256 = "' + "a" * 64 + '"\nscopes = ["admin"]\n', "key 'x': unknown scope 'admin'"),
        ('[[key]]\nid = "x"\nsha256 = "' + "a" * 64 + '"\nscopes = "inference"\n', "scopes must be a list"),
        (key_entry("x", "k1", []) + key_entry("x", "k2", []), "key 'x': the id appears twice"),
        ("[[key]\n", "auth_api_keys_file"),
    ],
)
def test_a_bad_keys_file_fails_at_start_naming_the_entry(tmp_path: Path, entries: str, message: str) -> None:
    with pytest.raises(SecurityConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        Authenticator(api_keys_file=keys_file(tmp_path, entries))


def test_the_keys_file_is_reloaded_when_it_changes(tmp_path: Path) -> None:
    old, new = new_key(), new_key()
    path = keys_file(tmp_path, key_entry("a", old, ["inference"]))
    clock = [0.0]
    store = WatchedFile(path, parse_keys, what="keys", clock=lambda: clock[0])
    assert hash_key(old) in store.value()
    path.write_text(key_entry("b", new, ["metadata"]))
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert hash_key(old) in store.value()  # checked at most once a second
    clock[0] = 1.5
    assert set(store.value()) == {hash_key(new)}  # revoked without a restart
    path.write_text("not toml [")  # a broken edit keeps the last good keys
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 2 * 10**9))
    clock[0] = 3.0
    assert set(store.value()) == {hash_key(new)}


def test_apikeys_command_prints_an_entry_that_authenticates_its_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert apikeys_main(["--id", "bot", "--scopes", "inference,model_control"]) == 0
    out, err = capsys.readouterr()
    key = err.strip().rsplit(" ", 1)[-1]
    auth = Authenticator(api_keys_file=keys_file(tmp_path, out))
    principal = auth.authenticate(f"Bearer {key}")
    assert principal.identity == "key:bot" and principal.scopes == {Scope.INFERENCE, Scope.MODEL_CONTROL}


# -- JWT ------------------------------------------------------------------------------------


def hs_verifier(tmp_path: Path, **options: Any) -> JwtVerifier:
    secret = tmp_path / "jwt.secret"
    secret.write_bytes(SECRET + b"\n")
    return JwtVerifier(secret_file=secret, **options)


def test_hs256_token_gives_subject_and_scopes(tmp_path: Path) -> None:
    verifier = hs_verifier(tmp_path, issuer="https://issuer", audience="ortserve")
    token = jwt.encode(claims(iss="https://issuer", aud="ortserve"), SECRET, "HS256")
    principal = verifier.verify(token)
    assert principal.identity == "jwt:alice" and principal.scopes == {Scope.INFERENCE, Scope.METADATA}


@pytest.mark.parametrize("scopes", [{"scp": ["model_control", "x"]}, {"scp": "model_control x"}])
def test_scp_claim_and_unknown_scope_names(tmp_path: Path, scopes: dict[str, Any]) -> None:
    token = jwt.encode(claims(scope=None, **scopes), SECRET, "HS256")
    assert hs_verifier(tmp_path).verify(token).scopes == {Scope.MODEL_CONTROL}


@pytest.mark.parametrize(("make_key", "alg"), [(pki.rsa_key, "RS256"), (pki.ec_key, "ES256")])
def test_public_key_tokens(tmp_path: Path, make_key: Any, alg: str) -> None:
    key = make_key()
    (tmp_path / "pub.pem").write_bytes(pki.public_pem(key))
    verifier = JwtVerifier(public_key_file=tmp_path / "pub.pem")
    assert verifier.verify(jwt.encode(claims(), key, alg)).identity == "jwt:alice"
    other = make_key()
    assert "signature does not verify" in reject(verifier.verify, jwt.encode(claims(), other, alg))


def jwks(*keys: tuple[str, Any, str]) -> str:
    out = []
    for kid, key, alg in keys:
        jwk = json.loads(jwt.algorithms.get_default_algorithms()[alg].to_jwk(key.public_key()))
        out.append({**jwk, "kid": kid, "alg": alg, "use": "sig"})
    return json.dumps({"keys": out})


def test_jwks_keys_are_chosen_by_kid_and_reloaded(tmp_path: Path) -> None:
    rsa, ec, rotated = pki.rsa_key(), pki.ec_key(), pki.ec_key()
    path = tmp_path / "jwks.json"
    path.write_text(jwks(("r1", rsa, "RS256"), ("e1", ec, "ES256")))
    verifier = JwtVerifier(jwks_file=path, audience="ortserve")
    token = jwt.encode(claims(aud="ortserve"), rsa, "RS256", headers={"kid": "r1"})
    assert verifier.verify(token).identity == "jwt:alice"
    token = jwt.encode(claims(aud="ortserve"), ec, "ES256", headers={"kid": "e1"})
    assert verifier.verify(token).identity == "jwt:alice"
    # A token naming one key but signed for another algorithm is refused.
    wrong = jwt.encode(claims(aud="ortserve"), ec, "ES256", headers={"kid": "r1"})
    assert "key 'r1' is for RS256, not ES256" in reject(verifier.verify, wrong)
    unknown = jwt.encode(claims(aud="ortserve"), rotated, "ES256", headers={"kid": "e2"})
    assert "no verification key for key id 'e2'" in reject(verifier.verify, unknown)
    path.write_text(jwks(("e2", rotated, "ES256")))
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))
    verifier._jwks._checked = -10.0  # type: ignore[union-attr]  # skip the one-second throttle
    assert verifier.verify(unknown).identity == "jwt:alice"


@pytest.mark.parametrize(
    ("token_claims", "options", "message"),
    [
        (lambda: claims(exp=int(time.time()) - 120), {}, "it has expired"),
        (lambda: claims(nbf=int(time.time()) + 120), {}, "it is not valid yet"),
        (lambda: claims(iss="https://evil"), {"issuer": "https://issuer"}, "the issuer is not 'https://issuer'"),
        (lambda: claims(aud="other"), {"audience": "ortserve"}, "the audience should be 'ortserve'"),
        (lambda: claims(aud="ortserve"), {}, "the audience should be absent"),
        (lambda: claims(exp=None), {}, "the 'exp' claim is missing"),
        (lambda: claims(sub=None), {}, "the 'sub' claim is missing"),
    ],
)
def test_jwt_claim_failures(
    tmp_path: Path, token_claims: Callable[[], dict[str, Any]], options: dict[str, Any], message: str
) -> None:
    # Claims are made when the test runs, not when it is collected: times are relative to now.
    token = jwt.encode(token_claims(), SECRET, "HS256")
    text = reject(hs_verifier(tmp_path, leeway_s=30, **options).verify, token)
    assert message in text and token not in text


def test_clock_skew_within_the_leeway_is_accepted(tmp_path: Path) -> None:
    token = jwt.encode(claims(exp=int(time.time()) - 10), SECRET, "HS256")
    assert hs_verifier(tmp_path, leeway_s=30).verify(token).identity == "jwt:alice"
    assert "expired" in reject(hs_verifier(tmp_path, leeway_s=0).verify, token)


def test_algorithm_tricks_are_refused(tmp_path: Path) -> None:
    key = pki.rsa_key()
    (tmp_path / "pub.pem").write_bytes(pki.public_pem(key))
    verifier = JwtVerifier(public_key_file=tmp_path / "pub.pem")
    unsigned = jwt.encode(claims(), None, "none")
    assert "algorithm 'none' is not accepted" in reject(verifier.verify, unsigned)
    # HS256 "signed" with the public key as the HMAC secret: no HS256 key is configured.
    import base64
    import hashlib
    import hmac

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64(json.dumps(claims()).encode())
    sig = b64(hmac.new(pki.public_pem(key), f"{head}.{body}".encode(), hashlib.sha256).digest())
    assert "no verification key for algorithm HS256" in reject(verifier.verify, f"{head}.{body}.{sig}")
    assert "not a well-formed JWT" in reject(verifier.verify, "a.b.c")


def test_hs256_secret_must_be_long_enough(tmp_path: Path) -> None:
    (tmp_path / "short").write_bytes(b"too short")
    with pytest.raises(SecurityConfigError, match="auth_jwt_secret_file .*: an HS256 secret needs at least 32 bytes"):
        JwtVerifier(secret_file=tmp_path / "short")


def test_authenticator_routes_jwts_and_api_keys(tmp_path: Path) -> None:
    key = new_key()
    auth = Authenticator(
        api_keys_file=keys_file(tmp_path, key_entry("ci", key, ["metadata"])), jwt=hs_verifier(tmp_path)
    )
    assert auth.authenticate(f"Bearer {key}").identity == "key:ci"
    assert auth.authenticate("Bearer " + jwt.encode(claims(), SECRET, "HS256")).identity == "jwt:alice"
    assert "invalid API key" in reject(auth.authenticate, "Bearer nope")


# -- policy: scopes and rate limits ---------------------------------------------------------


def test_missing_scope_is_permission_denied(tmp_path: Path) -> None:
    key = new_key()
    policy = AccessPolicy(Authenticator(api_keys_file=keys_file(tmp_path, key_entry("ci", key, ["inference"]))))
    assert policy.admit(Scope.INFERENCE, f"Bearer {key}", "ipv4:1.2.3.4:5", "ModelInfer").identity == "key:ci"
    with pytest.raises(PermissionDeniedError, match="key:ci may not call RepositoryModelLoad: it needs the scope "
                       "'model_control' \\(held: inference\\)"):
        policy.admit(Scope.MODEL_CONTROL, f"Bearer {key}", "ipv4:1.2.3.4:5", "RepositoryModelLoad")
    with pytest.raises(AuthenticationError):
        policy.admit(Scope.MODEL_CONTROL, None, "ipv4:1.2.3.4:5", "RepositoryModelLoad")


def test_token_bucket_burst_refusal_with_retry_hint_and_refill() -> None:
    now = [100.0]
    limiter = RateLimiter({Scope.INFERENCE: Limit(2.0, 3)}, clock=lambda: now[0])
    for _ in range(3):
        limiter.acquire("peer:a", Scope.INFERENCE)
    with pytest.raises(RateLimitedError) as info:
        limiter.acquire("peer:a", Scope.INFERENCE)
    assert info.value.retry_after_ms == 500
    assert "rate limit for inference exceeded by peer:a: 2 requests/s, burst 3; retry in 500 ms" in str(info.value)
    limiter.acquire("peer:b", Scope.INFERENCE)  # another client has its own bucket
    limiter.acquire("peer:a", Scope.METADATA)  # a scope without a limit is free
    now[0] += 0.5
    limiter.acquire("peer:a", Scope.INFERENCE)  # refilled one token
    with pytest.raises(RateLimitedError):
        limiter.acquire("peer:a", Scope.INFERENCE)
    now[0] += 60
    for _ in range(3):  # refills to the burst, not beyond
        limiter.acquire("peer:a", Scope.INFERENCE)
    with pytest.raises(RateLimitedError):
        limiter.acquire("peer:a", Scope.INFERENCE)


def test_stream_messages_are_paced_not_refused() -> None:
    now = [0.0]
    limiter = RateLimiter({Scope.INFERENCE: Limit(10.0, 2)}, clock=lambda: now[0])
    waits = [limiter.reserve("s", Scope.INFERENCE) for _ in range(5)]
    assert waits == pytest.approx([0.0, 0.0, 0.1, 0.2, 0.3])


def test_buckets_are_bounded_least_recently_used_first_out() -> None:
    limiter = RateLimiter({Scope.INFERENCE: Limit(1.0, 1)}, max_clients=100)
    for i in range(1000):
        limiter.acquire(f"peer:{i}", Scope.INFERENCE)
    assert len(limiter) == 100


@pytest.mark.parametrize(
    ("peer", "host"),
    [
        ("ipv4:10.0.0.7:51234", "ipv4:10.0.0.7"),
        ("ipv6:[::1]:443", "ipv6:[::1]"),
        ("ipv6:%5B::1%5D:443", "ipv6:%5B::1%5D"),
        ("unix:/tmp/sock", "unix:/tmp/sock"),
        ("", ""),
    ],
)
def test_peer_host_drops_the_port(peer: str, host: str) -> None:
    assert peer_host(peer) == host


def test_build_policy_only_when_asked(tmp_path: Path) -> None:
    assert build_policy(ServerSettings()) is None
    policy = build_policy(ServerSettings(rate_limit_metadata_per_s=2.5))
    assert policy is not None and policy.authenticator is None and policy.limiter is not None
    assert policy.limiter.limits == {Scope.METADATA: Limit(2.5, 3)}
    assert policy.guards(Scope.METADATA) and not policy.guards(Scope.INFERENCE)
    with pytest.raises(SecurityConfigError, match="auth_jwt_issuer / auth_jwt_audience need a JWT key"):
        build_policy(ServerSettings(auth_jwt_issuer="x"))
    with pytest.raises(SecurityConfigError, match="auth_api_keys_file .*missing.toml: cannot read it"):
        build_policy(ServerSettings(auth_api_keys_file=tmp_path / "missing.toml"))


# -- TLS files ------------------------------------------------------------------------------


def test_tls_settings_must_come_together(tmp_path: Path) -> None:
    assert tls_files(None, None, None) is None
    with pytest.raises(SecurityConfigError, match="tls_cert and tls_key go together"):
        tls_files(tmp_path / "c", None, None)
    with pytest.raises(SecurityConfigError, match="tls_client_ca \\(mTLS\\) needs tls_cert and tls_key"):
        tls_files(None, None, tmp_path / "ca")


def test_tls_files_are_checked_and_a_half_rotation_keeps_the_old_pair(tmp_path: Path) -> None:
    keys = pki.Pki.make()
    files = keys.write(tmp_path)
    tls = TlsFiles(files["tls_cert"], files["tls_key"], files["tls_client_ca"])
    first = tls.load()
    assert first.certificate_chain == keys.server.cert_pem and first.client_ca == keys.client_ca.cert_pem
    assert tls.changed() is None
    # The certificate is replaced, but its key is not there yet: keep serving the old pair.
    new = pki.certificate("localhost", issuer=keys.ca)
    files["tls_cert"].write_bytes(new.cert_pem)
    assert tls.changed() is None
    files["tls_key"].write_bytes(new.key_pem)
    second = tls.changed()
    assert second is not None and second.certificate_chain == new.cert_pem
    files["tls_key"].write_bytes(keys.server.key_pem)
    with pytest.raises(SecurityConfigError, match="tls_key .* does not match the certificate"):
        tls.load()
    files["tls_cert"].write_bytes(b"garbage")
    with pytest.raises(SecurityConfigError, match="tls_cert .*: not a PEM certificate chain"):
        tls.load()


# -- audit ----------------------------------------------------------------------------------


def test_audit_entries_are_json_lines_in_the_file_and_on_the_logger(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "logs" / "audit.jsonl"
    audit = AuditLog(path)
    with caplog.at_level(logging.INFO, logger="ortserve.audit"):
        audit.record(AuditEntry("key:ci", "ipv4:1.2.3.4:5", "load", "m", "OK", parameters=["config"]))
        audit.record(AuditEntry("jwt:bob", "ipv4:1.2.3.4:6", "unload", "m", "PERMISSION_DENIED", "no"))
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(e["who"], e["action"], e["result"]) for e in lines] == [
        ("key:ci", "load", "OK"), ("jwt:bob", "unload", "PERMISSION_DENIED")
    ]
    assert lines[0]["parameters"] == ["config"] and lines[0]["time"].endswith("+00:00")
    assert [json.loads(r.getMessage())["who"] for r in caplog.records] == ["key:ci", "jwt:bob"]


def test_a_verified_token_is_remembered_briefly_and_never_past_its_expiry(tmp_path: Path) -> None:
    key, replacement = pki.ec_key(), pki.ec_key()
    path = tmp_path / "jwks.json"
    path.write_text(jwks(("k1", key, "ES256")))
    now = [time.time()]
    verifier = JwtVerifier(jwks_file=path, clock=lambda: now[0])
    token = jwt.encode(claims(), key, "ES256", headers={"kid": "k1"})
    assert verifier.verify(token).identity == "jwt:alice"
    # The key is rotated out: the remembered token still passes for a while, then no longer.
    path.write_text(jwks(("k2", replacement, "ES256")))
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))
    verifier._jwks._checked = -10.0  # type: ignore[union-attr]  # skip the one-second throttle
    assert verifier.verify(token).identity == "jwt:alice"
    now[0] += 31
    assert "no verification key for key id 'k1'" in reject(verifier.verify, token)
    # A token about to expire is remembered only until it does.
    short = jwt.encode(claims(exp=int(time.time()) + 1), replacement, "ES256", headers={"kid": "k2"})
    real = JwtVerifier(jwks_file=path)
    assert real.verify(short).identity == "jwt:alice"
    time.sleep(max(0.0, int(time.time()) + 1 - time.time()) + 1.05)
    assert "expired" in reject(real.verify, short)
