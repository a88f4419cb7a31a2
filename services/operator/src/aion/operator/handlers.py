"""The kopf handlers of ``agents.aion.dev`` and ``gpupools.aion.dev`` (kopf's ``on``).

Only registrations, on a registry that ``main`` passes in (never kopf's global
one): each handler is one call into ``reconcile``, which does the API calls,
which in turn asks ``status`` (pure) what to decide. Names of resources, ids and
annotations come from ``conventions``.
"""

from __future__ import annotations

import datetime
from typing import Any

import aiohttp
import kopf

from aion.operator import (
    conventions,
    credentials,
    executor_secrets,
    followers,
    kube,
    reconcile,
    registration,
    status,
)
from aion.operator import settings as operator_settings

AGENTS = (conventions.GROUP, conventions.VERSION, conventions.AGENT_PLURAL)
GPU_POOLS = (conventions.GROUP, conventions.VERSION, conventions.GPU_POOL_PLURAL)


# Requests kopf may have in flight at once besides its watches (patches, Events).
REQUESTS = 32


def connections(cfg: operator_settings.AionOperatorSettings) -> int:
    """How many connections kopf may keep to the API server; 0: no limit.

    Its own session opens one per request in flight, each with TLS buffers of a few
    hundred KB, so a burst of Agents would open hundreds. Its watches hold one each for
    good: Agents in each named namespace (or all at once), and GpuPools. With namespace
    patterns their count is not known beforehand, so there is no limit.
    """
    if any(kube.GLOB & set(n) for n in cfg.namespaces):
        return 0
    return (len(cfg.namespaces) or 1) + 1 + REQUESTS


def register(
    registry: kopf.OperatorRegistry,
    *,
    client: kube.Kube,
    cfg: operator_settings.AionOperatorSettings,
    registrar: registration.Registrar | None = None,
) -> None:
    """Register the operator's handlers on ``registry`` (never on kopf's global one)."""
    executors = reconcile.Executors(
        secrets=executor_secrets.Keeper(
            client.client, executor_secrets.load_ca(cfg.ca_cert_file, cfg.ca_key_file)
        ),
        platform_namespace=cfg.platform_namespace,
        recheck=credentials.Recheck(cfg.credentials_interval_s),
    )

    @kopf.on.login(registry=registry, id="login")
    async def login(**kwargs: Any) -> Any:
        """In-cluster credentials when there are some, else the kubeconfig's, on a session
        of at most ``connections(cfg)`` connections."""
        info = kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)
        limit = connections(cfg)
        if info is None or not limit:
            return info
        return kopf.AiohttpSession(
            server=info.server,
            default_namespace=info.default_namespace,
            expiration=info.expiration,
            aiohttp_session=aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=limit, ssl=info.as_ssl_context()),
                headers=info.as_http_headers(),
            ),
        )

    # Placement and readiness run in each Agent's follower (``followers``), a task of its
    # own: kopf's change handlers would remember each spec in an annotation (one more
    # patch of every Agent), and a kopf timer would have kopf hold a finalizer on each.
    async def place(body: kopf.Body, patch: kopf.Patch, logger: kopf.Logger, resumed: bool) -> None:
        """Place the Agent and apply its executor; see ``reconcile``."""
        await reconcile.reconcile(
            body,
            patch,
            client=client,
            cfg=cfg,
            logger=logger,
            resumed=resumed,
            executors=executors,
        )

    async def look(body: kopf.Body, patch: kopf.Patch, logger: kopf.Logger) -> bool:
        """Fall back, follow readiness and register; see ``follow``."""
        return await reconcile.follow(
            body,
            patch,
            client=client,
            cfg=cfg,
            logger=logger,
            registrar=registrar,
            executors=executors,
        )

    following = followers.Followers(
        look,
        place=place,
        client=client,
        readiness_interval_s=cfg.readiness_interval_s,
        settled_interval_s=cfg.settled_interval_s,
        retry_s=cfg.retry_s,
    )

    @kopf.on.event(*AGENTS, registry=registry, id="follow")
    async def follow(body: kopf.Body, type: str | None, logger: kopf.Logger, **_: Any) -> None:
        """Follow (and place) the Agent from its first event on; wake its follower on its
        changes; stop following it once it is gone or being deleted."""
        following.seen(body, logger=logger, gone=type == "DELETED")

    @kopf.on.cleanup(registry=registry, id="followers")
    async def stop_following(**_: Any) -> None:
        """Stop every follower as the operator stops."""
        await following.close()

    @kopf.timer(*GPU_POOLS, registry=registry, id="capacity", interval=cfg.pool_status_interval_s)
    async def pool_capacity(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
        """Write the pool's nodes, GPUs, free GPUs and product into its GpuPool's status."""
        found = status.pool_status(
            body, await client.snapshot(), now=datetime.datetime.now(datetime.UTC)
        )
        if found is not None:
            patch.status.update(found)

    if registrar is not None:

        @kopf.on.delete(*AGENTS, registry=registry, id="deregister")
        async def forget(body: kopf.Body, logger: kopf.Logger, **_: Any) -> None:
            """Deregister from the agent service; see ``deregister``."""
            await reconcile.deregister(
                body, client=client, cfg=cfg, logger=logger, registrar=registrar
            )
            if executors.recheck is not None:
                executors.recheck.forget(body["metadata"]["uid"])
