"""MCP tools against a real MCP server (the ``mcp`` package's, over Streamable HTTP): the
toolbox on its own, then agents that use it in the running agent service (real Postgres and
Kafka, the scripted executor of ``conftest``)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from typing import Any, TypeAlias

import psycopg
import pytest
import uvicorn
from mcp.server import MCPServer
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError

from aion.agent import mcp_tools
from aion.agent import testing as agent_testing
from aion.api.agent.v1 import agent_pb2, agent_pb2_grpc
from aion.api.v1 import agents_pb2, common_pb2, tasks_pb2
from aion.infra.devstack import suite

Stub: TypeAlias = "agent_pb2_grpc.AgentServiceAsyncStub"
TENANT = "mcp-tenant"


class ToolServer:
    """A real MCP server with a few tools; it records the ``_meta`` of each call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.url = ""
        srv = MCPServer("calc")

        @srv.tool()
        def add(a: int, b: int, ctx: Context) -> int:
            """Adds two integers."""
            self.calls.append(("add", dict(ctx.request_context.meta or {})))
            return a + b

        @srv.tool()
        async def slow(seconds: float) -> str:
            """Waits, then answers."""
            self.calls.append(("slow", {}))
            await asyncio.sleep(seconds)
            return "woke up"

        @srv.tool()
        def full() -> str:
            """Always fails."""
            self.calls.append(("full", {}))
            raise ToolError("the disk is full")

        self.app = srv.streamable_http_app(stateless_http=True, json_response=True)


@pytest.fixture(scope="module")
async def tool_server() -> AsyncIterator[ToolServer]:
    """The MCP server, served by uvicorn in this event loop."""
    tools = ToolServer()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    http = uvicorn.Server(uvicorn.Config(tools.app, log_config=None, lifespan="on"))
    serving = asyncio.create_task(http.serve(sockets=[sock]))
    deadline = asyncio.get_running_loop().time() + 20
    while not http.started:
        assert not serving.done(), "the MCP server stopped while starting"
        assert asyncio.get_running_loop().time() < deadline, "the MCP server did not start"
        await asyncio.sleep(0.05)
    tools.url = f"http://127.0.0.1:{sock.getsockname()[1]}/mcp"
    yield tools
    http.should_exit = True
    await serving
    sock.close()


def _box(refs: list[mcp_tools.ServerRef], timeout_s: float = 10) -> mcp_tools.Toolbox:
    return mcp_tools.Toolbox(refs, tenant="acme", task_id="task-1", timeout_s=timeout_s)


def test_tool_entries_name_servers_and_allowed_tools() -> None:
    refs = mcp_tools.servers(
        [
            "knowledge_search",
            "mcp:http://a/mcp#x",
            "mcp:http://a/mcp#y",
            "mcp:http://b/mcp",
            "mcp:http://b/mcp#z",
            "agent:other",
        ]
    )
    assert refs == [
        mcp_tools.ServerRef("http://a/mcp", frozenset({"x", "y"})),
        mcp_tools.ServerRef("http://b/mcp", None),
    ]


async def test_the_toolbox_lists_allowed_tools_with_their_schemas(tool_server: ToolServer) -> None:
    refs = [mcp_tools.ServerRef(tool_server.url, frozenset({"add", "missing"}))]
    async with _box(refs) as box:
        assert sorted(box.tools) == ["add"]
        schema = box.tools["add"].schema()
        assert schema["required"] == ["a", "b"]
        assert box.tools["add"].description == "Adds two integers."
        assert box.failures == [(tool_server.url, "does not list the tool 'missing'")]


async def test_calls_carry_the_tenant_and_an_idempotency_key(tool_server: ToolServer) -> None:
    async with _box([mcp_tools.ServerRef(tool_server.url, None)]) as box:
        first = await box.tools["add"].call({"a": 2, "b": 3})
        second = await box.tools["add"].call({"a": 1, "b": 1})
    assert (first.text, first.error) == ("5", "")
    assert second.text == "2"
    metas = [meta for name, meta in tool_server.calls[-2:]]
    assert [m[mcp_tools.IDEMPOTENCY_META] for m in metas] == ["task-1:mcp:1", "task-1:mcp:2"]
    assert {m[mcp_tools.TENANT_META] for m in metas} == {"acme"}


