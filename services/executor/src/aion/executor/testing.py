"""An executor on free ports in this process, for tests and the benchmark.

``serve`` runs a service (``inference``) through ``serving``, the wiring
``main`` uses: the real gRPC server (mTLS, with its health port) and the real
HTTP server (uvicorn, behind its bearer token), with stubs called as the
agent service and the HTTP base URL. Only the ports (free ones), the
certificates (a local CA) and the absent load reporter differ from the process.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import grpc
from grpc_health.v1 import health_pb2_grpc

from aion.api.executor.v1 import executor_pb2_grpc
from aion.core import server, tls
from aion.executor import inference, serving


@dataclasses.dataclass
class Executor:
    """A running executor and clients of it."""

    serving: serving.Serving
    stub: executor_pb2_grpc.ExecutorAsyncStub
    health: health_pb2_grpc.HealthStub
    http_url: str
    http_token: str
    ca: tls.LocalCa

    @property
    def server(self) -> server.GrpcServer:
        """Its gRPC server."""
        return self.serving.grpc

    @property
    def service(self) -> inference.Service:
        """The service it serves."""
        return self.serving.service

    @property
    def http_headers(self) -> dict[str, str]:
        """The headers an authorized HTTP client sends."""
        return {"Authorization": f"Bearer {self.http_token}"}


@contextlib.asynccontextmanager
async def serve(
    service: inference.Service,
    *,
    ready: bool = True,
    loops: bool = True,
    grpc_options: list[tuple[str, Any]] | None = None,
    ca: tls.LocalCa | None = None,
    http_token: str = "test-executor-token",
) -> AsyncIterator[Executor]:
    """Serve ``service`` over gRPC and HTTP on free ports, with its loops unless ``loops``
    is False; ``ca`` (a fresh one when None) issues its certificate and the stubs'
    (``agent``). ``ready=False`` starts NOT_SERVING, as the process does until
    ``Executor.serving.load_model()``."""
    ca = ca if ca is not None else tls.LocalCa()
    grpc_server = serving.grpc_server(
        service,
        executor_id="in-process",
        host="127.0.0.1",
        port=0,
        grace_s=1.0,
        tls=ca.tls("executor"),
        health_port=0,
        ready=ready,
    )
    http = serving.http_server(service, token=http_token, host="127.0.0.1", port=0)
    async with (
        serving.serve(service, grpc=grpc_server, http=http, loops=loops) as running,
        grpc.aio.secure_channel(
            grpc_server.address,
            ca.tls("agent").channel_credentials(),
            options=[*ca.tls("agent").channel_options("executor"), *(grpc_options or [])],
        ) as channel,
    ):
        yield Executor(
            serving=running,
            stub=executor_pb2_grpc.ExecutorStub(channel),
            health=health_pb2_grpc.HealthStub(channel),
            http_url=http.url,
            http_token=http_token,
            ca=ca,
        )
