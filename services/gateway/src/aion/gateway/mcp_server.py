"""aion as an MCP server: the tenant's knowledge search and agents as tools, at ``/mcp``.

Streamable HTTP, stateless, JSON answers (the ``mcp`` package's server; MCP
2026-07-28 with ``server/discover``, and the initialize handshake for older
clients). Every HTTP request must carry the caller's credentials, as on the
rest of the gateway (API key as ``Authorization: Bearer`` or ``x-api-key``, or
a JWT); without them it gets 401 before MCP reads it. That check counts each
HTTP request once against the rate limits, whatever it carries (``initialize``,
``tools/list`` and notifications reach no servicer and cost that one call); a
tool call's servicer call is paid by it (``http_calls.Admission``, which the
tool finds in the request's ASGI scope, since the MCP session manager runs
tools in a task of its own), so one tool call is one call. The tools call the
gateway's own servicers, so tenant, roles and rate limits are the gRPC API's:

- ``knowledge_search(knowledge_base, query, top_k)``: passages of one of the
  tenant's knowledge bases, each with its document and chunk (viewer).
- ``list_agents()``: the tenant's agents (viewer).
- ``run_agent(agent, input)``: runs one agent as an aion task and returns its
  answer; the call's ``_meta`` ``dev.aion/idempotency-key`` is the task's
  idempotency key (user).

An aion error is the tool's error (``isError``) with its code and message.
DNS-rebinding protection is off: it guards unauthenticated local servers,
and every call here carries a credential a rebinding page cannot send.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from mcp.server import MCPServer
from mcp.server import transport_security as mcp_security
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError
from starlette import requests, routing, types

from aion.api.v1 import agents_pb2, common_pb2, knowledge_pb2, tasks_pb2
from aion.core import errors
from aion.gateway import http_app, http_calls, results, servicers

IDEMPOTENCY_META = "dev.aion/idempotency-key"
T = TypeVar("T")


class McpApi:
    """The MCP server and its route; ``running()`` must be entered while it serves."""

    def __init__(
        self,
        *,
        guard: servicers.Guard,
        tasks: servicers.TasksServicer,
        agents: servicers.AgentsServicer,
        knowledge: servicers.KnowledgeServicer,
        timeout_s: float,
    ) -> None:
        self._guard = guard
        self._tasks = tasks
        self._agents = agents
        self._knowledge = knowledge
        self._timeout_s = timeout_s
        self.server: MCPServer[Any] = MCPServer(
            "aion", instructions="Search the tenant's knowledge bases and run its agents."
        )
        self.server.add_tool(
            self.knowledge_search,
            name="knowledge_search",
            description="Searches one of your knowledge bases; returns "
            "passages with their document and chunk.",
        )
        self.server.add_tool(
            self.list_agents, name="list_agents", description="Lists the agents you can run."
        )
        self.server.add_tool(
            self.run_agent,
            name="run_agent",
            description="Runs one of your agents on an input and returns its answer.",
        )
        app = self.server.streamable_http_app(
            streamable_http_path="/mcp",
            stateless_http=True,
            json_response=True,
            transport_security=mcp_security.TransportSecuritySettings(
                enable_dns_rebinding_protection=False
            ),
        )
        self.routes: list[routing.BaseRoute] = [
            routing.Route(
                route.path, endpoint=_Authenticated(route.app, self._check), methods=route.methods
            )
            for route in app.routes
            if isinstance(route, routing.Route)
        ]

    def running(self) -> contextlib.AbstractAsyncContextManager[None]:
        """The MCP session manager, for the time the server serves."""
        return self.server.session_manager.run()

    async def _check(self, request: requests.Request) -> None:
        door = http_calls.Call(request.headers, timeout_s=1, client=request.client)
        admission = await self._guard.admit(door.context(), "viewer")
        http_calls.leave_admission(request.scope, admission)

    def _call(self, ctx: Context[Any, Any]) -> http_calls.Call:
        scope = getattr(ctx.request_context.request, "scope", None)
        return http_calls.Call(
            ctx.headers or {},
            timeout_s=self._timeout_s,
            admitted=http_calls.admission_of(scope if isinstance(scope, dict) else None),
        )

    async def knowledge_search(
        self, knowledge_base: str, query: str, ctx: Context[Any, Any], top_k: int = 4
    ) -> str:
        """Passages of ``knowledge_base`` that match ``query``."""
        found = await _tool(
            self._knowledge.Search(
                knowledge_pb2.SearchRequest(
                    knowledge_base=knowledge_base, query=query, top_k=top_k
                ),
                self._call(ctx).context(),
            )
        )
        return json.dumps(
            [
                {
                    "document_id": hit.document_id,
                    "chunk": hit.chunk_index,
                    "score": hit.score,
                    "text": hit.text,
                }
                for hit in found.hits
            ]
        )

    async def list_agents(self, ctx: Context[Any, Any]) -> str:
        """The caller's agents."""
        listed = await _tool(
            self._agents.List(agents_pb2.ListAgentsRequest(), self._call(ctx).context())
        )
        return json.dumps(
            [
                {"name": a.name, "description": a.description, "ready": a.ready}
                for a in listed.agents
            ]
        )

    async def run_agent(self, agent: str, input: str, ctx: Context[Any, Any]) -> str:
        """Run ``agent`` on ``input``; its answer, or the task's error."""
        meta = ctx.request_context.meta or {}
        key = str(meta.get(IDEMPOTENCY_META, ""))
        sent = await _tool(
            self._tasks.Submit(
                tasks_pb2.SubmitRequest(
                    task=tasks_pb2.TaskSpec(agent=agent, input=input, idempotency_key=key)
                ),
                self._call(ctx).context(),
            )
        )
        result = sent.result
        if result.status != common_pb2.TASK_STATUS_OK:
            raise ToolError(
                f"task {result.task_id} ended {results.status_name(result.status)}"
                f": {result.error.code}: {result.error.message}"
            )
        return result.output


async def _tool(call: Awaitable[T]) -> T:
    try:
        return await call
    except errors.AionError as err:
        raise ToolError(f"{errors.code_name(err.code)}: {err.message}") from err


class _Authenticated:
    """An ASGI app that answers 401/403/429 before ``app`` sees a request without a valid
    credential."""

    def __init__(
        self, app: types.ASGIApp, check: Callable[[requests.Request], Awaitable[None]]
    ) -> None:
        self._app = app
        self._check = check

    async def __call__(self, scope: types.Scope, receive: types.Receive, send: types.Send) -> None:
        try:
            await self._check(requests.Request(scope))
        except errors.AionError as err:
            await http_app.error_response(err)(scope, receive, send)
            return
        await self._app(scope, receive, send)
