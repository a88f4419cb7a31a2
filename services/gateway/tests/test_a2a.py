"""A2A over the gateway's servicers, with the a2a-sdk client, against the scripted peers."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
from a2a.client import client as a2a_client
from a2a.client import client_factory
from a2a.client import errors as client_errors
from a2a.types import a2a_pb2 as a2a
from a2a.utils import errors as a2a_errors
from google.protobuf import json_format

from .fakes import KEY, VIEWER, Gateway
from .fakes import gateway as _gateway


@contextlib.asynccontextmanager
async def _client(
    gw: Gateway,
    *,
    key: str = KEY,
    streaming: bool = True,
    agent: str = "demo",
    binding: str = "JSONRPC",
) -> AsyncIterator[a2a_client.Client]:
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(headers=headers, timeout=30) as http:
        client = await client_factory.create_client(
            f"{gw.url}/a2a/{agent}",
            client_config=a2a_client.ClientConfig(
                streaming=streaming, httpx_client=http, supported_protocol_bindings=[binding]
            ),
            resolver_http_kwargs={"headers": headers},
        )
        transport = type(client._transport).__name__  # type: ignore[attr-defined]
        assert (
            transport == {"JSONRPC": "JsonRpcTransport", "HTTP+JSON": "RestTransport"}[binding]
        ), transport
        async with client:
            yield client


def _message(text: str, message_id: str = "") -> a2a.SendMessageRequest:
    return a2a.SendMessageRequest(
        message=a2a.Message(
            message_id=message_id or str(uuid.uuid4()),
            role=a2a.ROLE_USER,
            parts=[a2a.Part(text=text)],
        )
    )


def _aion(struct: object) -> dict[str, object]:
    meta = json_format.MessageToDict(struct)  # type: ignore[arg-type]
    aion: dict[str, object] = meta["aion"]
    return aion


async def test_the_agent_card_is_the_callers_agent() -> None:
    async with _gateway() as gw, httpx.AsyncClient() as http:
        card = (
            await http.get(
                f"{gw.url}/a2a/demo/.well-known/agent-card.json", headers={"x-api-key": VIEWER}
            )
        ).json()
        missing = await http.get(
            f"{gw.url}/a2a/nope/.well-known/agent-card.json", headers={"x-api-key": VIEWER}
        )
        anonymous = await http.get(f"{gw.url}/a2a/demo/.well-known/agent-card.json")
    assert card["name"] == "demo"
    assert card["capabilities"]["streaming"] is True
    assert card["supportedInterfaces"][0]["url"] == f"{gw.url}/a2a/demo"
    assert [i["protocolBinding"] for i in card["supportedInterfaces"]] == ["JSONRPC", "HTTP+JSON"]
    assert (missing.status_code, missing.json()["error"]["param"]) == (404, "agent")
    assert anonymous.status_code == 401


@pytest.mark.parametrize("binding", ["JSONRPC", "HTTP+JSON"])
async def test_send_runs_an_aion_task_and_get_finds_it(binding: str) -> None:
    async with _gateway() as gw, _client(gw, streaming=False, binding=binding) as client:
        [response] = [r async for r in client.send_message(_message("Hi", "msg-1"))]
        task = response.task
        assert task.status.state == a2a.TASK_STATE_COMPLETED
        assert task.artifacts[0].parts[0].text == "Hello there"
        assert _aion(task.metadata)["status"] == "OK"
        again = await client.get_task(a2a.GetTaskRequest(id=task.id))
        [retry] = [r async for r in client.send_message(_message("Hi", "msg-1"))]
    assert gw.agents.runs[0].task.idempotency_key == "msg-1"
    assert gw.agents.runs[0].tenant == "acme"
    assert task.id == "t1"
    assert again.id == task.id
    assert again.status.state == a2a.TASK_STATE_COMPLETED
    assert retry.task.id == task.id  # the same message id is the same task


@pytest.mark.parametrize("binding", ["JSONRPC", "HTTP+JSON"])
async def test_stream_sends_the_task_its_output_then_the_final_status(binding: str) -> None:
    async with _gateway() as gw, _client(gw, binding=binding) as client:
        events = [r async for r in client.send_message(_message("Hi"))]
    kinds = [r.WhichOneof("payload") for r in events]
    assert kinds == ["task", "artifact_update", "artifact_update", "status_update"]
    assert events[0].task.status.state == a2a.TASK_STATE_WORKING
    assert [e.artifact_update.artifact.parts[0].text for e in events[1:3]] == ["Hello", " there"]
    assert [e.artifact_update.append for e in events[1:3]] == [False, True]
    final = events[-1].status_update
    assert final.status.state == a2a.TASK_STATE_COMPLETED
    assert _aion(final.metadata)["output"] == "Hello there"
    assert {e.task.id or e.artifact_update.task_id or e.status_update.task_id for e in events} == {
        "t1"
    }


async def test_a_failed_task_streams_a_failed_status_with_the_reason() -> None:
    async with _gateway() as gw, _client(gw) as client:
        events = [r async for r in client.send_message(_message("break"))]
    final = events[-1].status_update.status
    assert final.state == a2a.TASK_STATE_FAILED
    assert final.message.parts[0].text == "UNAVAILABLE: the executor went away"


@pytest.mark.parametrize("binding", ["JSONRPC", "HTTP+JSON"])
async def test_return_immediately_queues_then_cancel_and_subscribe(binding: str) -> None:
    async with _gateway() as gw, _client(gw, streaming=False, binding=binding) as client:
        request = _message("later")
        request.configuration.return_immediately = True
        [queued] = [r async for r in client.send_message(request)]
        assert queued.task.status.state == a2a.TASK_STATE_SUBMITTED
        assert gw.agents.runs[-1].asynchronous
        canceled = await client.cancel_task(a2a.CancelTaskRequest(id=queued.task.id))
        assert canceled.status.state == a2a.TASK_STATE_CANCELED
        again = await client.cancel_task(a2a.CancelTaskRequest(id=queued.task.id))
        assert again.status.state == a2a.TASK_STATE_CANCELED
        [done] = [r async for r in client.send_message(_message("Hi"))]
        with pytest.raises(a2a_errors.TaskNotCancelableError, match="has ended OK"):
            await client.cancel_task(a2a.CancelTaskRequest(id=done.task.id))
        with pytest.raises(a2a_errors.A2AError, match="task 'nope' not found"):
            await client.get_task(a2a.GetTaskRequest(id="nope"))
    async with _gateway() as gw, _client(gw, binding=binding) as client:
        [*_, done] = [r async for r in client.send_message(_message("Hi"))]
        followed = [
            r
            async for r in client.subscribe(
                a2a.SubscribeToTaskRequest(id=done.status_update.task_id)
            )
        ]
    assert followed[0].task.id == done.status_update.task_id
    assert followed[-1].status_update.status.state == a2a.TASK_STATE_COMPLETED
    assert _aion(followed[-1].status_update.metadata)["output"] == "Hello there"


async def test_roles_and_unknown_agents_are_refused() -> None:
    async with _gateway() as gw:
        async with _client(gw, key=VIEWER) as viewer:
            with pytest.raises(a2a_errors.A2AError, match="'user' role"):
                [r async for r in viewer.send_message(_message("Hi"))]
        with pytest.raises(client_errors.AgentCardResolutionError, match="404"):
            async with _client(gw, agent="nope"):
                pass
    assert not gw.agents.runs


@pytest.mark.parametrize("streaming", [False, True])
@pytest.mark.parametrize("binding", ["JSONRPC", "HTTP+JSON"])
async def test_one_a2a_request_is_one_call_against_the_rate_limit(
    binding: str, streaming: bool
) -> None:
    sends = 3
    # A burst of one call for the card the client reads first, and one for each message: the
    # door's check (credentials, role, agent) and the Tasks call behind it count once.
    async with (
        _gateway(rate=0.001, burst=1 + sends) as gw,
        _client(gw, streaming=streaming, binding=binding) as client,
    ):
        for i in range(sends):
            events = [r async for r in client.send_message(_message(f"Hi {i}"))]
            assert events
        with pytest.raises(client_errors.A2AClientError, match="429 Too Many Requests"):
            [r async for r in client.send_message(_message("one too many"))]
    assert len(gw.agents.runs) == sends
