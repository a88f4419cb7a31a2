"""Pools discovered from nodes and pods; their terms from GpuPool objects; the GpuPool CRD."""

from __future__ import annotations

import datetime
import pathlib
from typing import Any

import pytest
import yaml

from aion.operator import pools

ROOT = pathlib.Path(__file__).resolve().parents[3]
CRD = ROOT / "charts" / "aion" / "crds" / "gpupools.aion.dev.yaml"
NOW = datetime.datetime(2025, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)


def _node(
    name: str,
    pool: str | None,
    *,
    label: str = "aion.dev/node-pool",
    gpus: int = 0,
    product: str | None = None,
    memory_mib: int | None = None,
    ready: str = "True",
    unschedulable: bool = False,
) -> dict[str, Any]:
    labels = {"kubernetes.io/hostname": name}
    if pool is not None:
        labels[label] = pool
    if product is not None:
        labels["nvidia.com/gpu.product"] = product
    if memory_mib is not None:
        labels["nvidia.com/gpu.memory"] = str(memory_mib)
    allocatable = {"cpu": "12", "memory": "48Gi"}
    if gpus:
        allocatable["nvidia.com/gpu"] = str(gpus)
    spec: dict[str, Any] = {"unschedulable": True} if unschedulable else {}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": labels},
        "spec": spec,
        "status": {"allocatable": allocatable, "conditions": [{"type": "Ready", "status": ready}]},
    }


def _pod(
    name: str,
    node: str | None,
    *,
    gpus: int = 0,
    phase: str = "Running",
    via: str = "limits",
    init: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": "main",
        "image": "executor",
        "resources": {"limits": {"memory": "1Gi"}, "requests": {"cpu": "1"}},
    }
    if gpus:
        container["resources"][via]["nvidia.com/gpu"] = str(gpus)
    spec: dict[str, Any] = {"containers": [container]}
    if node is not None:
        spec["nodeName"] = node
    if init is not None:
        spec["initContainers"] = init
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "team-a"},
        "spec": spec,
        "status": {"phase": phase},
    }


def _by_name(found: tuple[pools.Pool, ...]) -> dict[str, pools.Pool]:
    return {p.name: p for p in found}


@pytest.mark.parametrize(
    "label",
    [
        "cloud.google.com/gke-nodepool",
        "eks.amazonaws.com/nodegroup",
        "kubernetes.azure.com/agentpool",
        "karpenter.sh/nodepool",
        "aion.dev/node-pool",
    ],
)
def test_each_pool_label_names_a_pool(label: str) -> None:
    [pool] = pools.discover(
        [_node("n-0", "gpu-a", label=label, gpus=4, product="NVIDIA-L4", memory_mib=23034)], []
    )
    assert (pool.name, pool.label, pool.product, pool.gpus) == ("gpu-a", label, "NVIDIA-L4", 4)


def test_the_first_pool_label_in_order_wins() -> None:
    node = _node("n-0", "by-hand", label="aion.dev/node-pool")
    node["metadata"]["labels"] |= {
        "karpenter.sh/nodepool": "karp",
        "eks.amazonaws.com/nodegroup": "eks-ng",
    }
    assert pools.pool_of(node) == ("eks.amazonaws.com/nodegroup", "eks-ng")
    node["metadata"]["labels"]["eks.amazonaws.com/nodegroup"] = ""
    assert pools.pool_of(node) == ("karpenter.sh/nodepool", "karp")


def test_nodes_without_a_pool_label_are_ignored() -> None:
    found = pools.discover([_node("stray", None, gpus=8), _node("a-0", "a")], [])
    assert [p.name for p in found] == ["a"]
    assert found[0].gpus == 0


def test_local_cluster_pools(local_nodes: list[dict[str, Any]]) -> None:
    found = _by_name(pools.discover(local_nodes, []))
    assert list(found) == ["h100", "l4", "system"]
    h100, l4, system = found["h100"], found["l4"], found["system"]
    assert (h100.product, h100.gpu_memory_mib, h100.node_count, h100.gpus) == (
        "NVIDIA-H100-80GB-HBM3",
        81559,
        2,
        16,
    )
    assert (h100.max_node_gpus, h100.free_gpus, h100.max_node_free_gpus) == (8, 16, 8)
    assert (l4.node_count, l4.gpus, l4.max_node_gpus, l4.free_gpus) == (4, 4, 1, 4)
    assert (system.product, system.gpus, system.node_count) == (None, 0, 2)
    assert h100.label == "cloud.google.com/gke-nodepool"
    assert (h100.price, h100.priority, h100.disabled) == (None, 0, False)


def test_free_gpus_subtract_the_pods_bound_to_each_node(local_nodes: list[dict[str, Any]]) -> None:
    pods = [
        _pod("running", "h100-0", gpus=3),
        _pod("bound-pending", "h100-0", gpus=2, phase="Pending", via="requests"),
        _pod("done", "h100-0", gpus=8, phase="Succeeded"),
        _pod("crashed", "h100-1", gpus=8, phase="Failed"),
        _pod("unbound", None, gpus=8, phase="Pending"),
        _pod("cpu-only", "h100-1"),
        _pod("l4-user", "l4-2", gpus=1),
    ]
    found = _by_name(pools.discover(local_nodes, pods))
    h100, l4 = found["h100"], found["l4"]
    assert {n.name: n.free_gpus for n in h100.nodes} == {"h100-0": 3, "h100-1": 8}
    assert (h100.free_gpus, h100.max_node_free_gpus, h100.gpus) == (11, 8, 16)
    assert (l4.free_gpus, l4.max_node_free_gpus) == (3, 1)


