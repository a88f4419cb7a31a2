"""A grpc.aio server with the standard health service, reflection and aion's interceptor.

An internal server (``tls`` given) serves mTLS only: callers must present a
certificate the install CA signed, and ``allow`` names who may call each
method (``aion.core.authz``). Reflection is off there unless asked for. Its
``health_port`` is a second, plaintext listener for the kubelet's gRPC probes
that answers grpc.health.v1.Health and refuses everything else with
UNAUTHENTICATED. Without ``tls`` (the gateway's public port) it serves
plaintext with reflection, as before.

Open it with ``async with GrpcServer(...)`` (``GrpcServer.serving(name, cfg, ...)``
takes the address and shutdown timings from a service's settings); register
servicers with ``add`` before entering. Health starts SERVING unless ``ready=False`` (the executor
flips it once its model is loaded). ``shutdown`` flips every service to
NOT_SERVING first, keeps serving ``drain_delay_s`` so load balancers notice,
then stops accepting and lets in-flight calls finish within ``grace_s``.
"""

from __future__ import annotations

import asyncio
import logging
import types
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, Self

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from aion.core import authz, interceptors, settings
from aion.core import tls as tls_mod

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 16 * 1024 * 1024


def _options(max_message_bytes: int) -> list[tuple[str, int]]:
    return [("grpc.max_receive_message_length", max_message_bytes), ("grpc.so_reuseport", 0)]


class GrpcServer:
    """One process's gRPC server; an async context manager with an idempotent close."""

    def __init__(
        self,
        *,
        name: str,
        host: str,
        port: int,
        grace_s: float,
        drain_delay_s: float = 0.0,
        ready: bool = True,
        extra_interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
        tls: tls_mod.Tls | None = None,
        allow: authz.Allow | None = None,
        health_port: int | None = None,
        reflection: bool | None = None,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
    ) -> None:
        self.name = name
        self._host = host
        self._address = f"{host}:{port}"
        self._grace_s = grace_s
        self._drain_delay_s = drain_delay_s
        self._ready = ready
        self._tls = tls
        if tls is not None and allow is None:
            raise ValueError(f"{name}: an mTLS server needs its table of allowed callers")
        guards = [authz.AllowInterceptor(allow)] if tls is not None and allow is not None else []
        self._reflection = (tls is None) if reflection is None else reflection
        # The largest request message (a larger one is RESOURCE_EXHAUSTED before any handler).
        self._server = grpc.aio.server(
            interceptors=[interceptors.ErrorInterceptor(), *guards, *extra_interceptors],
            options=_options(max_message_bytes),
        )
        self._health = health.aio.HealthServicer()
        self._health_server: grpc.aio.Server | None = None
        self._health_address = None if health_port is None else f"{host}:{health_port}"
        self._health_port: int | None = None
        self._services: list[str] = []
        self._port: int | None = None
        self._stopped = False

    @classmethod
    def serving(
        cls,
        name: str,
        cfg: settings.ServiceSettings,
        *,
        tls: tls_mod.Tls | None = None,
        allow: authz.Allow | None = None,
        health_port: int | None = None,
        extra_interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
        max_message_bytes: int = MAX_MESSAGE_BYTES,
    ) -> GrpcServer:
        """A server on ``cfg``'s host and port that drains as ``cfg`` says."""
        return cls(
            name=name,
            host=cfg.host,
            port=cfg.port,
            grace_s=cfg.grace_s,
            drain_delay_s=cfg.drain_delay_s,
            tls=tls,
            allow=allow,
            health_port=health_port,
            extra_interceptors=extra_interceptors,
            max_message_bytes=max_message_bytes,
        )

    def add(
        self, register: Callable[[Any, grpc.aio.Server], None], servicer: Any, service_name: str
    ) -> None:
        """Register a servicer, as ``add_XServicer_to_server``, under its full service name."""
        register(servicer, self._server)
        self._services.append(service_name)

    @property
    def port(self) -> int:
        """The bound port (known once entered)."""
        if self._port is None:
            raise RuntimeError("the server is not started")
        return self._port

    @property
    def health_port(self) -> int:
        """The bound plaintext health port (known once entered, if one was asked for)."""
        if self._health_port is None:
            raise RuntimeError("the server has no health port, or is not started")
        return self._health_port

    @property
    def health_address(self) -> str:
        """host:port of the plaintext health listener."""
        return f"{self._host}:{self.health_port}"

    @property
    def address(self) -> str:
        """host:port as clients should dial it."""
        host = self._address.rsplit(":", 1)[0]
        return f"{host}:{self.port}"

    async def set_serving(self, serving: bool) -> None:
        """Set every registered service (and the server as a whole) SERVING or NOT_SERVING."""
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ["", *self._services]:
            await self._health.set(name, status)

    async def __aenter__(self) -> Self:
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        if self._reflection:
            names = [
                *self._services,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ]
            reflection.enable_server_reflection(names, self._server)
        if self._tls is not None:
            self._port = self._server.add_secure_port(self._address, self._tls.server_credentials())
        else:
            self._port = self._server.add_insecure_port(self._address)
        if self._port == 0:
            raise OSError(f"{self.name}: cannot listen on {self._address}")
        if self._health_address is not None:
            self._health_server = grpc.aio.server(options=_options(MAX_MESSAGE_BYTES))
            health_pb2_grpc.add_HealthServicer_to_server(self._health, self._health_server)
            self._health_server.add_generic_rpc_handlers((_HealthOnly(),))
            self._health_port = self._health_server.add_insecure_port(self._health_address)
            if self._health_port == 0:
                raise OSError(f"{self.name}: cannot listen on {self._health_address}")
            await self._health_server.start()
        await self._server.start()
        await self.set_serving(self._ready)
        log.info(
            "%s listening",
            self.name,
            extra={
                "address": self.address,
                "tls": self._tls is not None,
                **({"health_address": self.health_address} if self._health_port else {}),
            },
        )
        return self

    async def shutdown(self) -> None:
        """Drain and stop; safe to call twice."""
        if self._stopped:
            return
        self._stopped = True
        await self._health.enter_graceful_shutdown()
        if self._drain_delay_s:
            await asyncio.sleep(self._drain_delay_s)
        log.info("%s draining", self.name, extra={"grace_s": self._grace_s})
        await self._server.stop(self._grace_s)
        if self._health_server is not None:
            await self._health_server.stop(0)
        log.info("%s stopped", self.name)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: types.TracebackType | None,
    ) -> None:
        await self.shutdown()


async def _unauthenticated(
    requests: Any, context: grpc.aio.ServicerContext[Any, Any]
) -> AsyncIterator[Any]:
    await context.abort(
        grpc.StatusCode.UNAUTHENTICATED,
        "the plaintext health port answers grpc.health.v1.Health only; "
        "call the mTLS port with a service certificate",
    )
    yield None  # pragma: no cover (abort raises)


class _HealthOnly(grpc.GenericRpcHandler):
    """On the health port: every method but Health is refused."""

    def service(
        self,
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        return grpc.stream_stream_rpc_method_handler(_unauthenticated)
