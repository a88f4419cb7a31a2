"""The executor's composition root: ``python -m aion.executor``.

One process serves one model for one task (``generate`` with llama.cpp,
``embed`` with sentence-transformers) over gRPC and over the OpenAI-compatible
HTTP API, in one event loop. The gRPC server starts NOT_SERVING, so probes and
load balancers wait while the model loads in a thread (its progress logged);
health flips to SERVING once it is loaded. A model that cannot be loaded ends
the process with a non-zero status. SIGTERM drains gRPC, then HTTP, then stops
the batching loop and the load reporter (``serving``).
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import sys

from aion.core import lifecycle, metrics, settings, telemetry, tls
from aion.executor import backend, inference, load_report, serving, stats, validation
from aion.executor import settings as executor_settings
from aion.executor.embedding import st_backend
from aion.executor.generation import llama_backend

log = logging.getLogger(__name__)


def build(cfg: executor_settings.ExecutorSettings) -> inference.Service:
    """The service of the configured task over its model (not loaded yet)."""
    limits = validation.Limits(
        default_max_tokens=cfg.default_max_tokens,
        max_tokens_limit=cfg.max_tokens_limit,
        max_texts=cfg.embed_max_texts,
        max_prompt_chars=cfg.max_prompt_chars,
        max_body_bytes=cfg.max_body_bytes,
    )
    if cfg.model_task == "generate":
        return inference.GenerationService(
            llama_backend.LlamaBackend(
                cfg.model_file(),
                n_ctx=cfg.n_ctx,
                n_threads=cfg.n_threads,
                max_streams=cfg.max_streams,
                n_batch=cfg.n_batch,
                device=cfg.device,
            ),
            model_name=cfg.served_name(),
            limits=limits,
            max_queue=cfg.max_queue,
        )
    return inference.EmbeddingService(
        st_backend.SentenceTransformerBackend(
            cfg.model_file(), n_threads=cfg.n_threads, device=cfg.device
        ),
        model_name=cfg.served_name(),
        limits=limits,
        max_queue=cfg.max_queue,
        max_batch=cfg.embed_max_batch,
        max_wait_s=cfg.embed_max_wait_ms / 1000,
    )


async def run(cfg: executor_settings.ExecutorSettings, material: tls.Tls) -> None:
    """Serve until SIGTERM or SIGINT, then drain; a model that fails to load raises."""
    service = build(cfg)
    stats.export(service.snapshot)
    grpc = serving.grpc_server(
        service,
        executor_id=cfg.instance_id,
        host=cfg.host,
        port=cfg.port,
        grace_s=cfg.grace_s,
        tls=material,
        health_port=cfg.health_port,
        drain_delay_s=cfg.drain_delay_s,
    )
    http = (
        None
        if cfg.http_port is None
        else serving.http_server(
            service,
            token=cfg.http_token.get_secret_value() if cfg.http_token else None,
            host=cfg.host,
            port=cfg.http_port,
        )
    )
    reporter = (
        None
        if not cfg.kafka_bootstrap
        else load_report.LoadReporter(
            service.snapshot,
            bootstrap=cfg.kafka_bootstrap,
            topic=cfg.load_topic,
            interval_s=cfg.load_interval_s,
            executor=cfg.instance_id,
            model=service.model_name,
            security=cfg,
        )
    )
    with metrics.MetricsServer(host=cfg.host, port=cfg.metrics_port), contextlib.closing(service):
        async with serving.serve(service, grpc=grpc, http=http, reporter=reporter) as running:
            await running.load_model()
            await lifecycle.wait_for_signal()


def main() -> None:
    """Entry point."""
    cfg = settings.load(executor_settings.ExecutorSettings)
    material = tls.load()
    telemetry.setup(service="executor", log_level=cfg.log_level, otlp_endpoint=cfg.otlp_endpoint)
    lifecycle.freeze_heap()
    try:
        lifecycle.run(run(cfg, material))
    except* (backend.ModelLoadError, FileNotFoundError) as group:
        log.error("executor cannot start: %s", group.exceptions[0])
        raise SystemExit(1) from None
    # Drained and closed. The interpreter's own teardown of torch and the libraries it
    # loads takes seconds (10 s on a busy host), longer than the shutdown grace: run the
    # exit handlers (trace export, logging), then leave without it.
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