def test_requests_win_over_limits_and_limits_count_when_requests_are_absent() -> None:
    pod = _pod("p", "n", gpus=2)  # limits only
    assert pools.pod_gpus(pod) == 2
    pod["spec"]["containers"][0]["resources"]["requests"]["nvidia.com/gpu"] = "1"
    assert pools.pod_gpus(pod) == 1
    pod["spec"]["containers"].append(
        {"name": "second", "resources": {"requests": {"nvidia.com/gpu": 1}}}
    )
    assert pools.pod_gpus(pod) == 2


def test_init_containers_count_as_the_scheduler_counts_them() -> None:
    def gpu(n: int, **extra: Any) -> dict[str, Any]:
        return {"name": f"c{n}", "resources": {"limits": {"nvidia.com/gpu": str(n)}}, **extra}

    # An init container runs alone: the pod holds the larger of it and the app containers.
    assert pools.pod_gpus(_pod("p", "n", gpus=1, init=[gpu(4)])) == 4
    assert pools.pod_gpus(_pod("p", "n", gpus=2, init=[gpu(1)])) == 2
    # A sidecar keeps running next to the app containers and later init containers.
    assert pools.pod_gpus(_pod("p", "n", gpus=2, init=[gpu(1, restartPolicy="Always")])) == 3
    assert (
        pools.pod_gpus(_pod("p", "n", gpus=1, init=[gpu(1, restartPolicy="Always"), gpu(4)])) == 5
    )


def test_a_node_overcommitted_by_bound_pods_has_none_free() -> None:
    [pool] = pools.discover(
        [_node("n", "a", gpus=2)], [_pod("a", "n", gpus=2), _pod("b", "n", gpus=1)]
    )
    assert (pool.free_gpus, pool.gpus) == (0, 2)


def test_only_ready_schedulable_nodes_count() -> None:
    nodes = [
        _node("ok", "a", gpus=8, product="NVIDIA-H100-80GB-HBM3", memory_mib=81559),
        _node("down", "a", gpus=8, ready="False"),
        _node("unknown", "a", gpus=8, ready="Unknown"),
        _node("cordoned", "a", gpus=8, unschedulable=True),
    ]
    no_conditions = _node("new", "a", gpus=8)
    no_conditions["status"].pop("conditions")
    [pool] = pools.discover([*nodes, no_conditions], [_pod("p", "ok", gpus=2)])
    assert (pool.node_count, pool.gpus, pool.free_gpus, pool.max_node_free_gpus) == (1, 8, 6, 6)
    assert [n.name for n in pool.ready] == ["ok"]
    # The pool's shape counts every node: a pod of 8 GPUs fits once a node is back.
    assert pool.max_node_gpus == 8
    [down] = pools.discover([_node("d", "b", gpus=4, ready="False")], [])
    assert (down.node_count, down.gpus, down.free_gpus, down.max_node_free_gpus) == (0, 0, 0, 0)
    assert down.max_node_gpus == 4


def test_a_pool_of_mixed_nodes_keeps_each_nodes_product() -> None:
    [pool] = pools.discover(
        [
            _node("big", "karp", gpus=8, product="NVIDIA-H100-80GB-HBM3", memory_mib=81559),
            _node("small", "karp", gpus=1, product="NVIDIA-L4", memory_mib=23034),
            _node("cpu", "karp"),
        ],
        [],
    )
    assert pool.products == ("NVIDIA-H100-80GB-HBM3", "NVIDIA-L4")
    assert pool.product == "NVIDIA-H100-80GB-HBM3,NVIDIA-L4"
    assert pool.gpu_memory_mib == 23034
    assert [(n.name, n.has_gpus) for n in pool.nodes] == [
        ("big", True),
        ("cpu", False),
        ("small", True),
    ]


@pytest.mark.parametrize(
    ("quantity", "expected"),
    [
        ("8", 8),
        (8, 8),
        ("1k", 1000),
        ("2000m", 2),
        ("1500m", 1),
        ("1e1", 10),
        ("lots", 0),
        ("-2", 0),
        (True, 0),
        (None, 0),
        ("", 0),
    ],
)
def test_gpu_quantities(quantity: object, expected: int) -> None:
    assert pools.count(quantity) == expected


def _gpupool(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "aion.dev/v1alpha1",
        "kind": "GpuPool",
        "metadata": {"name": name},
        "spec": spec,
    }


