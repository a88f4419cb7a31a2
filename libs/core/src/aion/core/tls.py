"""Internal mTLS material: the install's CA, this process's certificate and key.

Every process that serves or calls internal gRPC (router, agent, knowledge,
executor, and the gateway and operator as callers) reads three variables:
``AION_TLS_CA_FILE`` (the install CA), ``AION_TLS_CERT_FILE`` and
``AION_TLS_KEY_FILE`` (its own certificate and key, from ``aion.core.pki``).
There is no plaintext mode for internal calls: ``load`` refuses to start a
process without them. ``main`` builds a ``Tls`` from the environment and hands
it to the servers and channels it opens, so a test process can run services
with different identities side by side (``for_identity``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import grpc
import pydantic
import pydantic_settings
from cryptography import x509
from cryptography.x509.oid import NameOID

from aion.core import pki, settings

VARIABLES = ("AION_TLS_CA_FILE", "AION_TLS_CERT_FILE", "AION_TLS_KEY_FILE")


class TlsSettings(pydantic_settings.BaseSettings):
    """Where the install CA and this process's certificate and key are (PEM files)."""

    model_config = pydantic_settings.SettingsConfigDict(
        env_prefix="AION_TLS_", extra="ignore", frozen=True
    )

    ca_file: Path | None = pydantic.Field(
        default=None, description="the install CA certificate that signs every service's"
    )
    cert_file: Path | None = pydantic.Field(
        default=None, description="this process's certificate (SAN <identity>.aion.internal)"
    )
    key_file: Path | None = pydantic.Field(default=None, description="its private key")


def identity_of_certificate(cert_pem: bytes) -> str | None:
    """The aion identity a certificate names: its ``<identity>.aion.internal`` SAN, else its CN."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        san = None
    if san is not None:
        for name in san.get_values_for_type(x509.DNSName):
            identity = pki.identity_of(name)
            if identity is not None:
                return identity
        return None
    for attr in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME):
        value = attr.value if isinstance(attr.value, str) else attr.value.decode()
        if pki.identity_of(pki.dns_name(value)) == value:
            return value
    return None


@dataclasses.dataclass(frozen=True)
class Tls:
    """The CA to trust and the certificate to present, as one service identity."""

    ca_pem: bytes
    pair: pki.KeyPair
    identity: str

    @classmethod
    def of(cls, ca_pem: bytes, pair: pki.KeyPair) -> Tls:
        """``pair`` as its certificate's identity; ValueError if it names none."""
        identity = identity_of_certificate(pair.cert_pem)
        if identity is None:
            raise ValueError(
                f"the certificate names no aion identity (no SAN <identity>.{pki.DOMAIN})"
            )
        return cls(ca_pem=ca_pem, pair=pair, identity=identity)

    @classmethod
    def for_identity(cls, ca: pki.KeyPair, identity: str) -> Tls:
        """A fresh certificate for ``identity`` from ``ca`` (tests and the local suite)."""
        return cls(ca_pem=ca.cert_pem, pair=pki.issue(ca, identity), identity=identity)

    @classmethod
    def from_settings(cls, cfg: TlsSettings) -> Tls:
        """Read the three files; a missing variable or unreadable file exits naming it."""
        files = {
            "AION_TLS_CA_FILE": cfg.ca_file,
            "AION_TLS_CERT_FILE": cfg.cert_file,
            "AION_TLS_KEY_FILE": cfg.key_file,
        }
        missing = [name for name, path in files.items() if path is None]
        if missing:
            raise settings.SettingsError(
                "internal gRPC runs over mTLS only: set "
                + ", ".join(VARIABLES)
                + f" (missing: {', '.join(missing)}); in the chart they are mounted at "
                "/etc/aion/tls, locally `make dev` (python -m aion.infra.devstack) makes them"
            )
        pems: dict[str, bytes] = {}
        for name, path in files.items():
            assert path is not None
            try:
                pems[name] = path.read_bytes()
            except OSError as exc:
                raise settings.SettingsError(
                    f"{name}={path}: cannot read it ({exc.strerror})"
                ) from None
        try:
            return cls.of(
                pems["AION_TLS_CA_FILE"],
                pki.KeyPair(pems["AION_TLS_CERT_FILE"], pems["AION_TLS_KEY_FILE"]),
            )
        except ValueError as exc:
            raise settings.SettingsError(f"AION_TLS_CERT_FILE={cfg.cert_file}: {exc}") from None

    def server_credentials(self) -> grpc.ServerCredentials:
        """Serve this identity; callers must present a certificate signed by the CA."""
        return grpc.ssl_server_credentials(
            [(self.pair.key_pem, self.pair.cert_pem)],
            root_certificates=self.ca_pem,
            require_client_auth=True,
        )

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """Call as this identity, trusting only servers the CA signed."""
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca_pem,
            private_key=self.pair.key_pem,
            certificate_chain=self.pair.cert_pem,
        )

    def channel_options(self, peer: str) -> list[tuple[str, str]]:
        """Check the server's certificate against ``peer``'s identity, not the address."""
        return [("grpc.ssl_target_name_override", pki.dns_name(peer))]


def load() -> Tls:
    """This process's TLS material from ``AION_TLS_*``; exits naming the variables if absent."""
    return Tls.from_settings(settings.load(TlsSettings))


class LocalCa:
    """One CA and one certificate per identity, for the local suite and tests.

    ``env`` writes an identity's files under ``directory`` and returns the
    ``AION_TLS_*`` variables that point at them.
    """

    def __init__(self, ca: pki.KeyPair | None = None) -> None:
        self.ca = ca if ca is not None else pki.new_ca("aion local CA")
        self._issued: dict[str, Tls] = {}

    def tls(self, identity: str) -> Tls:
        """``identity``'s material (issued once)."""
        if identity not in self._issued:
            self._issued[identity] = Tls.for_identity(self.ca, identity)
        return self._issued[identity]

    def env(self, directory: Path, identity: str) -> dict[str, str]:
        """Write the CA and ``identity``'s certificate and key under ``directory``; the
        variables a process reads them from."""
        material = self.tls(identity)
        directory.mkdir(parents=True, exist_ok=True)
        ca_file = directory / "ca.crt"
        ca_file.write_bytes(self.ca.cert_pem)
        cert, key = directory / f"{identity}.crt", directory / f"{identity}.key"
        material.pair.write(cert, key)
        return {
            "AION_TLS_CA_FILE": str(ca_file),
            "AION_TLS_CERT_FILE": str(cert),
            "AION_TLS_KEY_FILE": str(key),
        }
