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

from aion.core import agentspec, errors
from aion.operator import (
    conditions,
    executor_secrets,
    kube,
    placement,
    pools,
    registration,
    render,
    stuck,
)
from aion.operator import settings as operator_settings

GROUP = kube.GROUP
VERSION = kube.VERSION
PLURAL = "agents"
PLACED = "Placed"
READY = "Ready"
MODEL_READY = "ModelReady"
REGISTERED = "Registered"
CAPACITY_DEGRADED = "CapacityDegraded"
INVALID_SPEC = "InvalidSpec"
FELL_BACK = "FellBack"
ALREADY_REGISTERED = "AlreadyRegistered"


@dataclasses.dataclass(frozen=True)
class Decision:
    """What handling one Agent produced: where it goes, its executor objects, its status."""

    placement: placement.Placement
    status: dict[str, Any]
    deployment: render.Manifest | None = None
    service: render.Manifest | None = None
    network_policy: render.Manifest | None = None


def _executor_env(cfg: operator_settings.AionOperatorSettings) -> dict[str, str]:
    env = {"AION_EXECUTOR_LOG_LEVEL": cfg.log_level}
    if cfg.kafka_bootstrap:  # load reports for the router
        env["AION_EXECUTOR_KAFKA_BOOTSTRAP"] = cfg.kafka_bootstrap
    if cfg.otlp_endpoint:
        env["AION_EXECUTOR_OTLP_ENDPOINT"] = cfg.otlp_endpoint
    return env