def test_gpupools_give_prices_and_priorities(local_nodes: list[dict[str, Any]]) -> None:
    terms = pools.configs(
        [
            _gpupool("h100", priceUsdPerGpuHour=4.5, priority=5),
            _gpupool("l4", priceUsdPerGpuHour=0.7, disabled=True),
            _gpupool("gone", priceUsdPerGpuHour=1),
        ]
    )
    assert terms.problems == ()
    found = _by_name(pools.discover(local_nodes, [], configs=terms.by_pool))
    assert list(found) == ["h100", "l4", "system"]  # a GpuPool without nodes adds no pool
    assert (found["h100"].price, found["h100"].priority, found["h100"].disabled) == (4.5, 5, False)
    assert (found["l4"].price, found["l4"].priority, found["l4"].disabled) == (0.7, 0, True)
    assert (found["system"].price, found["system"].priority) == (None, 0)


def test_an_invalid_gpupool_is_left_out_and_named() -> None:
    terms = pools.configs(
        [
            _gpupool("h100", priceUsdPerGpuHour=-1),
            _gpupool("l4", priceUsdPerGpuHour=0.7, cost=3),
            _gpupool("a100", priority="high"),
            {"metadata": {"name": "bare"}},
        ]
    )
    assert dict(terms.by_pool) == {"bare": pools.PoolConfig()}
    assert len(terms.problems) == 3
    assert terms.problems[0].startswith("GpuPool h100 ignored: spec.priceUsdPerGpuHour: ")
    assert "greater than or equal to 0" in terms.problems[0]
    assert "spec.cost: Extra inputs are not permitted" in terms.problems[1]
    assert "GpuPool a100 ignored: spec.priority: " in terms.problems[2]


def test_gpupool_status(local_nodes: list[dict[str, Any]]) -> None:
    found = _by_name(pools.discover(local_nodes, [_pod("p", "h100-1", gpus=5)]))
    assert pools.status(found["h100"], now=NOW) == {
        "product": "NVIDIA-H100-80GB-HBM3",
        "nodes": 2,
        "gpus": 16,
        "freeGpus": 11,
        "gpuMemoryMiB": 81559,
        "observedAt": "2025-01-02T03:04:05Z",
    }
    assert pools.status(found["system"], now=NOW) == {
        "product": None,
        "nodes": 2,
        "gpus": 0,
        "freeGpus": 0,
        "gpuMemoryMiB": None,
        "observedAt": "2025-01-02T03:04:05Z",
    }


@pytest.fixture(scope="module")
def crd() -> dict[str, Any]:
    """The GpuPool CustomResourceDefinition as the API server would read it."""
    data = yaml.safe_load(CRD.read_text())
    assert isinstance(data, dict)
    return data


def test_gpupool_crd_names_and_scope(crd: dict[str, Any]) -> None:
    assert (crd["apiVersion"], crd["kind"]) == (
        "apiextensions.k8s.io/v1",
        "CustomResourceDefinition",
    )
    assert crd["metadata"]["name"] == "gpupools.aion.dev"
    assert (crd["spec"]["group"], crd["spec"]["scope"]) == ("aion.dev", "Cluster")
    names = crd["spec"]["names"]
    assert (names["kind"], names["plural"], names["singular"], names["shortNames"]) == (
        "GpuPool",
        "gpupools",
        "gpupool",
        ["gp"],
    )
    [version] = crd["spec"]["versions"]
    assert (version["name"], version["served"], version["storage"]) == ("v1alpha1", True, True)
    assert version["subresources"] == {"status": {}}


def test_gpupool_crd_printer_columns(crd: dict[str, Any]) -> None:
    [version] = crd["spec"]["versions"]
    shown = [
        (c["name"], c["jsonPath"])
        for c in version["additionalPrinterColumns"]
        if c.get("priority", 0) == 0
    ]
    assert shown == [
        ("Product", ".status.product"),
        ("GPUs", ".status.gpus"),
        ("Free", ".status.freeGpus"),
        ("Price/h", ".spec.priceUsdPerGpuHour"),
        ("Age", ".metadata.creationTimestamp"),
    ]


def test_gpupool_crd_schema_matches_the_parser_and_the_status(crd: dict[str, Any]) -> None:
    [version] = crd["spec"]["versions"]
    root = version["schema"]["openAPIV3Schema"]
    spec = root["properties"]["spec"]["properties"]
    assert set(spec) == {
        alias for alias in (f.alias for f in pools.GpuPoolSpec.model_fields.values()) if alias
    }
    assert spec["priceUsdPerGpuHour"] == {
        **spec["priceUsdPerGpuHour"],
        "type": "number",
        "minimum": 0,
    }
    assert "default" not in spec["priceUsdPerGpuHour"]
    defaults = pools.GpuPoolSpec()
    assert (spec["priority"]["default"], spec["disabled"]["default"]) == (
        defaults.priority,
        defaults.disabled,
    )
    assert (spec["priority"]["minimum"], spec["priority"]["maximum"]) == (-1000, 1000)
    status = root["properties"]["status"]["properties"]
    pool = pools.discover([_node("n", "a", gpus=1, product="NVIDIA-L4", memory_mib=23034)], [])
    assert set(status) == set(pools.status(pool[0], now=NOW))
    assert [r["rule"] for r in root["x-kubernetes-validations"]] == [
        "size(self.metadata.name) <= 63"
    ]
