"""Service identities for aion's internal mTLS: one CA per install, one certificate per service.

A service's identity is the DNS name ``<identity>.aion.internal`` in its
certificate's subject alternative names (and its common name). Clients verify
the server against that name, not the address they dial, so a pod IP or a
Service name both work; servers read the caller's identity from the verified
client certificate. The chart generates the CA (or takes one), the operator
issues the executors' certificates with it, and the local suite makes its own.
"""

from __future__ import annotations

import dataclasses
import datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DOMAIN = "aion.internal"
IDENTITIES = ("gateway", "router", "agent", "knowledge", "executor", "operator")


def dns_name(identity: str) -> str:
    """The SAN a service with ``identity`` carries, and clients check: ``agent.aion.internal``."""
    return f"{identity}.{DOMAIN}"


def identity_of(name: str) -> str | None:
    """``agent`` for ``agent.aion.internal``; None for any name outside the domain."""
    suffix = f".{DOMAIN}"
    if not name.endswith(suffix):
        return None
    head = name[: -len(suffix)]
    return head if head and "." not in head else None


@dataclasses.dataclass(frozen=True)
class KeyPair:
    """A PEM certificate and its PEM private key."""

    cert_pem: bytes
    key_pem: bytes

    def write(self, cert: Path, key: Path) -> None:
        """Write both files, the key readable by its owner only."""
        cert.parent.mkdir(parents=True, exist_ok=True)
        key.parent.mkdir(parents=True, exist_ok=True)
        cert.write_bytes(self.cert_pem)
        key.touch(mode=0o600, exist_ok=True)
        key.write_bytes(self.key_pem)

    @classmethod
    def read(cls, cert: Path, key: Path) -> KeyPair:
        return cls(cert.read_bytes(), key.read_bytes())


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def new_ca(common_name: str = "aion internal CA", *, days: int = 3650) -> KeyPair:
    """A self-signed CA that signs the install's service certificates."""
    key = _key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return KeyPair(cert.public_bytes(serialization.Encoding.PEM), _pem(key))


def issue(ca: KeyPair, identity: str, *, days: int = 365) -> KeyPair:
    """A certificate for ``identity``, signed by ``ca``, usable as both server and client."""
    if identity_of(dns_name(identity)) != identity:
        raise ValueError(f"not a valid identity: {identity!r} (one DNS label, like 'agent')")
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem)
    ca_key = serialization.load_pem_private_key(ca.key_pem, password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise ValueError("the CA key must be an EC or RSA private key")
    key = _key()
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, identity)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(dns_name(identity))]), critical=False
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return KeyPair(cert.public_bytes(serialization.Encoding.PEM), _pem(key))