def _conditions(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    return list((body.get("status") or {}).get("conditions") or [])


def _status(body: Mapping[str, Any], *, phase: str, condition: Mapping[str, Any],
            now: datetime.datetime, existing: Sequence[Mapping[str, Any]] | None = None,
            ) -> dict[str, Any]:
    generation = body["metadata"].get("generation")
    return {"phase": phase, "observedGeneration": generation,
            "conditions": conditions.set_condition(
                _conditions(body) if existing is None else existing, PLACED,
                observed_generation=generation, now=now, **condition)}


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


def decide(body: Mapping[str, Any], spec: agentspec.AgentSpec, *,
           found: Sequence[pools.Pool], cfg: operator_settings.AionOperatorSettings,
           now: datetime.datetime, exclude: Sequence[str] = (), stay: str | None = None,
           autoscaled: bool = False, tls_version: str | None = None,
           platform_namespace: str | None = None) -> Decision:
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
        existing = [c for c in existing if c.get("type") != CAPACITY_DEGRADED]
    if chosen.pool is None:
        status = _status(body, phase="Pending", now=now, existing=existing, condition={
            "status": "False", "reason": chosen.reason, "message": chosen.message})
        status |= {"placementReason": chosen.message, "avoidPools": list(exclude) or None}
        return Decision(placement=chosen, status=status)
    pool = chosen.pool
    owner = render.Owner(name=name, uid=meta["uid"])
    deployment = render.executor_deployment(
        name, namespace, spec, pool_label=pool.label, pool=pool.name,
        image=cfg.executor_image, owner=owner, env=_executor_env(cfg), autoscaled=autoscaled,
        tls_version=tls_version)
    service = render.executor_service(name, namespace, owner=owner)
    policy = None if platform_namespace is None else render.executor_network_policy(
        name, namespace, owner=owner, platform_namespace=platform_namespace)
    status = _status(body, phase="Placed", now=now, existing=existing, condition={
        "status": "True", "reason": chosen.reason, "message": chosen.message})
    status |= {"nodePool": pool.name, "placementReason": chosen.message,
               "avoidPools": list(exclude) or None}
    return Decision(placement=chosen, status=status, deployment=deployment, service=service,
                    network_policy=policy)


def fall_back(body: Mapping[str, Any], spec: agentspec.AgentSpec, waiting: stuck.Stuck, *,
              found: Sequence[pools.Pool], cfg: operator_settings.AionOperatorSettings,
              now: datetime.datetime, autoscaled: bool = False,
              tls_version: str | None = None,
              platform_namespace: str | None = None) -> Decision | None:
    """Move an Agent whose executor pods stay unschedulable to the next eligible pool.

    The pool it leaves joins ``status.avoidPools`` until the spec changes, and the
    ``CapacityDegraded`` condition says why. With no other pool to go to, the
    Agent stays where it is (its pods wait there) and the condition says so;
    None means that was already said, so nothing changes.
    """
    status = body.get("status") or {}
    pool = str(status.get("nodePool") or "")
    avoid = [*(status.get("avoidPools") or []), pool]
    why = (f"executor pod {waiting.pod} stayed unschedulable on pool {pool} for "
           f"{waiting.seconds:.0f}s ({waiting.message or 'no reason given'})")
    decision = decide(body, spec, found=found, cfg=cfg, now=now, exclude=avoid,
                      autoscaled=autoscaled, tls_version=tls_version,
                      platform_namespace=platform_namespace)
    generation = body["metadata"].get("generation")
    if decision.placement.pool is None:
        message = f"{why}; no other eligible pool has room: {decision.placement.message}"
        degraded = conditions.find(_conditions(body), CAPACITY_DEGRADED)
        if degraded is not None and degraded.get("reason") == placement.NO_CAPACITY:
            return None
        merged = conditions.set_condition(
            _conditions(body), CAPACITY_DEGRADED, status="True", reason=placement.NO_CAPACITY,
            message=message, observed_generation=generation, now=now)
        return Decision(placement=dataclasses.replace(decision.placement, message=message),
                        status={"conditions": merged})
    target = decision.placement.pool
    assert target is not None
    message = f"{why}; moved to pool {target.name}: {decision.placement.message}"
    # Registered again once Ready on the new pool, so the agent service learns the pool.
    kept = [c for c in decision.status["conditions"] if c.get("type") != REGISTERED]
    merged = conditions.set_condition(
        kept, CAPACITY_DEGRADED, status="True", reason=FELL_BACK,
        message=message, observed_generation=generation, now=now)
    return dataclasses.replace(
        decision, placement=dataclasses.replace(decision.placement, reason=placement.PLACED,
                                                message=message),
        status=decision.status | {"conditions": merged, "placementReason": message})


def invalid_status(body: Mapping[str, Any], *, message: str,
                   now: datetime.datetime) -> dict[str, Any]:
    """The status of an Agent whose spec is invalid: phase Failed, and why."""
    status = _status(body, phase="Failed", now=now, condition={
        "status": "False", "reason": INVALID_SPEC, "message": message})
    status["placementReason"] = message
    return status


def parse(body: Mapping[str, Any], patch: kopf.Patch, *,
          now: datetime.datetime) -> agentspec.AgentSpec:
    """The Agent's spec; an invalid one patches the status and raises ``PermanentError``."""
    try:
        return agentspec.parse(body.get("spec"))
    except errors.InvalidArgument as exc:
        patch.status.update(invalid_status(body, message=exc.message, now=now))
        raise kopf.PermanentError(exc.message) from exc


def placed_now(body: Mapping[str, Any]) -> bool:
    """Whether the Agent is placed on a pool for its current spec generation."""
    status = body.get("status") or {}
    return bool(status.get("nodePool")) and (
        status.get("observedGeneration") == body["metadata"].get("generation"))


def readiness(body: Mapping[str, Any], deployment: Mapping[str, Any] | None, *,
              now: datetime.datetime,
              pods: Iterable[Mapping[str, Any]] = ()) -> dict[str, Any] | None:
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
    try:
        wanted = agentspec.parse(body.get("spec")).replicas.min
    except errors.InvalidArgument:
        return None
    observed = deployment.get("status") or {}
    ready = int(observed.get("readyReplicas") or 0)
    updated = int(observed.get("updatedReplicas") or 0)
    current = (observed.get("observedGeneration") or 0) >= (
        (deployment.get("metadata") or {}).get("generation") or 0)
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
        status.get("conditions") or [], MODEL_READY,
        status="True" if ready > 0 else "False", reason=reason, message=loaded,
        observed_generation=generation, now=now)
    merged = conditions.set_condition(
        merged, READY, status="True" if is_ready else "False",
        reason="ReplicasReady" if is_ready else "ReplicasNotReady", message=message,
        observed_generation=generation, now=now)
    new = {"phase": "Ready" if is_ready else "Placed", "readyReplicas": ready,
           "conditions": merged}
    if (status.get("phase"), status.get("readyReplicas")) == (new["phase"], ready) and all(
            _same(conditions.find(status.get("conditions") or [], kind),
                  conditions.find(merged, kind), ("status", "reason", "message"))
            for kind in (MODEL_READY, READY)):
        return None
    return new


