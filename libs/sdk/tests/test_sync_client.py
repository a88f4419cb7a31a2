"""The sync client, called from a worker thread while the scripted grpc.aio server runs."""

from __future__ import annotations

import asyncio

import grpc
import pytest

import aion.sdk
from aion.api.v1 import common_pb2
from aion.sdk import sync_client, testing


async def test_stream_yields_tokens_then_done(
    sclient: sync_client.Client, gateway: testing.FakeGateway
) -> None:
    events = await asyncio.to_thread(lambda: list(sclient.stream("demo", "hi", seed=7)))
    assert [e.WhichOneof("event") for e in events] == ["started", "token", "token", "done"]
    assert "".join(e.token.text for e in events) == "Hello"
    call = gateway.seen("Stream")[0]
    assert call.request.task.options.seed == 7
    assert call.time_remaining == pytest.approx(300, abs=5)


async def test_credentials_and_deadline_are_sent(gateway: testing.FakeGateway) -> None:
    def run() -> common_pb2.TaskResult:
        with aion.sdk.Client(gateway.target, api_key="k", token="jwt", timeout=12) as c:
            return c.get("t-1")

    assert (await asyncio.to_thread(run)).output == "Hello"
    call = gateway.calls[0]
    assert call.metadata["x-api-key"] == "k"
    assert call.metadata["authorization"] == "Bearer jwt"
    assert call.time_remaining == pytest.approx(12, abs=1)


async def test_unavailable_is_retried(
    sclient: sync_client.Client, gateway: testing.FakeGateway
) -> None:
    gateway.fail("Get", grpc.StatusCode.UNAVAILABLE, "restarting")
    gateway.fail("Get", grpc.StatusCode.UNAVAILABLE, "restarting")
    assert (await asyncio.to_thread(sclient.get, "t-1")).task_id == "t-1"
    assert len(gateway.seen("Get")) == 3


async def test_invalid_argument_names_the_field(
    sclient: sync_client.Client, gateway: testing.FakeGateway
) -> None:
    with pytest.raises(aion.sdk.InvalidArgument) as info:
        await asyncio.to_thread(
            lambda: sclient.submit("demo", "hi", max_tokens=0, idempotency_key="k")
        )
    assert info.value.field == "max_tokens"
    assert len(gateway.seen("Submit")) == 1


async def test_stream_is_not_retried_after_its_first_event(
    sclient: sync_client.Client, gateway: testing.FakeGateway
) -> None:
    gateway.fail_stream_after(1, grpc.StatusCode.UNAVAILABLE, "connection lost")
    seen: list[str | None] = []

    def run() -> None:
        for event in sclient.follow("t-1"):
            seen.append(event.WhichOneof("event"))

    with pytest.raises(aion.sdk.Unavailable):
        await asyncio.to_thread(run)
    assert seen == ["started"]
    assert len(gateway.seen("Stream")) == 1


async def test_agents_health_and_not_found(sclient: sync_client.Client) -> None:
    assert [a.name for a in await asyncio.to_thread(sclient.list_agents)] == ["demo", "big"]
    assert await asyncio.to_thread(sclient.health) == "SERVING"
    with pytest.raises(aion.sdk.NotFound, match="task 'nope' not found"):
        await asyncio.to_thread(sclient.get, "nope")


def test_close_is_idempotent() -> None:
    c = aion.sdk.Client("127.0.0.1:1")
    c.close()
    c.close()
