"""JWT bearer tokens, verified with PyJWT: HS256, RS256 or ES256; issuer, audience, expiry, skew.

The algorithm is bound to the key, never taken on the token's word: an HS256 secret only
verifies HS256 tokens, an RSA or P-256 public key only RS256 or ES256, a JWKS key only its own
algorithm (looked up by the token's `kid`). So a token cannot pick `none`, nor turn a public key
into an HMAC secret. `exp` and `sub` are required. Scopes come from the `scope` claim (space
separated, RFC 8693) or `scp` (a list or a string); names other than the three scopes are ignored.

Verifying costs 50-80 µs (HS256 to ES256), and a client sends the same token with every request,
so a verified token is remembered for at most `CACHE_S` and never past its `exp` (+ leeway): a
rotated-out JWKS key stops verifying within that time. The cache holds at most `CACHE_TOKENS`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from ortserve.errors import AuthenticationError
from ortserve.security.files import SecurityConfigError, WatchedFile
from ortserve.security.principal import Principal, Scope

if TYPE_CHECKING:
    from jwt.types import Options

ALGORITHMS = ("HS256", "RS256", "ES256")
MIN_SECRET_BYTES = 32
CACHE_S = 30.0
CACHE_TOKENS = 4096
_SCOPE_NAMES = {s.value: s for s in Scope}


@dataclass(frozen=True, slots=True)
class JwtKey:
    algorithm: str
    key: Any
    """What PyJWT verifies with: bytes for HS256, a cryptography public key otherwise."""


def secret_key(data: bytes) -> JwtKey:
    secret = data.strip()
    if len(secret) < MIN_SECRET_BYTES:
        raise ValueError(f"an HS256 secret needs at least {MIN_SECRET_BYTES} bytes, got {len(secret)}")
    return JwtKey("HS256", secret)


def public_key(data: bytes) -> JwtKey:
    key = load_pem_public_key(data)
    if isinstance(key, rsa.RSAPublicKey):
        return JwtKey("RS256", key)
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        return JwtKey("ES256", key)
    raise ValueError("expected an RSA or P-256 (ES256) public key in PEM")


def parse_jwks(data: bytes) -> dict[str, JwtKey]:
    """A JWKS document -> {kid: key}; keys of other algorithms are left out."""
    try:
        keyset = jwt.PyJWKSet.from_dict(json.loads(data))
    except (jwt.PyJWKSetError, jwt.PyJWKError, json.JSONDecodeError) as exc:
        raise ValueError(f"not a usable JWKS document ({type(exc).__name__}: {exc})") from None
    keys: dict[str, JwtKey] = {}
    for jwk in keyset.keys:
        if jwk.algorithm_name in ALGORITHMS:
            keys[jwk.key_id or ""] = JwtKey(jwk.algorithm_name, jwk.key)
    if not keys:
        raise ValueError(f"the JWKS has no key for {', '.join(ALGORITHMS)}")
    return keys


def _read(path: Path, parse: Any, what: str) -> JwtKey:
    try:
        result: JwtKey = parse(path.read_bytes())
        return result
    except OSError as exc:
        raise SecurityConfigError(f"{what} {path}: cannot read it ({exc.strerror})") from None
    except ValueError as exc:
        raise SecurityConfigError(f"{what} {path}: {exc}") from None


class JwtVerifier:
    """Verifies bearer JWTs against static keys and/or a JWKS file (reloaded when it changes)."""

    def __init__(
        self,
        *,
        secret_file: Path | None = None,
        public_key_file: Path | None = None,
        jwks_file: Path | None = None,
        issuer: str = "",
        audience: str = "",
        leeway_s: float = 0.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._clock = clock
        self._verified: dict[str, tuple[Principal, float]] = {}
        """token -> (its principal, wall-clock time until which it is taken without verifying again)"""
        self._static: dict[str, JwtKey] = {}
        if secret_file is not None:
            self._static["HS256"] = _read(secret_file, secret_key, "auth_jwt_secret_file")
        if public_key_file is not None:
            key = _read(public_key_file, public_key, "auth_jwt_public_key_file")
            self._static[key.algorithm] = key
        self._jwks = WatchedFile(jwks_file, parse_jwks, what="auth_jwt_jwks_file") if jwks_file else None
        if not self._static and self._jwks is None:
            raise SecurityConfigError("JWT verification needs a secret, a public key or a JWKS file")
        self._issuer = issuer or None
        self._audience = audience or None
        self._leeway = leeway_s
        self._options: Options = {"require": ["exp", "sub"]}

    def verify(self, token: str) -> Principal:
        """The token's principal; AuthenticationError saying why not (never quoting the token)."""
        now = self._clock()
        known = self._verified.get(token)
        if known is not None and now < known[1]:
            return known[0]
        principal, expires = self._verify(token)
        if len(self._verified) >= CACHE_TOKENS:
            self._verified.pop(next(iter(self._verified)))  # oldest first
        self._verified[token] = (principal, min(now + CACHE_S, expires + self._leeway))
        return principal

    def _verify(self, token: str) -> tuple[Principal, float]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise AuthenticationError("invalid token: not a well-formed JWT") from None
        key = self._key_for(header)
        try:
            claims = jwt.decode(
                token,
                key.key,
                algorithms=[key.algorithm],
                issuer=self._issuer,
                audience=self._audience,
                leeway=self._leeway,
                options=self._options,
            )
        except jwt.ExpiredSignatureError:
            raise AuthenticationError("invalid token: it has expired") from None
        except jwt.ImmatureSignatureError:
            raise AuthenticationError("invalid token: it is not valid yet (nbf or iat in the future)") from None
        except jwt.InvalidIssuerError:
            raise AuthenticationError(f"invalid token: the issuer is not {self._issuer!r}") from None
        except jwt.InvalidAudienceError:
            expected = f"{self._audience!r}" if self._audience else "absent (no audience is configured)"
            raise AuthenticationError(f"invalid token: the audience should be {expected}") from None
        except jwt.MissingRequiredClaimError as exc:
            raise AuthenticationError(f"invalid token: the {exc.claim!r} claim is missing") from None
        except jwt.InvalidSignatureError:
            raise AuthenticationError("invalid token: the signature does not verify") from None
        except jwt.InvalidTokenError as exc:
            raise AuthenticationError(f"invalid token ({type(exc).__name__})") from None
        return Principal(f"jwt:{claims['sub']}", _scopes(claims)), float(claims["exp"])

    def _key_for(self, header: dict[str, Any]) -> JwtKey:
        alg = header.get("alg")
        if alg not in ALGORITHMS:
            raise AuthenticationError(f"invalid token: algorithm {alg!r} is not accepted ({', '.join(ALGORITHMS)})")
        kid = header.get("kid")
        if self._jwks is not None:
            keys = self._jwks.value()
            found = keys.get(kid) if isinstance(kid, str) else None
            if found is None and kid is None and len(keys) == 1:
                found = next(iter(keys.values()))
            if found is not None:
                if found.algorithm != alg:
                    raise AuthenticationError(f"invalid token: key {kid!r} is for {found.algorithm}, not {alg}")
                return found
        static = self._static.get(alg)
        if static is None:
            which = f"key id {kid!r}" if kid is not None else f"algorithm {alg}"
            raise AuthenticationError(f"invalid token: no verification key for {which}")
        return static


def _scopes(claims: dict[str, Any]) -> frozenset[Scope]:
    raw = claims.get("scope", claims.get("scp", ""))
    names = raw.split() if isinstance(raw, str) else raw if isinstance(raw, list) else []
    return frozenset(_SCOPE_NAMES[n] for n in names if isinstance(n, str) and n in _SCOPE_NAMES)
