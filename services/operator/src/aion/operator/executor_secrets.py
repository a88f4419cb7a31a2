"""The Secrets an Agent's executors read, kept by the operator in each Agent namespace.

- ``aion-executor-tls`` (``ca.crt``, ``tls.crt``, ``tls.key``): the executors'
  identity for internal mTLS (``executor.aion.internal``), issued with the install's
  CA (``AION_OPERATOR_CA_CERT_FILE``/``_KEY_FILE``) and issued again when it comes
  within ``RENEW_BEFORE`` of expiry or the CA changed. Its serial number is also a pod
  annotation of the executor Deployments (``TLS_ANNOTATION``), so a renewal rolls them.
- ``aion-executor-http`` (``token``): the bearer token of the executors' HTTP API,
  random, created once and never changed by the operator.

``needs_renewal`` and the manifests are pure; ``Keeper`` reads and writes the API.
The Secrets are shared by every Agent of a namespace, so no Agent owns them.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import datetime
import logging
import secrets
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightkube
from cryptography import x509
from lightkube import codecs
from lightkube.resources import apps_v1, core_v1

from aion.core import pki
from aion.operator import conventions

log = logging.getLogger(__name__)

IDENTITY = "executor"
CERT_DAYS = 365
RENEW_BEFORE = datetime.timedelta(days=30)
# How long a namespace's Secrets are trusted between reads (one may be deleted by hand).
RECHECK_S = 300.0
LABELS = {
    "app.kubernetes.io/part-of": "aion",
    "app.kubernetes.io/component": "executor",
    "app.kubernetes.io/managed-by": "aion-operator",
}
NOT_FOUND, CONFLICT = 404, 409

Manifest = dict[str, Any]


def load_ca(cert_file: str, key_file: str) -> pki.KeyPair | None:
    """The CA from the operator's settings; None when both are empty."""
    if not cert_file and not key_file:
        return None
    if not (cert_file and key_file):
        raise ValueError(
            "set both AION_OPERATOR_CA_CERT_FILE and AION_OPERATOR_CA_KEY_FILE "
            "(the install CA's certificate and key), or neither"
        )
    ca = pki.KeyPair.read(Path(cert_file), Path(key_file))
    x509.load_pem_x509_certificate(ca.cert_pem)  # a clear error now, not at the first Agent
    return ca


def not_after(cert_pem: bytes) -> datetime.datetime:
    """When a PEM certificate expires (UTC)."""
    return x509.load_pem_x509_certificate(cert_pem).not_valid_after_utc


def serial(cert_pem: bytes) -> str:
    """A PEM certificate's serial number, in hex: what names its version."""
    return format(x509.load_pem_x509_certificate(cert_pem).serial_number, "x")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _data(secret: Mapping[str, Any] | None, key: str) -> bytes | None:
    value = ((secret or {}).get("data") or {}).get(key)
    return base64.b64decode(value) if value else None


def tls_secret(ca: pki.KeyPair, namespace: str, *, days: int = CERT_DAYS) -> Manifest:
    """A fresh ``aion-executor-tls`` for ``namespace``, issued with ``ca``."""
    pair = pki.issue(ca, IDENTITY, days=days)
    expires = not_after(pair.cert_pem)
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/tls",
        "metadata": {
            "name": conventions.TLS_SECRET,
            "namespace": namespace,
            "labels": dict(LABELS),
            "annotations": {conventions.NOT_AFTER: expires.isoformat()},
        },
        "data": {
            "ca.crt": _b64(ca.cert_pem),
            "tls.crt": _b64(pair.cert_pem),
            "tls.key": _b64(pair.key_pem),
        },
    }


def http_secret(namespace: str, *, token: str | None = None) -> Manifest:
    """``aion-executor-http`` for ``namespace``, with a new random token unless given."""
    value = token if token is not None else secrets.token_urlsafe(32)
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            "name": conventions.HTTP_SECRET,
            "namespace": namespace,
            "labels": dict(LABELS),
        },
        "data": {conventions.TOKEN_KEY: _b64(value.encode())},
    }


def needs_renewal(
    secret: Mapping[str, Any] | None,
    ca: pki.KeyPair,
    *,
    now: datetime.datetime,
    renew_before: datetime.timedelta = RENEW_BEFORE,
) -> bool:
    """Whether ``aion-executor-tls`` as read must be issued (again).

    Missing, incomplete, unreadable, from another CA, or within ``renew_before``
    of its expiry.
    """
    cert, key, ca_cert = (_data(secret, k) for k in ("tls.crt", "tls.key", "ca.crt"))
    if cert is None or key is None or ca_cert != ca.cert_pem:
        return True
    try:
        expires = not_after(cert)
    except ValueError:
        return True
    return expires - now <= renew_before


@dataclasses.dataclass
class _Seen:
    at: float  # time.monotonic() of the read
    expires: datetime.datetime | None
    serial: str | None


