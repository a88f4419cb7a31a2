"""The executors' Secrets: created once per namespace, reused, renewed near expiry."""

from __future__ import annotations

import asyncio
import base64
import datetime
from typing import Any

import httpx2
import lightkube
import pytest
from cryptography import x509

from aion.core import pki
from aion.operator import conventions
from aion.operator import executor_secrets as es

NOW = datetime.datetime.now(datetime.UTC)


def _error(code: int) -> lightkube.ApiError:
    response = httpx2.Response(
        code,
        json={
            "kind": "Status",
            "apiVersion": "v1",
            "code": code,
            "status": "Failure",
            "message": f"code {code}",
        },
        request=httpx2.Request("GET", "https://kube.test"),
    )
    return lightkube.ApiError(response=response)


class FakeApi:
    """The few Secret and Deployment calls the keeper makes, on dicts."""

    def __init__(self) -> None:
        self.secrets: dict[tuple[str, str], dict[str, Any]] = {}
        self.calls: list[str] = []
        self.patches: list[tuple[str, dict[str, Any]]] = []
        self._version = 0

    async def get(self, _kind: Any, name: str, *, namespace: str) -> Any:
        self.calls.append(f"get {name}")
        found = self.secrets.get((namespace, name))
        if found is None:
            raise _error(404)
        return _Obj(found)

    def _store(self, obj: Any) -> None:
        self._version += 1
        data = obj.to_dict()
        data["metadata"]["resourceVersion"] = str(self._version)
        self.secrets[(data["metadata"]["namespace"], data["metadata"]["name"])] = data

    async def create(self, obj: Any) -> None:
        meta = obj.metadata
        self.calls.append(f"create {meta.name}")
        if (meta.namespace, meta.name) in self.secrets:
            raise _error(409)
        self._store(obj)

    async def replace(self, obj: Any) -> None:
        meta = obj.metadata
        self.calls.append(f"replace {meta.name}")
        current = self.secrets[(meta.namespace, meta.name)]
        if current["metadata"]["resourceVersion"] != meta.resourceVersion:
            raise _error(409)
        self._store(obj)

    async def patch(self, _kind: Any, name: str, patch: dict[str, Any], *, namespace: str) -> None:
        self.patches.append((name, patch))


class _Obj:
    def __init__(self, data: dict[str, Any]) -> None:
        self._data = data

    def to_dict(self) -> dict[str, Any]:
        return self._data


@pytest.fixture(scope="module")
def ca() -> pki.KeyPair:
    return pki.new_ca()


def _cert(secret: dict[str, Any]) -> x509.Certificate:
    return x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["tls.crt"]))


async def test_both_secrets_are_created_once_and_then_reused(ca: pki.KeyPair) -> None:
    api = FakeApi()
    keeper = es.Keeper(api, ca, recheck_s=0)  # type: ignore[arg-type]
    version = await keeper.ensure("team-a")
    tls = api.secrets[("team-a", "aion-executor-tls")]
    http = api.secrets[("team-a", "aion-executor-http")]
    cert = _cert(tls)
    cert.verify_directly_issued_by(x509.load_pem_x509_certificate(ca.cert_pem))
    assert cert.extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    ).value.get_values_for_type(x509.DNSName) == ["executor.aion.internal"]
    assert base64.b64decode(tls["data"]["ca.crt"]) == ca.cert_pem
    assert tls["type"] == "kubernetes.io/tls"
    assert version == format(cert.serial_number, "x")
    token = base64.b64decode(http["data"]["token"])
    assert len(token) >= 32

    before = {k: dict(v["data"]) for k, v in api.secrets.items()}
    api.calls.clear()
    assert await keeper.ensure("team-a") == version
    assert {k: v["data"] for k, v in api.secrets.items()} == before  # nothing re-issued
    assert not [c for c in api.calls if not c.startswith("get")]
    # Another namespace gets its own pair and its own token.
    await keeper.ensure("team-b")
    assert api.secrets[("team-b", "aion-executor-http")]["data"] != http["data"]


class _YieldingApi(FakeApi):
    """Each read gives the event loop a turn, as a real request does."""

    async def get(self, kind: Any, name: str, *, namespace: str) -> Any:
        await asyncio.sleep(0)
        return await super().get(kind, name, namespace=namespace)


async def test_a_burst_of_agents_in_a_namespace_checks_its_secrets_once(
    ca: pki.KeyPair,
) -> None:
    api = _YieldingApi()
    keeper = es.Keeper(api, ca)  # type: ignore[arg-type]
    versions = await asyncio.gather(*(keeper.ensure("team-a") for _ in range(50)))
    assert len(set(versions)) == 1
    assert sorted(api.calls) == sorted(
        [
            "get aion-executor-tls",
            "create aion-executor-tls",
            "get aion-executor-http",
            "create aion-executor-http",
        ]
    )


