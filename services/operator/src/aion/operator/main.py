"""The operator's composition root: ``python -m aion.operator``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pathlib
import signal
import socket
import sys

import kopf
from aiohttp import web

from aion.core import metrics, settings, telemetry, tls
from aion.operator import handlers, kube, lease, registration
from aion.operator import settings as operator_settings

# Prefix of the annotations where kopf keeps its progress and last-handled spec.
ANNOTATIONS_PREFIX = "operator.aion.dev"
SERVICE_ACCOUNT_NAMESPACE = pathlib.Path(
    "/var/run/secrets/kubernetes.io/serviceaccount/namespace")
log = logging.getLogger(__name__)


def kopf_settings() -> kopf.OperatorSettings:
    """kopf's settings: its bookkeeping under aion's own annotation and finalizer names."""
    config = kopf.OperatorSettings()
    config.persistence.finalizer = f"{ANNOTATIONS_PREFIX}/finalizer"
    config.persistence.progress_storage = kopf.AnnotationsProgressStorage(
        prefix=ANNOTATIONS_PREFIX)
    config.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=ANNOTATIONS_PREFIX)
    # Watches end and restart every few minutes, so a silently dropped connection
    # cannot leave the operator blind (kopf's defaults wait forever).
    config.watching.server_timeout = 300
    config.watching.client_timeout = 330
    config.watching.connect_timeout = 30
    return config


async def _kopf(registry: kopf.OperatorRegistry, cfg: operator_settings.AionOperatorSettings,
                client: kube.Kube, *, stop_flag: asyncio.Future[None] | None = None) -> None:
    # Placement reads nodes and bound pods from memory while this replica reconciles.
    client.start_informers()
    try:
        await kopf.operator(
            registry=registry, settings=kopf_settings(), standalone=True,
            clusterwide=cfg.clusterwide, namespaces=cfg.namespaces, stop_flag=stop_flag,
            liveness_endpoint=f"http://{cfg.host}:{cfg.liveness_port}/healthz")
    finally:
        await client.stop_informers()


def lease_namespace(cfg: operator_settings.AionOperatorSettings) -> str:
    """Where the Lease lives: the setting, else the pod's namespace, else ``default``."""
    if cfg.lease_namespace:
        return cfg.lease_namespace
    if os.environ.get("POD_NAMESPACE"):
        return os.environ["POD_NAMESPACE"]
    try:
        return SERVICE_ACCOUNT_NAMESPACE.read_text().strip() or "default"
    except OSError:
        return "default"


async def _standby(elector: lease.Elector, cfg: operator_settings.AionOperatorSettings) -> bool:
    """Wait for the Lease, answering liveness probes meanwhile; False if told to stop first."""
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    app = web.Application()
    app.router.add_get("/healthz", _standby_health)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, cfg.host, cfg.liveness_port).start()
    acquiring = asyncio.create_task(elector.acquire())
    stopped = asyncio.create_task(stopping.wait())
    try:
        await asyncio.wait({acquiring, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (acquiring, stopped):
            task.cancel()
        await runner.cleanup()  # kopf serves /healthz on the same port from now on
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    return acquiring.done() and not acquiring.cancelled() and acquiring.exception() is None


def _settle(flag: asyncio.Future[None], holding: asyncio.Task[None]) -> None:
    # ``hold`` returns when the Lease is lost; a cancelled one was stopped on purpose.
    if holding.cancelled() or flag.done():
        return
    if holding.exception() is not None:
        log.error("renewing the Lease failed", exc_info=holding.exception())
    flag.set_result(None)


async def _standby_health(_: web.Request) -> web.Response:
    return web.json_response({"leader": False})


async def run(cfg: operator_settings.AionOperatorSettings, material: tls.Tls | None) -> int:
    """Reconcile Agents until SIGTERM or SIGINT; the exit status is 1 when the Lease was lost.

    With leader election, only the replica holding the Lease runs kopf; it stops
    kopf as soon as it cannot renew, and gives the Lease back when it stops.
    """
    registry = kopf.OperatorRegistry()
    registrar = (registration.Registrar(cfg.agent_target, tls=material)
                 if cfg.agent_target and material is not None else None)
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
            identity = cfg.identity or f"{socket.gethostname()}-{os.getpid()}"
            elector = lease.Elector(client.client, name=cfg.lease_name,
                                    namespace=lease_namespace(cfg), identity=identity,
                                    duration_s=cfg.lease_duration_s)
            if not await _standby(elector, cfg):
                return 0
            # kopf stops when ``stop`` resolves: on a lost Lease (``hold`` returned).
            stop: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            holding = asyncio.create_task(elector.hold())
            holding.add_done_callback(lambda task: _settle(stop, task))
            try:
                await _kopf(registry, cfg, client, stop_flag=stop)
            finally:
                holding.cancel()
            if holding.done() and not holding.cancelled():
                log.error("stopped reconciling: this replica no longer holds the Lease")
                return 1
            await elector.release()
            return 0


def main() -> None:
    """Entry point."""
    cfg = settings.load(operator_settings.AionOperatorSettings)
    telemetry.setup(service="operator", log_level=cfg.log_level, otlp_endpoint=cfg.otlp_endpoint)
    for noisy in ("httpx", "httpx2"):  # one line per API request at INFO
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))
    # The agent service is called over mTLS only: without its target there is no call.
    material = tls.load() if cfg.agent_target else None
    sys.exit(asyncio.run(run(cfg, material)))
