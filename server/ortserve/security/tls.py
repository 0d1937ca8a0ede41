"""TLS material of the gRPC port, re-read when its files change (rotation without restart).

`TlsFiles.load()` reads and checks the certificate chain, its private key and, for mTLS, the
CA bundle that client certificates must chain to. `changed()` is asked on every new TLS
handshake (by gRPC's certificate-configuration fetcher, see `ortserve.app`): it costs three
stat calls and returns new material only when a file changed *and* the new set is whole and
consistent (the key matches the certificate), so a rotation caught half-written keeps serving
the old pair until the other file lands.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, load_pem_private_key

from ortserve.security.files import SecurityConfigError, Signature, file_signature

log = logging.getLogger("ortserve.security")


@dataclass(frozen=True, slots=True)
class TlsMaterial:
    certificate_chain: bytes
    private_key: bytes
    client_ca: bytes | None
    """PEM CA bundle for client certificates (mTLS), or None for server-only TLS."""


class TlsFiles:
    """The TLS files of the gRPC port (see the module docstring)."""

    def __init__(self, cert: Path, key: Path, client_ca: Path | None = None) -> None:
        self.cert, self.key, self.client_ca = Path(cert), Path(key), client_ca and Path(client_ca)
        self._lock = threading.Lock()
        self._signatures: tuple[Signature | None, ...] = ()
        self._refused: tuple[Signature | None, ...] = ()

    @property
    def mutual(self) -> bool:
        return self.client_ca is not None

    def _paths(self) -> tuple[Path, ...]:
        return (self.cert, self.key) if self.client_ca is None else (self.cert, self.key, self.client_ca)

    def load(self) -> TlsMaterial:
        """Read and check the files; SecurityConfigError naming the file and the fault."""
        with self._lock:
            signatures = tuple(file_signature(p) for p in self._paths())
            material = self._read()
            self._signatures = signatures
            return material

    def changed(self) -> TlsMaterial | None:
        """New material if a file changed and the new set is valid; None otherwise. Never raises."""
        signatures = tuple(file_signature(p) for p in self._paths())
        if signatures == self._signatures or signatures == self._refused:
            return None
        with self._lock:
            try:
                material = self._read()
            except Exception as exc:  # noqa: BLE001 - keep serving the old pair, say why once
                self._refused = signatures
                log.warning("TLS files changed but are not usable yet (%s); still serving the previous ones", exc)
                return None
            self._signatures = signatures
            log.info("TLS certificate reloaded from %s", self.cert)
            return material

    def _read(self) -> TlsMaterial:
        chain = _read(self.cert, "tls_cert")
        key = _read(self.key, "tls_key")
        try:
            certs = x509.load_pem_x509_certificates(chain)
        except ValueError:
            raise SecurityConfigError(f"tls_cert {self.cert}: not a PEM certificate chain") from None
        try:
            private = load_pem_private_key(key, password=None)
        except (ValueError, TypeError):
            raise SecurityConfigError(f"tls_key {self.key}: not an unencrypted PEM private key") from None
        if _spki(certs[0].public_key()) != _spki(private.public_key()):
            raise SecurityConfigError(f"tls_key {self.key} does not match the certificate in {self.cert}")
        ca = None
        if self.client_ca is not None:
            ca = _read(self.client_ca, "tls_client_ca")
            try:
                x509.load_pem_x509_certificates(ca)
            except ValueError:
                raise SecurityConfigError(f"tls_client_ca {self.client_ca}: not a PEM CA bundle") from None
        return TlsMaterial(chain, key, ca)


def _read(path: Path, setting: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise SecurityConfigError(f"{setting} {path}: cannot read it ({exc.strerror})") from None


def _spki(key: object) -> bytes:
    return key.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)  # type: ignore[attr-defined, no-any-return]


def tls_files(cert: Path | None, key: Path | None, client_ca: Path | None) -> TlsFiles | None:
    """The TLS files the settings name, or None for plaintext; the three must make sense together."""
    if cert is None and key is None:
        if client_ca is not None:
            raise SecurityConfigError("tls_client_ca (mTLS) needs tls_cert and tls_key as well")
        return None
    if cert is None or key is None:
        raise SecurityConfigError("tls_cert and tls_key go together: give both or neither")
    return TlsFiles(cert, key, client_ca)