async def test_within_the_renewal_window_the_certificate_is_issued_again(ca: pki.KeyPair) -> None:
    api = FakeApi()
    await es.Keeper(api, ca, days=20).ensure("team-a")  # type: ignore[arg-type]
    old = _cert(api.secrets[("team-a", "aion-executor-tls")])
    token = api.secrets[("team-a", "aion-executor-http")]["data"]
    keeper = es.Keeper(api, ca)  # type: ignore[arg-type]  # renews 30 days before
    version = await keeper.ensure("team-a")
    new = _cert(api.secrets[("team-a", "aion-executor-tls")])
    assert new.serial_number != old.serial_number
    assert new.not_valid_after_utc > old.not_valid_after_utc
    assert version == format(new.serial_number, "x")
    assert "replace aion-executor-tls" in api.calls
    assert api.secrets[("team-a", "aion-executor-http")]["data"] == token  # never changed


def test_needs_renewal(ca: pki.KeyPair) -> None:
    fresh = es.tls_secret(ca, "ns")
    assert not es.needs_renewal(fresh, ca, now=NOW)
    assert es.needs_renewal(None, ca, now=NOW)
    assert es.needs_renewal({"data": {"tls.crt": fresh["data"]["tls.crt"]}}, ca, now=NOW)
    assert es.needs_renewal(fresh, pki.new_ca(), now=NOW)  # another CA
    assert es.needs_renewal(fresh, ca, now=NOW + datetime.timedelta(days=336))
    broken = {"data": {**fresh["data"], "tls.crt": base64.b64encode(b"junk").decode()}}
    assert es.needs_renewal(broken, ca, now=NOW)


async def test_a_deleted_secret_comes_back_after_the_recheck(ca: pki.KeyPair) -> None:
    api = FakeApi()
    keeper = es.Keeper(api, ca, recheck_s=3600)  # type: ignore[arg-type]
    await keeper.ensure("team-a")
    del api.secrets[("team-a", "aion-executor-http")]
    await keeper.ensure("team-a")  # trusted until the recheck
    assert ("team-a", "aion-executor-http") not in api.secrets
    keeper._recheck_s = 0
    await keeper.ensure("team-a")
    assert ("team-a", "aion-executor-http") in api.secrets


async def test_a_replica_that_loses_the_race_keeps_the_winners_secrets(ca: pki.KeyPair) -> None:
    api = FakeApi()
    first, second = (es.Keeper(api, ca) for _ in range(2))  # type: ignore[arg-type]
    await first.ensure("team-a")
    token = api.secrets[("team-a", "aion-executor-http")]["data"]
    real_get = api.get

    async def stale_get(kind: Any, name: str, *, namespace: str) -> Any:
        if name == conventions.HTTP_SECRET:
            raise _error(404)  # as if read before the other replica's create landed
        return await real_get(kind, name, namespace=namespace)

    api.get = stale_get  # type: ignore[method-assign,assignment]
    await second.ensure("team-a")
    assert api.secrets[("team-a", "aion-executor-http")]["data"] == token


async def test_a_deployment_on_an_older_certificate_is_rolled(ca: pki.KeyPair) -> None:
    api = FakeApi()
    keeper = es.Keeper(api, ca)  # type: ignore[arg-type]
    version = await keeper.ensure("team-a")

    def deployment(annotation: str | None) -> dict[str, Any]:
        annotations = {} if annotation is None else {conventions.TLS_ANNOTATION: annotation}
        return {
            "metadata": {"name": "aion-executor-chat"},
            "spec": {"template": {"metadata": {"annotations": annotations}}},
        }

    assert not await keeper.roll(deployment(version), "team-a")
    assert not await keeper.roll(None, "team-a")
    assert await keeper.roll(deployment("2020-01-01T00:00:00+00:00"), "team-a")
    assert api.patches == [
        (
            "aion-executor-chat",
            {
                "spec": {
                    "template": {"metadata": {"annotations": {conventions.TLS_ANNOTATION: version}}}
                }
            },
        )
    ]


async def test_without_a_ca_only_the_token_is_kept() -> None:
    api = FakeApi()
    keeper = es.Keeper(api, None)  # type: ignore[arg-type]
    assert await keeper.ensure("team-a") is None
    assert set(api.secrets) == {("team-a", "aion-executor-http")}


def test_load_ca_wants_both_files_or_neither(tmp_path: Any, ca: pki.KeyPair) -> None:
    assert es.load_ca("", "") is None
    with pytest.raises(ValueError, match="AION_OPERATOR_CA_KEY_FILE"):
        es.load_ca(str(tmp_path / "ca.crt"), "")
    ca.write(tmp_path / "ca.crt", tmp_path / "ca.key")
    assert es.load_ca(str(tmp_path / "ca.crt"), str(tmp_path / "ca.key")) == ca
