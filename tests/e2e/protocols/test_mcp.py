"""The gateway's MCP server, with the mcp package's client, against the running suite: its
tools listed, an agent run through it (real model), errors as tool errors."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import cast

import httpx2
import mcp
import mcp_types
import pytest
from mcp.client import streamable_http

from aion.api.v1 import common_pb2
from aion.sdk import AsyncClient

from .suite import USER_KEY, VIEWER_KEY, HttpSuite

pytestmark = pytest.mark.e2e


@contextlib.asynccontextmanager
async def _client(suite: HttpSuite, key: str = USER_KEY) -> AsyncIterator[mcp.Client]:
    async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {key}"}, timeout=120) as http:
        transport = streamable_http.streamable_http_client(
            f"{suite.base_url}/mcp", http_client=http
        )
        async with mcp.Client(transport, read_timeout_seconds=120) as client:
            yield client


def _text(result: mcp_types.CallToolResult) -> str:
    return "".join(b.text for b in result.content if isinstance(b, mcp_types.TextContent))


async def test_an_mcp_client_runs_an_agent_through_the_gateway(http_suite: HttpSuite) -> None:
    async with _client(http_suite) as client:
        tools = sorted(t.name for t in (await client.list_tools()).tools)
        agents = json.loads(_text(await client.call_tool("list_agents", {})))
        meta = cast(mcp_types.RequestParamsMeta, {"dev.aion/idempotency-key": "mcp-e2e-1"})
        ran = await client.call_tool(
            "run_agent", {"agent": "demo", "input": "Name a color."}, meta=meta
        )
    assert tools == ["knowledge_search", "list_agents", "run_agent"]
    assert [a["name"] for a in agents] == ["demo"]
    assert not ran.is_error, _text(ran)
    answer = _text(ran)
    assert answer.strip()
    # The same task, found by its idempotency key through gRPC.
    async with AsyncClient(http_suite.suite.gateway, api_key=USER_KEY) as grpc_client:
        again = await grpc_client.submit("demo", "Name a color.", idempotency_key="mcp-e2e-1")
    assert again.result.status == common_pb2.TASK_STATUS_OK
    assert again.result.output == answer


async def test_errors_are_tool_errors_naming_the_cause(http_suite: HttpSuite) -> None:
    async with _client(http_suite, VIEWER_KEY) as client:
        refused = await client.call_tool("run_agent", {"agent": "demo", "input": "hi"})
        empty = await client.call_tool(
            "knowledge_search", {"knowledge_base": "nothing-here", "query": "pods"}
        )
        malformed = await client.call_tool("knowledge_search", {"knowledge_base": "kb"})
    assert refused.is_error
    assert "PERMISSION_DENIED" in _text(refused)
    assert not empty.is_error
    assert json.loads(_text(empty)) == []
    assert malformed.is_error
    assert "query" in _text(malformed)