def _same(a: Mapping[str, Any] | None, b: Mapping[str, Any] | None,
          keys: Iterable[str]) -> bool:
    if a is None or b is None:
        return a is b
    return all(a.get(k) == b.get(k) for k in keys)


def needs_registration(body: Mapping[str, Any]) -> bool:
    """Whether a Ready Agent's current spec is not yet registered with the agent service."""
    status = body.get("status") or {}
    if status.get("phase") != "Ready" or not placed_now(body):
        return False
    registered = conditions.find(status.get("conditions") or [], REGISTERED)
    return registered is None or registered.get("status") != "True" or (
        registered.get("observedGeneration") != body["metadata"].get("generation"))


def registered_status(body: Mapping[str, Any], *, ok: bool, message: str,
                      now: datetime.datetime, reason: str = "") -> dict[str, Any]:
    """The conditions after a registration attempt (``reason`` of a refusal)."""
    return {"conditions": conditions.set_condition(
        _conditions(body), REGISTERED, status="True" if ok else "False",
        reason="Registered" if ok else reason or "AgentServiceUnavailable", message=message,
        observed_generation=body["metadata"].get("generation"), now=now)}


def _refused_again(body: Mapping[str, Any], *, reason: str, message: str) -> bool:
    """Whether the Registered condition already says this refusal (no second Event)."""
    found = conditions.find(_conditions(body), REGISTERED)
    return found is not None and found.get("status") == "False" and (
        found.get("reason"), found.get("message")) == (reason, message)


async def tenant(body: Mapping[str, Any], *, client: kube.Kube,
                 cfg: operator_settings.AionOperatorSettings) -> str:
    """The tenant the platform maps the Agent's namespace to (see ``registration``)."""
    namespace = body["metadata"]["namespace"]
    labels = {} if namespace in cfg.tenants else await client.namespace_labels(namespace)
    return registration.tenant_of(namespace, labels=labels, tenants=cfg.tenants,
                                  label=cfg.tenant_label)


def pool_status(body: Mapping[str, Any], snapshot: kube.Snapshot, *,
                now: datetime.datetime) -> dict[str, Any] | None:
    """A GpuPool's new status from the cluster, or None when only ``observedAt`` would change.

    A GpuPool that names no pool of the cluster says so: no nodes, no GPUs.
    """
    name = body["metadata"]["name"]
    found = {p.name: p for p in pools.discover(snapshot.nodes, snapshot.pods)}
    pool = found.get(name)
    new = pools.status(pool, now=now) if pool is not None else {
        "product": None, "nodes": 0, "gpus": 0, "freeGpus": 0, "gpuMemoryMiB": None,
        "observedAt": conditions.timestamp(now)}
    old = body.get("status") or {}
    if all(old.get(k) == v for k, v in new.items() if k != "observedAt"):
        return None
    return new


async def _apply(client: kube.Kube, decision: Decision) -> None:
    if decision.deployment is not None and decision.service is not None:
        await client.apply(decision.deployment)
        await client.apply(decision.service)
        if decision.network_policy is not None:
            await client.apply(decision.network_policy)


@dataclasses.dataclass(frozen=True)
class Executors:
    """What every executor the operator renders shares: its namespace's Secrets, and
    the namespace of the platform pods that call it (for its NetworkPolicy)."""

    secrets: executor_secrets.Keeper
    platform_namespace: str


async def reconcile(body: kopf.Body, patch: kopf.Patch, *, client: kube.Kube,
                    cfg: operator_settings.AionOperatorSettings, logger: kopf.Logger,
                    resumed: bool = False, executors: Executors | None = None) -> Decision:
    """Handle one Agent: place it, apply its executor, patch its status, post an Event.

    A new spec forgets the pools fallen back from; a resume (operator restart)
    keeps them. Both keep the Agent on its pool while it still fits.
    Raises ``kopf.PermanentError`` for an invalid spec and ``kopf.TemporaryError``
    while the eligible pools are full. With ``executors``, the namespace's executor
    Secrets are kept before the Deployment that mounts them is applied.
    """
    now = datetime.datetime.now(datetime.UTC)
    meta = body["metadata"]
    spec = parse(body, patch, now=now)
    problems: list[str] = []
    found = discover(body, await client.snapshot(), problems=problems)
    for problem in problems:
        logger.warning("%s", problem)
    status = body.get("status") or {}
    exclude = list(status.get("avoidPools") or []) if resumed else []
    autoscaled = await client.autoscaled(render.executor_name(meta["name"]),
                                         namespace=meta["namespace"])
    tls_version = None
    if executors is not None:
        tls_version = await executors.secrets.ensure(meta["namespace"])
    decision = decide(body, spec, found=found, cfg=cfg, now=now, exclude=exclude,
                      stay=status.get("nodePool"), autoscaled=autoscaled,
                      tls_version=tls_version,
                      platform_namespace=executors.platform_namespace if executors else None)
    await _apply(client, decision)
    patch.status.update(decision.status)
    chosen = decision.placement
    if chosen.pool is not None:
        kopf.info(body, reason=chosen.reason, message=chosen.message)
        logger.info("placed Agent %s on pool %s", meta["name"], chosen.pool.name)
    else:
        kopf.warn(body, reason=chosen.reason, message=chosen.message)
        if chosen.reason == placement.NO_CAPACITY:
            raise kopf.TemporaryError(chosen.message, delay=cfg.retry_s)
    return decision


