"""The kopf handlers of ``agents.aion.dev`` and ``gpupools.aion.dev`` (kopf's ``on``).

Only registrations, on a registry that ``main`` passes in (never kopf's global
one): each handler is one call into ``reconcile``, which does the API calls,
which in turn asks ``status`` (pure) what to decide. Names of resources, ids and
annotations come from ``conventions``.
"""

from __future__ import annotations

import datetime
from typing import Any

import kopf

from aion.operator import (
    conventions,
    credentials,
    executor_secrets,
    kube,
    reconcile,
    registration,
    status,
)
from aion.operator import settings as operator_settings

AGENTS = (conventions.GROUP, conventions.VERSION, conventions.AGENT_PLURAL)
GPU_POOLS = (conventions.GROUP, conventions.VERSION, conventions.GPU_POOL_PLURAL)


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
    def login(**kwargs: Any) -> Any:
        """In-cluster credentials when there are some, else the kubeconfig's."""
        return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)

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

    @kopf.timer(*AGENTS, registry=registry, id="readiness", interval=cfg.readiness_interval_s)
    async def watch_executor(
        body: kopf.Body, patch: kopf.Patch, logger: kopf.Logger, **_: Any
    ) -> None:
        """Fall back, follow readiness and register; see ``follow``."""
        await reconcile.follow(
            body,
            patch,
            client=client,
            cfg=cfg,
            logger=logger,
            registrar=registrar,
            executors=executors,
        )

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
