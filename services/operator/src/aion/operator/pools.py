"""GPU node pools, discovered from Node and Pod objects as the Kubernetes API returns them.

Pure functions of plain dicts; the handlers read nodes, pods and GpuPools and pass
them in. A node's pool is the value of the first of these labels it carries
(``conventions.POOL_LABELS``), so a cloud's own pool label wins over aion's:

1. ``cloud.google.com/gke-nodepool`` (GKE)
2. ``eks.amazonaws.com/nodegroup`` (EKS managed node groups)
3. ``kubernetes.azure.com/agentpool`` (AKS)
4. ``karpenter.sh/nodepool`` (Karpenter)
5. ``aion.dev/node-pool`` (any cluster, set by hand)

Nodes with none of them (or an empty value) belong to no pool and are ignored.
Each node keeps its own GPU product, GPU memory and free GPUs, because one pool
can mix machine types (Karpenter's often do); the pool's figures add them up.
Free GPUs are a node's allocatable ``nvidia.com/gpu`` minus the GPU requests of
the pods bound to it that have not terminated, as the scheduler counts them.
Only Ready, schedulable nodes count towards a pool's nodes, GPUs and free GPUs;
the shape of a pool (its products, GPU memory, largest node) comes from all of
its nodes, so a pool whose nodes are down lacks capacity rather than existing.

Prices and priorities come from ``gpupools.aion.dev`` objects, named for their
pool (see ``configs``). A pool without one is unpriced (``price`` None) with
priority 0.
"""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import re
from collections.abc import Iterable, Mapping
from typing import Any

import pydantic
from pydantic import alias_generators

from aion.operator import conditions, conventions

TERMINATED = frozenset({"Succeeded", "Failed"})

_QUANTITY = re.compile(r"^([+-]?[0-9.]+)([eE][+-]?[0-9]+|[KMGTPE]i|[numkMGTPE])?$")
_SUFFIX = {
    "n": decimal.Decimal("1e-9"),
    "u": decimal.Decimal("1e-6"),
    "m": decimal.Decimal("1e-3"),
    "": decimal.Decimal(1),
    **{s: decimal.Decimal(1000) ** (i + 1) for i, s in enumerate("kMGTPE")},
    **{f"{s}i": decimal.Decimal(1024) ** (i + 1) for i, s in enumerate("KMGTPE")},
}


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """What placement reads: every node, every pod bound to a node, and the GpuPools."""

    nodes: tuple[dict[str, Any], ...]
    pods: tuple[dict[str, Any], ...]
    gpu_pools: tuple[dict[str, Any], ...]


@dataclasses.dataclass(frozen=True)
class Node:
    """One node of a pool: its GPUs, and how many of them no pod has requested."""

    name: str
    ready: bool
    product: str | None
    gpu_memory_mib: int | None
    gpus: int
    free_gpus: int

    @property
    def has_gpus(self) -> bool:
        """Whether the node has GPUs (or GPU feature discovery says so)."""
        return self.gpus > 0 or self.product is not None


@dataclasses.dataclass(frozen=True)
class PoolConfig:
    """The platform team's terms for a pool, from its GpuPool object."""

    price: float | None = None
    priority: int = 0
    disabled: bool = False


UNCONFIGURED = PoolConfig()


