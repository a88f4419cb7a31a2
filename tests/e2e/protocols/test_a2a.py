"""A2A with the a2a-sdk client against the running suite (real model): the agent card, a
message sent and streamed, and the task found again over A2A and over gRPC."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
from a2a.client import client as a2a_client
from a2a.client import client_factory
from a2a.types import a2a_pb2 as a2a
from a2a.utils import errors as a2a_errors
from google.protobuf import json_format

from aion.api.v1 import common_pb2
from aion.sdk import AsyncClient

from .suite import USER_KEY, VIEWER_KEY, HttpSuite

pytestmark = pytest.mark.e2e


@contextlib.asynccontextmanager
async def _client(
    suite: HttpSuite, *, key: str = USER_KEY, streaming: bool = True
) -> AsyncIterator[a2a_client.Client]:
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(headers=headers, timeout=120) as http:
        client = await client_factory.create_client(
            f"{suite.base_url}/a2a/demo",
            client_config=a2a_client.ClientConfig(streaming=streaming, httpx_client=http),
            resolver_http_kwargs={"headers": headers},
        )
        async with client:
            yield client


def _message(text: str) -> a2a.SendMessageRequest:
    return a2a.SendMessageRequest(
        message=a2a.Message(
            message_id=str(uuid.uuid4()), role=a2a.ROLE_USER, parts=[a2a.Part(text=text)]
        )
    )


async def test_the_card_names_the_agent_and_its_endpoint(http_suite: HttpSuite) -> None:
    async with httpx.AsyncClient() as http:
        card = (
            await http.get(
                f"{http_suite.base_url}/a2a/demo/.well-known/agent-card.json",
                headers={"Authorization": f"Bearer {VIEWER_KEY}"},
            )
        ).json()
    assert card["name"] == "demo"
    assert card["capabilities"]["streaming"] is True
    assert card["supportedInterfaces"][0]["url"] == f"{http_suite.base_url}/a2a/demo"


async def test_a_message_is_an_aion_task(http_suite: HttpSuite) -> None:
    async with _client(http_suite, streaming=False) as client:
        [sent] = [r async for r in client.send_message(_message("Name a color."))]
        task = sent.task
        assert task.status.state == a2a.TASK_STATE_COMPLETED
        answer = task.artifacts[0].parts[0].text
        assert answer.strip()
        got = await client.get_task(a2a.GetTaskRequest(id=task.id))
        assert got.artifacts[0].parts[0].text == answer
        with pytest.raises(a2a_errors.TaskNotCancelableError, match="has ended OK"):
            await client.cancel_task(a2a.CancelTaskRequest(id=task.id))
    async with AsyncClient(http_suite.suite.gateway, api_key=USER_KEY) as grpc_client:
        result = await grpc_client.get(task.id)
    assert result.status == common_pb2.TASK_STATUS_OK
    assert result.output == answer


async def test_a_streamed_message_sends_output_chunks_then_completed(http_suite: HttpSuite) -> None:
    async with _client(http_suite) as client:
        events = [r async for r in client.send_message(_message("What is Kubernetes?"))]
    kinds = [e.WhichOneof("payload") for e in events]
    assert kinds[0] == "task"
    assert kinds[-1] == "status_update"
    chunks = [
        e.artifact_update.artifact.parts[0].text
        for e in events
        if e.WhichOneof("payload") == "artifact_update"
    ]
    assert len(chunks) > 3, "the answer should arrive as several chunks"
    final = events[-1].status_update
    assert final.status.state == a2a.TASK_STATE_COMPLETED
    aion = json_format.MessageToDict(final.metadata)["aion"]
    assert aion["output"] == "".join(chunks)
    assert aion["task_id"] == events[0].task.id
