"""MCP tools against a real MCP server (the ``mcp`` package's, over Streamable HTTP): the
toolbox on its own, then agents that use it in the running agent service (real Postgres and
Kafka, the scripted executor of ``conftest``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator
from typing import Any, TypeAlias

import grpc
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
TOKEN = "tok-3f9a1c7e5b2d"  # the locked server's bearer token


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

        self.app: Any = srv.streamable_http_app(stateless_http=True, json_response=True)


class RequireBearer:
    """ASGI middleware: 401 for an HTTP request without ``Authorization: Bearer <token>``;
    records the Authorization header of every request."""

    def __init__(self, app: Any, token: str) -> None:
        self.app = app
        self.expected = f"Bearer {token}".encode()
        self.seen: list[bytes | None] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            got = dict(scope["headers"]).get(b"authorization")
            self.seen.append(got)
            if got != self.expected:
                await send(
                    {
                        "type": "http.response.start",
                        "status": 401,
                        "headers": [(b"content-type", b"application/json")],
                    }
                )
                await send({"type": "http.response.body", "body": b'{"error":"unauthorized"}'})
                return
        await self.app(scope, receive, send)


@contextlib.asynccontextmanager
async def _serving(tools: ToolServer) -> AsyncIterator[ToolServer]:
    """``tools`` served by uvicorn in this event loop, its URL set."""
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
    try:
        yield tools
    finally:
        http.should_exit = True
        await serving
        sock.close()


@pytest.fixture(scope="module")
async def tool_server() -> AsyncIterator[ToolServer]:
    """The MCP server."""
    async with _serving(ToolServer()) as tools:
        yield tools


@pytest.fixture(scope="module")
async def locked_server() -> AsyncIterator[ToolServer]:
    """An MCP server that answers only requests with ``Authorization: Bearer TOKEN``."""
    tools = ToolServer()
    tools.app = RequireBearer(tools.app, TOKEN)
    async with _serving(tools):
        yield tools


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


# -- servers that need a credential -------------------------------------------------------
async def test_the_toolbox_sends_a_servers_credential_as_its_header(
    locked_server: ToolServer,
) -> None:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with _box([mcp_tools.ServerRef(locked_server.url, None, headers=headers)]) as box:
        assert box.failures == []
        added = await box.tools["add"].call({"a": 2, "b": 3})
    assert (added.text, added.error) == ("5", "")
    assert set(locked_server.app.seen) == {headers["Authorization"].encode()}
    assert TOKEN not in repr(mcp_tools.ServerRef(locked_server.url, None, headers=headers))


async def test_without_its_credential_a_server_is_left_out(locked_server: ToolServer) -> None:
    async with _box([mcp_tools.ServerRef(locked_server.url, None)], timeout_s=5) as box:
        assert box.tools == {}
    [(url, why)] = box.failures
    assert url == locked_server.url
    assert "cannot list its tools" in why
    assert "(HTTP 401: the server wants a credential; give it one in the Agent's" in why


def _credentialed(name: str, url: str, token: str | None) -> agent_pb2.RegisterAgentRequest:
    return agent_pb2.RegisterAgentRequest(
        tenant=TENANT,
        agent=agents_pb2.Agent(name=name, model="m"),
        executor_endpoints=["127.0.0.1:1"],  # replaced below by the scripted executor's
        tools=[f"mcp:{url}#add"],
        owner=f"team-a/{name}-uid",
        tool_credentials=[]
        if token is None
        else [agent_pb2.ToolCredential(url=url, header="Authorization", value=f"Bearer {token}")],
    )


@pytest.fixture(scope="module")
async def locked_agents(service: Any, locked_server: ToolServer) -> None:
    """``locked`` has the locked server's credential, ``keyless`` the same tools without."""
    async with agent_testing.channel(service.address) as chan:
        stub: Stub = agent_pb2_grpc.AgentServiceStub(chan)
        for name, token in (("locked", TOKEN), ("keyless", None)):
            request = _credentialed(name, locked_server.url, token)
            request.executor_endpoints[:] = [service.executor.address]
            await stub.RegisterAgent(request)


async def _stored_credentials(service: Any, name: str) -> list[dict[str, str]]:
    async with await psycopg.AsyncConnection.connect(
        service.cfg.postgres_dsn.get_secret_value()
    ) as conn:
        cur = await conn.execute(
            "SELECT tool_credentials FROM agents WHERE tenant = %s AND name = %s", (TENANT, name)
        )
        row = await cur.fetchone()
    assert row is not None
    return list(row[0])


