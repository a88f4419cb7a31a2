"""The API calls of handling an Agent: the bodies of its handlers and of its follower.

On create, update of the spec, and resume after a restart, ``reconcile``
validates an Agent's spec, reads the pools from the cluster (nodes, bound pods,
GpuPools), lets ``status.place`` pick one, applies the executor Deployment and
Service (server-side, so a re-run after a crash changes nothing twice), patches
the status and posts an Event saying the same. The Agent's follower
(``followers``) then runs ``follow``:
fall back from a pool where executor pods stay unschedulable, copy the
Deployment's ready replicas into the status, register a Ready Agent with the
agent service, with the credentials of its tool servers read from its Secrets
(``credentials``; read again every ``credentials_interval_s``, and registered again
when one changed). ``deregister`` runs behind the finalizer of a deleted Agent
(the only finalizer: kopf adds it for the delete handler, with an agent service).

What to decide is ``status``'s (pure); this module reads, applies and patches.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Mapping
from typing import Any

import kopf

from aion.core import agentspec, errors
from aion.operator import (
    conventions,
    credentials,
    executor_secrets,
    kube,
    registration,
    render,
    status,
    stuck,
)
from aion.operator import settings as operator_settings


def parse(
    body: Mapping[str, Any], patch: kopf.Patch, *, now: datetime.datetime
) -> agentspec.AgentSpec:
    """The Agent's spec; an invalid one patches the status and raises ``PermanentError``."""
    try:
        return agentspec.parse(body.get("spec"))
    except errors.InvalidArgument as exc:
        patch.status.update(status.invalid_status(body, message=exc.message, now=now))
        raise kopf.PermanentError(exc.message) from exc


async def tenant(
    body: Mapping[str, Any], *, client: kube.Kube, cfg: operator_settings.AionOperatorSettings
) -> str:
    """The tenant the platform maps the Agent's namespace to (see ``registration``)."""
    namespace = body["metadata"]["namespace"]
    labels = {} if namespace in cfg.tenants else await client.namespace_labels(namespace)
    return registration.tenant_of(
        namespace, labels=labels, tenants=cfg.tenants, label=cfg.tenant_label
    )


async def _apply(client: kube.Kube, outcome: status.Outcome) -> None:
    if outcome.deployment is not None and outcome.service is not None:
        await client.apply(outcome.deployment)
        await client.apply(outcome.service)
        if outcome.network_policy is not None:
            await client.apply(outcome.network_policy)


@dataclasses.dataclass(frozen=True)
class Executors:
    """What every executor the operator renders shares: its namespace's Secrets, and
    the namespace of the platform pods that call it (for its NetworkPolicy)."""

    secrets: executor_secrets.Keeper
    platform_namespace: str
    # When registered Agents' credential Secrets are read again (None: at every look).
    recheck: credentials.Recheck | None = None


async def reconcile(
    body: kopf.Body,
    patch: kopf.Patch,
    *,
    client: kube.Kube,
    cfg: operator_settings.AionOperatorSettings,
    logger: kopf.Logger,
    resumed: bool = False,
    executors: Executors | None = None,
) -> status.Outcome:
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
    found = status.discover(body, await client.snapshot(), problems=problems)
    for problem in problems:
        logger.warning("%s", problem)
    previous = body.get("status") or {}
    exclude = list(previous.get("avoidPools") or []) if resumed else []
    autoscaled = await client.autoscaled(
        render.executor_name(meta["name"]), namespace=meta["namespace"]
    )
    tls_version = None
    if executors is not None:
        tls_version = await executors.secrets.ensure(meta["namespace"])
    outcome = status.place(
        body,
        spec,
        found=found,
        cfg=cfg,
        now=now,
        exclude=exclude,
        stay=previous.get("nodePool"),
        autoscaled=autoscaled,
        tls_version=tls_version,
        platform_namespace=executors.platform_namespace if executors else None,
    )
    first = outcome.deployment is not None and not await client.deployment(
        outcome.deployment["metadata"]["name"], namespace=meta["namespace"]
    )
    await _apply(client, outcome)
    patch.status.update(outcome.status)
    if first:
        # A first executor: its status says now what readiness would say at its first look
        # (no replica ready yet), so that look patches nothing.
        placed = {**body, "status": {**previous, **outcome.status}}
        loading = status.readiness(placed, {}, now=now)
        if loading is not None and loading["phase"] != "Ready":
            patch.status.update(loading)
    chosen = outcome.placement
    if chosen.pool is not None:
        kopf.info(body, reason=chosen.reason, message=chosen.message)
        logger.info("placed Agent %s on pool %s", meta["name"], chosen.pool.name)
    else:
        kopf.warn(body, reason=chosen.reason, message=chosen.message)
        if chosen.reason == conventions.NO_CAPACITY:
            raise kopf.TemporaryError(chosen.message, delay=cfg.retry_s)
    return outcome