async def follow(body: kopf.Body, patch: kopf.Patch, *, client: kube.Kube,
                 cfg: operator_settings.AionOperatorSettings, logger: kopf.Logger,
                 registrar: registration.Registrar | None,
                 executors: Executors | None = None) -> None:
    """One look at a placed Agent's executor: fall back, update readiness, register.

    Pods unschedulable for ``unschedulable_after_s`` move the Agent (``fall_back``);
    otherwise the Deployment's ready replicas go into the status, and a Ready
    Agent is registered with the agent service (retried at the next look while
    the agent service is down). With ``executors``, the namespace's executor Secrets
    are renewed when due, and a Deployment on an older certificate is rolled.
    """
    if not placed_now(body):
        return
    now = datetime.datetime.now(datetime.UTC)
    meta = body["metadata"]
    name, namespace = meta["name"], meta["namespace"]
    tls_version = None
    if executors is not None:
        tls_version = await executors.secrets.ensure(namespace)
    pods = await client.pods(selector=render.selector(name), namespace=namespace)
    waiting = stuck.unschedulable(pods, now=now)
    if waiting is not None and waiting.seconds >= cfg.unschedulable_after_s:
        spec = agentspec.parse(body.get("spec"))
        found = discover(body, await client.snapshot())
        autoscaled = await client.autoscaled(render.executor_name(name), namespace=namespace)
        moved = fall_back(body, spec, waiting, found=found, cfg=cfg, now=now,
                          autoscaled=autoscaled, tls_version=tls_version,
                          platform_namespace=executors.platform_namespace if executors else None)
        if moved is not None:
            await _apply(client, moved)
            patch.status.update(moved.status)
            kopf.warn(body, reason=FELL_BACK if moved.placement.pool else placement.NO_CAPACITY,
                      message=moved.placement.message)
            logger.warning("%s", moved.placement.message)
        return
    deployment = await client.deployment(render.executor_name(name), namespace=namespace)
    if executors is not None:
        await executors.secrets.roll(deployment, namespace)
    update = readiness(body, deployment, now=now, pods=pods)
    if update is not None:
        patch.status.update(update)
    merged = {**body, "status": {**(body.get("status") or {}), **(update or {})}}
    if registrar is None or not needs_registration(merged):
        return
    spec = agentspec.parse(body.get("spec"))
    pool = str(merged["status"]["nodePool"])
    tenant_name = await tenant(body, client=client, cfg=cfg)
    refusal = registration.mismatch(body, tenant_name, label=cfg.tenant_label)
    if refusal is not None:
        _refuse(body, merged, patch, logger, reason=registration.TENANT_MISMATCH,
                message=f"not registered: {refusal}", now=now)
        return
    try:
        await registrar.register(registration.request(body, spec, tenant_name=tenant_name,
                                                      pool=pool))
    except errors.AlreadyExists as exc:  # another namespace's agent of the same name
        _refuse(body, merged, patch, logger, reason=ALREADY_REGISTERED,
                message=f"not registered: {exc.message}", now=now)
        return
    except errors.AionError as exc:
        message = f"cannot register with the agent service at {registrar.target}: {exc.message}"
        logger.warning("%s", message)
        patch.status.update(registered_status(merged, ok=False, message=message, now=now))
        return
    message = f"registered with the agent service for tenant {tenant_name}, on pool {pool}"
    patch.status.update(registered_status(merged, ok=True, message=message, now=now))
    kopf.info(body, reason="Registered", message=message)


