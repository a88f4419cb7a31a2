"""The async client against aion.sdk.testing.FakeGateway on a real grpc.aio server."""

from __future__ import annotations

import socket

import grpc
import pytest

import aion.sdk
from aion.api.v1 import common_pb2, tasks_pb2
from aion.sdk import client, retry, testing

QUICK = aion.sdk.RetryPolicy(max_attempts=3, initial_backoff_s=0.01, max_backoff_s=0.05)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_stream_yields_tokens_then_done(
    aclient: client.AsyncClient, gateway: testing.FakeGateway
) -> None:
    events = [e async for e in aclient.stream("demo", "hi", max_tokens=8)]
    assert [e.WhichOneof("event") for e in events] == ["started", "token", "token", "done"]
    assert "".join(e.token.text for e in events) == "Hello"
    final = aion.sdk.event_result(events[-1])
    assert final is not None
    assert final.status == common_pb2.TASK_STATUS_OK
    spec = gateway.seen("Stream")[0].request.task
    assert (spec.agent, spec.input, spec.options.max_tokens) == ("demo", "hi", 8)
    assert not spec.options.HasField("temperature")


async def test_every_call_carries_a_deadline(
    aclient: client.AsyncClient, gateway: testing.FakeGateway
) -> None:
    _ = [e async for e in aclient.stream("demo", "hi")]
    await aclient.get("t-1")
    await aclient.get("t-1", timeout=5)
    # The server sees the deadline in whole milliseconds, hence the slack.
    remaining = [call.time_remaining for call in gateway.calls]
    assert remaining[0] == pytest.approx(300, abs=5)
    assert remaining[1] == pytest.approx(30, abs=5)
    assert remaining[2] == pytest.approx(5, abs=1)


async def test_api_key_and_bearer_token_are_sent(gateway: testing.FakeGateway) -> None:
    async with client.AsyncClient(gateway.target, api_key="k-123", token="jwt.x.y") as c:
        await c.get("t-1")
    async with client.AsyncClient(gateway.target) as c:
        await c.get("t-1")
    with_creds, without = gateway.calls
    assert with_creds.metadata["x-api-key"] == "k-123"
    assert with_creds.metadata["authorization"] == "Bearer jwt.x.y"
    assert "x-api-key" not in without.metadata
    assert "authorization" not in without.metadata


