"""An external A2A agent as a tool: a real A2A server built with a2a-sdk, called by an agent
of the running agent service (real Postgres and Kafka, the scripted executor of
``conftest``)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, TypeAlias

import httpx
import pytest
import uvicorn
from a2a.helpers import proto_helpers
from a2a.server.agent_execution import agent_executor, context
from a2a.server.events import event_queue
from a2a.server.request_handlers import default_request_handler_v2
from a2a.server.routes import agent_card_routes, jsonrpc_routes
from a2a.server.tasks import inmemory_task_store
from a2a.types import a2a_pb2 as a2a
from a2a.utils import errors as a2a_errors
from starlette import applications

from aion.agent import a2a_tools
from aion.agent import testing as agent_testing
from aion.api.agent.v1 import agent_pb2, agent_pb2_grpc
from aion.api.v1 import agents_pb2, common_pb2, tasks_pb2
from aion.infra.devstack import suite

Stub: TypeAlias = "agent_pb2_grpc.AgentServiceAsyncStub"
TENANT = "a2a-tenant"


class Echo(agent_executor.AgentExecutor):
    """Answers "echo: <text>"."""

    def __init__(self) -> None:
        self.heard: list[str] = []
        self.seen: list[tuple[str, bytes | None]] = []  # (path, Authorization) per request

    async def execute(
        self, request: context.RequestContext, events: event_queue.EventQueue
    ) -> None:
        self.heard.append(request.get_user_input())
        await events.enqueue_event(
            proto_helpers.new_text_message(f"echo: {request.get_user_input()}")
        )

    async def cancel(self, request: context.RequestContext, events: event_queue.EventQueue) -> None:
        # An agent whose tasks cannot be cancelled, as A2A lets an agent say.
        raise a2a_errors.UnsupportedOperationError("echo tasks cannot be cancelled")


@pytest.fixture(scope="module")
async def echo_url() -> AsyncIterator[tuple[str, Echo]]:
    """An A2A agent at <url>, its card at <url>/.well-known/agent-card.json."""
    port = suite.free_port()
    url = f"http://127.0.0.1:{port}/echo"
    card = a2a.AgentCard(
        name="echo",
        description="Echoes.",
        version="1.0",
        supported_interfaces=[
            a2a.AgentInterface(url=url, protocol_binding="JSONRPC", protocol_version="1.0")
        ],
        capabilities=a2a.AgentCapabilities(streaming=False),
        default_input_modes=["text/plain"],
        default_output_modes=["text/plain"],
        skills=[a2a.AgentSkill(id="echo", name="echo", description="Echoes.", tags=["t"])],
    )
    echo = Echo()
    handler = default_request_handler_v2.DefaultRequestHandlerV2(
        agent_executor=echo, task_store=inmemory_task_store.InMemoryTaskStore(), agent_card=card
    )
    routes = applications.Starlette(
        routes=[
            *agent_card_routes.create_agent_card_routes(
                card, card_url="/echo/.well-known/agent-card.json"
            ),
            *jsonrpc_routes.create_jsonrpc_routes(handler, "/echo"),
        ]
    )

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            echo.seen.append((scope["path"], dict(scope["headers"]).get(b"authorization")))
        await routes(scope, receive, send)

    http = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="off")
    )
    serving = asyncio.create_task(http.serve())
    deadline = asyncio.get_running_loop().time() + 20
    while not http.started:
        assert not serving.done(), "the A2A server stopped while starting"
        assert asyncio.get_running_loop().time() < deadline, "the A2A server did not start"
        await asyncio.sleep(0.05)
    yield url, echo
    http.should_exit = True
    await serving


@pytest.fixture(scope="module")
async def a2a_agents(service: Any, echo_url: tuple[str, Echo]) -> None:
    """An agent that may ask the echo agent, and one whose A2A agent is gone."""
    async with agent_testing.channel(service.address) as chan:
        stub: Stub = agent_pb2_grpc.AgentServiceStub(chan)
        gone = f"http://127.0.0.1:{suite.free_port()}/gone"
        for name, tools in (("asker", [f"a2a:{echo_url[0]}"]), ("lost", [f"a2a:{gone}"])):
            await stub.RegisterAgent(
                agent_pb2.RegisterAgentRequest(
                    tenant=TENANT,
                    agent=agents_pb2.Agent(name=name, model="m"),
                    executor_endpoints=[service.executor.address],
                    tools=tools,
                )
            )


async def _run(stub: Stub, agent: str, text: str) -> common_pb2.TaskResult:
    events = [
        e
        async for e in stub.Run(
            agent_pb2.RunRequest(tenant=TENANT, task=tasks_pb2.TaskSpec(agent=agent, input=text)),
            timeout=60,
        )
    ]
    assert events[-1].WhichOneof("event") == "done", events[-1]
    return events[-1].done.result


@pytest.mark.usefixtures("a2a_agents")
async def test_an_agent_asks_an_a2a_agent_as_a_tool(stub: Stub, echo_url: tuple[str, Echo]) -> None:
    result = await _run(stub, "asker", 'call:a2a_echo {"input": "hello there"}')
    assert result.output == "answer: echo: hello there"
    assert echo_url[1].heard[-1] == "hello there"


@pytest.mark.usefixtures("a2a_agents")
async def test_an_a2a_agent_that_is_gone_is_a_step_error_the_model_sees(
    stub: Stub, service: Any
) -> None:
    result = await _run(stub, "lost", 'call:a2a_gone {"input": "anyone?"}')
    assert result.status == common_pb2.TASK_STATUS_OK
    assert result.output.startswith("answer: the A2A agent at http://127.0.0.1:")
    assert service.executor.requests[-1].messages[-1].content.startswith("Tool a2a_gone failed:")


async def test_a_credential_goes_with_each_request_to_the_agents_origin(
    echo_url: tuple[str, Echo],
) -> None:
    url, echo = echo_url
    before = len(echo.seen)
    answer = await a2a_tools.ask(
        url, "who is there?", timeout_s=10, headers={"Authorization": "Bearer tok"}
    )
    assert (answer.text, answer.error) == ("echo: who is there?", "")
    seen = echo.seen[before:]
    assert {path for path, _ in seen} == {"/echo/.well-known/agent-card.json", "/echo"}
    assert {auth for _, auth in seen} == {b"Bearer tok"}
    await a2a_tools.ask(url, "and now?", timeout_s=10)
    assert echo.seen[-1][1] is None


async def test_a_credential_never_leaves_the_agents_origin() -> None:
    """A card (or redirect) naming another host, or another port, gets no credential."""
    sent: dict[str, str | None] = {}

    def answer(request: httpx.Request) -> httpx.Response:
        sent[str(request.url)] = request.headers.get("x-api-key")
        return httpx.Response(200)

    auth = a2a_tools.OriginHeaders("https://agents.example/echo", {"X-API-Key": "k"})
    async with httpx.AsyncClient(transport=httpx.MockTransport(answer), auth=auth) as http:
        for target in (
            "https://agents.example/echo/.well-known/agent-card.json",
            "https://agents.example:443/other",
            "https://elsewhere.example/echo",
            "https://agents.example:8443/echo",
            "http://agents.example/echo",
        ):
            await http.get(target)
    assert sent == {
        "https://agents.example/echo/.well-known/agent-card.json": "k",
        "https://agents.example/other": "k",
        "https://elsewhere.example/echo": None,
        "https://agents.example:8443/echo": None,
        "http://agents.example/echo": None,
    }
