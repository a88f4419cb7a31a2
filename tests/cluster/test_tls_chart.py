"""Internal mTLS on the real cluster: what `helm upgrade` keeps, and who the agent service refuses.

- The chart's CA and the components' certificates are looked up by every upgrade
  and kept (nothing rotates, no pod rolls); a component certificate near its expiry
  is issued again from the same CA. A release of its own, with no pods (`lookup`
  needs a real API server, which `helm template` never has).
- `tls.existingCASecret`: the components' certificates come from your CA; a missing
  Secret stops the install with a message naming it.

That a pod without the install's certificate is refused by the agent service is in
test_helm_install.py, which has the full release.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from aion.core import pki
from aion.infra.cluster import Cluster
from aion.infra.release import CHART, Release

pytestmark = [pytest.mark.cluster, pytest.mark.helm, pytest.mark.timeout(1800)]

LIGHT = "aion-tls"  # release and namespace of the pod-less release
COMPONENTS = ("gateway", "router", "agent", "knowledge")
# Nothing runs: every replica count at zero, no operator, no embedding Agent.
NO_PODS = [
    "--set",
    "gateway.replicas=0",
    "--set",
    "router.replicas=0",
    "--set",
    "agent.replicas=0",
    "--set",
    "knowledge.replicas=0",
    "--set",
    "operator.enabled=false",
    "--set",
    "knowledge.embeddingAgent.enabled=false",
    "--set",
    "knowledge.executorTarget=embedder.invalid:50055",
    "--set",
    "knowledge.persistence.enabled=false",
]


class Light:
    """helm and kubectl for the pod-less release ``LIGHT`` in namespace ``LIGHT``."""

    def __init__(self, rel: Release) -> None:
        self.rel = rel

    def helm(self, verb: str, *flags: str) -> Any:
        return self.rel.helm(verb, LIGHT, str(CHART), "-n", LIGHT, *NO_PODS, *flags, timeout=300)

    def secrets(self) -> dict[str, dict[str, Any]]:
        items = self.rel.json("get", "secrets", "-n", LIGHT)["items"]
        return {s["metadata"]["name"]: s for s in items}


def _pem(secret: dict[str, Any], key: str) -> bytes:
    return base64.b64decode(secret["data"][key])


def _cert(secret: dict[str, Any]) -> x509.Certificate:
    return x509.load_pem_x509_certificate(_pem(secret, "tls.crt"))


@pytest.fixture(scope="module")
def light(
    cluster: Cluster, helm: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Light]:
    rel = Release(cluster, helm, tmp_path_factory.mktemp("helm-home"))
    out = Light(rel)

    def clean() -> None:
        rel.helm("uninstall", LIGHT, "-n", LIGHT, "--wait", "--ignore-not-found")
        rel.kubectl(
            "delete",
            "namespace",
            LIGHT,
            "--ignore-not-found",
            "--wait=true",
            check=False,
            timeout=180,
        )

    clean()
    rel.kubectl("create", "namespace", LIGHT)
    yield out
    clean()


def test_helm_upgrade_keeps_the_ca_and_the_certificates(light: Light) -> None:
    done = light.helm("install")
    assert done.returncode == 0, done.stderr
    first = light.secrets()
    ca = _cert(first[f"{LIGHT}-tls-ca"])
    for component in COMPONENTS:
        cert = _cert(first[f"{LIGHT}-{component}-tls"])
        cert.verify_directly_issued_by(ca)
    deployments = {
        d["metadata"]["name"]: d["spec"]["template"]["metadata"]["annotations"]["checksum/tls"]
        for d in light.rel.json("get", "deployments", "-n", LIGHT)["items"]
    }

    # The API server took the NetworkPolicies (it validates them); one per component.
    policies = light.rel.json("get", "networkpolicies", "-n", LIGHT)["items"]
    assert {p["metadata"]["name"] for p in policies} == {f"{LIGHT}-{c}" for c in COMPONENTS}

    done = light.helm("upgrade", "--set", "logLevel=DEBUG")
    assert done.returncode == 0, done.stderr
    second = light.secrets()
    for name in [f"{LIGHT}-tls-ca", *(f"{LIGHT}-{c}-tls" for c in COMPONENTS)]:
        assert second[name]["data"] == first[name]["data"], f"{name} changed on upgrade"
    after = {
        d["metadata"]["name"]: d["spec"]["template"]["metadata"]["annotations"]["checksum/tls"]
        for d in light.rel.json("get", "deployments", "-n", LIGHT)["items"]
    }
    assert after == deployments  # no pod rolls for its certificate

    # Every certificate within the renewal window: issued again, by the same CA.
    done = light.helm("upgrade", "--set", "tls.renewBeforeDays=400")
    assert done.returncode == 0, done.stderr
    third = light.secrets()
    assert third[f"{LIGHT}-tls-ca"]["data"] == first[f"{LIGHT}-tls-ca"]["data"]
    for component in COMPONENTS:
        old, new = (_cert(s[f"{LIGHT}-{component}-tls"]) for s in (first, third))
        assert new.serial_number != old.serial_number, component
        new.verify_directly_issued_by(ca)


def test_an_existing_ca_signs_the_certificates_and_a_missing_one_is_named(light: Light) -> None:
    light.rel.helm("uninstall", LIGHT, "-n", LIGHT, "--wait", "--ignore-not-found")
    missing = light.helm("install", "--set", "tls.existingCASecret=corp-ca")
    assert missing.returncode != 0
    assert 'tls.existingCASecret: Secret "corp-ca" in namespace "aion-tls" must exist' in (
        missing.stderr
    )
    ca = pki.new_ca("corp CA")
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/tls",
        "metadata": {"name": "corp-ca", "namespace": LIGHT},
        "data": {
            "tls.crt": base64.b64encode(ca.cert_pem).decode(),
            "tls.key": base64.b64encode(ca.key_pem).decode(),
        },
    }
    light.rel.cluster.kubectl("apply", "-f", "-", stdin=json.dumps(secret))
    done = light.helm("install", "--set", "tls.existingCASecret=corp-ca")
    assert done.returncode == 0, done.stderr
    found = light.secrets()
    assert f"{LIGHT}-tls-ca" not in found
    corp = x509.load_pem_x509_certificate(ca.cert_pem)
    for component in COMPONENTS:
        secret_found = found[f"{LIGHT}-{component}-tls"]
        _cert(secret_found).verify_directly_issued_by(corp)
        assert _pem(secret_found, "ca.crt") == ca.cert_pem
