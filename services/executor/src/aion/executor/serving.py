"""An executor's running parts, started together and stopped in one order.

``grpc_server`` and ``http_server`` put a service (``inference``) behind its
two edges: the Executor gRPC service (mTLS, only the allowed callers) and the
OpenAI-compatible HTTP API (behind its bearer token). ``serve`` enters them
and the load reporter, and runs the background work as named tasks in one
TaskGroup (kopf and temporal's Worker name their root tasks the same way):
``http``, the service's loops (``embed batcher``) and ``load reports``.
``main`` and ``testing`` both serve through it, so a test runs the same
wiring as the process.

``Serving.drain`` stops them in this order, once:

1. gRPC: health goes NOT_SERVING, then the drain delay and the grace period
   for the calls in flight;
2. HTTP: stop accepting, finish the open responses (its task then ends);
3. the service's loops, then the load reporter (cancelled; leaving the
   reporter's context sends a last report saying the model is not ready).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Coroutine
from typing import Any

from aion.api.executor.v1 import executor_pb2_grpc
from aion.core import http_server as core_http_server
from aion.core import server, tls
from aion.executor import inference, load_report, servicer
from aion.executor.http import api

log = logging.getLogger(__name__)

# The names of the background tasks besides the service's own loops.
HTTP = "http"
LOAD_REPORTS = "load reports"


def grpc_server(
    service: inference.Inference,
    *,
    executor_id: str,
    host: str,
    port: int,
    grace_s: float,
    tls: tls.Tls,
    health_port: int | None,
    ready: bool = False,
    drain_delay_s: float = 0.0,
) -> server.GrpcServer:
    """The gRPC server with the Executor service over ``service``; not started.

    It starts NOT_SERVING (``ready=False``) until ``Serving.load_model`` is done.
    """
    grpc = server.GrpcServer(
        name="executor",
        host=host,
        port=port,
        grace_s=grace_s,
        drain_delay_s=drain_delay_s,
        ready=ready,
        tls=tls,
        allow=servicer.ALLOW,
        health_port=health_port,
    )
    grpc.add(
        executor_pb2_grpc.add_ExecutorServicer_to_server,
        servicer.ExecutorServicer(service, executor_id=executor_id),
        servicer.SERVICE,
    )
    return grpc


def http_server(
    service: inference.Inference, *, token: str | None, host: str, port: int
) -> core_http_server.HttpServer:
    """The OpenAI-compatible HTTP server over ``service``; not started.

    Without a token it refuses every request but ``/healthz`` (fail closed).
    """
    if token is None:
        log.warning(
            "AION_EXECUTOR_HTTP_TOKEN is not set: the HTTP API refuses every request but /healthz"
        )
    return core_http_server.HttpServer(
        api.OpenAIApi(service, token=token).app, name="executor http", host=host, port=port
    )


class Serving:
    """A running executor: its servers and its named background tasks."""

    def __init__(
        self,
        service: inference.Service,
        *,
        grpc: server.GrpcServer,
        http: core_http_server.HttpServer | None,
        tasks: dict[str, asyncio.Task[Any]],
    ) -> None:
        self.service = service
        self.grpc = grpc
        self.http = http
        self.tasks = tasks
        self._drained = False

    async def load_model(self) -> None:
        """Load the model (in a thread, logging progress), then mark gRPC SERVING."""
        await self.service.load()
        await self.grpc.set_serving(True)

    async def drain(self) -> None:
        """Stop gRPC, then HTTP, then cancel the loops and the reporter; safe to call twice."""
        if self._drained:
            return
        self._drained = True
        await self.grpc.shutdown()
        if self.http is not None:
            self.http.shutdown()
        for name, task in self.tasks.items():
            if name != HTTP:
                task.cancel()


@contextlib.asynccontextmanager
async def serve(
    service: inference.Service,
    *,
    grpc: server.GrpcServer,
    http: core_http_server.HttpServer | None = None,
    reporter: load_report.LoadReporter | None = None,
    loops: bool = True,
) -> AsyncIterator[Serving]:
    """Start the servers and the background tasks; drain them on the way out.

    ``loops=False`` leaves the service's loops unstarted (a test that needs a
    request to stay queued starts them itself, from ``service.loops()``).
    """
    async with contextlib.AsyncExitStack() as stack:
        if reporter is not None:
            await stack.enter_async_context(reporter)
        await stack.enter_async_context(grpc)
        if http is not None:
            await stack.enter_async_context(http)
        async with asyncio.TaskGroup() as group:
            work: dict[str, Coroutine[Any, Any, None]] = {}
            if http is not None:
                work[HTTP] = http.serve()
            if loops:
                work.update({name: loop() for name, loop in service.loops().items()})
            if reporter is not None:
                work[LOAD_REPORTS] = reporter.run()
            running = Serving(
                service,
                grpc=grpc,
                http=http,
                tasks={name: group.create_task(coro, name=name) for name, coro in work.items()},
            )
            try:
                yield running
            finally:
                await running.drain()