async def _all_steps(service: Any, task_id: str) -> str:
    """Every column of the task's steps, as text."""
    async with await psycopg.AsyncConnection.connect(
        service.cfg.postgres_dsn.get_secret_value()
    ) as conn:
        cur = await conn.execute("SELECT t::text FROM task_steps t WHERE task_id = %s", (task_id,))
        return "\n".join(str(r[0]) for r in await cur.fetchall())


@pytest.mark.usefixtures("locked_agents")
async def test_an_agent_calls_a_server_that_needs_its_credential(
    stub: Stub, service: Any, locked_server: ToolServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    result = await _run(stub, "locked", 'call:add {"a": 20, "b": 22}')
    assert result.status == common_pb2.TASK_STATUS_OK
    assert result.output == "answer: 42"
    steps = await _steps(service, result.task_id)
    assert [(s[1], s[2], s[3], s[4]) for s in steps[1:2]] == [("tool", "add", "42", None)]
    assert locked_server.app.seen[-1] == f"Bearer {TOKEN}".encode()
    # Stored with the agent; never shown, never in a step, never logged.
    assert await _stored_credentials(service, "locked") == [
        {"url": locked_server.url, "header": "Authorization", "value": f"Bearer {TOKEN}"}
    ]
    shown = await stub.GetAgent(agent_pb2.AgentRef(tenant=TENANT, name="locked"))
    listed = await stub.ListAgents(agent_pb2.ListAgentsRequest(tenant=TENANT))
    for message in (shown, listed, result):
        assert TOKEN.encode() not in message.SerializeToString()
    assert TOKEN not in await _all_steps(service, result.task_id)
    assert TOKEN not in caplog.text
    assert all(TOKEN not in str(r.__dict__) for r in caplog.records)


@pytest.mark.usefixtures("locked_agents")
async def test_without_the_credential_the_server_is_a_failed_step(
    stub: Stub, service: Any, locked_server: ToolServer
) -> None:
    result = await _run(stub, "keyless", 'call:add {"a": 20, "b": 22}')
    assert result.status == common_pb2.TASK_STATUS_OK
    steps = await _steps(service, result.task_id)
    assert steps[0][1:3] == ("tool", f"mcp:{locked_server.url}")
    assert steps[0][4] is not None
    assert "cannot list its tools" in steps[0][4]
    assert "HTTP 401: the server wants a credential" in steps[0][4]
    assert [s[1] for s in steps[1:]] == ["model"]  # no add to call: the reply is the answer


async def test_a_changed_credential_replaces_the_old_one(
    stub: Stub, service: Any, locked_server: ToolServer
) -> None:
    """The operator registers the Agent again when its Secret changes: the new value wins,
    and a registration without credentials leaves none."""
    await stub.RegisterAgent(_credentialed("rotated", locked_server.url, "old-token"))
    await stub.RegisterAgent(_credentialed("rotated", locked_server.url, TOKEN))
    [stored] = await _stored_credentials(service, "rotated")
    assert stored["value"] == f"Bearer {TOKEN}"
    await stub.RegisterAgent(_credentialed("rotated", locked_server.url, None))
    assert await _stored_credentials(service, "rotated") == []


async def test_a_credential_for_a_server_the_agent_does_not_name_is_refused(
    stub: Stub, locked_server: ToolServer
) -> None:
    request = _credentialed("stray", locked_server.url, TOKEN)
    request.tool_credentials[0].url = "http://elsewhere.example/mcp"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.RegisterAgent(request)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a server of the agent's tools" in str(caught.value.details())
    assert TOKEN not in str(caught.value.details())


async def test_apply_refuses_a_manifest_with_tool_credentials(stub: Stub, service: Any) -> None:
    manifest = (
        "apiVersion: aion.dev/v1alpha1\nkind: Agent\nmetadata: {name: applied-locked}\n"
        "spec:\n  model: {name: m}\n  tools: ['mcp:http://tools/mcp']\n"
        "  toolCredentials: [{url: 'http://tools/mcp', secretRef: {name: t, key: token}}]\n"
    )
    literal = manifest.replace("secretRef: {name: t, key: token}", f"value: {TOKEN}")
    for text, says in (
        (manifest, "spec.toolCredentials is read from Kubernetes Secrets by the operator"),
        (literal, "toolCredentials[0].value: Extra inputs are not permitted"),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.ApplyAgents(
                agent_pb2.ApplyAgentsRequest(
                    tenant=TENANT, request=agents_pb2.ApplyAgentsRequest(manifest=text)
                )
            )
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        details = str(caught.value.details())
        assert says in details
        assert TOKEN not in details
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await stub.GetAgent(agent_pb2.AgentRef(tenant=TENANT, name="applied-locked"))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
