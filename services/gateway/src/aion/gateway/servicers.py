"""The public services: Tasks, Agents and Knowledge, forwarded with the caller's tenant,
and Keys, the tenant's API keys.

Each call is authenticated (a peer that fails too often is refused first),
checked for its role, counted against its tenant's and API key's rate limits,
and forwarded within the caller's own deadline. A stream holds a place among
its tenant's open streams until it ends; generated tokens (and embedded texts'
tokens) are charged to the tenant's tokens per minute. An HTTP protocol request
(A2A, MCP) is counted once, at its door (``Guard.admit``), not again by the
servicer call it makes (see ``http_calls``).
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import time
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any, TypeVar

import grpc
from google.protobuf import timestamp_pb2

from aion.api.agent.v1 import agent_pb2, agent_pb2_grpc
from aion.api.knowledge.v1 import knowledge_pb2 as internal_knowledge_pb2
from aion.api.knowledge.v1 import knowledge_pb2_grpc as internal_knowledge_pb2_grpc
from aion.api.router.v1 import router_pb2, router_pb2_grpc
from aion.api.v1 import (
    agents_pb2,
    agents_pb2_grpc,
    common_pb2,
    keys_pb2,
    keys_pb2_grpc,
    knowledge_pb2,
    knowledge_pb2_grpc,
    tasks_pb2,
    tasks_pb2_grpc,
)
from aion.core import errors, privacy, telemetry, ttl_cache
from aion.gateway import auth, http_calls, keys, metrics, ratelimit, settings

log = logging.getLogger(__name__)

_Ctx = grpc.aio.ServicerContext[Any, Any]
_Req = TypeVar("_Req")
_Resp = TypeVar("_Resp")


@dataclasses.dataclass(frozen=True)
class Upstreams:
    """The gateway's stubs to the internal services it forwards to (not the agent
    service's ``peers.Peers``, which are its replicas). Tests hand in fakes of the stubs."""

    router: router_pb2_grpc.RouterAsyncStub
    agent: agent_pb2_grpc.AgentServiceAsyncStub
    knowledge: internal_knowledge_pb2_grpc.KnowledgeServiceAsyncStub

    @classmethod
    def over(
        cls, *, router: grpc.aio.Channel, agent: grpc.aio.Channel, knowledge: grpc.aio.Channel
    ) -> Upstreams:
        """The stubs over one channel to each service."""
        return cls(
            router=router_pb2_grpc.RouterStub(router),
            agent=agent_pb2_grpc.AgentServiceStub(agent),
            knowledge=internal_knowledge_pb2_grpc.KnowledgeServiceStub(knowledge),
        )


class AgentRecords:
    """The agent records tasks route on (privacy, budget, max_tokens), each kept ``ttl_s``
    (``AION_GATEWAY_AGENT_CACHE_S``) so a task costs no ``GetAgent`` round trip. A change
    applied through this gateway is seen at once (``forget``); one registered elsewhere
    (the operator) within ``ttl_s``. Serving never depends on a stale record for privacy:
    the agent service narrows a task's route to its agent's current privacy, and
    enforces its current budget while the task runs."""

    def __init__(self, stub: agent_pb2_grpc.AgentServiceAsyncStub, *, ttl_s: float) -> None:
        self._stub = stub
        self._kept: ttl_cache.TtlCache[tuple[str, str], agents_pb2.Agent] = ttl_cache.TtlCache(
            ttl_s
        )

    async def get(self, tenant: str, name: str, *, timeout: float | None) -> agents_pb2.Agent:
        """``tenant``'s agent ``name``: kept, else asked of the agent service."""
        agent = self._kept.get((tenant, name))
        if agent is None:
            with errors.remote("agent"):
                agent = await self._stub.GetAgent(
                    agent_pb2.AgentRef(tenant=tenant, name=name), timeout=timeout
                )
            self._kept.put((tenant, name), agent)
        return agent

    def forget(self, tenant: str) -> None:
        """Drop ``tenant``'s kept records (its agents were applied here)."""
        self._kept.forget(lambda key, _: key[0] == tenant)