def _refuse(body: kopf.Body, merged: Mapping[str, Any], patch: kopf.Patch,
            logger: kopf.Logger, *, reason: str, message: str, now: datetime.datetime) -> None:
    """Registered=False for a refusal the Agent's owner must fix, with one Warning Event."""
    if _refused_again(merged, reason=reason, message=message):
        return
    logger.warning("%s", message)
    patch.status.update(registered_status(merged, ok=False, reason=reason, message=message,
                                          now=now))
    kopf.warn(body, reason=reason, message=message)


async def deregister(body: kopf.Body, *, client: kube.Kube,
                     cfg: operator_settings.AionOperatorSettings,
                     logger: kopf.Logger, registrar: registration.Registrar | None) -> None:
    """Deregister a deleted Agent; ``kopf.TemporaryError`` keeps the finalizer while down.

    Only what this Agent registered goes: the agent service refuses to deregister
    another namespace's agent of the same name, which is then left alone.
    """
    if registrar is None:
        return
    name = body["metadata"]["name"]
    tenant_name = await tenant(body, client=client, cfg=cfg)
    try:
        removed = await registrar.deregister(tenant_name=tenant_name, name=name,
                                             owner=registration.owner(body))
    except errors.FailedPrecondition as exc:
        logger.info("Agent %s was not registered by this Agent; left alone: %s",
                    name, exc.message)
        return
    except errors.AionError as exc:
        raise kopf.TemporaryError(
            f"cannot deregister from the agent service at {registrar.target} "
            f"({exc.message}); retrying", delay=cfg.retry_s) from exc
    logger.info("deregistered Agent %s of tenant %s (%s)", name, tenant_name,
                "was registered" if removed else "was not registered")


def register(registry: kopf.OperatorRegistry, *, client: kube.Kube,
             cfg: operator_settings.AionOperatorSettings,
             registrar: registration.Registrar | None = None) -> None:
    """Register the operator's handlers on ``registry`` (never on kopf's global one)."""
    from aion.operator.main import lease_namespace  # main imports this module

    executors = Executors(
        secrets=executor_secrets.Keeper(
            client.client, executor_secrets.load_ca(cfg.ca_cert_file, cfg.ca_key_file)),
        platform_namespace=lease_namespace(cfg))

    @kopf.on.login(registry=registry, id="login")
    def login(**kwargs: Any) -> Any:
        """In-cluster credentials when there are some, else the kubeconfig's."""
        return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)

    # One id for every cause: it names kopf's progress annotation on the Agent.
    @kopf.on.resume(GROUP, VERSION, PLURAL, registry=registry, id="place")
    @kopf.on.create(GROUP, VERSION, PLURAL, registry=registry, id="place")
    @kopf.on.update(GROUP, VERSION, PLURAL, registry=registry, id="place", field="spec")
    async def place(body: kopf.Body, patch: kopf.Patch, logger: kopf.Logger,
                    reason: str, **_: Any) -> None:
        """Place the Agent and apply its executor; see ``reconcile``."""
        await reconcile(body, patch, client=client, cfg=cfg, logger=logger,
                        resumed=reason == kopf.Reason.RESUME.value, executors=executors)

    @kopf.timer(GROUP, VERSION, PLURAL, registry=registry, id="readiness",
                interval=cfg.readiness_interval_s)
    async def watch_executor(body: kopf.Body, patch: kopf.Patch, logger: kopf.Logger,
                             **_: Any) -> None:
        """Fall back, follow readiness and register; see ``follow``."""
        await follow(body, patch, client=client, cfg=cfg, logger=logger, registrar=registrar,
                     executors=executors)

    @kopf.timer(GROUP, VERSION, "gpupools", registry=registry, id="capacity",
                interval=cfg.pool_status_interval_s)
    async def pool_capacity(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
        """Write the pool's nodes, GPUs, free GPUs and product into its GpuPool's status."""
        found = pool_status(body, await client.snapshot(),
                            now=datetime.datetime.now(datetime.UTC))
        if found is not None:
            patch.status.update(found)

    if registrar is not None:
        @kopf.on.delete(GROUP, VERSION, PLURAL, registry=registry, id="deregister")
        async def forget(body: kopf.Body, logger: kopf.Logger, **_: Any) -> None:
            """Deregister from the agent service; see ``deregister``."""
            await deregister(body, client=client, cfg=cfg, logger=logger, registrar=registrar)
