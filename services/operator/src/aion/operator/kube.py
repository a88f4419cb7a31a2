"""The operator's reads and writes of the Kubernetes API, through one lightkube client.

``connect`` opens the client in ``main``; the handlers get a ``Kube`` and never
build one. Objects come back as plain dicts, as the pure modules (``pools``,
``placement``, ``render``) take them. Writes are server-side applies with one
field manager, forced, so a reconcile re-run after a crash updates what an
earlier run created instead of adding to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Hashable, Mapping, Sequence
from typing import Any

import lightkube
from lightkube import codecs, generic_resource, operators
from lightkube.resources import apps_v1, autoscaling_v2, core_v1

from aion.operator import conventions, pools, render

log = logging.getLogger(__name__)

NOT_FOUND = 404

Agent = generic_resource.create_namespaced_resource(
    conventions.GROUP, conventions.VERSION, conventions.AGENT_KIND, conventions.AGENT_PLURAL
)
GpuPool = generic_resource.create_global_resource(
    conventions.GROUP, conventions.VERSION, conventions.GPU_POOL_KIND, conventions.GPU_POOL_PLURAL
)


BOUND: dict[str, str | operators.BinaryOperator | operators.SequenceOperator] = {
    "spec.nodeName": operators.not_equal("")
}
RELIST_DELAY_S = 1.0
GLOB = frozenset("*?[]!")


class Informer:
    """One kind of object kept current in memory: list, then watch from that version.

    What placement reads on every reconcile (every node, every bound pod) is read
    once and then follows the API's events, instead of being listed again for
    each Agent. A broken or expired watch lists afresh. With ``group``, objects
    are also kept by what it returns (``grouped``), so a lookup reads a few.
    """

    def __init__(
        self,
        client: lightkube.AsyncClient,
        kind: Any,
        *,
        group: Callable[[Mapping[str, Any]], Hashable] | None = None,
        **filters: Any,
    ) -> None:
        self._client = client
        self._kind = kind
        self._filters = filters
        self._group = group
        # By namespace and name: unique at any moment, and what lookups ask by.
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self._grouped: dict[Hashable, dict[tuple[str, str], dict[str, Any]]] = {}
        self.synced = asyncio.Event()

    def grouped(self, value: Hashable) -> list[dict[str, Any]]:
        """The objects whose ``group`` is ``value``."""
        return list(self._grouped.get(value, {}).values())

    def _set(self, key: tuple[str, str], obj: dict[str, Any] | None) -> None:
        old = self.objects.pop(key, None)
        if old is not None and self._group is not None:
            members = self._grouped.get(self._group(old), {})
            members.pop(key, None)
            if not members:
                self._grouped.pop(self._group(old), None)
        if obj is not None:
            self.objects[key] = obj
            if self._group is not None:
                self._grouped.setdefault(self._group(obj), {})[key] = obj

    async def run(self) -> None:
        """List and watch until cancelled."""
        name = self._kind.__name__
        while True:
            try:
                listing = self._client.list(self._kind, **self._filters)
                fresh = [(_key(o), _kept(o)) async for o in listing]
                self.objects, self._grouped = {}, {}
                for key, obj in fresh:
                    self._set(key, obj)
                self.synced.set()
                async for op, obj in self._client.watch(
                    self._kind, resource_version=listing.resourceVersion, **self._filters
                ):
                    self._set(_key(obj), None if op == "DELETED" else _kept(obj))
            except (lightkube.ApiError, OSError, lightkube.LoadResourceError) as exc:
                log.warning("watching %s: %s; listing again", name, exc)
            await asyncio.sleep(RELIST_DELAY_S)


def _kept(obj: Any) -> dict[str, Any]:
    """What an informer keeps of ``obj``: its dict without ``metadata.managedFields`` (which
    fields each manager set: nothing here reads them, and on a pod they are most of it)."""
    out: dict[str, Any] = obj.to_dict()
    (out.get("metadata") or {}).pop("managedFields", None)
    return out


def _key(obj: Any) -> tuple[str, str]:
    return obj.metadata.namespace or "", obj.metadata.name


class Kube:
    """The API calls the handlers make, on a client that ``connect`` opened."""

    def __init__(self, client: lightkube.AsyncClient) -> None:
        self._client = client
        self._nodes: Informer | None = None
        self._pods: Informer | None = None
        # Executor Deployments by namespace ("*": every namespace), executor pods of all.
        self._deployments: dict[str, Informer] = {}
        self._executor_pods: Informer | None = None
        # GpuPools and Namespaces (cluster-wide), HPAs where Deployments are followed.
        self._gpu_pools: Informer | None = None
        self._namespaces: Informer | None = None
        self._hpas: dict[str, Informer] = {}
        self._tasks: list[asyncio.Task[None]] = []

    def start_informers(self, namespaces: Sequence[str] = ()) -> None:
        """Follow nodes, pods, GpuPools, Namespaces and the executor Deployments and HPAs of
        ``namespaces`` in memory from now on.

        ``snapshot`` reads the nodes, bound pods and GpuPools, ``namespace_labels``
        the Namespaces and ``autoscaled`` the HPAs on every reconcile; ``pods`` and
        ``deployment`` the executors', which the readiness timer asks for every few
        seconds per Agent. Pods, GpuPools and Namespaces are read cluster-wide (the
        operator's ClusterRole); Deployments and HPAs only where it may (empty
        ``namespaces``: every one; else a Role in each named namespace): with a
        pattern among ``namespaces``, ``deployment`` and ``autoscaled`` ask the API
        each time.
        """
        self._nodes = Informer(self._client, core_v1.Node)
        self._pods = Informer(self._client, core_v1.Pod, namespace="*", fields=BOUND)
        followed = [] if any(GLOB & set(n) for n in namespaces) else list(namespaces) or ["*"]
        self._deployments = {
            n: Informer(self._client, apps_v1.Deployment, namespace=n, labels=render.EXECUTORS)
            for n in followed
        }
        self._executor_pods = Informer(
            self._client, core_v1.Pod, group=_instance, namespace="*", labels=render.EXECUTORS
        )
        self._hpas = {
            n: Informer(self._client, autoscaling_v2.HorizontalPodAutoscaler, namespace=n)
            for n in followed
        }
        self._gpu_pools = Informer(self._client, GpuPool)
        self._namespaces = Informer(self._client, core_v1.Namespace)
        informers = [
            self._nodes,
            self._pods,
            self._executor_pods,
            self._gpu_pools,
            self._namespaces,
            *self._deployments.values(),
            *self._hpas.values(),
        ]
        self._tasks = [asyncio.create_task(i.run()) for i in informers]

    async def stop_informers(self) -> None:
        """Stop following (the counterpart of ``start_informers``)."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        self._nodes = self._pods = None
        self._deployments, self._executor_pods = {}, None
        self._gpu_pools = self._namespaces = None
        self._hpas = {}

    @property
    def client(self) -> lightkube.AsyncClient:
        """The lightkube client, for what has its own module (the Lease)."""
        return self._client

    async def snapshot(self) -> pools.Snapshot:
        """Nodes, bound pods (all namespaces) and GpuPools, as the API returns them.

        They come from the informers once started, else from a listing.
        """
        if self._nodes is not None and self._pods is not None:
            await self._nodes.synced.wait()
            await self._pods.synced.wait()
            nodes = list(self._nodes.objects.values())
            pods = list(self._pods.objects.values())
        else:
            nodes = [n.to_dict() async for n in self._client.list(core_v1.Node)]
            pods = [
                p.to_dict()
                async for p in self._client.list(core_v1.Pod, namespace="*", fields=BOUND)
            ]
        if self._gpu_pools is not None:
            await self._gpu_pools.synced.wait()
            gpu_pools = list(self._gpu_pools.objects.values())
        else:
            gpu_pools = [_plain(g) async for g in self._client.list(GpuPool)]
        return pools.Snapshot(nodes=tuple(nodes), pods=tuple(pods), gpu_pools=tuple(gpu_pools))

    async def apply(self, manifest: Mapping[str, Any]) -> None:
        """Create or update ``manifest`` by server-side apply, taking over conflicting fields."""
        obj = codecs.from_dict(dict(manifest))
        await self._client.apply(obj, field_manager=conventions.FIELD_MANAGER, force=True)

    async def deployment(self, name: str, *, namespace: str) -> dict[str, Any] | None:
        """The executor Deployment ``name`` in ``namespace``, or None when there is none.

        From memory where an informer follows the namespace, else from the API.
        """
        informer = self._deployments.get(namespace) or self._deployments.get("*")
        if informer is not None:
            await informer.synced.wait()
            return informer.objects.get((namespace, name))
        try:
            found = await self._client.get(apps_v1.Deployment, name, namespace=namespace)
        except lightkube.ApiError as exc:
            if exc.status.code == NOT_FOUND:
                return None
            raise
        return found.to_dict()

    async def secret(self, name: str, *, namespace: str) -> dict[str, Any] | None:
        """The Secret ``name`` in ``namespace`` (its data base64, as the API returns it),
        or None when there is none."""
        try:
            found = await self._client.get(core_v1.Secret, name, namespace=namespace)
        except lightkube.ApiError as exc:
            if exc.status.code == NOT_FOUND:
                return None
            raise
        return found.to_dict()

    async def namespace_labels(self, name: str) -> dict[str, str]:
        """The labels of the Namespace ``name`` (where the platform maps it to a tenant).

        From memory once the informers run; a Namespace they have not seen yet (created
        a moment ago) is read from the API.
        """
        if self._namespaces is not None:
            await self._namespaces.synced.wait()
            seen = self._namespaces.objects.get(("", name))
            if seen is not None:
                return dict((seen.get("metadata") or {}).get("labels") or {})
        found = await self._client.get(core_v1.Namespace, name)
        return dict(found.metadata.labels or {}) if found.metadata else {}

    async def pods(self, *, selector: Mapping[str, str], namespace: str) -> list[dict[str, Any]]:
        """The executor pods in ``namespace`` that carry every label of ``selector``.

        From memory once the informers run, else from the API.
        """
        if self._executor_pods is not None:
            await self._executor_pods.synced.wait()
            members = self._executor_pods.grouped((namespace, selector.get(render.INSTANCE)))
            return [pod for pod in members if _labelled(pod, selector)]
        return [
            p.to_dict()
            async for p in self._client.list(
                core_v1.Pod, namespace=namespace, labels=dict(selector)
            )
        ]

    async def autoscaled(self, deployment: str, *, namespace: str) -> bool:
        """Whether an HPA in ``namespace`` scales the Deployment named ``deployment``.

        From memory where an informer follows the namespace, else from the API.
        """
        informer = self._hpas.get(namespace) or self._hpas.get("*")
        if informer is not None:
            await informer.synced.wait()
            hpas = [o for (ns, _), o in informer.objects.items() if ns == namespace]
        else:
            hpas = [
                h.to_dict()
                async for h in self._client.list(
                    autoscaling_v2.HorizontalPodAutoscaler, namespace=namespace
                )
            ]
        for hpa in hpas:
            target = (hpa.get("spec") or {}).get("scaleTargetRef") or {}
            if target.get("kind") == "Deployment" and target.get("name") == deployment:
                return True
        return False


def _instance(obj: Mapping[str, Any]) -> tuple[str, str | None]:
    # An executor's pods are looked up by namespace and Agent (``render.selector``).
    meta = obj.get("metadata") or {}
    return meta.get("namespace") or "", (meta.get("labels") or {}).get(render.INSTANCE)


def _labelled(obj: Mapping[str, Any], selector: Mapping[str, str]) -> bool:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    return all(labels.get(k) == v for k, v in selector.items())


def _plain(obj: Any) -> dict[str, Any]:
    # Generic (CRD) resources carry an untyped to_dict.
    return dict(obj.to_dict())


@contextlib.asynccontextmanager
async def connect() -> AsyncIterator[Kube]:
    """A ``Kube`` on in-cluster credentials or ``KUBECONFIG``, closed on exit."""
    client = lightkube.AsyncClient(field_manager=conventions.FIELD_MANAGER)
    try:
        yield Kube(client)
    finally:
        await client.close()
