"""Certificates and keys made on the spot with `cryptography`, for the security tests."""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

Key = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def key_pem(key: Key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def public_pem(key: Key) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@dataclass
class Issued:
    key: Key
    cert: x509.Certificate

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return key_pem(self.key)


def certificate(
    common_name: str, *, issuer: Issued | None = None, ca: bool = False, hosts: tuple[str, ...] = ("localhost",)
) -> Issued:
    """A CA (ca=True, self-signed unless issuer is given) or a leaf for `hosts`, valid for a day."""
    key = ec_key()
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer.cert.subject if issuer else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(h) for h in hosts]), critical=False
        )
    cert = builder.sign(issuer.key if issuer else key, hashes.SHA256())
    return Issued(key, cert)


@dataclass
class Pki:
    """A server CA with a server certificate, and a client CA with a client certificate."""

    ca: Issued
    server: Issued
    client_ca: Issued
    client: Issued

    @classmethod
    def make(cls) -> Pki:
        ca = certificate("test server CA", ca=True)
        client_ca = certificate("test client CA", ca=True)
        return cls(
            ca,
            certificate("localhost", issuer=ca),
            client_ca,
            certificate("client-1", issuer=client_ca),
        )

    def write(self, directory: Path) -> dict[str, Path]:
        """server.pem, server.key and clients-ca.pem in `directory`; the settings that name them."""
        files = {
            "tls_cert": directory / "server.pem",
            "tls_key": directory / "server.key",
            "tls_client_ca": directory / "clients-ca.pem",
        }
        files["tls_cert"].write_bytes(self.server.cert_pem)
        files["tls_key"].write_bytes(self.server.key_pem)
        files["tls_client_ca"].write_bytes(self.client_ca.cert_pem)
        return files
