"""``kube.Kube``'s reads of executors from its informers, against the real control plane.

The readiness timer asks for each Agent's executor Deployment and pods every few
seconds; once the informers run, the answers come from memory and must match
what the API holds: the Agent's own objects, current, gone once deleted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, TypeVar

import lightkube
import pytest
import yaml
from lightkube import codecs, generic_resource
from lightkube.resources import apps_v1, autoscaling_v2, core_v1

from aion.core import agentspec
from aion.infra.cluster import Cluster
from aion.operator import kube, render

pytestmark = [pytest.mark.cluster]

TIMEOUT_S = 60.0
SPEC = agentspec.parse(
    {
        "model": {"name": "smollm2-135m-instruct"},
        "gpu": {"count": 0},
        "resources": {"cpu": "10m", "memory": "16Mi"},
    }
)
T = TypeVar("T")


async def _eventually(fetch: Callable[[], Awaitable[T]], done: Callable[[T], bool]) -> T:
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        value = await fetch()
        if done(value) or time.monotonic() > deadline:
            return value
        await asyncio.sleep(0.1)


@pytest.fixture
def namespace(cluster: Cluster) -> Iterator[str]:
    name = f"kube-{uuid.uuid4().hex[:8]}"
    cluster.create_namespace(name)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false")


@pytest.fixture(params=["named", "every"])
async def client(
    cluster: Cluster, chart_crds: None, namespace: str, request: pytest.FixtureRequest
) -> AsyncIterator[kube.Kube]:
    """A ``Kube`` whose informers follow ``namespace`` by name, or every namespace."""
    config = lightkube.KubeConfig.from_file(str(cluster.kubeconfig))
    api = lightkube.AsyncClient(config=config, field_manager="test")
    client = kube.Kube(api)
    client.start_informers([namespace] if request.param == "named" else [])
    try:
        yield client
    finally:
        await client.stop_informers()
        await api.close()


def _executor(agent: str, namespace: str) -> list[Any]:
    owner = render.Owner(name=agent, uid=str(uuid.uuid4()))
    deployment = render.executor_deployment(
        agent, namespace, SPEC, pool_label="none", pool="none", image="test", owner=owner
    )
    deployment["metadata"].pop("ownerReferences")  # no Agent owns it here
    deployment["spec"]["replicas"] = 0  # its only pod is the one made here
    template = deployment["spec"]["template"]
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": f"{agent}-pod", "namespace": namespace, **template["metadata"]},
        "spec": template["spec"],
    }
    return [codecs.from_dict(deployment), codecs.from_dict(pod)]


async def test_executors_are_read_from_memory_as_the_api_holds_them(
    client: kube.Kube, namespace: str
) -> None:
    api = client.client
    for obj in [*_executor("one", namespace), *_executor("two", namespace)]:
        await api.create(obj)
    name = render.executor_name("one")

    found = await _eventually(lambda: client.deployment(name, namespace=namespace), bool)
    assert found is not None
    assert found["metadata"]["name"] == name
    assert "managedFields" not in found["metadata"]  # not kept in memory
    pods = await _eventually(
        lambda: client.pods(selector=render.selector("one"), namespace=namespace), bool
    )
    assert [p["metadata"]["name"] for p in pods] == ["one-pod"]  # not two's
    assert await client.pods(selector=render.selector("one"), namespace="elsewhere") == []

    await api.patch(
        apps_v1.Deployment, name, {"metadata": {"labels": {"seen": "yes"}}}, namespace=namespace
    )
    changed = await _eventually(
        lambda: client.deployment(name, namespace=namespace),
        lambda d: d is not None and d["metadata"]["labels"].get("seen") == "yes",
    )
    assert changed is not None
    assert changed["metadata"]["labels"]["seen"] == "yes"

    await api.delete(apps_v1.Deployment, name, namespace=namespace)
    await api.delete(core_v1.Pod, "one-pod", namespace=namespace, grace_period=0)
    assert (
        await _eventually(lambda: client.deployment(name, namespace=namespace), lambda d: d is None)
        is None
    )
    left = await _eventually(
        lambda: client.pods(selector=render.selector("one"), namespace=namespace), lambda p: not p
    )
    assert left == []


async def test_namespaces_hpas_and_gpu_pools_are_read_from_memory_as_the_api_holds_them(
    client: kube.Kube, namespace: str
) -> None:
    # What every reconcile reads besides the executors: the Namespace's labels (its
    # tenant), whether an HPA owns the executor's replicas, and the GpuPools.
    api = client.client
    await api.patch(core_v1.Namespace, namespace, {"metadata": {"labels": {"probe": "one"}}})
    labels = await _eventually(
        lambda: client.namespace_labels(namespace), lambda got: got.get("probe") == "one"
    )
    assert labels.get("probe") == "one"

    target = render.executor_name("scaled")
    assert not await client.autoscaled(target, namespace=namespace)
    hpa = {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "scaled", "namespace": namespace},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": target},
            "minReplicas": 1,
            "maxReplicas": 2,
        },
    }
    await api.create(codecs.from_dict(hpa))
    assert await _eventually(lambda: client.autoscaled(target, namespace=namespace), bool)
    assert not await client.autoscaled(render.executor_name("other"), namespace=namespace)
    assert not await client.autoscaled(target, namespace=f"{namespace}-elsewhere")
    await api.delete(autoscaling_v2.HorizontalPodAutoscaler, "scaled", namespace=namespace)
    assert not await _eventually(
        lambda: client.autoscaled(target, namespace=namespace), lambda scaled: not scaled
    )

    listed = sorted([kube._plain(g)["metadata"]["name"] async for g in api.list(kube.GpuPool)])
    snapshot = await client.snapshot()
    assert sorted(g["metadata"]["name"] for g in snapshot.gpu_pools) == listed


async def test_an_informer_of_a_kind_not_installed_yet_follows_it_once_its_crd_is(
    cluster: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    # The operator may start before its CRDs are applied: the API server answers a group
    # it does not know with a plain-text 404, which the informer must retry, not die of.
    group = f"i{uuid.uuid4().hex[:8]}.test.aion.dev"
    kind = generic_resource.create_global_resource(group, "v1", "Probe", "probes")
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"probes.{group}"},
        "spec": {
            "group": group,
            "scope": "Cluster",
            "names": {"plural": "probes", "singular": "probe", "kind": "Probe"},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": {"type": "object"}},
                }
            ],
        },
    }
    config = lightkube.KubeConfig.from_file(str(cluster.kubeconfig))
    api = lightkube.AsyncClient(config=config, field_manager="test")
    store = kube.Store(dict)
    informer = asyncio.create_task(kube.Informer(api, kind, store).run())
    try:
        caplog.set_level(logging.WARNING, logger=kube.__name__)

        async def refusals() -> int:
            return sum(f"watching {kind.__name__}:" in r.getMessage() for r in caplog.records)

        # Refused, then listed again after its delay and refused again: still running.
        refused = await _eventually(refusals, lambda n: n >= 2 or informer.done())
        assert not informer.done(), informer.exception()
        assert refused >= 2
        assert not store.synced.is_set()
        cluster.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(crd))
        cluster.kubectl(
            "wait", "--for=condition=Established", "--timeout=60s", f"crd/probes.{group}"
        )
        probe = {"apiVersion": f"{group}/v1", "kind": "Probe", "metadata": {"name": "p1"}}
        cluster.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(probe))
        kept = await _eventually(
            lambda: asyncio.sleep(0, store.objects), lambda objs: ("", "p1") in objs
        )
        assert ("", "p1") in kept
        assert store.synced.is_set()
    finally:
        informer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await informer
        await api.close()
        cluster.kubectl("delete", "crd", f"probes.{group}", "--wait=false", check=False)
