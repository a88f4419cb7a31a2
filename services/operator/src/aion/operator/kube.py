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

import httpx2
import lightkube
from lightkube import codecs, generic_resource, operators
from lightkube.core import resource as lightkube_resource
from lightkube.resources import apps_v1, autoscaling_v2, core_v1

from aion.operator import conventions, pools, render

log = logging.getLogger(__name__)

NOT_FOUND = 404
# Connect, read and write timeout of each API request (lightkube's default).
REQUEST_TIMEOUT_S = 10.0

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


class Store:
    """Objects of one kind kept in memory, by namespace and name: what ``keep`` returns of each.

    ``keep`` slims an object to the fields the operator reads (a pod as the API
    returns it is mostly what nothing here reads), or returns None to keep nothing of
    it. With ``group``, objects are also kept by what it returns (``grouped``), so a
    lookup reads a few. ``on_change`` is called with the key of every object that
    appears, changes or goes.
    """

    def __init__(
        self,
        keep: Callable[[Mapping[str, Any]], dict[str, Any] | None],
        *,
        group: Callable[[Mapping[str, Any]], Hashable] | None = None,
        on_change: Callable[[tuple[str, str]], None] | None = None,
    ) -> None:
        self._keep = keep
        self._group = group
        self._on_change = on_change
        # By namespace and name: unique at any moment, and what lookups ask by.
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self._grouped: dict[Hashable, dict[tuple[str, str], dict[str, Any]]] = {}
        self.synced = asyncio.Event()

    def grouped(self, value: Hashable) -> list[dict[str, Any]]:
        """The objects whose ``group`` is ``value``."""
        return list(self._grouped.get(value, {}).values())

    def clear(self) -> None:
        """Forget every object (before a fresh listing)."""
        self.objects, self._grouped = {}, {}

    def put(self, key: tuple[str, str], raw: Mapping[str, Any] | None) -> None:
        """Keep what ``keep`` returns of ``raw`` under ``key``; None (gone) forgets it."""
        obj = None if raw is None else self._keep(raw)
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
        if self._on_change is not None and (old is not None or obj is not None):
            self._on_change(key)


class Informer:
    """One kind of object kept current in memory: list, then watch from that version.

    What placement reads on every reconcile (every node, every bound pod) is read
    once and then follows the API's events, instead of being listed again for
    each Agent. A broken or expired watch lists afresh. One watch feeds each of
    ``stores`` (pods: the GPUs they hold, and the executors' pods).
    """

    def __init__(
        self, client: lightkube.AsyncClient, kind: Any, *stores: Store, **filters: Any
    ) -> None:
        self._client = client
        self._kind = _raw(kind)
        self._filters = filters
        self.stores = stores

    async def run(self) -> None:
        """List and watch until cancelled."""
        name = self._kind.__name__
        while True:
            try:
                listing = self._client.list(self._kind, **self._filters)
                fresh = [o async for o in listing]
                for store in self.stores:
                    store.clear()
                    for obj in fresh:
                        store.put(_key(obj), obj)
                    store.synced.set()
                del fresh
                async for op, obj in self._client.watch(
                    self._kind, resource_version=listing.resourceVersion, **self._filters
                ):
                    for store in self.stores:
                        store.put(_key(obj), None if op == "DELETED" else obj)
            except (
                lightkube.ApiError,
                httpx2.HTTPError,  # what lightkube leaves untranslated: a 404 in plain text
                OSError,
                lightkube.LoadResourceError,
            ) as exc:
                # A kind whose CRD is not installed yet (its group unknown: the API
                # server's 404 is plain text) is listed again until it is.
                log.warning("watching %s: %s; listing again", name, exc)
            await asyncio.sleep(RELIST_DELAY_S)


def _raw(kind: Any) -> Any:
    """``kind`` as lightkube's generic resources read it: plain dicts, decoded once, with no
    model built and then turned back into a dict for the pure modules."""
    base = (
        generic_resource.GenericNamespacedResource
        if issubclass(kind, lightkube_resource.NamespacedResource)
        else generic_resource.GenericGlobalResource
    )
    return type(kind.__name__, (base,), {"_api_info": kind._api_info})


def _key(obj: Mapping[str, Any]) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    return meta.get("namespace") or "", meta.get("name") or ""


def _pick(obj: Mapping[str, Any] | None, *keys: str) -> dict[str, Any]:
    return {k: obj[k] for k in keys if k in obj} if obj else {}


def _meta(obj: Mapping[str, Any], *extra: str) -> dict[str, Any]:
    return _pick(obj.get("metadata"), "name", "namespace", "labels", "resourceVersion", *extra)


