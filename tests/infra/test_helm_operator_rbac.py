"""The operator's RBAC as the chart renders it: with watchNamespaces set, its writes are
Roles in those namespaces only; cluster-wide it keeps reads (and GpuPool status).
The same RBAC is installed and exercised on the cluster by the operator's cluster tests
(test_the_operator_runs_under_the_charts_rbac_confined_to_its_namespaces)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from aion.infra.paths import REPO

pytestmark = pytest.mark.helm

CHART = REPO / "charts" / "aion"
WRITES = {"create", "update", "patch", "delete"}
Doc = dict[str, Any]


def _template(
    helm: Path,
    home: Path,
    *args: str,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "HELM_CONFIG_HOME": str(home / "c"),
        "HELM_CACHE_HOME": str(home / "k"),
        "HELM_DATA_HOME": str(home / "d"),
    }
    env.pop("KUBECONFIG", None)
    return subprocess.run(
        [str(helm), "template", "aion", str(CHART), "--namespace", "aion", *args],
        capture_output=True,
        text=True,
        check=check,
        timeout=120,
        env=env,
    )


def _docs(helm: Path, home: Path, *args: str) -> list[Doc]:
    return [d for d in yaml.safe_load_all(_template(helm, home, *args).stdout) if d]


def _rbac(docs: list[Doc], kind: str) -> list[Doc]:
    return [
        d
        for d in docs
        if d["kind"] == kind
        and d["metadata"]["labels"].get("app.kubernetes.io/component") == "operator"
    ]


def _writes(role: Doc) -> set[tuple[str, str]]:
    return {
        (group, resource)
        for rule in role["rules"]
        if WRITES & set(rule["verbs"])
        for group in rule["apiGroups"]
        for resource in rule["resources"]
    }


def test_watched_namespaces_get_the_writes_and_the_cluster_role_keeps_reads(
    helm: Path, tmp_path: Path
) -> None:
    docs = _docs(helm, tmp_path, "--set-json", 'operator.watchNamespaces=["team-a","team-b"]')
    [cluster_role] = _rbac(docs, "ClusterRole")
    # Only the GpuPools' status is written cluster-wide; no Deployments, Services, Agents.
    assert _writes(cluster_role) == {("aion.dev", "gpupools/status")}
    reads = {r for rule in cluster_role["rules"] for r in rule["resources"]}
    assert {"nodes", "pods", "gpupools", "customresourcedefinitions", "namespaces"} <= reads
    roles = {
        r["metadata"]["namespace"]: r
        for r in _rbac(docs, "Role")
        if r["metadata"]["name"] == cluster_role["metadata"]["name"]
    }
    assert set(roles) == {"team-a", "team-b"}
    for role in roles.values():
        assert {
            ("apps", "deployments"),
            ("", "services"),
            ("aion.dev", "agents"),
            ("aion.dev", "agents/status"),
            ("", "events"),
        } <= _writes(role)
    bindings = {
        b["metadata"]["namespace"]: b
        for b in _rbac(docs, "RoleBinding")
        if b["roleRef"]["kind"] == "Role"
        and b["roleRef"]["name"] == cluster_role["metadata"]["name"]
    }
    assert set(bindings) == {"team-a", "team-b"}
    for binding in bindings.values():
        assert binding["subjects"] == [
            {
                "kind": "ServiceAccount",
                "name": cluster_role["metadata"]["name"],
                "namespace": "aion",
            }
        ]
    # The uninstall hook still deletes the release's own Agents in its unwatched namespace.
    [leases] = [r for r in _rbac(docs, "Role") if r["metadata"]["namespace"] == "aion"]
    assert ("aion.dev", "agents") in _writes(leases)


def test_watching_every_namespace_keeps_one_cluster_role(helm: Path, tmp_path: Path) -> None:
    docs = _docs(helm, tmp_path)
    [cluster_role] = _rbac(docs, "ClusterRole")
    assert {("apps", "deployments"), ("", "services"), ("aion.dev", "agents")} <= _writes(
        cluster_role
    )
    assert [r["metadata"]["name"] for r in _rbac(docs, "Role")] == ["aion-operator-leases"]


def test_the_tenant_map_reaches_the_operator(helm: Path, tmp_path: Path) -> None:
    tenants = {"team-a": "acme", "team-b": "acme"}
    docs = _docs(helm, tmp_path, "--set-json", f"operator.tenants={json.dumps(tenants)}")
    [operator] = [
        d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "aion-operator"
    ]
    env = {
        e["name"]: e.get("value")
        for e in operator["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert json.loads(env["AION_OPERATOR_TENANTS"]) == tenants
    unset = [
        d
        for d in _docs(helm, tmp_path)
        if d["kind"] == "Deployment" and d["metadata"]["name"] == "aion-operator"
    ]
    assert "AION_OPERATOR_TENANTS" not in {
        e["name"] for e in unset[0]["spec"]["template"]["spec"]["containers"][0]["env"]
    }


@pytest.mark.parametrize(
    ("tenants", "named"),
    [
        ('{"team-a": ""}', "/operator/tenants/team-a"),
        ('{"team-a": 1}', "/operator/tenants/team-a"),
        # Helm reports a bad property name at a wrong path, but names the key.
        ('{"Team A": "acme"}', "'Team A'"),
    ],
)
def test_a_bad_tenant_map_is_refused_naming_the_entry(
    helm: Path, tmp_path: Path, tenants: str, named: str
) -> None:
    proc = _template(helm, tmp_path, "--set-json", f"operator.tenants={tenants}", check=False)
    assert proc.returncode != 0
    assert named in proc.stderr, proc.stderr