async def test_credentials_come_from_the_environment(
    gateway: testing.FakeGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AION_TARGET", gateway.target)
    monkeypatch.setenv("AION_API_KEY", "from-env")
    async with client.AsyncClient() as c:
        assert c.target == gateway.target
        await c.get("t-1")
    assert gateway.calls[0].metadata["x-api-key"] == "from-env"


async def test_unavailable_is_retried_then_succeeds(
    aclient: client.AsyncClient, gateway: testing.FakeGateway
) -> None:
    gateway.fail("Get", grpc.StatusCode.UNAVAILABLE, "agent service restarting")
    res = await aclient.get("t-1")
    assert res.output == "Hello"
    assert len(gateway.seen("Get")) == 2


async def test_resource_exhausted_waits_as_retry_info_says(
    aclient: client.AsyncClient, gateway: testing.FakeGateway
) -> None:
    gateway.fail(
        "Submit", grpc.StatusCode.RESOURCE_EXHAUSTED, "tenant over its rate", retry_after_s=0.3
    )
    response = await aclient.submit("demo", "hi", idempotency_key="k1")
    assert response.result.status == common_pb2.TASK_STATUS_OK
    first, second = gateway.seen("Submit")
    assert second.at - first.at >= 0.3
    assert second.request.task.idempotency_key == "k1"


async def test_submit_without_idempotency_key_is_not_retried(
    aclient: client.AsyncClient, gateway: testing.FakeGateway
) -> None:
    gateway.fail("Submit", grpc.StatusCode.UNAVAILABLE, "agent service restarting")
    with pytest.raises(aion.sdk.Unavailable, match="restarting"):
        await aclient.submit("demo", "hi")
    assert len(gateway.seen("Submit")) == 1


async def test_invalid_argument_is_not_retried_and_names_the_field(
    aclient: client.AsyncClient, gateway: testing.FakeGateway
) -> None:
    with pytest.raises(aion.sdk.InvalidArgument) as info:
        await aclient.submit("demo", "hi", max_tokens=-1, idempotency_key="k")
    assert info.value.field == "max_tokens"
    assert info.value.code is grpc.StatusCode.INVALID_ARGUMENT
    assert str(info.value) == ("INVALID_ARGUMENT: max_tokens must be positive (field: max_tokens)")
    assert len(gateway.seen("Submit")) == 1


async def test_deadline_exceeded_is_not_retried(
    aclient: client.AsyncClient, gateway: testing.FakeGateway
) -> None:
    gateway.fail("Get", grpc.StatusCode.DEADLINE_EXCEEDED, "too slow")
    with pytest.raises(aion.sdk.DeadlineExceeded):
        await aclient.get("t-1")
    assert len(gateway.seen("Get")) == 1


async def test_retries_stop_at_max_attempts(
    aclient: client.AsyncClient, gateway: testing.FakeGateway
) -> None:
    for _ in range(5):
        gateway.fail("Get", grpc.StatusCode.UNAVAILABLE, "down")
    with pytest.raises(aion.sdk.Unavailable):
        await aclient.get("t-1")
    assert len(gateway.seen("Get")) == QUICK.max_attempts


async def test_stream_is_retried_before_its_first_event(
    aclient: client.AsyncClient, gateway: testing.FakeGateway
) -> None:
    gateway.fail("Stream", grpc.StatusCode.UNAVAILABLE, "down")
    events = [e async for e in aclient.follow("t-1")]
    assert events[-1].WhichOneof("event") == "done"
    assert len(gateway.seen("Stream")) == 2


async def test_stream_is_not_retried_after_its_first_event(
    aclient: client.AsyncClient, gateway: testing.FakeGateway
) -> None:
    gateway.fail_stream_after(2, grpc.StatusCode.UNAVAILABLE, "connection lost")
    seen: list[tasks_pb2.TaskEvent] = []

    async def collect() -> None:
        async for event in aclient.follow("t-1"):
            seen.append(event)

    with pytest.raises(aion.sdk.Unavailable, match="connection lost"):
        await collect()
    assert [e.WhichOneof("event") for e in seen] == ["started", "token"]
    assert len(gateway.seen("Stream")) == 1


async def test_not_found_and_agents(aclient: client.AsyncClient) -> None:
    with pytest.raises(aion.sdk.NotFound, match="agent 'nope' not found"):
        await aclient.get_agent("nope")
    assert [a.name for a in await aclient.list_agents()] == ["demo", "big"]
    assert (await aclient.get_agent("demo")).model == "smollm2"
    assert (await aclient.cancel("t-1")).status == common_pb2.TASK_STATUS_CANCELED


async def test_async_submit_returns_queued(
    aclient: client.AsyncClient, gateway: testing.FakeGateway
) -> None:
    response = await aclient.submit("demo", "hi", asynchronous=True)
    assert response.task_id == "t-9"
    assert aion.sdk.result_to_dict(response.result)["status"] == "QUEUED"
    # An asynchronous submit returns at once: it gets the short deadline.
    assert gateway.seen("Submit")[0].time_remaining == pytest.approx(30, abs=5)


async def test_health(aclient: client.AsyncClient) -> None:
    assert await aclient.health() == "SERVING"
    with pytest.raises(aion.sdk.NotFound):
        await aclient.health("no.such.Service")


async def test_bad_privacy_fails_locally_with_its_field(aclient: client.AsyncClient) -> None:
    with pytest.raises(aion.sdk.InvalidArgument) as info:
        await aclient.submit("demo", "hi", privacy="anywhere")
    assert info.value.field == "privacy"


async def test_unreachable_gateway_is_unavailable_and_never_reached() -> None:
    async with client.AsyncClient(f"127.0.0.1:{_free_port()}", retries=QUICK) as c:
        with pytest.raises(aion.sdk.Unavailable) as info:
            await c.submit("demo", "hi")
    cause = info.value.__cause__
    assert isinstance(cause, grpc.RpcError)
    assert not retry.reached_server(cause)


async def test_close_is_idempotent(gateway: testing.FakeGateway) -> None:
    c = client.AsyncClient(gateway.target)
    await c.close()
    await c.close()