def _slim_node(obj: Mapping[str, Any]) -> dict[str, Any]:
    """What ``pools`` reads of a node: its labels, whether it takes pods, its GPUs."""
    status = obj.get("status") or {}
    return {
        "metadata": _meta(obj, "deletionTimestamp"),
        "spec": _pick(obj.get("spec"), "unschedulable"),
        "status": {
            "allocatable": status.get("allocatable") or {},
            "conditions": [_pick(c, "type", "status") for c in status.get("conditions") or []],
        },
    }


def _holding_gpus(obj: Mapping[str, Any]) -> dict[str, Any] | None:
    """A bound, running pod that holds GPUs, as ``pools`` counts them; None for any other
    pod (the GPUs free on each node are all that placement reads of pods)."""
    spec = obj.get("spec") or {}
    phase = (obj.get("status") or {}).get("phase")
    if not spec.get("nodeName") or phase in pools.TERMINATED or not pools.pod_gpus(obj):
        return None
    return {
        "metadata": _meta(obj),
        "spec": {
            "nodeName": spec["nodeName"],
            "containers": [_pick(c, "resources") for c in spec.get("containers") or []],
            "initContainers": [
                _pick(c, "restartPolicy", "resources") for c in spec.get("initContainers") or []
            ],
        },
        "status": {"phase": phase},
    }


def _executor_pod(obj: Mapping[str, Any]) -> dict[str, Any] | None:
    """What ``stuck`` reads of an executor's pod (its scheduling and pool, its containers'
    states); None for a pod of no executor."""
    if not _labelled(obj, render.EXECUTORS):
        return None
    status = obj.get("status") or {}
    return {
        "metadata": _meta(obj, "deletionTimestamp"),
        "spec": _pick(obj.get("spec"), "nodeName", "affinity"),
        "status": {
            **_pick(status, "phase", "conditions"),
            "containerStatuses": [
                _pick(c, "name", "ready", "state", "lastState")
                for c in status.get("containerStatuses") or []
            ],
        },
    }


def _slim_deployment(obj: Mapping[str, Any]) -> dict[str, Any]:
    """What readiness reads of an executor Deployment (its rollout), and the certificate
    its pods mount (``executor_secrets.roll``)."""
    template = ((obj.get("spec") or {}).get("template") or {}).get("metadata") or {}
    return {
        "metadata": _meta(obj, "generation"),
        "spec": {"template": {"metadata": _pick(template, "annotations")}},
        "status": dict(obj.get("status") or {}),
    }


def _slim_spec(obj: Mapping[str, Any]) -> dict[str, Any]:
    """An object's name, labels and spec (HPAs, GpuPools)."""
    return {"metadata": _meta(obj), "spec": dict(obj.get("spec") or {})}


def _slim_meta(obj: Mapping[str, Any]) -> dict[str, Any]:
    """An object's name and labels (Namespaces)."""
    return {"metadata": _meta(obj)}


class Wakeups:
    """One ``asyncio.Event`` per followed key: set by whatever changed, awaited by its follower.

    A wake while the follower is busy is kept for its next ``wait``; a wake for a key
    nobody follows is dropped.
    """

    def __init__(self) -> None:
        self._events: dict[Hashable, asyncio.Event] = {}

    def wake(self, key: Hashable) -> None:
        """Wake the follower of ``key``, now or at its next ``wait``."""
        event = self._events.get(key)
        if event is not None:
            event.set()

    async def wait(self, key: Hashable, *, timeout: float) -> bool:
        """Until ``key`` is woken or ``timeout`` seconds pass; True when woken.

        The first wait for a key returns at once: it starts following it.
        """
        event = self._events.get(key)
        if event is None:
            self._events[key] = asyncio.Event()
            return True
        try:
            async with asyncio.timeout(timeout):
                await event.wait()
        except TimeoutError:
            return False
        finally:
            event.clear()
        return True

    def forget(self, key: Hashable) -> None:
        """Stop following ``key`` (its object is gone)."""
        self._events.pop(key, None)