class Keeper:
    """Keeps both Secrets in each namespace asked for; reads the API at most every ``recheck_s``.

    Without a CA it keeps only the HTTP token, and executors get no certificate.
    """

    def __init__(
        self,
        client: lightkube.AsyncClient,
        ca: pki.KeyPair | None,
        *,
        renew_before: datetime.timedelta = RENEW_BEFORE,
        recheck_s: float = RECHECK_S,
        days: int = CERT_DAYS,
    ) -> None:
        self._client = client
        self.ca = ca
        self._renew_before = renew_before
        self._recheck_s = recheck_s
        self._days = days
        self._seen: dict[str, _Seen] = {}
        # One check of a namespace at a time: a burst of new Agents there waits for it,
        # rather than each reading (and racing to create) the same Secrets.
        self._checking: dict[str, asyncio.Lock] = {}

    @property
    def tls(self) -> bool:
        """Whether executors get a certificate (the operator has the CA)."""
        return self.ca is not None

    def version(self, namespace: str) -> str | None:
        """The serial of the namespace's executor certificate as last kept; None before."""
        seen = self._seen.get(namespace)
        return seen.serial if seen else None

    async def ensure(self, namespace: str) -> str | None:
        """Create or renew the namespace's Secrets as needed; the certificate's ``version``."""
        if self._fresh(namespace):
            return self.version(namespace)
        async with self._checking.setdefault(namespace, asyncio.Lock()):
            if self._fresh(namespace):  # checked while this call waited
                return self.version(namespace)
            now = datetime.datetime.now(datetime.UTC)
            cert = await self._ensure_tls(namespace, now=now) if self.ca is not None else None
            await self._ensure_http(namespace)
            self._seen[namespace] = _Seen(
                at=time.monotonic(),
                expires=None if cert is None else not_after(cert),
                serial=None if cert is None else serial(cert),
            )
        return self.version(namespace)

    def _fresh(self, namespace: str) -> bool:
        """Whether the namespace's Secrets were checked lately and are not due for renewal."""
        seen = self._seen.get(namespace)
        return (
            seen is not None
            and time.monotonic() - seen.at < self._recheck_s
            and (
                seen.expires is None
                or seen.expires - datetime.datetime.now(datetime.UTC) > self._renew_before
            )
        )

    async def _get(self, name: str, namespace: str) -> Manifest | None:
        try:
            found = await self._client.get(core_v1.Secret, name, namespace=namespace)
        except lightkube.ApiError as exc:
            if exc.status.code == NOT_FOUND:
                return None
            raise
        return found.to_dict()

    async def _ensure_tls(self, namespace: str, *, now: datetime.datetime) -> bytes:
        """The namespace's executor certificate (PEM), issued or renewed when due."""
        assert self.ca is not None
        current = await self._get(conventions.TLS_SECRET, namespace)
        if not needs_renewal(current, self.ca, now=now, renew_before=self._renew_before):
            cert = _data(current, "tls.crt")
            assert cert is not None
            return cert
        fresh = tls_secret(self.ca, namespace, days=self._days)
        try:
            if current is None:
                await self._client.create(codecs.from_dict(fresh))
                log.info(
                    "created Secret %s/%s (executor certificate)", namespace, conventions.TLS_SECRET
                )
            else:
                # Optimistic: another replica renewing at the same moment gets a conflict.
                fresh["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
                await self._client.replace(codecs.from_dict(fresh))
                log.info(
                    "renewed Secret %s/%s (executor certificate)", namespace, conventions.TLS_SECRET
                )
        except lightkube.ApiError as exc:
            if exc.status.code != CONFLICT:
                raise
            current = await self._get(conventions.TLS_SECRET, namespace)
            cert = _data(current, "tls.crt")
            if cert is None:
                raise
            return cert
        return base64.b64decode(fresh["data"]["tls.crt"])

    async def _ensure_http(self, namespace: str) -> None:
        if await self._get(conventions.HTTP_SECRET, namespace) is not None:
            return
        try:
            await self._client.create(codecs.from_dict(http_secret(namespace)))
            log.info(
                "created Secret %s/%s (executor HTTP token)", namespace, conventions.HTTP_SECRET
            )
        except lightkube.ApiError as exc:
            if exc.status.code != CONFLICT:  # another replica created it first
                raise

    async def roll(self, deployment: Mapping[str, Any] | None, namespace: str) -> bool:
        """Roll an executor Deployment whose pods carry an older certificate; True if rolled."""
        version = self.version(namespace)
        if deployment is None or version is None:
            return False
        meta = deployment["metadata"]
        annotations = (
            (deployment.get("spec") or {}).get("template", {}).get("metadata") or {}
        ).get("annotations") or {}
        if annotations.get(conventions.TLS_ANNOTATION) in (None, version):
            return False
        patch = {
            "spec": {
                "template": {"metadata": {"annotations": {conventions.TLS_ANNOTATION: version}}}
            }
        }
        await self._client.patch(apps_v1.Deployment, meta["name"], patch, namespace=namespace)
        log.info(
            "rolling Deployment %s/%s onto the renewed executor certificate",
            namespace,
            meta["name"],
        )
        return True
