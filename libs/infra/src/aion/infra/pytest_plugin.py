"""Session fixtures that start (or reuse) the local infrastructure.

A test asks for `kafka`, `postgres`, `minio`, `jaeger`, `prometheus` or
`cluster` and gets the running
component. A component this session started is stopped at its end, unless
AION_INFRA_KEEP=1; one that was already running is left running. A component
that fails to start fails the tests that need it, with its log tail: nothing is
skipped.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from aion.infra.component import InfraError
from aion.infra.paths import Layout

if TYPE_CHECKING:  # the component modules load when a test first asks for one
    from aion.infra.cluster import Cluster
    from aion.infra.jaeger import Jaeger
    from aion.infra.kafka import Kafka
    from aion.infra.minio import MinIO
    from aion.infra.postgres import Postgres
    from aion.infra.prometheus import Prometheus

MARKERS = {
    "kafka": "needs the local Kafka broker (started or reused)",
    "postgres": "needs the local Postgres server (started or reused)",
    "minio": "needs the local MinIO server (started or reused)",
    "jaeger": "needs the local Jaeger (v2) trace store (started or reused)",
    "prometheus": "needs the local Prometheus server (started or reused)",
    "cluster": "needs the local Kubernetes control plane with kwok GPU node pools",
    "helm": "needs the Helm CLI built from its Go module",
}


def pytest_configure(config: pytest.Config) -> None:
    for name, text in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {text}")


def _up(name: str) -> Iterator[Any]:
    from aion.infra.registry import make

    component = make(name, Layout.from_env())
    was_running = component.running() and component.ready()
    try:
        component.up()
    except InfraError as exc:
        if not was_running:
            component.down()  # leave no half-started process behind
        pytest.fail(str(exc), pytrace=False)
    yield component
    if was_running or os.environ.get("AION_INFRA_KEEP") == "1":
        component.detach()
    else:
        component.down()


@pytest.fixture(scope="session")
def kafka() -> Iterator[Kafka]:
    yield from _up("kafka")


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    yield from _up("postgres")


@pytest.fixture(scope="session")
def minio() -> Iterator[MinIO]:
    yield from _up("minio")


@pytest.fixture(scope="session")
def jaeger() -> Iterator[Jaeger]:
    yield from _up("jaeger")


@pytest.fixture(scope="session")
def prometheus() -> Iterator[Prometheus]:
    yield from _up("prometheus")


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    yield from _up("cluster")


@pytest.fixture(scope="session")
def helm() -> Path:
    """The path of the Helm CLI built from its Go module."""
    from aion.infra.tools import helm as build_helm

    try:
        return build_helm()
    except InfraError as exc:
        pytest.fail(str(exc), pytrace=False)
