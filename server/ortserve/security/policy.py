"""AccessPolicy: authenticate a call, check its scope, apply its rate limit. Built from the settings.

It sees plain values only: the text of the `authorization` metadata, the peer's address and
the scope the called method needs; it answers with the Principal the call acts as, or raises
AuthenticationError (UNAUTHENTICATED), PermissionDeniedError (PERMISSION_DENIED) or
RateLimitedError (RESOURCE_EXHAUSTED with a retry hint). Error messages never quote a credential.
"""

from __future__ import annotations

import math
from pathlib import Path

from ortserve.config import ServerSettings
from ortserve.errors import AuthenticationError, PermissionDeniedError
from ortserve.security.apikeys import hash_key, parse_keys
from ortserve.security.files import SecurityConfigError, WatchedFile
from ortserve.security.principal import ALL_SCOPES, Principal, Scope
from ortserve.security.ratelimit import Limit, RateLimiter
from ortserve.security.tokens import JwtVerifier

_BEARER = "bearer"


def peer_host(peer: str) -> str:
    """A gRPC peer without its port: `ipv4:10.0.0.7:51234` -> `ipv4:10.0.0.7` (one identity per host)."""
    host, sep, port = peer.rpartition(":")
    return host if sep and port.isdigit() and ":" in host else peer


class Authenticator:
    """Bearer tokens: JWTs when a JWT key is configured, else (or when not JWT-shaped) API keys."""

    def __init__(self, *, api_keys_file: Path | None = None, jwt: JwtVerifier | None = None) -> None:
        self._keys = WatchedFile(api_keys_file, parse_keys, what="auth_api_keys_file") if api_keys_file else None
        self._jwt = jwt
        if self._keys is None and self._jwt is None:
            raise SecurityConfigError("authentication needs an API keys file or a JWT key")

    def authenticate(self, authorization: str | None) -> Principal:
        if not authorization:
            raise AuthenticationError("missing credentials: send the metadata 'authorization: Bearer <token>'")
        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != _BEARER or not token:
            raise AuthenticationError("the authorization metadata must be 'Bearer <token>'")
        if self._jwt is not None and token.count(".") == 2:
            return self._jwt.verify(token)
        if self._keys is not None:
            principal = self._keys.value().get(hash_key(token))
            if principal is None:
                raise AuthenticationError("invalid API key")
            return principal
        raise AuthenticationError("invalid token: not a well-formed JWT")


class AccessPolicy:
    """Who may call what, and how often (see the module docstring)."""

    def __init__(self, authenticator: Authenticator | None = None, limiter: RateLimiter | None = None) -> None:
        self.authenticator = authenticator
        self.limiter = limiter

    def guards(self, scope: Scope) -> bool:
        """Whether calls needing `scope` are checked at all (authentication on, or a rate limit)."""
        return self.authenticator is not None or (self.limiter is not None and self.limiter.limits_scope(scope))

    def identify(self, authorization: str | None, peer: str) -> Principal:
        """The principal of a call (the peer's host, with every scope, when authentication is off)."""
        if self.authenticator is None:
            return Principal(f"peer:{peer_host(peer)}", ALL_SCOPES)
        return self.authenticator.authenticate(authorization)

    def authorize(self, principal: Principal, scope: Scope, action: str) -> None:
        if scope not in principal.scopes:
            held = ", ".join(sorted(principal.scopes)) or "none"
            raise PermissionDeniedError(
                f"{principal.identity} may not call {action}: it needs the scope {scope.value!r} (held: {held})"
            )

    def admit(
        self, scope: Scope, authorization: str | None, peer: str, action: str, *, rate_limited: bool = True
    ) -> Principal:
        """Identify, authorize and (unless told not to, as for a stream) rate-limit one call."""
        principal = self.identify(authorization, peer)
        self.authorize(principal, scope, action)
        if rate_limited and self.limiter is not None:
            self.limiter.acquire(principal.identity, scope)
        return principal


def build_policy(settings: ServerSettings) -> AccessPolicy | None:
    """The policy the settings ask for, or None when they ask for neither authentication nor rate limits."""
    s = settings
    jwt_files = (s.auth_jwt_secret_file, s.auth_jwt_public_key_file, s.auth_jwt_jwks_file)
    authenticator = None
    if s.auth_api_keys_file is not None or any(f is not None for f in jwt_files):
        verifier = None
        if any(f is not None for f in jwt_files):
            verifier = JwtVerifier(
                secret_file=s.auth_jwt_secret_file,
                public_key_file=s.auth_jwt_public_key_file,
                jwks_file=s.auth_jwt_jwks_file,
                issuer=s.auth_jwt_issuer,
                audience=s.auth_jwt_audience,
                leeway_s=s.auth_jwt_leeway_seconds,
            )
        authenticator = Authenticator(api_keys_file=s.auth_api_keys_file, jwt=verifier)
    elif s.auth_jwt_issuer or s.auth_jwt_audience:
        raise SecurityConfigError("auth_jwt_issuer / auth_jwt_audience need a JWT key (secret, public key or JWKS)")
    limits: dict[Scope, Limit] = {}
    for scope, rate, burst in (
        (Scope.INFERENCE, s.rate_limit_inference_per_s, s.rate_limit_inference_burst),
        (Scope.METADATA, s.rate_limit_metadata_per_s, s.rate_limit_metadata_burst),
        (Scope.MODEL_CONTROL, s.rate_limit_control_per_s, s.rate_limit_control_burst),
    ):
        if rate > 0:
            limits[scope] = Limit(rate, burst or max(1, math.ceil(rate)))
    limiter = RateLimiter(limits) if limits else None
    if authenticator is None and limiter is None:
        return None
    return AccessPolicy(authenticator, limiter)