async def follow(
    body: kopf.Body,
    patch: kopf.Patch,
    *,
    client: kube.Kube,
    cfg: operator_settings.AionOperatorSettings,
    logger: kopf.Logger,
    registrar: registration.Registrar | None,
    executors: Executors | None = None,
) -> bool:
    """One look at a placed Agent's executor: fall back, update readiness, register;
    whether the Agent is settled (Ready as it was, registered when there is an agent
    service, no pod waiting to be scheduled, no Secrets of its own to read again), so
    the next look may wait for a change of its Deployment or of the Agent itself.

    Pods unschedulable for ``unschedulable_after_s`` move the Agent (``fall_back``);
    otherwise the Deployment's ready replicas go into the status, and a Ready
    Agent is registered with the agent service (retried at the next look while
    the agent service is down, or a Secret of its ``spec.toolCredentials`` cannot be
    read). A registered Agent with ``spec.toolCredentials`` has its Secrets read again
    when ``executors.recheck`` says so, and is registered again when they changed.
    With ``executors``, the namespace's executor Secrets are renewed when due, and a
    Deployment on an older certificate is rolled.
    """
    if not status.placed_now(body):
        return False
    now = datetime.datetime.now(datetime.UTC)
    meta = body["metadata"]
    name, namespace = meta["name"], meta["namespace"]
    tls_version = None
    if executors is not None:
        tls_version = await executors.secrets.ensure(namespace)
    pods = await client.pods(selector=render.selector(name), namespace=namespace)
    waiting = stuck.unschedulable(
        pods, now=now, pool=str((body.get("status") or {}).get("nodePool") or "") or None
    )
    if waiting is not None and waiting.seconds >= cfg.unschedulable_after_s:
        spec = agentspec.parse(body.get("spec"))
        found = status.discover(body, await client.snapshot())
        autoscaled = await client.autoscaled(render.executor_name(name), namespace=namespace)
        moved = status.fall_back(
            body,
            spec,
            waiting,
            found=found,
            cfg=cfg,
            now=now,
            autoscaled=autoscaled,
            tls_version=tls_version,
            platform_namespace=executors.platform_namespace if executors else None,
        )
        if moved is not None:
            await _apply(client, moved)
            patch.status.update(moved.status)
            kopf.warn(
                body,
                reason=conventions.FELL_BACK if moved.placement.pool else conventions.NO_CAPACITY,
                message=moved.placement.message,
            )
            logger.warning("%s", moved.placement.message)
        return False
    deployment = await client.deployment(render.executor_name(name), namespace=namespace)
    if executors is not None:
        await executors.secrets.roll(deployment, namespace)
    update = status.readiness(body, deployment, now=now, pods=pods)
    if update is not None:
        patch.status.update(update)
    merged = {**body, "status": {**(body.get("status") or {}), **(update or {})}}
    calm = waiting is None and update is None and merged["status"].get("phase") == "Ready"
    if registrar is None:
        return calm
    spec = agentspec.parse(body.get("spec"))
    due = status.needs_registration(merged)
    recheck = executors.recheck if executors is not None else None
    if not due and not (
        spec.tool_credentials
        and status.registered_now(merged)
        and (recheck is None or recheck.due(meta["uid"]))
    ):
        return calm and not spec.tool_credentials

    async def read(secret: str) -> dict[str, Any] | None:
        return await client.secret(secret, namespace=namespace)

    try:
        resolved = await credentials.resolve(spec, namespace, read)
    except credentials.Unavailable as exc:
        _refuse(
            body,
            merged,
            patch,
            logger,
            reason=exc.reason,
            message=f"not registered: {exc.message}",
            now=now,
        )
        return False
    if not due and resolved.version == merged["status"].get("credentialsVersion"):
        return False  # registered, and its Secrets are unchanged (read again later)

    pool = str(merged["status"]["nodePool"])
    tenant_name = await tenant(body, client=client, cfg=cfg)
    refusal = registration.mismatch(body, tenant_name, label=cfg.tenant_label)
    if refusal is not None:
        _refuse(
            body,
            merged,
            patch,
            logger,
            reason=conventions.TENANT_MISMATCH,
            message=f"not registered: {refusal}",
            now=now,
        )
        return False
    try:
        await registrar.register(
            registration.request(
                body, spec, tenant_name=tenant_name, pool=pool, credentials=resolved.credentials
            )
        )
    except errors.AlreadyExists as exc:  # another namespace's agent of the same name
        _refuse(
            body,
            merged,
            patch,
            logger,
            reason=conventions.ALREADY_REGISTERED,
            message=f"not registered: {exc.message}",
            now=now,
        )
        return False
    except errors.AionError as exc:
        message = f"cannot register with the agent service at {registrar.target}: {exc.message}"
        logger.warning("%s", message)
        patch.status.update(status.registered_status(merged, ok=False, message=message, now=now))
        return False
    message = f"registered with the agent service for tenant {tenant_name}, on pool {pool}"
    if resolved.credentials:
        changed = "" if due else "the changed "
        message += f", with {changed}credentials of {len(resolved.credentials)} tool server(s)"
    patch.status.update(
        status.registered_status(merged, ok=True, message=message, now=now)
        | {"credentialsVersion": resolved.version}
    )
    kopf.info(body, reason=conventions.REGISTERED, message=message)
    return False


