"""Handling an Agent against the API (``reconcile``) and the kopf registrations (``handlers``).

The API is a recording fake: what matters is which calls are made, in which order.
"""

from __future__ import annotations

import datetime
from typing import Any

import kopf
import pytest

from aion.core import tls
from aion.operator import handlers, kube, pools, reconcile, registration, settings

NOW = datetime.datetime(2025, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)


def _agent(
    data: Any,
    *,
    generation: int = 3,
    status: dict[str, Any] | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": "aion.dev/v1alpha1",
        "kind": "Agent",
        "metadata": {
            "name": "chat",
            "namespace": "team-a",
            "uid": "uid-1",
            "generation": generation,
        },
        "spec": data,
    }
    if status is not None:
        body["status"] = status
    return body


def test_handlers_go_on_the_given_registry(cfg: settings.AionOperatorSettings) -> None:
    registry = kopf.OperatorRegistry()
    handlers.register(registry, client=kube.Kube(_unused_client()), cfg=cfg)
    # kopf keeps no public listing of a registry's handlers; its own tests read these.
    # No change handler (kopf would remember each spec in an annotation) and no timer on
    # Agents (kopf would hold a finalizer on each): their followers place them.
    assert not registry._changing.get_all_handlers()
    assert {h.id for h in registry._spawning.get_all_handlers()} == {"capacity"}
    assert {h.id for h in registry._activities.get_all_handlers()} == {"login", "followers"}
    assert {h.id for h in registry._watching.get_all_handlers()} == {"follow"}


async def test_a_registrar_adds_the_deregistering_delete_handler(
    cfg: settings.AionOperatorSettings,
) -> None:
    # Async: a Registrar opens a grpc.aio channel, which needs the running loop (outside
    # one it asks asyncio for a current loop, which any earlier asyncio.run took away).
    registry = kopf.OperatorRegistry()
    registrar = registration.Registrar("127.0.0.1:1", tls=tls.LocalCa().tls("operator"))
    try:
        handlers.register(
            registry, client=kube.Kube(_unused_client()), cfg=cfg, registrar=registrar
        )
        ids = {h.id for h in registry._changing.get_all_handlers()}
        assert ids == {"deregister"}
    finally:
        await registrar.close()


def _unused_client() -> Any:
    # Registering makes no call; a client would need a kubeconfig to build.
    return object()


class _RecordingKube:
    """What ``reconcile`` calls on the cluster, recorded in order."""

    def __init__(self, snapshot: pools.Snapshot, calls: list[str]) -> None:
        self._snapshot = snapshot
        self.calls = calls
        self.applied: list[dict[str, Any]] = []

    async def snapshot(self) -> pools.Snapshot:
        return self._snapshot

    async def autoscaled(self, _name: str, *, namespace: str) -> bool:
        return False

    async def apply(self, manifest: dict[str, Any]) -> None:
        self.calls.append(f"apply {manifest['kind']}")
        self.applied.append(manifest)

    async def deployment(self, name: str, *, namespace: str) -> dict[str, Any] | None:
        # What the informer holds: nothing for a new Agent, else its executor's Deployment.
        return {"metadata": {"name": name, "generation": 1}} if self.existed else None

    existed = False


class _RecordingKeeper:
    def __init__(self, calls: list[str]) -> None:
        self.calls = calls

    async def ensure(self, namespace: str) -> str:
        self.calls.append(f"ensure {namespace}")
        return "2027-01-01T00:00:00+00:00"


