"""The operator's composition root: ``python -m aion.operator``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import sys

import kopf

from aion.core import lifecycle, metrics, settings, telemetry, tls
from aion.operator import conventions, handlers, kube, lease, registration
from aion.operator import settings as operator_settings

log = logging.getLogger(__name__)


class Unremembered(kopf.DiffBaseStorage):
    """kopf remembers no Agent's last-handled spec (its diff base).

    aion places Agents on a new ``metadata.generation`` (``followers``), not in kopf's
    change handlers; kopf's only one left is the delete handler, with an agent service.
    Remembering would cost every new Agent one more patch, for nothing.
    """

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        return None


def kopf_settings() -> kopf.OperatorSettings:
    """kopf's settings: its bookkeeping under aion's own annotation and finalizer names."""
    config = kopf.OperatorSettings()
    config.persistence.finalizer = conventions.FINALIZER
    config.persistence.progress_storage = kopf.AnnotationsProgressStorage(
        prefix=conventions.ANNOTATIONS_PREFIX
    )
    config.persistence.diffbase_storage = Unremembered()
    # Watches end and restart every few minutes, so a silently dropped connection
    # cannot leave the operator blind (kopf's defaults wait forever).
    config.watching.server_timeout = 300
    config.watching.client_timeout = 330
    config.watching.connect_timeout = 30
    return config


async def _kopf(
    registry: kopf.OperatorRegistry,
    cfg: operator_settings.AionOperatorSettings,
    client: kube.Kube,
    *,
    stop_flag: asyncio.Future[None] | None = None,
) -> None:
    # Placement reads nodes and bound pods from memory while this replica reconciles.
    client.start_informers(cfg.namespaces)
    try:
        await kopf.operator(
            registry=registry,
            settings=kopf_settings(),
            standalone=True,
            clusterwide=cfg.clusterwide,
            namespaces=cfg.namespaces,
            stop_flag=stop_flag,
            liveness_endpoint=f"http://{cfg.host}:{cfg.liveness_port}/healthz",
        )
    finally:
        await client.stop_informers()


async def run(cfg: operator_settings.AionOperatorSettings, material: tls.Tls | None) -> int:
    """Reconcile Agents until SIGTERM or SIGINT; the exit status is 1 when the Lease was lost.

    With leader election, only the replica holding the Lease runs kopf; it stops
    kopf as soon as it cannot renew, and gives the Lease back when it stops.
    """
    registry = kopf.OperatorRegistry()
    registrar = (
        registration.Registrar(cfg.agent_target, tls=material)
        if cfg.agent_target and material is not None
        else None
    )
    if registrar is None:
        log.warning("AION_OPERATOR_AGENT_TARGET is empty: Ready Agents are registered nowhere")
    async with kube.connect() as client, contextlib.AsyncExitStack() as stack:
        if registrar is not None:
            stack.push_async_callback(registrar.close)
        handlers.register(registry, client=client, cfg=cfg, registrar=registrar)
        with metrics.MetricsServer(host=cfg.host, port=cfg.metrics_port):
            if not cfg.leader_election:
                await _kopf(registry, cfg, client)
                return 0
            elector = lease.Elector(
                client.client,
                name=cfg.lease_name,
                namespace=cfg.platform_namespace,
                identity=cfg.identity or f"{socket.gethostname()}-{os.getpid()}",
                duration_s=cfg.lease_duration_s,
            )
            async with lease.leadership(
                elector, host=cfg.host, liveness_port=cfg.liveness_port
            ) as term:
                if term.acquired:
                    await _kopf(registry, cfg, client, stop_flag=term.lost)
            return 1 if term.lost_lease else 0


def main() -> None:
    """Entry point."""
    cfg = operator_settings.with_pod_namespace(
        settings.load(operator_settings.AionOperatorSettings)
    )
    telemetry.setup(service="operator", log_level=cfg.log_level, otlp_endpoint=cfg.otlp_endpoint)
    lifecycle.freeze_heap()
    for noisy in ("httpx", "httpx2"):  # one line per API request at INFO
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))
    # The agent service is called over mTLS only: without its target there is no call.
    material = tls.load() if cfg.agent_target else None
    sys.exit(asyncio.run(run(cfg, material)))