class Guard:
    """Authentication, roles and rate limits for one call."""

    def __init__(
        self,
        *,
        authenticator: auth.Authenticator,
        limiter: ratelimit.RateLimiter,
        max_idempotency_key_chars: int = 256,
    ) -> None:
        self._auth = authenticator
        self.limiter = limiter
        self.max_idempotency_key_chars = max_idempotency_key_chars

    @property
    def authenticator(self) -> auth.Authenticator:
        """Who verifies credentials (the Keys service tells it of revocations)."""
        return self._auth

    async def caller(
        self, context: _Ctx, role: settings.Role, *, runs_task: bool = False
    ) -> auth.Principal:
        """The authenticated caller, allowed ``role`` and within its rate limits. A call an
        HTTP door admitted (``http_calls.Admission``, in-process only) was authenticated and
        counted there: its role and, when it runs a task, the tenant's tokens are checked."""
        admitted = context.admitted if isinstance(context, http_calls.Call) else None
        principal = admitted.claim() if admitted is not None else None
        if isinstance(principal, auth.Principal):
            principal.require(role)
            telemetry.bind_tenant(principal.tenant)
            if runs_task:
                await self.limiter.check_tokens(principal.tenant)
            return principal
        return await self._counted(context, role, runs_task=runs_task)

    async def admit(
        self, context: _Ctx, role: settings.Role, *, uses: int = 1
    ) -> http_calls.Admission[auth.Principal]:
        """An HTTP door's check of one protocol request (credentials, ``role``, one call
        against the rate limits), paying for the first ``uses`` servicer calls it makes."""
        return http_calls.Admission(await self._counted(context, role), uses=uses)

    async def _counted(
        self, context: _Ctx, role: settings.Role, *, runs_task: bool = False
    ) -> auth.Principal:
        peer = _peer(context)
        await self.limiter.check_failures(peer)
        try:
            principal = await self._auth.authenticate(context.invocation_metadata() or ())
        except errors.Unauthenticated:
            await self.limiter.auth_failed(peer)
            raise
        telemetry.bind_tenant(principal.tenant)  # its log lines and span name the tenant
        principal.require(role)
        await self.limiter.take(principal.tenant, principal.key_id, runs_task=runs_task)
        return principal


def _peer(context: _Ctx) -> str:
    peer = getattr(context, "peer", None)
    name = peer() if callable(peer) else ""
    # "ipv4:10.0.0.1:5555": the address without the port (each call may use a new one).
    host, _, port = str(name or "unknown").rpartition(":")
    return host if host and port.isdigit() else str(name or "unknown")


def _timeout(context: _Ctx) -> float | None:
    return context.time_remaining()


