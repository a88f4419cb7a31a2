"""Test helpers: one CA per test process, and clients of the agent service over mTLS.

``channel(address)`` is what a test dials the agent service with: a channel
whose calls go as the ``gateway`` identity, except RegisterAgent and
DeregisterAgent, which go as the ``operator`` (the only callers each RPC
admits). ``EXECUTOR_ALLOW`` is the real executor's table, for scripted executors.
``Clock`` is a clock the test moves (for the breakers, the load board).
"""

from __future__ import annotations

import types
from pathlib import Path
from typing import Any, Self

import grpc

from aion.api.executor.v1 import executor_pb2_grpc
from aion.core import authz, channels, server, tls

# The certificates every service and client of one test process use.
CA = tls.LocalCa()
AGENT_SERVICE = "aion.agent.v1.AgentService"
EXECUTOR_SERVICE = "aion.executor.v1.Executor"
EXECUTOR_ALLOW = authz.methods(
    EXECUTOR_SERVICE, {"Generate": {"agent"}, "Stats": {"agent"}, "Embed": {"knowledge", "agent"}}
)


class Clock:
    """A clock that stands still until the test moves ``now``."""

    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def executor_server(
    servicer: executor_pb2_grpc.ExecutorServicer, *, grace_s: float = 0.1
) -> server.GrpcServer:
    """A gRPC server for a scripted executor on a free port, admitting what the real
    executor admits (enter it to serve)."""
    srv = server.GrpcServer(
        name="executor",
        host="127.0.0.1",
        port=0,
        grace_s=grace_s,
        tls=CA.tls("executor"),
        allow=EXECUTOR_ALLOW,
        health_port=0,
    )
    srv.add(executor_pb2_grpc.add_ExecutorServicer_to_server, servicer, EXECUTOR_SERVICE)
    return srv


OPERATOR_METHODS = frozenset(
    {f"/{AGENT_SERVICE}/RegisterAgent", f"/{AGENT_SERVICE}/DeregisterAgent"}
)


class _AsCallers:
    """A channel to the agent service that calls each method as the identity it admits."""

    def __init__(self, address: str, ca: tls.LocalCa) -> None:
        self._gateway = channels.connect(address, tls=ca.tls("gateway"), peer="agent")
        self._operator = channels.connect(address, tls=ca.tls("operator"), peer="agent")

    def _for(self, method: str) -> grpc.aio.Channel:
        return self._operator if method in OPERATOR_METHODS else self._gateway

    def unary_unary(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return self._for(method).unary_unary(method, *args, **kwargs)

    def unary_stream(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return self._for(method).unary_stream(method, *args, **kwargs)

    def stream_unary(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return self._for(method).stream_unary(method, *args, **kwargs)

    def stream_stream(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return self._for(method).stream_stream(method, *args, **kwargs)

    async def close(self) -> None:
        await self._gateway.close()
        await self._operator.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: types.TracebackType | None,
    ) -> None:
        await self.close()


def channel(address: str, *, ca: tls.LocalCa = CA) -> Any:
    """A channel to the agent service at ``address`` (``async with``; give it to the stub)."""
    return _AsCallers(address, ca)


def process_env(
    directory: Path, identity: str = "agent", *, ca: tls.LocalCa = CA
) -> dict[str, str]:
    """The ``AION_TLS_*`` variables of a service process of ``identity`` (files written
    under ``directory``)."""
    return ca.env(directory, identity)
