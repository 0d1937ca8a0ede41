"""The security room: TLS material, authentication, authorization, rate limits and the audit log.

Owns policy, not transport. Its objects take plain values (the text of the `authorization`
metadata, the peer's address, the Scope a method needs, file paths from the settings) and
answer with plain values or raise the errors of `ortserve.errors` (AuthenticationError,
PermissionDeniedError, RateLimitedError). The protocol room applies them to gRPC calls
(`protocol/interceptors.py`) and `app` builds them from the settings; when the settings ask
for no authentication and no rate limit, nothing of this room sits on the request path.

Imports `config`, `errors`, PyJWT and cryptography; never grpc, the generated stubs,
`protocol`, `dataplane` or anything above them. Never logs a credential.
"""

from ortserve.security.audit import AuditEntry, AuditLog
from ortserve.security.files import SecurityConfigError
from ortserve.security.policy import AccessPolicy, Authenticator, build_policy, peer_host
from ortserve.security.principal import Principal, Scope
from ortserve.security.ratelimit import Limit, RateLimiter
from ortserve.security.tls import TlsFiles, TlsMaterial, tls_files
from ortserve.security.tokens import JwtVerifier

__all__ = [
    "AccessPolicy",
    "AuditEntry",
    "AuditLog",
    "Authenticator",
    "JwtVerifier",
    "Limit",
    "Principal",
    "RateLimiter",
    "Scope",
    "SecurityConfigError",
    "TlsFiles",
    "TlsMaterial",
    "build_policy",
    "peer_host",
    "tls_files",
]
