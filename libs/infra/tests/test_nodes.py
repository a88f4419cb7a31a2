"""Rendering the local cluster's Node objects from pools.yaml (pure)."""

from __future__ import annotations

from typing import Any

import yaml

from aion.infra.cluster import POOLS_FILE, render_nodes

DOC: dict[str, Any] = {
    "poolLabel": "cloud.google.com/gke-nodepool",
    "gpuTaint": {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"},
    "pools": [
        {"name": "cpu", "nodes": 1, "instanceType": "e2", "cpu": "4", "memory": "16Gi"},
        {
            "name": "big",
            "nodes": 2,
            "instanceType": "a3",
            "cpu": "208",
            "memory": "1Ti",
            "gpu": {
                "count": 8,
                "product": "NVIDIA-H100-80GB-HBM3",
                "memoryMiB": 81559,
                "family": "hopper",
            },
        },
    ],
}


def test_one_node_per_pool_member_named_after_the_pool() -> None:
    nodes = render_nodes(DOC)
    assert [n["metadata"]["name"] for n in nodes] == ["cpu-0", "big-0", "big-1"]
    assert {n["metadata"]["labels"]["cloud.google.com/gke-nodepool"] for n in nodes} == {
        "cpu",
        "big",
    }


def test_gpu_nodes_carry_gfd_labels_capacity_and_the_taint() -> None:
    big = render_nodes(DOC)[1]
    labels = big["metadata"]["labels"]
    assert labels["nvidia.com/gpu.product"] == "NVIDIA-H100-80GB-HBM3"
    assert labels["nvidia.com/gpu.count"] == "8"
    assert labels["nvidia.com/gpu.memory"] == "81559"
    assert big["status"]["allocatable"]["nvidia.com/gpu"] == "8"
    assert big["spec"]["taints"] == [
        {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}
    ]
    assert big["metadata"]["annotations"]["kwok.x-k8s.io/node"] == "fake"


def test_cpu_nodes_have_no_gpu_and_no_taint() -> None:
    cpu = render_nodes(DOC)[0]
    assert "nvidia.com/gpu" not in cpu["status"]["capacity"]
    assert "taints" not in cpu["spec"]
    assert not any(k.startswith("nvidia.com/") for k in cpu["metadata"]["labels"])


def test_the_shipped_pools_file_has_the_pools_the_docs_promise() -> None:
    nodes = render_nodes(yaml.safe_load(POOLS_FILE.read_text()))
    per_pool: dict[str, list[str]] = {}
    for n in nodes:
        per_pool.setdefault(n["metadata"]["labels"]["cloud.google.com/gke-nodepool"], []).append(
            n["status"]["allocatable"].get("nvidia.com/gpu", "0")
        )
    assert per_pool == {"system": ["0", "0"], "h100": ["8", "8"], "l4": ["1", "1", "1", "1"]}