class Kube:
    """The API calls the handlers make, on a client that ``connect`` opened."""

    def __init__(self, client: lightkube.AsyncClient) -> None:
        self._client = client
        self._nodes: Store | None = None
        # Bound pods that hold GPUs, and the executors' pods (one watch of pods feeds both).
        self._gpu_pods: Store | None = None
        self._executor_pods: Store | None = None
        # Executor Deployments by namespace ("*": every namespace).
        self._deployments: dict[str, Store] = {}
        # GpuPools and Namespaces (cluster-wide), HPAs where Deployments are followed.
        self._gpu_pools: Store | None = None
        self._namespaces: Store | None = None
        self._hpas: dict[str, Store] = {}
        self._tasks: list[asyncio.Task[None]] = []
        # Woken by (namespace, executor Deployment name) when that Deployment changes.
        self.executors = Wakeups()

    def start_informers(self, namespaces: Sequence[str] = ()) -> None:
        """Follow nodes, pods, GpuPools, Namespaces and the executor Deployments and HPAs of
        ``namespaces`` in memory from now on.

        ``snapshot`` reads the nodes, the pods holding GPUs and the GpuPools,
        ``namespace_labels`` the Namespaces and ``autoscaled`` the HPAs on every
        reconcile; ``pods`` and ``deployment`` the executors', which readiness reads
        whenever an executor Deployment changes (``executors`` wakes its follower) and
        every few seconds. Each keeps only the fields the operator reads. Pods,
        GpuPools and Namespaces are read cluster-wide (the operator's ClusterRole);
        Deployments and HPAs only where it may (empty ``namespaces``: every one; else a
        Role in each named namespace): with a pattern among ``namespaces``,
        ``deployment`` and ``autoscaled`` ask the API each time.
        """
        followed = [] if any(GLOB & set(n) for n in namespaces) else list(namespaces) or ["*"]
        self._nodes = Store(_slim_node)
        self._gpu_pods = Store(_holding_gpus)
        self._executor_pods = Store(_executor_pod, group=_instance)
        self._deployments = {
            n: Store(_slim_deployment, on_change=self.executors.wake) for n in followed
        }
        self._hpas = {n: Store(_slim_spec) for n in followed}
        self._gpu_pools = Store(_slim_spec)
        self._namespaces = Store(_slim_meta)
        informers = [
            Informer(self._client, core_v1.Node, self._nodes),
            Informer(self._client, core_v1.Pod, self._gpu_pods, self._executor_pods, namespace="*"),
            Informer(self._client, GpuPool, self._gpu_pools),
            Informer(self._client, core_v1.Namespace, self._namespaces),
            *(
                Informer(
                    self._client, apps_v1.Deployment, store, namespace=n, labels=render.EXECUTORS
                )
                for n, store in self._deployments.items()
            ),
            *(
                Informer(self._client, autoscaling_v2.HorizontalPodAutoscaler, store, namespace=n)
                for n, store in self._hpas.items()
            ),
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
        self._nodes = self._gpu_pods = self._executor_pods = None
        self._deployments = {}
        self._gpu_pools = self._namespaces = None
        self._hpas = {}

    @property
    def client(self) -> lightkube.AsyncClient:
        """The lightkube client, for what has its own module (the Lease)."""
        return self._client

    async def snapshot(self) -> pools.Snapshot:
        """Nodes, pods bound to them (all namespaces; from the informers, only those holding
        GPUs) and GpuPools.

        They come from the informers once started, else from a listing.
        """
        if self._nodes is not None and self._gpu_pods is not None:
            await self._nodes.synced.wait()
            await self._gpu_pods.synced.wait()
            nodes = list(self._nodes.objects.values())
            pods = list(self._gpu_pods.objects.values())
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

    async def patch_status(self, agent: Mapping[str, Any], status: Mapping[str, Any]) -> None:
        """Merge ``status`` into the Agent's status; nothing when the Agent is gone."""
        meta = agent["metadata"]
        try:
            await self._client.patch(
                Agent.Status,
                meta["name"],
                {"status": dict(status)},
                namespace=meta["namespace"],
                patch_type=lightkube.types.PatchType.MERGE,
            )
        except lightkube.ApiError as exc:
            if exc.status.code != NOT_FOUND:
                raise

    async def deployment(self, name: str, *, namespace: str) -> dict[str, Any] | None:
        """The executor Deployment ``name`` in ``namespace``, or None when there is none.

        From memory where an informer follows the namespace, else from the API.
        """
        store = self._deployments.get(namespace) or self._deployments.get("*")
        if store is not None:
            await store.synced.wait()
            return store.objects.get((namespace, name))
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
        store = self._hpas.get(namespace) or self._hpas.get("*")
        if store is not None:
            await store.synced.wait()
            hpas = [o for (ns, _), o in store.objects.items() if ns == namespace]
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
    # A request waits for a free connection as long as it takes: a burst of new Agents
    # (a thousand applies at once) would outwait the pool's 10 s and fail them all.
    client = lightkube.AsyncClient(
        field_manager=conventions.FIELD_MANAGER,
        timeout=httpx2.Timeout(REQUEST_TIMEOUT_S, pool=None),
    )
    try:
        yield Kube(client)
    finally:
        await client.close()
