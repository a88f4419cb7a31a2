"""An executor on free ports in this process, for tests and the benchmark.

``serve`` runs an ``Inference`` behind the real gRPC server (mTLS, with its
health port) and the real HTTP server (uvicorn, behind its bearer token), as
``main`` does, with stubs called as the agent service and the HTTP base URL.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import grpc
from grpc_health.v1 import health_pb2_grpc

from aion.api.executor.v1 import executor_pb2_grpc
from aion.core import http_server, server, tls
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
    http_token: str
    ca: tls.LocalCa

    @property
    def http_headers(self) -> dict[str, str]:
        """The headers an authorized HTTP client sends."""
        return {"Authorization": f"Bearer {self.http_token}"}


@contextlib.asynccontextmanager
async def serve(service: inference.Inference, *, ready: bool = True,
                batch: batcher.EmbedBatcher | None = None,
                grpc_options: list[tuple[str, Any]] | None = None,
                ca: tls.LocalCa | None = None, http_token: str = "test-executor-token",
                ) -> AsyncIterator[Executor]:
    """Serve ``service`` over gRPC and HTTP on free ports (and run ``batch``, if given);
    ``ca`` (a fresh one when None) issues its certificate and the stubs' (``agent``)."""
    ca = ca if ca is not None else tls.LocalCa()
    grpc_server = server.GrpcServer(name="executor", host="127.0.0.1", port=0, grace_s=1.0,
                                    ready=ready, tls=ca.tls("executor"), allow=servicer.ALLOW,
                                    health_port=0)
    grpc_server.add(executor_pb2_grpc.add_ExecutorServicer_to_server,
                    servicer.ExecutorServicer(service, executor_id="in-process"),
                    servicer.SERVICE)
    http = http_server.HttpServer(http_api.OpenAIApi(service, token=http_token).app,
                                  name="executor http", host="127.0.0.1", port=0)
    async with grpc_server, http, grpc.aio.secure_channel(
            grpc_server.address, ca.tls("agent").channel_credentials(),
            options=[*ca.tls("agent").channel_options("executor"), *(grpc_options or [])],
    ) as channel:
        tasks = [asyncio.create_task(http.serve())]
        if batch is not None:
            tasks.append(asyncio.create_task(batch.run()))
        try:
            yield Executor(server=grpc_server, service=service,
                           stub=executor_pb2_grpc.ExecutorStub(channel),
                           health=health_pb2_grpc.HealthStub(channel), http_url=http.url,
                           http_token=http_token, ca=ca)
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
