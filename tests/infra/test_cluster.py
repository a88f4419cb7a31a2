"""The local control plane: kwok GPU pools, real nodes, and the real scheduler placing pods."""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from aion.infra.cluster import POOLS_FILE, Cluster
from aion.infra.component import poll

pytestmark = pytest.mark.cluster

POOL_LABEL = "cloud.google.com/gke-nodepool"


def _json(cluster: Cluster, *args: str) -> Any:
    return json.loads(cluster.kubectl(*args, "-o", "json"))


@pytest.fixture
def namespace(cluster: Cluster) -> Iterator[str]:
    name = f"smoke-{uuid.uuid4().hex[:8]}"
    cluster.create_namespace(name)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false")


def test_node_pools_match_pools_yaml(cluster: Cluster) -> None:
    doc = yaml.safe_load(POOLS_FILE.read_text())
    pools = doc["pools"] + doc["realPools"]
    nodes = _json(cluster, "get", "nodes")["items"]
    by_pool: dict[str, list[dict[str, Any]]] = {}
    for node in nodes:
        by_pool.setdefault(node["metadata"]["labels"].get(POOL_LABEL, ""), []).append(node)
    assert {p["name"]: p["nodes"] for p in pools} == {k: len(v) for k, v in by_pool.items() if k}
    # kwok plays the kubelet of the kwok pools' nodes only.
    for pool in doc["pools"]:
        assert all(n["metadata"]["labels"]["type"] == "kwok" for n in by_pool[pool["name"]])
    for pool in doc["realPools"]:
        assert all(n["metadata"]["labels"]["type"] == "real" for n in by_pool[pool["name"]])
    for node in by_pool["h100"]:
        assert node["status"]["allocatable"]["nvidia.com/gpu"] == "8"
        assert node["metadata"]["labels"]["nvidia.com/gpu.product"] == "NVIDIA-H100-80GB-HBM3"
        assert {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"} in node[
            "spec"
        ]["taints"]
    for node in by_pool["l4"]:
        assert node["status"]["allocatable"]["nvidia.com/gpu"] == "1"
        assert node["metadata"]["labels"]["nvidia.com/gpu.product"] == "NVIDIA-L4"
    for node in by_pool["system"]:
        assert "nvidia.com/gpu" not in node["status"]["allocatable"]
        assert not node["spec"].get("taints")
    # kwok keeps every node Ready.
    for node in nodes:
        ready = [c for c in node["status"]["conditions"] if c["type"] == "Ready"]
        assert ready, node["metadata"]["name"]
        assert ready[0]["status"] == "True", node["metadata"]["name"]


def _gpu_pod_spec(gpus: int) -> dict[str, Any]:
    return {
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "containers": [
            {
                "name": "executor",
                "image": "ghcr.io/aion/executor:dev",
                "resources": {"limits": {"nvidia.com/gpu": str(gpus)}},
            }
        ],
    }


def test_gpu_deployment_runs_on_a_gpu_pool_chosen_by_the_scheduler(
    cluster: Cluster, namespace: str
) -> None:
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "gpu-smoke", "namespace": namespace},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "gpu-smoke"}},
            "template": {"metadata": {"labels": {"app": "gpu-smoke"}}, "spec": _gpu_pod_spec(1)},
        },
    }
    cluster.kubectl("apply", "-f", "-", stdin=json.dumps(deployment))
    pods = poll(
        lambda: _json(cluster, "get", "pods", "-n", namespace, "-l", "app=gpu-smoke")["items"],
        lambda items: len(items) == 1 and items[0]["status"].get("phase") == "Running",
    )
    assert len(pods) == 1, pods
    assert pods[0]["status"]["phase"] == "Running", pods
    node_name = pods[0]["spec"]["nodeName"]
    node = _json(cluster, "get", "node", node_name)
    assert node["metadata"]["labels"][POOL_LABEL] in {"h100", "l4"}
    events = _json(
        cluster,
        "get",
        "events",
        "-n",
        namespace,
        "--field-selector",
        f"involvedObject.name={pods[0]['metadata']['name']},reason=Scheduled",
    )
    assert any(
        e.get("reportingComponent") == "default-scheduler"
        or e["source"].get("component") == "default-scheduler"
        for e in events["items"]
    ), events
    dep = poll(
        lambda: _json(cluster, "get", "deployment", "gpu-smoke", "-n", namespace),
        lambda d: d["status"].get("readyReplicas") == 1,
    )
    assert dep["status"].get("readyReplicas") == 1


def test_pod_asking_more_gpus_than_any_node_stays_unschedulable(
    cluster: Cluster, namespace: str
) -> None:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "too-big", "namespace": namespace},
        "spec": _gpu_pod_spec(9),
    }
    cluster.kubectl("apply", "-f", "-", stdin=json.dumps(pod))

    def condition(p: dict[str, Any]) -> dict[str, Any] | None:
        found: list[dict[str, Any]] = [
            c for c in p["status"].get("conditions", []) if c["type"] == "PodScheduled"
        ]
        return found[0] if found else None

    got = poll(
        lambda: _json(cluster, "get", "pod", "too-big", "-n", namespace),
        lambda p: condition(p) is not None,
    )
    cond = condition(got)
    assert got["status"]["phase"] == "Pending"
    assert cond is not None, got
    assert cond["status"] == "False", cond
    assert cond["reason"] == "Unschedulable", cond
    assert "nvidia.com/gpu" in cond["message"]
    assert not got["spec"].get("nodeName")


def test_second_up_reuses_the_running_cluster(cluster: Cluster) -> None:
    pids = [d.pid() for d in cluster.daemons()]
    assert all(pids)
    cluster.up()
    assert [d.pid() for d in cluster.daemons()] == pids


def test_kubectl_errors_surface(cluster: Cluster) -> None:
    with pytest.raises(subprocess.CalledProcessError) as info:
        cluster.kubectl("get", "node", "no-such-node")
    assert "not found" in info.value.stderr
