"""An Agent's status, as pure functions of its body, its spec and the cluster's pools.

What the reconcile of an Agent decides, without calling anything (kopf's
``causes``): where it goes (``place``, ``fall_back``), what its status says
(``invalid_status``, ``readiness``, ``registered_status``), whether it must be
registered (``needs_registration``, ``registered_now``), and a GpuPool's status
(``pool_status``).
Statuses are plain dicts, merged into kopf's patch by ``reconcile``; conditions
are merged the Kubernetes way (``conditions``), their types and reasons named
in ``conventions``.

- An invalid spec fails permanently (retrying cannot fix it): phase Failed,
  condition ``Placed`` False with reason ``InvalidSpec``.
- ``NoCapacity``: eligible pools are full; the handler retries every
  ``retry_s`` seconds, so freed GPUs or new nodes place the Agent.
- ``NoEligiblePool``: no pool can ever take the spec; the next spec change (or
  an operator restart) tries again.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import pydantic

from aion.core import agentspec
from aion.operator import conditions, conventions, placement, pools, render, stuck
from aion.operator import settings as operator_settings


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What handling one Agent produced: where it goes, its executor objects, its status."""

    placement: placement.Placement
    status: dict[str, Any]
    deployment: render.Manifest | None = None
    service: render.Manifest | None = None
    network_policy: render.Manifest | None = None


