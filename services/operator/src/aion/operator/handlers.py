"""The kopf handlers of ``agents.aion.dev``, registered on a registry that ``main`` passes in.

On create, update of the spec, and resume after a restart, an Agent's spec is
validated, the pools are read from the cluster (nodes, bound pods, GpuPools),
``placement.choose`` picks one, and the executor Deployment and Service are
applied (server-side, so a re-run after a crash changes nothing twice). The
status records the pool, the generation handled, a ``Placed`` condition and the
reason in words; an Event says the same. A timer on each Agent then copies its
Deployment's ready replicas into the status and sets ``Ready``.

- An invalid spec fails permanently (retrying cannot fix it): phase Failed,
  condition ``Placed`` False with reason ``InvalidSpec``.
- ``NoCapacity``: eligible pools are full; the handler retries every
  ``retry_s`` seconds, so freed GPUs or new nodes place the Agent.
- ``NoEligiblePool``: no pool can ever take the spec; the next spec change (or
  an operator restart) tries again.

The handlers decide and patch; ``decide`` and ``readiness`` are pure, ``render``
builds the objects and ``kube`` talks to the API.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import kopf

from aion.core import errors
from aion.operator import conditions, kube, placement, pools, render
from aion.operator import settings as operator_settings
from aion.operator import spec as spec_mod

GROUP = kube.GROUP
VERSION = kube.VERSION
PLURAL = "agents"
PLACED = "Placed"
READY = "Ready"
INVALID_SPEC = "InvalidSpec"


@dataclasses.dataclass(frozen=True)
class Decision:
    """What handling one Agent produced: where it goes, its executor objects, its status."""

    placement: placement.Placement
    status: dict[str, Any]
    deployment: render.Manifest | None = None
    service: render.Manifest | None = None


def _executor_env(cfg: operator_settings.AionOperatorSettings) -> dict[str, str]:
    env = {"AION_EXECUTOR_LOG_LEVEL": cfg.log_level}
    if cfg.otlp_endpoint:
        env["AION_EXECUTOR_OTLP_ENDPOINT"] = cfg.otlp_endpoint
    return env


def _status(body: Mapping[str, Any], *, phase: str, condition: Mapping[str, Any],
            now: datetime.datetime) -> dict[str, Any]:
    generation = body["metadata"].get("generation")
    existing = (body.get("status") or {}).get("conditions") or []
    return {"phase": phase, "observedGeneration": generation,
            "conditions": conditions.set_condition(
                existing, PLACED, observed_generation=generation, now=now, **condition)}


def _own_pod(pod: Mapping[str, Any], *, name: str, namespace: str) -> bool:
    meta = pod.get("metadata") or {}
    return (meta.get("namespace") == namespace
            and (meta.get("labels") or {}).get("aion.dev/agent") == render.labels(name)[
                "aion.dev/agent"])


def discover(body: Mapping[str, Any], snapshot: kube.Snapshot, *,
             problems: list[str] | None = None) -> tuple[pools.Pool, ...]:
    """The cluster's pools as this Agent sees them: its own pods' GPUs count as free.

    Otherwise a spec change would find the Agent's current pool full of itself.
    """
    meta = body["metadata"]
    terms = pools.configs(snapshot.gpu_pools)
    if problems is not None:
        problems.extend(terms.problems)
    others = [p for p in snapshot.pods
              if not _own_pod(p, name=meta["name"], namespace=meta["namespace"])]
    return pools.discover(snapshot.nodes, others, configs=terms.by_pool)


def decide(body: Mapping[str, Any], spec: spec_mod.AgentSpec, *,
           found: Sequence[pools.Pool], cfg: operator_settings.AionOperatorSettings,
           now: datetime.datetime) -> Decision:
    """Place a valid Agent on one of ``found`` and render its executor, or say why not."""
    meta = body["metadata"]
    name, namespace = meta["name"], meta["namespace"]
    chosen = placement.choose(spec, found)
    if chosen.pool is None:
        status = _status(body, phase="Pending", now=now, condition={
            "status": "False", "reason": chosen.reason, "message": chosen.message})
        status["placementReason"] = chosen.message
        return Decision(placement=chosen, status=status)
    pool = chosen.pool
    owner = render.Owner(name=name, uid=meta["uid"])
    deployment = render.executor_deployment(
        name, namespace, spec, pool_label=pool.label, pool=pool.name,
        image=cfg.executor_image, owner=owner, env=_executor_env(cfg))
    service = render.executor_service(name, namespace, owner=owner)
    status = _status(body, phase="Placed", now=now, condition={
        "status": "True", "reason": chosen.reason, "message": chosen.message})
    status |= {"nodePool": pool.name, "placementReason": chosen.message}
    return Decision(placement=chosen, status=status, deployment=deployment, service=service)


def invalid_status(body: Mapping[str, Any], *, message: str,
                   now: datetime.datetime) -> dict[str, Any]:
    """The status of an Agent whose spec is invalid: phase Failed, and why."""
    status = _status(body, phase="Failed", now=now, condition={
        "status": "False", "reason": INVALID_SPEC, "message": message})
    status["placementReason"] = message
    return status


def parse(body: Mapping[str, Any], patch: kopf.Patch, *,
          now: datetime.datetime) -> spec_mod.AgentSpec:
    """The Agent's spec; an invalid one patches the status and raises ``PermanentError``."""
    try:
        return spec_mod.parse(body.get("spec"))
    except errors.InvalidArgument as exc:
        patch.status.update(invalid_status(body, message=exc.message, now=now))
        raise kopf.PermanentError(exc.message) from exc


