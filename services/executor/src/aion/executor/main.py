"""The executor's composition root: ``python -m aion.executor``.

One process serves one model for one task (``generate`` with llama.cpp,
``embed`` with sentence-transformers) over gRPC and over the OpenAI-compatible
HTTP API, in one event loop. The gRPC server starts NOT_SERVING, so probes and
load balancers wait while the model loads in a thread (its progress logged);
health flips to SERVING once it is loaded. A model that cannot be loaded ends
the process with a non-zero status. SIGTERM drains gRPC, then HTTP, then stops
the batching loops and the load reporter.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import os
import sys
import time
from pathlib import Path
from typing import Protocol

from aion.api.executor.v1 import executor_pb2_grpc
from aion.core import http_server, lifecycle, metrics, server, settings, telemetry, tls
from aion.executor import (
    backend,
    batcher,
    http_api,
    inference,
    llama_backend,
    load_report,
    scheduler,
    servicer,
    st_backend,
    stats,
    validation,
)
from aion.executor import settings as executor_settings

log = logging.getLogger(__name__)


class Loadable(Protocol):
    """A model that loads once (either backend)."""

    @property
    def path(self) -> Path:
        """Where the model is read from."""
        ...

    @property
    def device(self) -> str:
        """Where it runs."""
        ...

    def load(self) -> None:
        """Load it (blocking)."""
        ...

    def close(self) -> None:
        """Free it."""
        ...


def _size_mb(path: Path) -> float:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return round(sum(f.stat().st_size for f in files) / 2**20, 1)


async def load_model(model: Loadable, grpc_server: server.GrpcServer) -> None:
    """Load the model in a thread, logging progress, then mark the server SERVING."""
    log.info("loading model", extra={"path": str(model.path), "size_mb": _size_mb(model.path),
                                     "device": model.device})
    started = time.perf_counter()
    await asyncio.to_thread(model.load)
    seconds = time.perf_counter() - started
    log.info("model loaded in %.2f s", seconds, extra={
        "path": str(model.path), "seconds": round(seconds, 2), "device": model.device})
    await grpc_server.set_serving(True)


def build(cfg: executor_settings.ExecutorSettings,
          ) -> tuple[inference.Inference, Loadable, batcher.EmbedBatcher | None]:
    """The model, its queue and the service over them, for the configured task."""
    limits = validation.Limits(default_max_tokens=cfg.default_max_tokens,
                               max_tokens_limit=cfg.max_tokens_limit,
                               max_texts=cfg.embed_max_texts,
                               max_prompt_chars=cfg.max_prompt_chars,
                               max_body_bytes=cfg.max_body_bytes)
    if cfg.model_task == "generate":
        gen = llama_backend.LlamaBackend(
            cfg.model_file(), n_ctx=cfg.n_ctx, n_threads=cfg.n_threads,
            max_streams=cfg.max_streams, n_batch=cfg.n_batch, device=cfg.device)
        sched = scheduler.Scheduler(gen, max_queue=cfg.max_queue)
        return (inference.Inference(model_name=cfg.served_name(), limits=limits,
                                    generation=(gen, sched)), gen, None)
    emb = st_backend.SentenceTransformerBackend(cfg.model_file(), n_threads=cfg.n_threads,
                                                device=cfg.device)
    batch = batcher.EmbedBatcher(emb, max_batch=cfg.embed_max_batch,
                                 max_wait_s=cfg.embed_max_wait_ms / 1000,
                                 max_queue=cfg.max_queue)
    return (inference.Inference(model_name=cfg.served_name(), limits=limits,
                                embedding=(emb, batch)), emb, batch)


async def run(cfg: executor_settings.ExecutorSettings, material: tls.Tls) -> None:
    """Serve until SIGTERM or SIGINT, then drain; a model that fails to load raises."""
    service, model, batch = build(cfg)
    stats.export(service.snapshot)
    grpc_server = server.GrpcServer(name="executor", host=cfg.host, port=cfg.port,
                                    grace_s=cfg.grace_s, drain_delay_s=cfg.drain_delay_s,
                                    ready=False, tls=material, allow=servicer.ALLOW,
                                    health_port=cfg.health_port)
    grpc_server.add(executor_pb2_grpc.add_ExecutorServicer_to_server,
                    servicer.ExecutorServicer(service, executor_id=cfg.instance_id),
                    servicer.SERVICE)
    async with contextlib.AsyncExitStack() as stack:
        stack.enter_context(metrics.MetricsServer(host=cfg.host, port=cfg.metrics_port))
        stack.callback(model.close)
        reporter = None
        if cfg.kafka_bootstrap:
            reporter = await stack.enter_async_context(load_report.LoadReporter(
                service.snapshot, bootstrap=cfg.kafka_bootstrap, topic=cfg.load_topic,
                interval_s=cfg.load_interval_s, executor=cfg.instance_id,
                model=service.model_name, security=cfg))
        await stack.enter_async_context(grpc_server)
        http = None
        token = cfg.http_token.get_secret_value() if cfg.http_token else None
        if cfg.http_port is not None:
            if token is None:
                log.warning("AION_EXECUTOR_HTTP_TOKEN is not set: the HTTP API refuses every "
                            "request but /healthz")
            http = await stack.enter_async_context(http_server.HttpServer(
                http_api.OpenAIApi(service, token=token).app, name="executor http", host=cfg.host,
                port=cfg.http_port))
        async with asyncio.TaskGroup() as tasks:
            background = []
            if batch is not None:
                background.append(tasks.create_task(batch.run()))
            if reporter is not None:
                background.append(tasks.create_task(reporter.run()))
            if http is not None:
                tasks.create_task(http.serve())
            await load_model(model, grpc_server)
            await lifecycle.wait_for_signal()
            await grpc_server.shutdown()
            if http is not None:
                http.shutdown()
            for task in background:
                task.cancel()


def main() -> None:
    """Entry point."""
    cfg = settings.load(executor_settings.ExecutorSettings)
    material = tls.load()
    telemetry.setup(service="executor", log_level=cfg.log_level, otlp_endpoint=cfg.otlp_endpoint)
    try:
        asyncio.run(run(cfg, material))
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