def _conditions(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    return list((body.get("status") or {}).get("conditions") or [])


def _status(
    body: Mapping[str, Any],
    *,
    phase: str,
    condition: Mapping[str, Any],
    now: datetime.datetime,
    existing: Sequence[Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    generation = body["metadata"].get("generation")
    return {
        "phase": phase,
        "observedGeneration": generation,
        "conditions": conditions.set_condition(
            _conditions(body) if existing is None else existing,
            conventions.PLACED,
            observed_generation=generation,
            now=now,
            **condition,
        ),
    }


def _own_pod(pod: Mapping[str, Any], *, name: str, namespace: str) -> bool:
    meta = pod.get("metadata") or {}
    return (
        meta.get("namespace") == namespace
        and (meta.get("labels") or {}).get(conventions.AGENT_LABEL)
        == render.labels(name)[conventions.AGENT_LABEL]
    )


def discover(
    body: Mapping[str, Any], snapshot: pools.Snapshot, *, problems: list[str] | None = None
) -> tuple[pools.Pool, ...]:
    """The cluster's pools as this Agent sees them: its own pods' GPUs count as free.

    Otherwise a spec change would find the Agent's current pool full of itself.
    """
    meta = body["metadata"]
    terms = pools.configs(snapshot.gpu_pools)
    if problems is not None:
        problems.extend(terms.problems)
    others = [
        p for p in snapshot.pods if not _own_pod(p, name=meta["name"], namespace=meta["namespace"])
    ]
    return pools.discover(snapshot.nodes, others, configs=terms.by_pool)


def place(
    body: Mapping[str, Any],
    spec: agentspec.AgentSpec,
    *,
    found: Sequence[pools.Pool],
    cfg: operator_settings.AionOperatorSettings,
    now: datetime.datetime,
    exclude: Sequence[str] = (),
    stay: str | None = None,
    autoscaled: bool = False,
    tls_version: str | None = None,
    platform_namespace: str | None = None,
) -> Outcome:
    """Place a valid Agent on one of ``found`` and render its executor, or say why not.

    ``exclude`` names pools fallen back from (kept in ``status.avoidPools``);
    ``stay`` the pool the Agent runs on, kept while it still fits.
    ``tls_version``: the executors' certificate to mount (``render.executor_deployment``);
    ``platform_namespace``: where the callers the executor NetworkPolicy admits run
    (None: no NetworkPolicy).
    """
    meta = body["metadata"]
    name, namespace = meta["name"], meta["namespace"]
    chosen = placement.choose(spec, found, exclude=exclude, stay=stay)
    existing = _conditions(body)
    if not exclude:
        existing = [c for c in existing if c.get("type") != conventions.CAPACITY_DEGRADED]
    if chosen.pool is None:
        status = _status(
            body,
            phase="Pending",
            now=now,
            existing=existing,
            condition={"status": "False", "reason": chosen.reason, "message": chosen.message},
        )
        status |= {"placementReason": chosen.message, "avoidPools": list(exclude) or None}
        return Outcome(placement=chosen, status=status)
    pool = chosen.pool
    owner = render.Owner(name=name, uid=meta["uid"])
    deployment = render.executor_deployment(
        name,
        namespace,
        spec,
        pool_label=pool.label,
        pool=pool.name,
        image=cfg.executor_image,
        owner=owner,
        env=render.executor_env(cfg),
        autoscaled=autoscaled,
        tls_version=tls_version,
        kafka=cfg.executor_kafka if cfg.kafka_bootstrap else None,
    )
    service = render.executor_service(name, namespace, owner=owner)
    policy = (
        None
        if platform_namespace is None
        else render.executor_network_policy(
            name, namespace, owner=owner, platform_namespace=platform_namespace
        )
    )
    status = _status(
        body,
        phase="Placed",
        now=now,
        existing=existing,
        condition={"status": "True", "reason": chosen.reason, "message": chosen.message},
    )
    status |= {
        "nodePool": pool.name,
        "placementReason": chosen.message,
        "avoidPools": list(exclude) or None,
    }
    return Outcome(
        placement=chosen,
        status=status,
        deployment=deployment,
        service=service,
        network_policy=policy,
    )


def fall_back(
    body: Mapping[str, Any],
    spec: agentspec.AgentSpec,
    waiting: stuck.Stuck,
    *,
    found: Sequence[pools.Pool],
    cfg: operator_settings.AionOperatorSettings,
    now: datetime.datetime,
    autoscaled: bool = False,
    tls_version: str | None = None,
    platform_namespace: str | None = None,
) -> Outcome | None:
    """Move an Agent whose executor pods stay unschedulable to the next eligible pool.

    The pool it leaves joins ``status.avoidPools`` until the spec changes, and the
    ``CapacityDegraded`` condition says why. With no other pool to go to, the
    Agent stays where it is (its pods wait there) and the condition says so;
    None means that was already said, so nothing changes.
    """
    status = body.get("status") or {}
    pool = str(status.get("nodePool") or "")
    avoid = [*(status.get("avoidPools") or []), pool]
    why = (
        f"executor pod {waiting.pod} stayed unschedulable on pool {pool} for "
        f"{waiting.seconds:.0f}s ({waiting.message or 'no reason given'})"
    )
    outcome = place(
        body,
        spec,
        found=found,
        cfg=cfg,
        now=now,
        exclude=avoid,
        autoscaled=autoscaled,
        tls_version=tls_version,
        platform_namespace=platform_namespace,
    )
    generation = body["metadata"].get("generation")
    if outcome.placement.pool is None:
        message = f"{why}; no other eligible pool has room: {outcome.placement.message}"
        degraded = conditions.find(_conditions(body), conventions.CAPACITY_DEGRADED)
        if degraded is not None and degraded.get("reason") == conventions.NO_CAPACITY:
            return None
        merged = conditions.set_condition(
            _conditions(body),
            conventions.CAPACITY_DEGRADED,
            status="True",
            reason=conventions.NO_CAPACITY,
            message=message,
            observed_generation=generation,
            now=now,
        )
        return Outcome(
            placement=dataclasses.replace(outcome.placement, message=message),
            status={"conditions": merged},
        )
    target = outcome.placement.pool
    assert target is not None
    message = f"{why}; moved to pool {target.name}: {outcome.placement.message}"
    # Registered again once Ready on the new pool, so the agent service learns the pool.
    kept = [c for c in outcome.status["conditions"] if c.get("type") != conventions.REGISTERED]
    merged = conditions.set_condition(
        kept,
        conventions.CAPACITY_DEGRADED,
        status="True",
        reason=conventions.FELL_BACK,
        message=message,
        observed_generation=generation,
        now=now,
    )
    return dataclasses.replace(
        outcome,
        placement=dataclasses.replace(
            outcome.placement, reason=conventions.PLACED_ON_POOL, message=message
        ),
        status=outcome.status | {"conditions": merged, "placementReason": message},
    )


def invalid_status(
    body: Mapping[str, Any], *, message: str, now: datetime.datetime
) -> dict[str, Any]:
    """The status of an Agent whose spec is invalid: phase Failed, and why."""
    status = _status(
        body,
        phase="Failed",
        now=now,
        condition={"status": "False", "reason": conventions.INVALID_SPEC, "message": message},
    )
    status["placementReason"] = message
    return status


def placed_now(body: Mapping[str, Any]) -> bool:
    """Whether the Agent is placed on a pool for its current spec generation."""
    status = body.get("status") or {}
    return bool(status.get("nodePool")) and (
        status.get("observedGeneration") == body["metadata"].get("generation")
    )


def readiness(
    body: Mapping[str, Any],
    deployment: Mapping[str, Any] | None,
    *,
    now: datetime.datetime,
    pods: Iterable[Mapping[str, Any]] = (),
) -> dict[str, Any] | None:
    """The Agent's status after its Deployment's latest rollout; None when nothing changes.

    Only for an Agent placed at its current generation: until then the Deployment
    may still be the previous spec's. ``ModelReady`` says whether any executor
    serves the model (its readiness probe passes only once the model is loaded);
    ``Ready`` whether the rollout of this spec reached ``replicas.min``. While none
    serves, an executor pod that cannot run (``stuck.failing``: image, Secret, model
    load) gives ``ModelReady`` its reason and the kubelet's words.
    """
    status = body.get("status") or {}
    generation = body["metadata"].get("generation")
    pool = status.get("nodePool")
    if deployment is None or not placed_now(body):
        return None
    try:  # the replicas alone: a whole spec's parse at every look was 8% of a burst's CPU
        replicas = (body.get("spec") or {}).get("replicas") or {}
        wanted = agentspec.Replicas.model_validate(replicas).min
    except pydantic.ValidationError:
        return None
    observed = deployment.get("status") or {}
    ready = int(observed.get("readyReplicas") or 0)
    updated = int(observed.get("updatedReplicas") or 0)
    current = (observed.get("observedGeneration") or 0) >= (
        (deployment.get("metadata") or {}).get("generation") or 0
    )
    is_ready = current and ready >= wanted and updated >= wanted
    message = f"{ready} of {wanted} executor replica(s) ready on pool {pool}"
    broken = None if ready else stuck.failing(pods)
    if ready:
        reason, loaded = "ModelLoaded", f"the model is loaded on {ready} executor replica(s)"
    elif broken is not None:
        reason, loaded = broken.reason, f"executor pod {broken.pod}: {broken.message}"
        message = f"{message}; {loaded}"
    else:
        reason, loaded = "ModelLoading", "no executor replica has loaded the model yet"
    merged = conditions.set_condition(
        status.get("conditions") or [],
        conventions.MODEL_READY,
        status="True" if ready > 0 else "False",
        reason=reason,
        message=loaded,
        observed_generation=generation,
        now=now,
    )
    merged = conditions.set_condition(
        merged,
        conventions.READY,
        status="True" if is_ready else "False",
        reason="ReplicasReady" if is_ready else "ReplicasNotReady",
        message=message,
        observed_generation=generation,
        now=now,
    )
    new = {"phase": "Ready" if is_ready else "Placed", "readyReplicas": ready, "conditions": merged}
    if (status.get("phase"), status.get("readyReplicas")) == (new["phase"], ready) and all(
        _same(
            conditions.find(status.get("conditions") or [], kind),
            conditions.find(merged, kind),
            ("status", "reason", "message"),
        )
        for kind in (conventions.MODEL_READY, conventions.READY)
    ):
        return None
    return new


def _same(a: Mapping[str, Any] | None, b: Mapping[str, Any] | None, keys: Iterable[str]) -> bool:
    if a is None or b is None:
        return a is b
    return all(a.get(k) == b.get(k) for k in keys)


def needs_registration(body: Mapping[str, Any]) -> bool:
    """Whether a Ready Agent's current spec is not yet registered with the agent service."""
    status = body.get("status") or {}
    if status.get("phase") != "Ready" or not placed_now(body):
        return False
    registered = conditions.find(status.get("conditions") or [], conventions.REGISTERED)
    return (
        registered is None
        or registered.get("status") != "True"
        or (registered.get("observedGeneration") != body["metadata"].get("generation"))
    )


def registered_now(body: Mapping[str, Any]) -> bool:
    """Whether a Ready Agent's current spec is registered with the agent service."""
    status = body.get("status") or {}
    return status.get("phase") == "Ready" and placed_now(body) and not needs_registration(body)


def registered_status(
    body: Mapping[str, Any], *, ok: bool, message: str, now: datetime.datetime, reason: str = ""
) -> dict[str, Any]:
    """The conditions after a registration attempt (``reason`` of a refusal)."""
    return {
        "conditions": conditions.set_condition(
            _conditions(body),
            conventions.REGISTERED,
            status="True" if ok else "False",
            reason=conventions.REGISTERED
            if ok
            else reason or conventions.AGENT_SERVICE_UNAVAILABLE,
            message=message,
            observed_generation=body["metadata"].get("generation"),
            now=now,
        )
    }


def refused_again(body: Mapping[str, Any], *, reason: str, message: str) -> bool:
    """Whether the Registered condition already says this refusal (no second Event)."""
    found = conditions.find(_conditions(body), conventions.REGISTERED)
    return (
        found is not None
        and found.get("status") == "False"
        and (found.get("reason"), found.get("message")) == (reason, message)
    )


def pool_status(
    body: Mapping[str, Any], snapshot: pools.Snapshot, *, now: datetime.datetime
) -> dict[str, Any] | None:
    """A GpuPool's new status from the cluster, or None when only ``observedAt`` would change.

    A GpuPool that names no pool of the cluster says so: no nodes, no GPUs.
    """
    name = body["metadata"]["name"]
    found = {p.name: p for p in pools.discover(snapshot.nodes, snapshot.pods)}
    pool = found.get(name)
    new = (
        pools.status(pool, now=now)
        if pool is not None
        else {
            "product": None,
            "nodes": 0,
            "gpus": 0,
            "freeGpus": 0,
            "gpuMemoryMiB": None,
            "observedAt": conditions.timestamp(now),
        }
    )
    old = body.get("status") or {}
    if all(old.get(k) == v for k, v in new.items() if k != "observedAt"):
        return None
    return new
