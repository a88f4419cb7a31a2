"""An executor on free ports in this process, for tests and the benchmark.

``serve`` runs an ``Inference`` behind the real gRPC server and the real
HTTP server (uvicorn), as ``main`` does, with stubs and the HTTP base URL.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator

import grpc
from grpc_health.v1 import health_pb2_grpc

from aion.api.executor.v1 import executor_pb2, executor_pb2_grpc
from aion.core import http_server, server
from aion.executor import (
    backend,
    batcher,
    http_api,
    inference,
    scheduler,
    servicer,
    validation,
)


@dataclasses.dataclass
class Executor:
    """A running executor and clients of it."""

    server: server.GrpcServer
    service: inference.Inference
    stub: executor_pb2_grpc.ExecutorAsyncStub
    health: health_pb2_grpc.HealthStub
    http_url: str


@contextlib.asynccontextmanager
async def serve(service: inference.Inference, *, ready: bool = True,
                batch: batcher.EmbedBatcher | None = None,
                grpc_options: list[tuple[str, int]] | None = None,
                ) -> AsyncIterator[Executor]:
    """Serve ``service`` over gRPC and HTTP on free ports (and run ``batch``, if given)."""
    grpc_server = server.GrpcServer(name="executor", host="127.0.0.1", port=0, grace_s=1.0,
                                    ready=ready)
    grpc_server.add(executor_pb2_grpc.add_ExecutorServicer_to_server,
                    servicer.ExecutorServicer(service, executor_id="in-process"),
                    executor_pb2.DESCRIPTOR.services_by_name["Executor"].full_name)
    http = http_server.HttpServer(http_api.OpenAIApi(service).app, name="executor http",
                                  host="127.0.0.1", port=0)
    async with grpc_server, http, grpc.aio.insecure_channel(grpc_server.address,
                                         options=grpc_options or []) as channel:
        tasks = [asyncio.create_task(http.serve())]
        if batch is not None:
            tasks.append(asyncio.create_task(batch.run()))
        try:
            yield Executor(server=grpc_server, service=service,
                           stub=executor_pb2_grpc.ExecutorStub(channel),
                           health=health_pb2_grpc.HealthStub(channel), http_url=http.url)
        finally:
            http.shutdown()
            for task in tasks[1:]:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


def generation_service(model: backend.GenerationBackend, *, name: str,
                       limits: validation.Limits, max_queue: int) -> inference.Inference:
    """A generation service over ``model``."""
    return inference.Inference(model_name=name, limits=limits, generation=(
        model, scheduler.Scheduler(model, max_queue=max_queue)))


def embedding_service(model: backend.EmbeddingBackend, *, name: str, limits: validation.Limits,
                      max_queue: int, max_batch: int, max_wait_s: float,
                      ) -> tuple[inference.Inference, batcher.EmbedBatcher]:
    """An embedding service over ``model``, and its batcher (``serve`` runs it)."""
    batch = batcher.EmbedBatcher(model, max_batch=max_batch, max_wait_s=max_wait_s,
                                 max_queue=max_queue)
    return inference.Inference(model_name=name, limits=limits,
                               embedding=(model, batch)), batch