def _refuse(
    body: kopf.Body,
    merged: Mapping[str, Any],
    patch: kopf.Patch,
    logger: kopf.Logger,
    *,
    reason: str,
    message: str,
    now: datetime.datetime,
) -> None:
    """Registered=False for a refusal the Agent's owner must fix, with one Warning Event."""
    if status.refused_again(merged, reason=reason, message=message):
        return
    logger.warning("%s", message)
    patch.status.update(
        status.registered_status(merged, ok=False, reason=reason, message=message, now=now)
    )
    kopf.warn(body, reason=reason, message=message)


async def deregister(
    body: kopf.Body,
    *,
    client: kube.Kube,
    cfg: operator_settings.AionOperatorSettings,
    logger: kopf.Logger,
    registrar: registration.Registrar | None,
) -> None:
    """Deregister a deleted Agent; ``kopf.TemporaryError`` keeps the finalizer while down.

    Only what this Agent registered goes: the agent service refuses to deregister
    another namespace's agent of the same name, which is then left alone.
    """
    if registrar is None:
        return
    name = body["metadata"]["name"]
    tenant_name = await tenant(body, client=client, cfg=cfg)
    try:
        removed = await registrar.deregister(
            tenant_name=tenant_name, name=name, owner=registration.owner(body)
        )
    except errors.FailedPrecondition as exc:
        logger.info("Agent %s was not registered by this Agent; left alone: %s", name, exc.message)
        return
    except errors.AionError as exc:
        raise kopf.TemporaryError(
            f"cannot deregister from the agent service at {registrar.target} "
            f"({exc.message}); retrying",
            delay=cfg.retry_s,
        ) from exc
    logger.info(
        "deregistered Agent %s of tenant %s (%s)",
        name,
        tenant_name,
        "was registered" if removed else "was not registered",
    )