@dataclasses.dataclass(frozen=True)
class Pool:
    """A node pool: its nodes (Ready or not), the label that names it, and its terms."""

    name: str
    label: str
    nodes: tuple[Node, ...]
    config: PoolConfig = UNCONFIGURED

    @property
    def price(self) -> float | None:
        """US dollars per GPU-hour, or None when the pool is unpriced."""
        return self.config.price

    @property
    def priority(self) -> int:
        """Preference between pools of equal price; higher first."""
        return self.config.priority

    @property
    def disabled(self) -> bool:
        """Whether the platform team closed the pool to new placements."""
        return self.config.disabled

    @property
    def ready(self) -> tuple[Node, ...]:
        """The Ready, schedulable nodes."""
        return tuple(n for n in self.nodes if n.ready)

    @property
    def products(self) -> tuple[str, ...]:
        """The GPU products of the pool's nodes, sorted."""
        return tuple(sorted({n.product for n in self.nodes if n.product is not None}))

    @property
    def product(self) -> str | None:
        """The GPU product, or the products joined by commas; None for a pool without GPUs."""
        return ",".join(self.products) or None

    @property
    def gpu_memory_mib(self) -> int | None:
        """Memory of each GPU in MiB: the smallest when nodes differ; None when unknown."""
        known = [n.gpu_memory_mib for n in self.nodes if n.gpu_memory_mib is not None]
        return min(known, default=None)

    @property
    def node_count(self) -> int:
        """How many nodes are Ready and schedulable."""
        return len(self.ready)

    @property
    def gpus(self) -> int:
        """Allocatable GPUs on the Ready nodes."""
        return sum(n.gpus for n in self.ready)

    @property
    def free_gpus(self) -> int:
        """GPUs on the Ready nodes that no running or pending pod has requested."""
        return sum(n.free_gpus for n in self.ready)

    @property
    def max_node_gpus(self) -> int:
        """The most GPUs one node of the pool has, Ready or not: the largest pod it can hold."""
        return max((n.gpus for n in self.nodes), default=0)

    @property
    def max_node_free_gpus(self) -> int:
        """The most free GPUs on one Ready node: what a single pod can get now."""
        return max((n.free_gpus for n in self.ready), default=0)


def pool_of(node: Mapping[str, Any]) -> tuple[str, str] | None:
    """The (label, pool name) of a Node object, by the first pool label it carries."""
    labels = (node.get("metadata") or {}).get("labels") or {}
    for label in conventions.POOL_LABELS:
        if labels.get(label):
            return label, str(labels[label])
    return None


def is_ready(node: Mapping[str, Any]) -> bool:
    """Whether a Node is Ready and open to new pods (not cordoned, not being deleted)."""
    if (node.get("spec") or {}).get("unschedulable"):
        return False
    if (node.get("metadata") or {}).get("deletionTimestamp"):
        return False
    states = (node.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in states)


def count(quantity: object) -> int:
    """A resource quantity (``8``, ``"8"``, ``"1k"``) as a whole number, rounded down; 0 if bad.

    GPUs are extended resources, which Kubernetes keeps whole.
    """
    if isinstance(quantity, bool):
        return 0
    if isinstance(quantity, int):
        return max(quantity, 0)
    match = _QUANTITY.fullmatch(str(quantity).strip())
    if match is None:
        return 0
    number, suffix = match.group(1), match.group(2) or ""
    try:
        if suffix[:1] in ("e", "E"):
            value = decimal.Decimal(number + suffix)
        else:
            value = decimal.Decimal(number) * _SUFFIX[suffix]
    except decimal.InvalidOperation:
        return 0
    return max(int(value), 0)


def _container_gpus(container: Mapping[str, Any]) -> int:
    resources = container.get("resources") or {}
    requests = resources.get("requests") or {}
    # An extended resource with only a limit is requested at that limit.
    source = requests if conventions.GPU_RESOURCE in requests else resources.get("limits") or {}
    return count(source.get(conventions.GPU_RESOURCE, 0))


def pod_gpus(pod: Mapping[str, Any]) -> int:
    """The GPUs a pod holds on its node, as the scheduler counts them.

    The larger of its app containers plus sidecars (init containers that keep
    running) and of each ordinary init container plus the sidecars started before it.
    """
    spec = pod.get("spec") or {}
    sidecars = 0
    init_peak = 0
    for init in spec.get("initContainers") or []:
        if init.get("restartPolicy") == "Always":
            sidecars += _container_gpus(init)
        else:
            init_peak = max(init_peak, sidecars + _container_gpus(init))
    running = sidecars + sum(_container_gpus(c) for c in spec.get("containers") or [])
    return max(running, init_peak)


