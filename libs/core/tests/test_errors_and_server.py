"""The error interceptor, health, reflection and drain, against a real grpc.aio server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from aion.api.router.v1 import router_pb2, router_pb2_grpc
from aion.core import errors, metrics, server

SERVICE = router_pb2.DESCRIPTOR.services_by_name["Router"].full_name


class ScriptedRouter(router_pb2_grpc.RouterServicer):
    """Raises whatever the request's agent field names."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.entered = asyncio.Event()

    async def Decide(
        self, request: router_pb2.DecideRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> router_pb2.Decision:
        match request.agent:
            case "bad-field":
                raise errors.InvalidArgument("max_tokens must be >= 0", field="max_tokens")
            case "busy":
                raise errors.ResourceExhausted("queue full", retry_after_s=1.5)
            case "crash":
                raise ValueError("secret internal detail")
            case "slow":
                self.entered.set()
                await self.release.wait()
        return router_pb2.Decision(provider=request.agent)


@pytest.fixture
async def running() -> AsyncIterator[tuple[server.GrpcServer, ScriptedRouter]]:
    servicer = ScriptedRouter()
    srv = server.GrpcServer(name="test", host="127.0.0.1", port=0, grace_s=5)
    srv.add(router_pb2_grpc.add_RouterServicer_to_server, servicer, SERVICE)
    async with srv:
        yield srv, servicer


async def _decide(srv: server.GrpcServer, agent: str) -> router_pb2.Decision:
    async with grpc.aio.insecure_channel(srv.address) as chan:
        stub: router_pb2_grpc.RouterAsyncStub = router_pb2_grpc.RouterStub(chan)
        return await stub.Decide(router_pb2.DecideRequest(agent=agent), timeout=10)


async def _health(srv: server.GrpcServer, service: str = "") -> int:
    async with grpc.aio.insecure_channel(srv.address) as chan:
        resp = await health_pb2_grpc.HealthStub(chan).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=5
        )
        return int(resp.status)


async def test_field_error_crosses_as_invalid_argument_with_field(running: Any) -> None:
    srv, _ = running
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await _decide(srv, "bad-field")
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    err = errors.from_rpc_error(info.value)
    assert isinstance(err, errors.InvalidArgument)
    assert err.field == "max_tokens"
    assert err.message == "max_tokens must be >= 0"


async def test_resource_exhausted_carries_retry_delay(running: Any) -> None:
    srv, _ = running
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await _decide(srv, "busy")
    err = errors.from_rpc_error(info.value)
    assert isinstance(err, errors.ResourceExhausted)
    assert err.retriable
    assert err.retry_after_s == pytest.approx(1.5)


async def test_unexpected_exception_is_internal_without_its_text(running: Any) -> None:
    srv, _ = running
    before = metrics.RPC_HANDLED.labels(SERVICE, "Decide", "INTERNAL")._value.get()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await _decide(srv, "crash")
    assert info.value.code() == grpc.StatusCode.INTERNAL
    assert "secret" not in (info.value.details() or "")
    assert metrics.RPC_HANDLED.labels(SERVICE, "Decide", "INTERNAL")._value.get() == before + 1


async def test_remote_names_the_unreachable_service() -> None:
    async with grpc.aio.insecure_channel("127.0.0.1:1") as chan:
        stub: router_pb2_grpc.RouterAsyncStub = router_pb2_grpc.RouterStub(chan)
        with (
            pytest.raises(errors.Unavailable, match="router is unavailable"),
            errors.remote("router"),
        ):
            await stub.Decide(router_pb2.DecideRequest(agent="x"), timeout=2)


async def test_health_and_reflection(running: Any) -> None:
    srv, _ = running
    assert await _health(srv) == health_pb2.HealthCheckResponse.SERVING
    assert await _health(srv, SERVICE) == health_pb2.HealthCheckResponse.SERVING
    await srv.set_serving(False)
    assert await _health(srv, SERVICE) == health_pb2.HealthCheckResponse.NOT_SERVING
    async with grpc.aio.insecure_channel(srv.address) as chan:
        stub = reflection_pb2_grpc.ServerReflectionStub(chan)
        call = stub.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        )
        names = set()
        async for resp in call:
            names = {s.name for s in resp.list_services_response.service}
            break
    assert SERVICE in names


async def test_shutdown_flips_health_then_lets_in_flight_calls_finish() -> None:
    servicer = ScriptedRouter()
    # A drain delay keeps the server answering (health says NOT_SERVING) while
    # load balancers notice; then it stops accepting and waits for in-flight calls.
    srv = server.GrpcServer(name="test", host="127.0.0.1", port=0, grace_s=5, drain_delay_s=2)
    srv.add(router_pb2_grpc.add_RouterServicer_to_server, servicer, SERVICE)
    await srv.__aenter__()
    async with grpc.aio.insecure_channel(srv.address) as chan:
        stub: router_pb2_grpc.RouterAsyncStub = router_pb2_grpc.RouterStub(chan)
        health = health_pb2_grpc.HealthStub(chan)
        in_flight = asyncio.ensure_future(
            stub.Decide(router_pb2.DecideRequest(agent="slow"), timeout=10)
        )
        await asyncio.wait_for(servicer.entered.wait(), 5)
        stopping = asyncio.ensure_future(srv.shutdown())

        # Readiness flips first, while the in-flight call is still running.
        async def not_serving() -> None:
            while True:
                resp = await health.Check(health_pb2.HealthCheckRequest(), timeout=5)
                if resp.status == health_pb2.HealthCheckResponse.NOT_SERVING:
                    return
                await asyncio.sleep(0)

        await asyncio.wait_for(not_serving(), 5)
        assert not in_flight.done()
        servicer.release.set()
        result = await asyncio.wait_for(in_flight, 5)
        assert result.provider == "slow"
        await asyncio.wait_for(stopping, 5)
    await srv.shutdown()  # idempotent


def test_a_message_quoting_a_huge_input_is_cut_to_fit_the_trailers() -> None:
    err = errors.NotFound(f"task '{'x' * 600_000}' not found", field="task_id")
    status = err.to_status()
    assert len(status.SerializeToString()) < 4 * errors.MAX_MESSAGE_CHARS
    assert status.message.startswith("task 'xxx")
    assert status.message.endswith(f"({600_000 + 17 - errors.MAX_MESSAGE_CHARS} more characters)")