class TasksServicer(tasks_pb2_grpc.TasksServicer):
    """Tasks: decide with the router, run in the agent service."""

    def __init__(
        self, *, guard: Guard, upstreams: Upstreams, records: AgentRecords | None = None
    ) -> None:
        self._guard = guard
        self._upstreams = upstreams
        self._records = records or AgentRecords(upstreams.agent, ttl_s=0)

    async def _run_request(
        self, tenant: str, task: tasks_pb2.TaskSpec, context: _Ctx, *, asynchronous: bool = False
    ) -> agent_pb2.RunRequest:
        if not task.agent:
            raise errors.InvalidArgument("task.agent is required", field="task.agent")
        if len(task.idempotency_key) > self._guard.max_idempotency_key_chars:
            raise errors.InvalidArgument(
                f"task.idempotency_key is {len(task.idempotency_key)} characters; at most "
                f"{self._guard.max_idempotency_key_chars}",
                field="task.idempotency_key",
            )
        opts = task.options
        # Only the value is checked here; the rule (a task may only narrow its agent's
        # privacy, the tenant caps both) is the router's, so it is applied in one place.
        privacy.from_pb(opts.privacy, field="task.options.privacy")
        agent = await self._records.get(tenant, task.agent, timeout=_timeout(context))
        decide = router_pb2.DecideRequest(
            tenant=tenant,
            agent=task.agent,
            privacy=agent.privacy,
            requested_privacy=opts.privacy,
            input_chars=len(task.input),
        )
        # The task's budget, else its agent's: the router checks it before routing, and
        # the agent service enforces the same one (task's, else agent's) while it runs.
        if opts.HasField("budget_usd"):
            decide.budget_usd = opts.budget_usd
        elif agent.HasField("budget_usd_per_task"):
            decide.budget_usd = agent.budget_usd_per_task
        if opts.HasField("sla_ms"):
            decide.sla_ms = opts.sla_ms  # the agent's placement applies it (live p95s)
        with errors.remote("router"):
            decision = await self._upstreams.router.Decide(decide, timeout=_timeout(context))
        log.info(
            "task routed",
            extra={
                "tenant": tenant,
                "agent": task.agent,
                "route": common_pb2.Route.Name(decision.engine.route),
                "chosen_by": decision.engine.chosen_by,
            },
        )
        return agent_pb2.RunRequest(
            tenant=tenant, task=task, decision=decision, asynchronous=asynchronous
        )

    async def Submit(
        self, request: tasks_pb2.SubmitRequest, context: _Ctx
    ) -> tasks_pb2.SubmitResponse:
        started = time.perf_counter()
        who = await self._guard.caller(context, "user", runs_task=True)
        run = await self._run_request(
            who.tenant, request.task, context, asynchronous=request.asynchronous
        )
        metrics.ADDED_LATENCY.labels("Submit").observe(time.perf_counter() - started)
        with errors.remote("agent"):
            response = await self._upstreams.agent.Submit(run, timeout=_timeout(context))
        if request.asynchronous:
            # Its tokens are not known yet: charge its ceiling now, as OpenAI's limits count
            # max_tokens, so a tenant cannot queue past its tokens per minute.
            await self._guard.limiter.spend_tokens(
                who.tenant, await self._ceiling(who.tenant, run.task, context)
            )
        else:
            await self._guard.limiter.spend_tokens(who.tenant, response.result.usage.tokens)
        return response

    async def _ceiling(self, tenant: str, task: tasks_pb2.TaskSpec, context: _Ctx) -> int:
        """The most tokens one step of ``task`` may generate: its max_tokens, else its
        agent's."""
        if task.options.HasField("max_tokens"):
            return task.options.max_tokens
        agent = await self._records.get(tenant, task.agent, timeout=_timeout(context))
        return agent.max_tokens

    async def Stream(
        self, request: tasks_pb2.StreamRequest, context: _Ctx
    ) -> AsyncIterator[tasks_pb2.TaskEvent]:
        started = time.perf_counter()
        starts = request.WhichOneof("target") == "task"
        who = await self._guard.caller(context, "user", runs_task=starts)
        deadline = _timeout(context)
        if deadline is None:
            raise errors.InvalidArgument(
                "Stream needs a deadline: set a timeout on the call (the SDK sets one)",
                field="deadline",
            )
        async with self._guard.limiter.stream(who.tenant, who.key_id, deadline):
            async for event in self._stream(
                who, request, context, count_tokens=starts, started=started
            ):
                yield event

    async def _stream(
        self,
        who: auth.Principal,
        request: tasks_pb2.StreamRequest,
        context: _Ctx,
        *,
        count_tokens: bool,
        started: float,
    ) -> AsyncIterator[tasks_pb2.TaskEvent]:
        """``started``: when the call reached the gateway (``time.perf_counter``)."""
        call: AsyncIterable[tasks_pb2.TaskEvent]
        if request.WhichOneof("target") == "task_id":
            call = self._upstreams.agent.Follow(
                agent_pb2.TaskRef(tenant=who.tenant, task_id=request.task_id),
                timeout=_timeout(context),
            )
        elif request.WhichOneof("target") == "task":
            run = await self._run_request(who.tenant, request.task, context)
            metrics.ADDED_LATENCY.labels("Stream").observe(time.perf_counter() - started)
            call = self._upstreams.agent.Run(run, timeout=_timeout(context))
        else:
            raise errors.InvalidArgument(
                "set task (to start one) or task_id (to follow one)", field="target"
            )
        streamed = charged = 0
        try:
            with errors.remote("agent"):
                async for event in call:
                    kind = event.WhichOneof("event")
                    if kind == "token":
                        if streamed == 0 and count_tokens:  # a stream that started the task
                            metrics.TIME_TO_FIRST_TOKEN.observe(time.perf_counter() - started)
                        streamed += 1
                    elif kind in ("done", "error"):
                        # The task's own count, when it has one, over the streamed pieces.
                        result = event.done.result if kind == "done" else event.error.result
                        streamed = max(streamed, int(result.usage.tokens))
                    if count_tokens and streamed - charged >= _CHARGE_EVERY:
                        await self._guard.limiter.spend_tokens(who.tenant, streamed - charged)
                        charged = streamed
                    yield event
        finally:
            if count_tokens and streamed > charged:
                await self._guard.limiter.spend_tokens(who.tenant, streamed - charged)

    async def Get(self, request: tasks_pb2.GetTaskRequest, context: _Ctx) -> common_pb2.TaskResult:
        who = await self._guard.caller(context, "viewer")
        with errors.remote("agent"):
            return await self._upstreams.agent.GetTask(
                agent_pb2.TaskRef(tenant=who.tenant, task_id=request.task_id),
                timeout=_timeout(context),
            )

    async def Cancel(
        self, request: tasks_pb2.CancelTaskRequest, context: _Ctx
    ) -> common_pb2.TaskResult:
        who = await self._guard.caller(context, "user")
        with errors.remote("agent"):
            return await self._upstreams.agent.CancelTask(
                agent_pb2.TaskRef(tenant=who.tenant, task_id=request.task_id),
                timeout=_timeout(context),
            )


