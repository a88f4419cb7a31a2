"""A local-only agent never runs off-cluster, whatever decision it is handed.

The provider is a real HTTP server standing in for the external API, which
records every request; the executor is the scripted one of ``conftest``. The
allow-api agent shows the provider is reachable, so the local-only assertions
can fail.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeAlias

import pydantic
import pytest
from starlette import applications, requests, responses, routing

from aion.agent import testing as agent_testing
from aion.api.agent.v1 import agent_pb2, agent_pb2_grpc
from aion.api.router.v1 import router_pb2
from aion.api.v1 import agents_pb2, common_pb2, tasks_pb2
from aion.core import http_server

Stub: TypeAlias = "agent_pb2_grpc.AgentServiceAsyncStub"
TENANT = "private"
API_REPLY = "from the external api"


class Recorder:
    """An OpenAI-compatible chat endpoint that answers a fixed text and keeps each request."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.app = applications.Starlette(
            routes=[routing.Route("/v1/chat/completions", self.chat, methods=["POST"])]
        )

    async def chat(self, request: requests.Request) -> responses.Response:
        body = await request.json()
        self.bodies.append(body)
        messages = body["messages"]
        first = next(m["content"] for m in messages if m["role"] == "user")
        reply = API_REPLY
        if first.startswith("call:") and not messages[-1]["content"].startswith("Tool "):
            name, _, args = first.removeprefix("call:").partition(" ")
            reply = json.dumps({"tool": name, "arguments": json.loads(args)})
        events = [
            {"choices": [{"delta": {"content": reply}, "finish_reason": "stop"}]},
            {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 4}},
        ]
        body = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
        return responses.Response(body, media_type="text/event-stream")


@pytest.fixture(scope="module")
async def provider() -> AsyncIterator[Recorder]:
    recorder = Recorder()
    async with http_server.HttpServer(
        recorder.app, name="provider", host="127.0.0.1", port=0
    ) as http:
        serving = asyncio.create_task(http.serve())
        recorder.url = f"{http.url}/v1"  # type: ignore[attr-defined]
        try:
            yield recorder
        finally:
            http.shutdown()
            await serving


@pytest.fixture(scope="module")
async def service(
    new_service: Callable[..., Any], executor: Any, provider: Recorder
) -> AsyncIterator[Any]:
    async with new_service(
        provider_base_url=provider.url,  # type: ignore[attr-defined]
        provider_api_key=pydantic.SecretStr("k"),
    ) as svc:
        async with agent_testing.channel(svc.address) as chan:
            stub: Stub = agent_pb2_grpc.AgentServiceStub(chan)
            for name, privacy, tools in (
                ("secret", common_pb2.PRIVACY_LOCAL_ONLY, []),
                ("open", common_pb2.PRIVACY_ALLOW_API, []),
                ("asker", common_pb2.PRIVACY_ALLOW_API, ["agent:secret"]),
            ):
                await stub.RegisterAgent(
                    agent_pb2.RegisterAgentRequest(
                        tenant=TENANT,
                        privacy=privacy,
                        tools=tools,
                        agent=agents_pb2.Agent(name=name, model="m"),
                        executor_endpoints=[executor.address],
                    )
                )
        yield svc


def _handed(route: common_pb2.Route.ValueType) -> router_pb2.Decision:
    return router_pb2.Decision(
        engine=common_pb2.Engine(route=route, chosen_by="forged", reason="handed by the caller")
    )


async def _run(
    stub: Stub, agent: str, text: str, route: common_pb2.Route.ValueType
) -> common_pb2.TaskResult:
    req = agent_pb2.RunRequest(
        tenant=TENANT, decision=_handed(route), task=tasks_pb2.TaskSpec(agent=agent, input=text)
    )
    events = [e async for e in stub.Run(req, timeout=60)]
    last = events[-1]
    return last.done.result if last.WhichOneof("event") == "done" else last.error.result


@pytest.mark.parametrize("route", [common_pb2.ROUTE_API, common_pb2.ROUTE_HYBRID])
async def test_a_local_only_agent_handed_an_api_route_runs_locally(
    stub: Stub, provider: Recorder, executor: Any, route: common_pb2.Route.ValueType
) -> None:
    before = len(provider.bodies)
    result = await _run(stub, "secret", "keep this inside", route)
    assert result.status == common_pb2.TASK_STATUS_OK, result.error.message
    assert result.output == "keep this inside "  # the scripted executor's echo
    assert len(provider.bodies) == before, provider.bodies[before:]


async def test_an_allow_api_agent_handed_the_api_route_reaches_the_provider(
    stub: Stub, provider: Recorder
) -> None:
    before = len(provider.bodies)
    result = await _run(stub, "open", "may leave", common_pb2.ROUTE_API)
    assert result.status == common_pb2.TASK_STATUS_OK, result.error.message
    assert result.output == API_REPLY
    assert len(provider.bodies) == before + 1


async def test_a_local_only_agent_called_as_a_tool_stays_local(
    stub: Stub, provider: Recorder, executor: Any
) -> None:
    """M3: the asker (allow-api, on the API route) calls the local-only agent as a tool;
    the callee runs on the executor, and the provider sees only the asker's own calls."""
    before, asked = len(provider.bodies), len(executor.requests)
    result = await _run(
        stub, "asker", 'call:agent_secret {"input": "the secret plan"}', common_pb2.ROUTE_API
    )
    assert result.status == common_pb2.TASK_STATUS_OK, result.error.message
    sent = provider.bodies[before:]
    assert len(sent) == 2  # the asker's tool call, then its answer
    assert not any(
        m["content"] == "the secret plan"
        for body in sent
        for m in body["messages"]
        if m["role"] == "user"
    ), sent
    callee = [
        r
        for r in executor.requests[asked:]
        if any(m.role == "user" and m.content == "the secret plan" for m in r.messages)
    ]
    assert len(callee) == 1
