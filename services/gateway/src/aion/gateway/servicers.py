"""The public services: Tasks, Agents and Knowledge, forwarded with the caller's tenant.

Each call is authenticated, checked for its role, counted against the
tenant's rate limit, and forwarded within the caller's own deadline.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any, TypeVar

import grpc

from aion.api.agent.v1 import agent_pb2, agent_pb2_grpc
from aion.api.knowledge.v1 import knowledge_pb2 as internal_knowledge_pb2
from aion.api.knowledge.v1 import knowledge_pb2_grpc as internal_knowledge_pb2_grpc
from aion.api.router.v1 import router_pb2, router_pb2_grpc
from aion.api.v1 import (
    agents_pb2,
    agents_pb2_grpc,
    common_pb2,
    knowledge_pb2,
    knowledge_pb2_grpc,
    tasks_pb2,
    tasks_pb2_grpc,
)
from aion.core import errors
from aion.gateway import auth, ratelimit, settings

log = logging.getLogger(__name__)

_Ctx = grpc.aio.ServicerContext[Any, Any]
_Req = TypeVar("_Req")
_Resp = TypeVar("_Resp")


class Peers:
    """The gateway's stubs to the internal services."""

    def __init__(
        self, *, router: grpc.aio.Channel, agent: grpc.aio.Channel, knowledge: grpc.aio.Channel
    ) -> None:
        self.router: router_pb2_grpc.RouterAsyncStub = router_pb2_grpc.RouterStub(router)
        self.agent: agent_pb2_grpc.AgentServiceAsyncStub = agent_pb2_grpc.AgentServiceStub(agent)
        self.knowledge: internal_knowledge_pb2_grpc.KnowledgeServiceAsyncStub = (
            internal_knowledge_pb2_grpc.KnowledgeServiceStub(knowledge)
        )


class Guard:
    """Authentication, roles and rate limits for one call."""

    def __init__(
        self, *, authenticator: auth.Authenticator, limiter: ratelimit.RateLimiter
    ) -> None:
        self._auth = authenticator
        self._limiter = limiter

    def caller(self, context: _Ctx, role: settings.Role) -> auth.Principal:
        """The authenticated caller, allowed ``role`` and within its rate limit."""
        principal = self._auth.authenticate(context.invocation_metadata() or ())
        principal.require(role)
        self._limiter.take(principal.tenant)
        return principal


def _timeout(context: _Ctx) -> float | None:
    return context.time_remaining()


class TasksServicer(tasks_pb2_grpc.TasksServicer):
    """Tasks: decide with the router, run in the agent service."""

    def __init__(self, *, guard: Guard, peers: Peers) -> None:
        self._guard = guard
        self._peers = peers

    async def _run_request(
        self, tenant: str, task: tasks_pb2.TaskSpec, context: _Ctx, *, asynchronous: bool = False
    ) -> agent_pb2.RunRequest:
        if not task.agent:
            raise errors.InvalidArgument("task.agent is required", field="task.agent")
        if task.options.privacy not in _STRICT:
            raise errors.InvalidArgument(
                f"task.options.privacy {task.options.privacy} is not a Privacy value",
                field="task.options.privacy")
        with errors.remote("agent"):
            agent = await self._peers.agent.GetAgent(
                agent_pb2.AgentRef(tenant=tenant, name=task.agent), timeout=_timeout(context)
            )
        privacy = agent.privacy
        opts = task.options
        if opts.privacy and (
            privacy == common_pb2.PRIVACY_UNSPECIFIED
            or _STRICT.index(opts.privacy) < _STRICT.index(privacy)
        ):
            privacy = opts.privacy  # a task may only narrow its agent's privacy
        decide = router_pb2.DecideRequest(
            tenant=tenant, agent=task.agent, privacy=privacy, input_chars=len(task.input)
        )
        if opts.HasField("budget_usd"):
            decide.budget_usd = opts.budget_usd
        if opts.HasField("sla_ms"):
            decide.sla_ms = opts.sla_ms
        with errors.remote("router"):
            decision = await self._peers.router.Decide(decide, timeout=_timeout(context))
        log.info("task routed", extra={
            "tenant": tenant, "agent": task.agent,
            "route": common_pb2.Route.Name(decision.engine.route),
            "chosen_by": decision.engine.chosen_by})
        return agent_pb2.RunRequest(
            tenant=tenant, task=task, decision=decision, asynchronous=asynchronous
        )

    async def Submit(
        self, request: tasks_pb2.SubmitRequest, context: _Ctx
    ) -> tasks_pb2.SubmitResponse:
        who = self._guard.caller(context, "user")
        run = await self._run_request(
            who.tenant, request.task, context, asynchronous=request.asynchronous
        )
        with errors.remote("agent"):
            return await self._peers.agent.Submit(run, timeout=_timeout(context))

    async def Stream(
        self, request: tasks_pb2.StreamRequest, context: _Ctx
    ) -> AsyncIterator[tasks_pb2.TaskEvent]:
        who = self._guard.caller(context, "user")
        if _timeout(context) is None:
            raise errors.InvalidArgument(
                "Stream needs a deadline: set a timeout on the call (the SDK sets one)",
                field="deadline",
            )
        call: AsyncIterable[tasks_pb2.TaskEvent]
        if request.WhichOneof("target") == "task_id":
            call = self._peers.agent.Follow(
                agent_pb2.TaskRef(tenant=who.tenant, task_id=request.task_id),
                timeout=_timeout(context),
            )
        elif request.WhichOneof("target") == "task":
            run = await self._run_request(who.tenant, request.task, context)
            call = self._peers.agent.Run(run, timeout=_timeout(context))
        else:
            raise errors.InvalidArgument(
                "set task (to start one) or task_id (to follow one)", field="target"
            )
        with errors.remote("agent"):
            async for event in call:
                yield event

    async def Get(self, request: tasks_pb2.GetTaskRequest, context: _Ctx) -> common_pb2.TaskResult:
        who = self._guard.caller(context, "viewer")
        with errors.remote("agent"):
            return await self._peers.agent.GetTask(
                agent_pb2.TaskRef(tenant=who.tenant, task_id=request.task_id),
                timeout=_timeout(context),
            )

    async def Cancel(
        self, request: tasks_pb2.CancelTaskRequest, context: _Ctx
    ) -> common_pb2.TaskResult:
        who = self._guard.caller(context, "user")
        with errors.remote("agent"):
            return await self._peers.agent.CancelTask(
                agent_pb2.TaskRef(tenant=who.tenant, task_id=request.task_id),
                timeout=_timeout(context),
            )