_CHARGE_EVERY = 64  # tokens charged to the tenant at a time while a stream runs


class AgentsServicer(agents_pb2_grpc.AgentsServicer):
    """The tenant's agent catalogue (``Get`` always asks the agent service)."""

    def __init__(
        self, *, guard: Guard, upstreams: Upstreams, records: AgentRecords | None = None
    ) -> None:
        self._guard = guard
        self._upstreams = upstreams
        self._records = records

    async def List(
        self, request: agents_pb2.ListAgentsRequest, context: _Ctx
    ) -> agents_pb2.ListAgentsResponse:
        who = await self._guard.caller(context, "viewer")
        with errors.remote("agent"):
            return await self._upstreams.agent.ListAgents(
                agent_pb2.ListAgentsRequest(tenant=who.tenant), timeout=_timeout(context)
            )

    async def Get(self, request: agents_pb2.GetAgentRequest, context: _Ctx) -> agents_pb2.Agent:
        who = await self._guard.caller(context, "viewer")
        with errors.remote("agent"):
            return await self._upstreams.agent.GetAgent(
                agent_pb2.AgentRef(tenant=who.tenant, name=request.name), timeout=_timeout(context)
            )

    async def Apply(
        self, request: agents_pb2.ApplyAgentsRequest, context: _Ctx
    ) -> agents_pb2.ApplyAgentsResponse:
        who = await self._guard.caller(context, "admin")
        try:
            with errors.remote("agent"):
                return await self._upstreams.agent.ApplyAgents(
                    agent_pb2.ApplyAgentsRequest(tenant=who.tenant, request=request),
                    timeout=_timeout(context),
                )
        finally:  # applied, or maybe partly: the next task reads its agent afresh
            if self._records is not None:
                self._records.forget(who.tenant)


class KnowledgeServicer(knowledge_pb2_grpc.KnowledgeServicer):
    """Documents in the tenant's knowledge bases."""

    def __init__(self, *, guard: Guard, upstreams: Upstreams) -> None:
        self._guard = guard
        self._upstreams = upstreams

    async def _forward(
        self, method: grpc.aio.UnaryUnaryMultiCallable[_Req, _Resp], request: _Req, context: _Ctx
    ) -> _Resp:
        with errors.remote("knowledge"):
            return await method(request, timeout=_timeout(context))

    async def Ingest(
        self, request: knowledge_pb2.IngestRequest, context: _Ctx
    ) -> knowledge_pb2.IngestResponse:
        who = await self._guard.caller(context, "admin")
        return await self._forward(
            self._upstreams.knowledge.Ingest,
            internal_knowledge_pb2.IngestRequest(tenant=who.tenant, request=request),
            context,
        )

    async def IngestStream(
        self, request_iterator: AsyncIterator[knowledge_pb2.IngestChunk], context: _Ctx
    ) -> knowledge_pb2.IngestResponse:
        """Each piece forwarded as it arrives, never gathered here: the knowledge service
        refuses a stream over its size limit as soon as its bytes pass it, and the refusal
        ends this call. The caller's tenant rides on the first message."""
        who = await self._guard.caller(context, "admin")
        deadline = _timeout(context)
        if deadline is None:
            raise errors.InvalidArgument(
                "IngestStream needs a deadline: set a timeout on the call (the SDK sets one)",
                field="deadline",
            )
        async with self._guard.limiter.stream(who.tenant, who.key_id, deadline):
            messages = aiter(request_iterator)
            first = await anext(messages, None)
            if first is None or first.WhichOneof("part") != "header":
                raise errors.InvalidArgument(
                    "the first message must carry the header (knowledge_base, document_id, "
                    "content_type...); the document's bytes follow in data messages",
                    field="header",
                )

            async def forwarded() -> AsyncIterator[internal_knowledge_pb2.IngestChunk]:
                yield internal_knowledge_pb2.IngestChunk(tenant=who.tenant, chunk=first)
                async for chunk in messages:
                    yield internal_knowledge_pb2.IngestChunk(chunk=chunk)

            call = self._upstreams.knowledge.IngestStream(forwarded(), timeout=_timeout(context))
            return await errors.remote_stream("knowledge", call)

    async def Search(
        self, request: knowledge_pb2.SearchRequest, context: _Ctx
    ) -> knowledge_pb2.SearchResponse:
        who = await self._guard.caller(context, "viewer")
        return await self._forward(
            self._upstreams.knowledge.Search,
            internal_knowledge_pb2.SearchRequest(tenant=who.tenant, request=request),
            context,
        )

    async def Delete(
        self, request: knowledge_pb2.DeleteDocumentRequest, context: _Ctx
    ) -> knowledge_pb2.DeleteDocumentResponse:
        who = await self._guard.caller(context, "admin")
        return await self._forward(
            self._upstreams.knowledge.Delete,
            internal_knowledge_pb2.DeleteRequest(tenant=who.tenant, request=request),
            context,
        )

    async def GetDocument(
        self, request: knowledge_pb2.GetDocumentRequest, context: _Ctx
    ) -> knowledge_pb2.Document:
        who = await self._guard.caller(context, "viewer")
        return await self._forward(
            self._upstreams.knowledge.GetDocument,
            internal_knowledge_pb2.GetDocumentRequest(tenant=who.tenant, request=request),
            context,
        )

    async def ListDocuments(
        self, request: knowledge_pb2.ListDocumentsRequest, context: _Ctx
    ) -> knowledge_pb2.ListDocumentsResponse:
        who = await self._guard.caller(context, "viewer")
        return await self._forward(
            self._upstreams.knowledge.ListDocuments,
            internal_knowledge_pb2.ListDocumentsRequest(tenant=who.tenant, request=request),
            context,
        )

    async def Embed(
        self, request: knowledge_pb2.EmbedRequest, context: _Ctx
    ) -> knowledge_pb2.EmbedResponse:
        # Model work, as a task is: refused while the tenant's tokens are in debt, and the
        # texts' tokens charged to its tokens per minute.
        who = await self._guard.caller(context, "user", runs_task=True)
        response = await self._forward(
            self._upstreams.knowledge.Embed,
            internal_knowledge_pb2.EmbedRequest(tenant=who.tenant, request=request),
            context,
        )
        await self._guard.limiter.spend_tokens(who.tenant, response.prompt_tokens)
        return response


