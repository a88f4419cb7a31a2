"""The components by name, and the groups the Makefile starts."""

from __future__ import annotations

from collections.abc import Callable

from aion.infra.cluster import Cluster
from aion.infra.component import Component
from aion.infra.jaeger import Jaeger
from aion.infra.kafka import Kafka
from aion.infra.minio import MinIO
from aion.infra.oci_registry import ImageRegistry
from aion.infra.paths import Layout
from aion.infra.postgres import Postgres
from aion.infra.prometheus import Prometheus

COMPONENTS: dict[str, Callable[[Layout], Component]] = {
    "kafka": Kafka,
    "postgres": Postgres,
    "minio": MinIO,
    "jaeger": Jaeger,
    "prometheus": Prometheus,
    "cluster": Cluster,
    "registry": ImageRegistry,
}

GROUPS: dict[str, list[str]] = {
    "infra": ["kafka", "postgres", "minio", "jaeger", "prometheus"],
    "all": ["kafka", "postgres", "minio", "jaeger", "prometheus", "registry", "cluster"],
    # The cluster's container runtime pulls aion's images from the registry.
    "cluster": ["registry", "cluster"],
}


def resolve(names: list[str]) -> list[str]:
    """Expand group names; raises ValueError naming what is unknown."""
    out: list[str] = []
    for name in names or ["infra"]:
        expanded = GROUPS.get(name, [name])
        for n in expanded:
            if n not in COMPONENTS:
                known = ", ".join([*COMPONENTS, *GROUPS])
                raise ValueError(f"unknown component {n!r}; known: {known}")
            if n not in out:
                out.append(n)
    return out


def make(name: str, layout: Layout | None = None) -> Component:
    return COMPONENTS[name](layout or Layout.from_env())