def requested_gpus(pods: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """GPUs requested per node name by the pods bound there that have not terminated."""
    used: dict[str, int] = {}
    for pod in pods:
        node = (pod.get("spec") or {}).get("nodeName")
        if not node or (pod.get("status") or {}).get("phase") in TERMINATED:
            continue
        gpus = pod_gpus(pod)
        if gpus:
            used[node] = used.get(node, 0) + gpus
    return used


def _memory(labels: Mapping[str, Any]) -> int | None:
    value = labels.get(conventions.GPU_MEMORY_LABEL)
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _node(obj: Mapping[str, Any], used: Mapping[str, int]) -> Node:
    meta = obj.get("metadata") or {}
    labels = meta.get("labels") or {}
    allocatable = (obj.get("status") or {}).get("allocatable") or {}
    gpus = count(allocatable.get(conventions.GPU_RESOURCE, 0))
    name = str(meta.get("name", ""))
    return Node(
        name=name,
        ready=is_ready(obj),
        product=labels.get(conventions.GPU_PRODUCT_LABEL) or None,
        gpu_memory_mib=_memory(labels),
        gpus=gpus,
        free_gpus=max(gpus - used.get(name, 0), 0),
    )


def discover(
    nodes: Iterable[Mapping[str, Any]],
    pods: Iterable[Mapping[str, Any]],
    *,
    configs: Mapping[str, PoolConfig] | None = None,
) -> tuple[Pool, ...]:
    """The pools of a cluster's nodes, sorted by name, with free GPUs from its pods.

    ``configs`` holds the terms of each configured pool (see ``configs``); GpuPools
    that name no discovered pool are left out, since there is nothing to place on.
    """
    used = requested_gpus(pods)
    found: dict[str, tuple[str, list[Node]]] = {}
    for obj in nodes:
        named = pool_of(obj)
        if named is None:
            continue
        label, name = named
        # A pool keeps the label of its first node; nodes agree in any real cluster.
        found.setdefault(name, (label, []))[1].append(_node(obj, used))
    terms = configs or {}
    return tuple(
        Pool(
            name=name,
            label=label,
            nodes=tuple(sorted(members, key=lambda n: n.name)),
            config=terms.get(name, UNCONFIGURED),
        )
        for name, (label, members) in sorted(found.items())
    )


class GpuPoolSpec(pydantic.BaseModel):
    """The spec of a ``gpupools.aion.dev`` object, as its CRD declares it."""

    model_config = pydantic.ConfigDict(
        extra="forbid", frozen=True, alias_generator=alias_generators.to_camel
    )

    price_usd_per_gpu_hour: float | None = pydantic.Field(default=None, ge=0)
    priority: int = pydantic.Field(default=0, ge=-1000, le=1000, strict=True)
    disabled: bool = pydantic.Field(default=False, strict=True)


@dataclasses.dataclass(frozen=True)
class Configs:
    """Pool terms by pool name, and why any GpuPool objects were left out."""

    by_pool: Mapping[str, PoolConfig]
    problems: tuple[str, ...] = ()


def configs(objects: Iterable[Mapping[str, Any]]) -> Configs:
    """The terms of each pool from its GpuPool object; an invalid one leaves its pool unpriced.

    The API server validates GpuPools itself; an invalid one here means an older
    CRD, and one bad object must not stop placement on every other pool.
    """
    by_pool: dict[str, PoolConfig] = {}
    problems: list[str] = []
    for obj in objects:
        name = str((obj.get("metadata") or {}).get("name", ""))
        try:
            spec = GpuPoolSpec.model_validate(obj.get("spec") or {})
        except pydantic.ValidationError as exc:
            text = "; ".join(
                f"spec.{'.'.join(map(str, e['loc']))}: {e['msg']}"
                for e in exc.errors(include_url=False)
            )
            problems.append(f"GpuPool {name} ignored: {text}")
            continue
        by_pool[name] = PoolConfig(
            price=spec.price_usd_per_gpu_hour, priority=spec.priority, disabled=spec.disabled
        )
    return Configs(by_pool=by_pool, problems=tuple(problems))


def status(pool: Pool, *, now: datetime.datetime) -> dict[str, Any]:
    """The status the operator writes on the pool's GpuPool object.

    ``product`` and ``gpuMemoryMiB`` are None for a pool without GPUs, which a merge
    patch turns into removing them.
    """
    return {
        "product": pool.product,
        "nodes": pool.node_count,
        "gpus": pool.gpus,
        "freeGpus": pool.free_gpus,
        "gpuMemoryMiB": pool.gpu_memory_mib,
        "observedAt": conditions.timestamp(now),
    }