def _timestamp(when: datetime.datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(when)
    return stamp


def _key_message(record: keys.KeyRecord) -> keys_pb2.ApiKey:
    message = keys_pb2.ApiKey(
        id=record.id, tenant=record.tenant, name=record.name, roles=list(record.roles)
    )
    for field in ("created_at", "last_used_at", "revoked_at"):
        when = getattr(record, field)
        if when is not None:
            getattr(message, field).CopyFrom(_timestamp(when))
    return message


class KeysServicer(keys_pb2_grpc.KeysServicer):
    """The caller's tenant's API keys (admin only); without a key store,
    FAILED_PRECONDITION saying how to configure one."""

    def __init__(self, *, guard: Guard, store: keys.KeyStore | None) -> None:
        self._guard = guard
        self._store = store

    def _keys(self) -> keys.KeyStore:
        if self._store is None:
            raise errors.FailedPrecondition(
                "this gateway has no key store: set AION_GATEWAY_POSTGRES_DSN to create keys"
            )
        return self._store

    async def Create(
        self, request: keys_pb2.CreateKeyRequest, context: _Ctx
    ) -> keys_pb2.CreateKeyResponse:
        who = await self._guard.caller(context, "admin")
        record, secret = await self._keys().create(
            tenant=who.tenant, name=request.name, roles=list(request.roles)
        )
        log.info(
            "API key created", extra={"tenant": who.tenant, "key_id": record.id, "by": who.subject}
        )
        return keys_pb2.CreateKeyResponse(key=_key_message(record), secret=secret)

    async def List(
        self, request: keys_pb2.ListKeysRequest, context: _Ctx
    ) -> keys_pb2.ListKeysResponse:
        who = await self._guard.caller(context, "admin")
        found = await self._keys().list(tenant=who.tenant, include_revoked=request.include_revoked)
        return keys_pb2.ListKeysResponse(keys=[_key_message(r) for r in found])

    async def Revoke(self, request: keys_pb2.RevokeKeyRequest, context: _Ctx) -> keys_pb2.ApiKey:
        who = await self._guard.caller(context, "admin")
        if not request.id:
            raise errors.InvalidArgument("id is required (see `aionctl keys list`)", field="id")
        record = await self._keys().revoke(tenant=who.tenant, key_id=request.id)
        self._guard.authenticator.forget(record.id)
        log.info(
            "API key revoked", extra={"tenant": who.tenant, "key_id": record.id, "by": who.subject}
        )
        return _key_message(record)