async def test_reconcile_keeps_the_executor_secrets_before_applying_what_mounts_them(
    cfg: settings.AionOperatorSettings,
    local_nodes: list[dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(kopf, "info", lambda *_, **__: None)  # Events need a running kopf
    calls: list[str] = []
    client = _RecordingKube(pools.Snapshot(nodes=tuple(local_nodes), pods=(), gpu_pools=()), calls)
    executors = reconcile.Executors(
        secrets=_RecordingKeeper(calls),  # type: ignore[arg-type]
        platform_namespace="aion",
    )
    body = _agent({"model": {"name": "m"}, "gpu": {"count": 0}})
    patch = kopf.Patch()
    decision = await reconcile.reconcile(
        kopf.Body(body),  # type: ignore[arg-type]
        patch,
        client=client,  # type: ignore[arg-type]
        cfg=cfg,
        logger=kopf.LocalObjectLogger(
            body=kopf.Body(body),  # type: ignore[arg-type]
            settings=kopf.OperatorSettings(),
        ),
        executors=executors,
    )
    assert calls == ["ensure team-a", "apply Deployment", "apply Service", "apply NetworkPolicy"]
    assert decision.deployment is not None
    assert decision.network_policy is not None
    annotations = decision.deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["aion.dev/tls-serial"] == "2027-01-01T00:00:00+00:00"
    peer = decision.network_policy["spec"]["ingress"][0]["from"][0]
    assert peer["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "aion"}


async def test_following_an_agent_renews_the_secrets_and_rolls_an_older_deployment(
    cfg: settings.AionOperatorSettings,
) -> None:
    calls: list[str] = []
    deployment = {
        "metadata": {"generation": 2},
        "status": {"readyReplicas": 1, "updatedReplicas": 1, "observedGeneration": 2},
    }

    class Kube:
        async def pods(self, *, selector: dict[str, str], namespace: str) -> list[Any]:
            return []

        async def deployment(self, name: str, *, namespace: str) -> dict[str, Any]:
            calls.append(f"read {name}")
            return deployment

    class Keeper(_RecordingKeeper):
        async def roll(self, found: dict[str, Any] | None, namespace: str) -> bool:
            calls.append(f"roll {namespace}")
            assert found is deployment
            return True

    body = _agent(
        {"model": {"name": "m"}, "gpu": {"count": 0}},
        generation=2,
        status={"nodePool": "cpu", "observedGeneration": 2, "phase": "Placed"},
    )
    await reconcile.follow(
        kopf.Body(body),  # type: ignore[arg-type]
        kopf.Patch(),
        client=Kube(),  # type: ignore[arg-type]
        cfg=cfg,
        logger=kopf.LocalObjectLogger(
            body=kopf.Body(body),  # type: ignore[arg-type]
            settings=kopf.OperatorSettings(),
        ),
        registrar=None,
        executors=reconcile.Executors(
            secrets=Keeper(calls),  # type: ignore[arg-type]
            platform_namespace="aion",
        ),
    )
    assert calls == ["ensure team-a", "read aion-executor-chat", "roll team-a"]


def _logger(body: dict[str, Any]) -> kopf.Logger:
    return kopf.LocalObjectLogger(
        body=kopf.Body(body),  # type: ignore[arg-type]
        settings=kopf.OperatorSettings(),
    )


async def _placed(
    cfg: settings.AionOperatorSettings, local_nodes: list[dict[str, Any]], *, existed: bool
) -> dict[str, Any]:
    """The status a first reconcile patches, with or without an executor Deployment."""
    client = _RecordingKube(pools.Snapshot(nodes=tuple(local_nodes), pods=(), gpu_pools=()), [])
    client.existed = existed
    body = _agent({"model": {"name": "m"}, "gpu": {"count": 0}})
    patch = kopf.Patch()
    await reconcile.reconcile(
        kopf.Body(body),  # type: ignore[arg-type]
        patch,
        client=client,  # type: ignore[arg-type]
        cfg=cfg,
        logger=_logger(body),
    )
    return {**body, "status": dict(patch["status"])}


class _Informed:
    """The informers' view of one Agent's executor: its pods and its Deployment."""

    def __init__(self, deployment: dict[str, Any], pods: list[dict[str, Any]] | None = None):
        self.deployment_seen = deployment
        self.pods_seen = pods if pods is not None else []

    async def pods(self, *, selector: dict[str, str], namespace: str) -> list[Any]:
        return self.pods_seen

    async def deployment(self, name: str, *, namespace: str) -> dict[str, Any]:
        return self.deployment_seen


async def _look(
    cfg: settings.AionOperatorSettings, body: dict[str, Any], client: _Informed
) -> tuple[bool, kopf.Patch]:
    """One readiness look (no agent service): whether settled, and what it patched."""
    patch = kopf.Patch()
    calm = await reconcile.follow(
        kopf.Body(body),  # type: ignore[arg-type]
        patch,
        client=client,  # type: ignore[arg-type]
        cfg=cfg,
        logger=_logger(body),
        registrar=None,
    )
    return calm, patch


async def test_a_first_placement_already_says_the_executor_is_loading(
    cfg: settings.AionOperatorSettings,
    local_nodes: list[dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # So the first look at its new Deployment (no replica ready) patches nothing.
    monkeypatch.setattr(kopf, "info", lambda *_, **__: None)  # Events need a running kopf
    placed = await _placed(cfg, local_nodes, existed=False)
    assert placed["status"]["phase"] == "Placed"
    kinds = {c["type"]: (c["status"], c["reason"]) for c in placed["status"]["conditions"]}
    assert kinds == {
        "Placed": ("True", "Placed"),
        "ModelReady": ("False", "ModelLoading"),
        "Ready": ("False", "ReplicasNotReady"),
    }

    loading = {"metadata": {"generation": 1}, "status": {"observedGeneration": 1}}
    _, looked = await _look(cfg, placed, _Informed(loading))
    assert not looked


async def test_placing_again_leaves_readiness_to_the_deployment(
    cfg: settings.AionOperatorSettings,
    local_nodes: list[dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A spec change or a resume finds the executor's Deployment: its rollout says.
    monkeypatch.setattr(kopf, "info", lambda *_, **__: None)
    placed = await _placed(cfg, local_nodes, existed=True)
    assert [c["type"] for c in placed["status"]["conditions"]] == ["Placed"]


async def test_a_look_says_when_the_agent_is_settled_and_may_wait_for_a_change(
    cfg: settings.AionOperatorSettings,
    local_nodes: list[dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(kopf, "info", lambda *_, **__: None)  # Events need a running kopf
    placed = await _placed(cfg, local_nodes, existed=False)
    ready = {
        "metadata": {"generation": 1},
        "status": {"observedGeneration": 1, "readyReplicas": 1, "updatedReplicas": 1},
    }
    informed = _Informed(ready)

    calm, patch = await _look(cfg, placed, informed)
    assert patch["status"]["phase"] == "Ready"
    assert not calm  # it just changed: look again soon
    now_ready = {**placed, "status": {**placed["status"], **patch["status"]}}
    calm, patch = await _look(cfg, now_ready, informed)
    assert not patch
    assert calm  # Ready as it was: only a change can move it
    # A new replica (the autoscaler's) waits for a node: not settled, its deadline counts.
    waiting = datetime.datetime.now(datetime.UTC).isoformat()
    informed.pods_seen.append(
        {
            "metadata": {"name": "p1"},
            "spec": {},
            "status": {
                "phase": "Pending",
                "conditions": [
                    {
                        "type": "PodScheduled",
                        "status": "False",
                        "reason": "Unschedulable",
                        "lastTransitionTime": waiting,
                    }
                ],
            },
        }
    )
    calm, _ = await _look(cfg, now_ready, informed)
    assert not calm


def test_kopf_keeps_a_connection_per_watch_and_a_few_for_requests(
    cfg: settings.AionOperatorSettings,
) -> None:
    # Every namespace: one watch of Agents and one of GpuPools.
    assert handlers.connections(cfg) == 2 + handlers.REQUESTS
    named = cfg.model_copy(update={"namespaces": ("a", "b", "c")})
    assert handlers.connections(named) == 3 + 1 + handlers.REQUESTS
    # Patterns: kopf watches each namespace they match, a number not known beforehand.
    assert handlers.connections(cfg.model_copy(update={"namespaces": ("team-*",)})) == 0