_STRICT = [
    common_pb2.PRIVACY_LOCAL_ONLY,
    common_pb2.PRIVACY_HYBRID,
    common_pb2.PRIVACY_ALLOW_API,
    common_pb2.PRIVACY_UNSPECIFIED,
]


class AgentsServicer(agents_pb2_grpc.AgentsServicer):
    """The tenant's agent catalogue."""

    def __init__(self, *, guard: Guard, peers: Peers) -> None:
        self._guard = guard
        self._peers = peers

    async def List(
        self, request: agents_pb2.ListAgentsRequest, context: _Ctx
    ) -> agents_pb2.ListAgentsResponse:
        who = self._guard.caller(context, "viewer")
        with errors.remote("agent"):
            return await self._peers.agent.ListAgents(
                agent_pb2.ListAgentsRequest(tenant=who.tenant), timeout=_timeout(context)
            )

    async def Get(self, request: agents_pb2.GetAgentRequest, context: _Ctx) -> agents_pb2.Agent:
        who = self._guard.caller(context, "viewer")
        with errors.remote("agent"):
            return await self._peers.agent.GetAgent(
                agent_pb2.AgentRef(tenant=who.tenant, name=request.name), timeout=_timeout(context)
            )

    async def Apply(
        self, request: agents_pb2.ApplyAgentsRequest, context: _Ctx
    ) -> agents_pb2.ApplyAgentsResponse:
        who = self._guard.caller(context, "admin")
        with errors.remote("agent"):
            return await self._peers.agent.ApplyAgents(
                agent_pb2.ApplyAgentsRequest(tenant=who.tenant, request=request),
                timeout=_timeout(context),
            )


class KnowledgeServicer(knowledge_pb2_grpc.KnowledgeServicer):
    """Documents in the tenant's knowledge bases."""

    def __init__(self, *, guard: Guard, peers: Peers) -> None:
        self._guard = guard
        self._peers = peers

    async def _forward(
        self, method: grpc.aio.UnaryUnaryMultiCallable[_Req, _Resp], request: _Req, context: _Ctx
    ) -> _Resp:
        with errors.remote("knowledge"):
            return await method(request, timeout=_timeout(context))

    async def Ingest(
        self, request: knowledge_pb2.IngestRequest, context: _Ctx
    ) -> knowledge_pb2.IngestResponse:
        who = self._guard.caller(context, "admin")
        return await self._forward(
            self._peers.knowledge.Ingest,
            internal_knowledge_pb2.IngestRequest(tenant=who.tenant, request=request),
            context,
        )

    async def Search(
        self, request: knowledge_pb2.SearchRequest, context: _Ctx
    ) -> knowledge_pb2.SearchResponse:
        who = self._guard.caller(context, "viewer")
        return await self._forward(
            self._peers.knowledge.Search,
            internal_knowledge_pb2.SearchRequest(tenant=who.tenant, request=request),
            context,
        )

    async def Delete(
        self, request: knowledge_pb2.DeleteDocumentRequest, context: _Ctx
    ) -> knowledge_pb2.DeleteDocumentResponse:
        who = self._guard.caller(context, "admin")
        return await self._forward(
            self._peers.knowledge.Delete,
            internal_knowledge_pb2.DeleteRequest(tenant=who.tenant, request=request),
            context,
        )

    async def GetDocument(
        self, request: knowledge_pb2.GetDocumentRequest, context: _Ctx
    ) -> knowledge_pb2.Document:
        who = self._guard.caller(context, "viewer")
        return await self._forward(
            self._peers.knowledge.GetDocument,
            internal_knowledge_pb2.GetDocumentRequest(tenant=who.tenant, request=request),
            context,
        )

    async def ListDocuments(
        self, request: knowledge_pb2.ListDocumentsRequest, context: _Ctx
    ) -> knowledge_pb2.ListDocumentsResponse:
        who = self._guard.caller(context, "viewer")
        return await self._forward(
            self._peers.knowledge.ListDocuments,
            internal_knowledge_pb2.ListDocumentsRequest(tenant=who.tenant, request=request),
            context,
        )
