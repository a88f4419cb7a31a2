"""The gateway as an MCP server, with the mcp package's client, against the scripted peers."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any, cast

import httpx
import httpx2
import mcp
import mcp_types
import pytest
from mcp.client import streamable_http

from .fakes import KEY, VIEWER, Gateway
from .fakes import gateway as _gateway


@contextlib.asynccontextmanager
async def _client(gw: Gateway, key: str = KEY) -> AsyncIterator[mcp.Client]:
    async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {key}"}, timeout=120) as http:
        transport = streamable_http.streamable_http_client(f"{gw.url}/mcp", http_client=http)
        async with mcp.Client(transport, read_timeout_seconds=30) as client:
            yield client


def _text(result: mcp_types.CallToolResult) -> str:
    return "".join(b.text for b in result.content if isinstance(b, mcp_types.TextContent))


async def test_the_tools_are_listed_with_their_schemas() -> None:
    async with _gateway() as gw, _client(gw) as client:
        listed = await client.list_tools()
    tools = {t.name: t for t in listed.tools}
    assert sorted(tools) == ["knowledge_search", "list_agents", "run_agent"]
    assert tools["knowledge_search"].input_schema["required"] == ["knowledge_base", "query"]
    assert tools["run_agent"].input_schema["required"] == ["agent", "input"]


async def test_knowledge_search_is_the_callers_tenants() -> None:
    async with _gateway() as gw, _client(gw, VIEWER) as client:
        found = await client.call_tool(
            "knowledge_search", {"knowledge_base": "docs", "query": "pods"}
        )
        missing = await client.call_tool(
            "knowledge_search", {"knowledge_base": "nope", "query": "pods"}
        )
    assert not found.is_error
    assert json.loads(_text(found)) == [
        {"document_id": "k8s.md", "chunk": 0, "score": 0.9, "text": "Kubernetes schedules pods."}
    ]
    assert gw.knowledge.searches[0].tenant == "acme"
    assert gw.knowledge.searches[0].request.top_k == 4
    assert missing.is_error
    assert "NOT_FOUND: knowledge base 'nope' not found" in _text(missing)


async def test_run_agent_runs_a_task_with_the_calls_idempotency_key() -> None:
    async with _gateway() as gw, _client(gw) as client:
        agents = await client.call_tool("list_agents", {})
        meta = cast(mcp_types.RequestParamsMeta, {"dev.aion/idempotency-key": "call-9"})
        ran = await client.call_tool("run_agent", {"agent": "demo", "input": "Hi"}, meta=meta)
        late = await client.call_tool("run_agent", {"agent": "demo", "input": "time out"})
    assert [a["name"] for a in json.loads(_text(agents))] == ["demo"]
    assert _text(ran) == "Hello there"
    assert gw.agents.runs[0].task.idempotency_key == "call-9"
    assert gw.agents.runs[0].tenant == "acme"
    assert late.is_error
    assert "ended TIMEOUT: DEADLINE_EXCEEDED" in _text(late)


async def test_roles_and_credentials_are_checked() -> None:
    async with _gateway() as gw:
        async with _client(gw, VIEWER) as client:
            refused = await client.call_tool("run_agent", {"agent": "demo", "input": "Hi"})
        async with httpx.AsyncClient() as http:
            anonymous = await http.post(
                f"{gw.url}/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
            )
    assert refused.is_error
    assert "PERMISSION_DENIED" in _text(refused)
    assert anonymous.status_code == 401
    assert anonymous.json()["error"]["type"] == "authentication_error"
    assert not gw.agents.runs


@pytest.mark.parametrize("arguments", [{"knowledge_base": "docs"}, {"query": 3}])
async def test_arguments_that_break_the_schema_are_a_tool_error(arguments: dict[str, Any]) -> None:
    async with _gateway() as gw, _client(gw) as client:
        result = await client.call_tool("knowledge_search", arguments)
    assert result.is_error
    assert not gw.knowledge.searches


async def _post(http: httpx.AsyncClient, gw: Gateway, message: dict[str, Any]) -> httpx.Response:
    return await http.post(
        f"{gw.url}/mcp",
        json={"jsonrpc": "2.0", "id": 1, **message},
        headers={"Authorization": f"Bearer {KEY}", "Accept": "application/json"},
    )


async def test_one_mcp_request_is_one_call_against_the_rate_limit() -> None:
    calls = 3
    run = {"method": "tools/call", "params": {"name": "run_agent", "arguments": {}}}
    run["params"]["arguments"] = {"agent": "demo", "input": "Hi"}  # type: ignore[index]
    async with _gateway(rate=0.001, burst=calls + 1) as gw, httpx.AsyncClient() as http:
        listed = await _post(http, gw, {"method": "tools/list"})  # reaches no servicer: one call
        ran = [await _post(http, gw, run) for _ in range(calls)]  # door and Tasks.Submit: one
        refused = await _post(http, gw, run)
    assert listed.status_code == 200
    assert [r.status_code for r in ran] == [200] * calls
    assert all(not r.json()["result"]["isError"] for r in ran), [r.text for r in ran]
    assert refused.status_code == 429
    assert len(gw.agents.runs) == calls
