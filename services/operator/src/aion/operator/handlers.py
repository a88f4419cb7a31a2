"""The kopf handlers of ``agents.aion.dev`` and ``gpupools.aion.dev`` (kopf's ``on``).

Only registrations, on a registry that ``main`` passes in (never kopf's global
one): each handler is one call into ``reconcile``, which does the API calls,
which in turn asks ``status`` (pure) what to decide. Names of resources, ids and
annotations come from ``conventions``.
"""

from __future__ import annotations

import asyncio
import datetime
import time
from typing import Any

import aiohttp
import kopf

from aion.operator import (
    conventions,
    credentials,
    executor_secrets,
    kube,
    reconcile,
    registration,
    render,
    status,
)
from aion.operator import settings as operator_settings

AGENTS = (conventions.GROUP, conventions.VERSION, conventions.AGENT_PLURAL)
GPU_POOLS = (conventions.GROUP, conventions.VERSION, conventions.GPU_POOL_PLURAL)
# kopf's pause between two looks at an Agent's executor: each look first waits for a change.
FOLLOW_AGAIN_S = 0.01


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


def _executor(body: kopf.Body) -> tuple[str, str]:
    """The key of an Agent's executor Deployment: its namespace and name."""
    meta = body["metadata"]
    return meta["namespace"], render.executor_name(meta["name"])


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

    # One id for every cause: it names kopf's progress annotation on the Agent.
    @kopf.on.resume(*AGENTS, registry=registry, id="place")
    @kopf.on.create(*AGENTS, registry=registry, id="place")
    @kopf.on.update(*AGENTS, registry=registry, id="place", field="spec")
    async def place(
        body: kopf.Body, patch: kopf.Patch, logger: kopf.Logger, reason: str, **_: Any
    ) -> None:
        """Place the Agent and apply its executor; see ``reconcile``."""
        await reconcile.reconcile(
            body,
            patch,
            client=client,
            cfg=cfg,
            logger=logger,
            resumed=reason == kopf.Reason.RESUME.value,
            executors=executors,
        )

    # Readiness follows each Agent's executor Deployment: woken as the Deployment changes
    # (``client.executors``, from its informer) or the Agent does, and at the latest every
    # ``readiness_interval_s`` (pods that stay unschedulable, Secrets due for a look), or
    # ``settled_interval_s`` once a look found it settled (Ready, registered, no pod
    # waiting): then only a change can move it, and the change wakes it.
    # After a patch, the next look waits for the Agent to come back with it (or for
    # ``readiness_interval_s``): a look at the older body would send the same patch again.
    sent: dict[str, tuple[str | None, float]] = {}
    settled: set[str] = set()

    @kopf.timer(*AGENTS, registry=registry, id="readiness", interval=FOLLOW_AGAIN_S)
    async def watch_executor(
        body: kopf.Body,
        patch: kopf.Patch,
        logger: kopf.Logger,
        **kwargs: Any,
    ) -> None:
        """Fall back, follow readiness and register; see ``follow``."""
        stopped: kopf.DaemonStopped = kwargs["stopped"]  # not in kopf's typing of timers
        uid = body["metadata"]["uid"]
        interval = cfg.settled_interval_s if uid in settled else cfg.readiness_interval_s
        woken = asyncio.ensure_future(client.executors.wait(_executor(body), timeout=interval))
        stopping = asyncio.ensure_future(stopped.wait())
        await asyncio.wait((woken, stopping), return_when=asyncio.FIRST_COMPLETED)
        woken.cancel()
        stopping.cancel()
        if stopped:  # the Agent is deleted, or the operator stops
            return
        version = body["metadata"].get("resourceVersion")
        after = sent.get(uid)
        if after is not None and after[0] == version and time.monotonic() < after[1]:
            return
        calm = await reconcile.follow(
            body,
            patch,
            client=client,
            cfg=cfg,
            logger=logger,
            registrar=registrar,
            executors=executors,
        )
        if patch:
            sent[uid] = (version, time.monotonic() + cfg.readiness_interval_s)
        else:
            sent.pop(uid, None)
        if calm and not patch:
            settled.add(uid)
        else:
            settled.discard(uid)

    @kopf.on.event(*AGENTS, registry=registry, id="wake")
    async def wake(body: kopf.Body, type: str | None, **_: Any) -> None:
        """Wake the Agent's follower on its changes; forget it once it is gone."""
        if type == "DELETED":
            client.executors.forget(_executor(body))
            sent.pop(body["metadata"]["uid"], None)
            settled.discard(body["metadata"]["uid"])
        else:
            client.executors.wake(_executor(body))

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
