"""The Router service over real gRPC (plaintext, in process): bad requests come back as
INVALID_ARGUMENT naming the field, as the gateway relays them to the caller."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest

from aion.api.router.v1 import router_pb2, router_pb2_grpc
from aion.api.v1 import common_pb2
from aion.core import errors, server
from aion.router import policy, servicer


@pytest.fixture
async def router() -> AsyncIterator[router_pb2_grpc.RouterAsyncStub]:
    backend = server.GrpcServer(name="router", host="127.0.0.1", port=0, grace_s=1)
    backend.add(
        router_pb2_grpc.add_RouterServicer_to_server,
        servicer.RouterServicer(policy.PolicySource(None)),
        "router",
    )
    async with backend, grpc.aio.insecure_channel(backend.address) as chan:
        yield router_pb2_grpc.RouterStub(chan)


async def test_a_narrowing_task_is_decided(router: router_pb2_grpc.RouterAsyncStub) -> None:
    decision = await router.Decide(
        router_pb2.DecideRequest(
            tenant="acme",
            agent="a",
            privacy=common_pb2.PRIVACY_ALLOW_API,
            requested_privacy=common_pb2.PRIVACY_LOCAL_ONLY,
        ),
        timeout=30,
    )
    assert decision.engine.route == common_pb2.ROUTE_LOCAL
    assert "the task asks for local-only" in decision.engine.reason


async def test_a_looser_privacy_than_the_agents_is_invalid_argument(
    router: router_pb2_grpc.RouterAsyncStub,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await router.Decide(
            router_pb2.DecideRequest(
                tenant="acme",
                agent="a",
                privacy=common_pb2.PRIVACY_LOCAL_ONLY,
                requested_privacy=common_pb2.PRIVACY_ALLOW_API,
            ),
            timeout=30,
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "may only narrow" in (info.value.details() or "")
    assert errors.from_rpc_error(info.value).field == "task.options.privacy"


async def test_a_request_without_a_tenant_is_invalid_argument(
    router: router_pb2_grpc.RouterAsyncStub,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await router.Decide(router_pb2.DecideRequest(agent="a"), timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert errors.from_rpc_error(info.value).field == "tenant"
