"""Fixtures shared by the operator's unit tests."""

from __future__ import annotations

import pathlib
from typing import Any

import pytest

from aion.infra.cluster import Cluster
from aion.operator import settings

CRDS = pathlib.Path(__file__).resolve().parents[3] / "charts" / "aion" / "crds"


@pytest.fixture
def cfg() -> settings.AionOperatorSettings:
    """Settings as the chart would set them."""
    return settings.AionOperatorSettings(
        executor_image="registry.test/aion-executor:1.2.3", otlp_endpoint="http://otel:4317"
    )


@pytest.fixture
def gpu_spec() -> dict[str, Any]:
    """A spec that needs two A100s of at least 80 GiB on a preferred pool."""
    return {
        "model": {"name": "llama-3-8b-instruct", "source": "https://models.test/llama.gguf"},
        "gpu": {"count": 2, "products": ["NVIDIA-A100-SXM4-80GB"], "minMemoryGiB": 80},
        "resources": {"cpu": "4", "memory": "32Gi"},
        "placement": {"allowedPools": ["a100-spot", "a100"], "preferredPools": ["a100"]},
        "replicas": {"min": 2, "max": 4},
    }


def _local_node(
    pool: str,
    index: int,
    *,
    gpus: int = 0,
    product: str | None = None,
    memory_mib: int | None = None,
) -> dict[str, Any]:
    labels = {
        "kubernetes.io/hostname": f"{pool}-{index}",
        "type": "kwok",
        "cloud.google.com/gke-nodepool": pool,
    }
    allocatable = {"cpu": "8", "memory": "32Gi", "pods": "110"}
    spec: dict[str, Any] = {}
    if gpus:
        labels |= {
            "nvidia.com/gpu.present": "true",
            "nvidia.com/gpu.product": str(product),
            "nvidia.com/gpu.count": str(gpus),
            "nvidia.com/gpu.memory": str(memory_mib),
        }
        allocatable["nvidia.com/gpu"] = str(gpus)
        spec["taints"] = [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}]
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": f"{pool}-{index}", "labels": labels},
        "spec": spec,
        "status": {
            "capacity": dict(allocatable),
            "allocatable": allocatable,
            "conditions": [
                {"type": "MemoryPressure", "status": "False"},
                {"type": "Ready", "status": "True", "reason": "KubeletReady"},
            ],
        },
    }


@pytest.fixture
def local_nodes() -> list[dict[str, Any]]:
    """The local cluster's nodes (deploy/local/cluster/pools.yaml) as the API returns them.

    Two system nodes without GPUs, two h100 nodes of 8 GPUs, four l4 nodes of 1 GPU.
    """
    return (
        [_local_node("system", i) for i in range(2)]
        + [
            _local_node("h100", i, gpus=8, product="NVIDIA-H100-80GB-HBM3", memory_mib=81559)
            for i in range(2)
        ]
        + [_local_node("l4", i, gpus=1, product="NVIDIA-L4", memory_mib=23034) for i in range(4)]
    )


@pytest.fixture(scope="session")
def chart_crds(cluster: Cluster) -> None:
    """The chart's CRDs installed on the test cluster and established."""
    cluster.kubectl("apply", "-f", str(CRDS))
    cluster.kubectl(
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/agents.aion.dev",
        "crd/gpupools.aion.dev",
    )
