"""The operator's composition root: ``python -m aion.operator``."""

from __future__ import annotations

import asyncio

import kopf

from aion.core import metrics, settings, telemetry
from aion.operator import handlers, kube
from aion.operator import settings as operator_settings

# Prefix of the annotations where kopf keeps its progress and last-handled spec.
ANNOTATIONS_PREFIX = "operator.aion.dev"


def kopf_settings() -> kopf.OperatorSettings:
    """kopf's settings: its bookkeeping under aion's own annotation and finalizer names."""
    config = kopf.OperatorSettings()
    config.persistence.finalizer = f"{ANNOTATIONS_PREFIX}/finalizer"
    config.persistence.progress_storage = kopf.AnnotationsProgressStorage(
        prefix=ANNOTATIONS_PREFIX)
    config.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=ANNOTATIONS_PREFIX)
    return config


async def run(cfg: operator_settings.AionOperatorSettings) -> None:
    """Reconcile Agents until SIGTERM or SIGINT; kopf stops its handlers in stages."""
    registry = kopf.OperatorRegistry()
    async with kube.connect() as client:
        handlers.register(registry, client=client, cfg=cfg)
        with metrics.MetricsServer(host=cfg.host, port=cfg.metrics_port):
            # One replica (the chart's Deployment uses Recreate): no peering needed.
            await kopf.operator(
                registry=registry, settings=kopf_settings(), standalone=True,
                clusterwide=cfg.clusterwide, namespaces=cfg.namespaces,
                liveness_endpoint=f"http://{cfg.host}:{cfg.liveness_port}/healthz")


def main() -> None:
    """Entry point."""
    cfg = settings.load(operator_settings.AionOperatorSettings)
    telemetry.setup(service="operator", log_level=cfg.log_level, otlp_endpoint=cfg.otlp_endpoint)
    asyncio.run(run(cfg))
