"""The executor's composition root: ``python -m aion.executor``.

The gRPC server starts NOT_SERVING, so probes and load balancers wait while
the model loads in a thread; health flips to SERVING once it is loaded. A
model that cannot be loaded ends the process with a non-zero status.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from aion.api.executor.v1 import executor_pb2, executor_pb2_grpc
from aion.core import lifecycle, metrics, server, settings, telemetry
from aion.executor import backend, llama_backend, scheduler, servicer, stats
from aion.executor import settings as executor_settings

log = logging.getLogger(__name__)


async def load_model(model: llama_backend.LlamaBackend, grpc_server: server.GrpcServer) -> None:
    """Load the model in a thread, logging progress, then mark the server SERVING."""
    size_mb = model.path.stat().st_size / 2**20
    log.info("loading model", extra={"path": str(model.path), "size_mb": round(size_mb, 1),
                                     "device": model.device})
    started = time.perf_counter()
    await asyncio.to_thread(model.load)
    seconds = time.perf_counter() - started
    log.info("model loaded in %.2f s", seconds, extra={
        "path": str(model.path), "seconds": round(seconds, 2),
        "context_size": model.context_size, "device": model.device})
    await grpc_server.set_serving(True)


async def run(cfg: executor_settings.ExecutorSettings) -> None:
    """Serve until SIGTERM or SIGINT, then drain; a model that fails to load raises."""
    model = llama_backend.LlamaBackend(cfg.model_file(), n_ctx=cfg.n_ctx,
                                       n_threads=cfg.n_threads)
    sched = scheduler.Scheduler(model, max_queue=cfg.max_queue)
    stats.export(sched.snapshot)
    grpc_server = server.GrpcServer(name="executor", host=cfg.host, port=cfg.port,
                                    grace_s=cfg.grace_s, drain_delay_s=cfg.drain_delay_s,
                                    ready=False)
    grpc_server.add(executor_pb2_grpc.add_ExecutorServicer_to_server,
                    servicer.ExecutorServicer(
                        model, sched, model_name=cfg.model_name,
                        default_max_tokens=cfg.default_max_tokens,
                        max_tokens_limit=cfg.max_tokens_limit),
                    executor_pb2.DESCRIPTOR.services_by_name["Executor"].full_name)
    async with contextlib.AsyncExitStack() as stack:
        stack.enter_context(metrics.MetricsServer(host=cfg.host, port=cfg.metrics_port))
        stack.enter_context(model)
        await stack.enter_async_context(grpc_server)
        await load_model(model, grpc_server)
        await lifecycle.wait_for_signal()


def main() -> None:
    """Entry point."""
    cfg = settings.load(executor_settings.ExecutorSettings)
    telemetry.setup(service="executor", log_level=cfg.log_level, otlp_endpoint=cfg.otlp_endpoint)
    try:
        asyncio.run(run(cfg))
    except (backend.ModelLoadError, FileNotFoundError) as exc:
        log.error("executor cannot start: %s", exc)
        raise SystemExit(1) from None