def readiness(body: Mapping[str, Any], deployment: Mapping[str, Any] | None, *,
              now: datetime.datetime) -> dict[str, Any] | None:
    """The Agent's status after its Deployment's latest rollout; None when nothing changes.

    Only for an Agent placed at its current generation: until then the Deployment
    may still be the previous spec's.
    """
    status = body.get("status") or {}
    generation = body["metadata"].get("generation")
    pool = status.get("nodePool")
    if deployment is None or not pool or status.get("observedGeneration") != generation:
        return None
    try:
        wanted = spec_mod.parse(body.get("spec")).replicas.min
    except errors.InvalidArgument:
        return None
    observed = deployment.get("status") or {}
    ready = int(observed.get("readyReplicas") or 0)
    updated = int(observed.get("updatedReplicas") or 0)
    current = (observed.get("observedGeneration") or 0) >= (
        (deployment.get("metadata") or {}).get("generation") or 0)
    is_ready = current and ready >= wanted and updated >= wanted
    message = f"{ready} of {wanted} executor replica(s) ready on pool {pool}"
    merged = conditions.set_condition(
        status.get("conditions") or [], READY, status="True" if is_ready else "False",
        reason="ReplicasReady" if is_ready else "ReplicasNotReady", message=message,
        observed_generation=generation, now=now)
    new = {"phase": "Ready" if is_ready else "Placed", "readyReplicas": ready,
           "conditions": merged}
    before = conditions.find(status.get("conditions") or [], READY)
    after = conditions.find(merged, READY)
    if (status.get("phase"), status.get("readyReplicas")) == (new["phase"], ready) and (
            before is not None and after is not None
            and _same(before, after, ("status", "reason", "message"))):
        return None
    return new


def _same(a: Mapping[str, Any], b: Mapping[str, Any], keys: Iterable[str]) -> bool:
    return all(a.get(k) == b.get(k) for k in keys)


async def reconcile(body: kopf.Body, patch: kopf.Patch, *, client: kube.Kube,
                    cfg: operator_settings.AionOperatorSettings, logger: kopf.Logger,
                    ) -> Decision:
    """Handle one Agent: place it, apply its executor, patch its status, post an Event.

    Raises ``kopf.PermanentError`` for an invalid spec and ``kopf.TemporaryError``
    while the eligible pools are full.
    """
    now = datetime.datetime.now(datetime.UTC)
    spec = parse(body, patch, now=now)
    problems: list[str] = []
    found = discover(body, await client.snapshot(), problems=problems)
    for problem in problems:
        logger.warning("%s", problem)
    decision = decide(body, spec, found=found, cfg=cfg, now=now)
    if decision.deployment is not None and decision.service is not None:
        await client.apply(decision.deployment)
        await client.apply(decision.service)
    patch.status.update(decision.status)
    chosen = decision.placement
    if chosen.pool is not None:
        kopf.info(body, reason=chosen.reason, message=chosen.message)
        logger.info("placed Agent %s on pool %s", body["metadata"]["name"], chosen.pool.name)
    else:
        kopf.warn(body, reason=chosen.reason, message=chosen.message)
        if chosen.reason == placement.NO_CAPACITY:
            raise kopf.TemporaryError(chosen.message, delay=cfg.retry_s)
    return decision


def register(registry: kopf.OperatorRegistry, *, client: kube.Kube,
             cfg: operator_settings.AionOperatorSettings) -> None:
    """Register the operator's handlers on ``registry`` (never on kopf's global one)."""

    @kopf.on.login(registry=registry, id="login")
    def login(**kwargs: Any) -> Any:
        """In-cluster credentials when there are some, else the kubeconfig's."""
        return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)

    # One id for every cause: it names kopf's progress annotation on the Agent.
    @kopf.on.resume(GROUP, VERSION, PLURAL, registry=registry, id="place")
    @kopf.on.create(GROUP, VERSION, PLURAL, registry=registry, id="place")
    @kopf.on.update(GROUP, VERSION, PLURAL, registry=registry, id="place", field="spec")
    async def place(body: kopf.Body, patch: kopf.Patch, logger: kopf.Logger,
                    **_: Any) -> None:
        """Place the Agent and apply its executor; see ``reconcile``."""
        await reconcile(body, patch, client=client, cfg=cfg, logger=logger)

    @kopf.timer(GROUP, VERSION, PLURAL, registry=registry, id="readiness",
                interval=cfg.readiness_interval_s)
    async def follow(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
        """Copy the executor Deployment's ready replicas into the status; see ``readiness``."""
        meta = body["metadata"]
        deployment = await client.deployment(render.executor_name(meta["name"]),
                                             namespace=meta["namespace"])
        update = readiness(body, deployment, now=datetime.datetime.now(datetime.UTC))
        if update is not None:
            patch.status.update(update)