async def test_failures_are_the_calls_error_never_an_exception(tool_server: ToolServer) -> None:
    async with _box([mcp_tools.ServerRef(tool_server.url, None)], timeout_s=1) as box:
        before = len(tool_server.calls)
        bad = await box.tools["add"].call({"a": "two", "b": 3})
        assert len(tool_server.calls) == before, "arguments that violate the schema are not sent"
        full = await box.tools["full"].call({})
        slow = await box.tools["slow"].call({"seconds": 5})
    assert "at a: 'two' is not of type 'integer'" in bad.error
    assert full.error == "Error executing tool full: the disk is full"
    assert slow.error == "the MCP server did not answer within 1s"


async def test_a_server_that_is_down_or_not_http_is_left_out() -> None:
    down = f"http://127.0.0.1:{suite.free_port()}/mcp"
    async with _box(
        [mcp_tools.ServerRef(down, None), mcp_tools.ServerRef("ftp://files/mcp", None)], timeout_s=5
    ) as box:
        assert box.tools == {}
    assert box.failures[0][0] == down
    assert "cannot list its tools" in box.failures[0][1]
    assert "is not an http(s) URL" in box.failures[1][1]


# -- agents with MCP tools in the running agent service ---------------------------------
@pytest.fixture(scope="module")
async def mcp_agents(service: Any, tool_server: ToolServer) -> None:
    """Agents whose tools are the MCP server's ``add``, and a server that is down."""
    async with agent_testing.channel(service.address) as chan:
        stub: Stub = agent_pb2_grpc.AgentServiceStub(chan)
        for name, tools in (
            ("calc", [f"mcp:{tool_server.url}#add"]),
            ("stranded", [f"mcp:http://127.0.0.1:{suite.free_port()}/mcp"]),
        ):
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


async def _steps(service: Any, task_id: str) -> list[tuple[int, str, str, str, str | None]]:
    async with await psycopg.AsyncConnection.connect(
        service.cfg.postgres_dsn.get_secret_value()
    ) as conn:
        cur = await conn.execute(
            "SELECT step, kind, name, output, error FROM task_steps WHERE task_id = %s"
            " ORDER BY step",
            (task_id,),
        )
        return [tuple(row) for row in await cur.fetchall()]


@pytest.mark.usefixtures("mcp_agents")
async def test_an_agent_calls_an_mcp_tool_as_a_step(
    stub: Stub, service: Any, tool_server: ToolServer
) -> None:
    result = await _run(stub, "calc", 'call:add {"a": 20, "b": 22}')
    assert result.status == common_pb2.TASK_STATUS_OK
    assert result.output == "answer: 42"
    steps = await _steps(service, result.task_id)
    assert [(s[0], s[1], s[2]) for s in steps] == [
        (1, "model", "m"),
        (2, "tool", "add"),
        (3, "model", "m"),
    ]
    assert (steps[1][3], steps[1][4]) == ("42", None)
    assert tool_server.calls[-1][1][mcp_tools.TENANT_META] == TENANT
    assert tool_server.calls[-1][1][mcp_tools.IDEMPOTENCY_META] == f"{result.task_id}:mcp:1"
    # The model was told the tool's schema.
    system = service.executor.requests[-1].messages[0].content
    assert '"required":["a","b"]' in system


@pytest.mark.usefixtures("mcp_agents")
async def test_arguments_that_violate_the_schema_are_a_step_error_the_model_sees(
    stub: Stub, service: Any
) -> None:
    result = await _run(stub, "calc", 'call:add {"a": 1}')
    assert result.status == common_pb2.TASK_STATUS_OK
    assert "'b' is a required property" in result.output
    steps = await _steps(service, result.task_id)
    assert steps[1][1:3] == ("tool", "add")
    assert steps[1][4] is not None
    assert "'b' is a required property" in steps[1][4]
    told = service.executor.requests[-1].messages[-1].content
    assert told.startswith("Tool add failed:\n")


@pytest.mark.usefixtures("mcp_agents")
async def test_an_mcp_server_that_is_down_is_a_failed_step_not_a_failed_task(
    stub: Stub, service: Any
) -> None:
    result = await _run(stub, "stranded", "just answer")
    assert result.status == common_pb2.TASK_STATUS_OK
    assert result.output == "just answer "
    steps = await _steps(service, result.task_id)
    assert steps[0][1] == "tool"
    assert steps[0][2].startswith("mcp:http://127.0.0.1:")
    assert steps[0][4] is not None
    assert "cannot list its tools" in steps[0][4]
    assert steps[1][1] == "model"
