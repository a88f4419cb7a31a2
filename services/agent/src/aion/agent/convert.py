"""Protobuf at the edge: the agent service's messages to and from its own types.

Every protobuf message the agent service reads or writes is built or read here: the
gRPC requests and results, the Kafka event payloads, and the executor's generate call.
The modules below (runner, agent loop, store, recovery) speak ``model`` types only.
The tenant is read here, once per call, and required (``authz.require_tenant``).
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Sequence
from typing import Protocol

from google.protobuf import timestamp_pb2

from aion.agent import model
from aion.api.agent.v1 import agent_pb2
from aion.api.events.v1 import events_pb2
from aion.api.executor.v1 import executor_pb2
from aion.api.router.v1 import router_pb2
from aion.api.v1 import agents_pb2, common_pb2, tasks_pb2
from aion.api.v1 import knowledge_pb2 as public_knowledge_pb2
from aion.core import agentspec, authz, errors, privacy

# The longest credential value a registration may carry (a header of 8 KiB fits every
# server's limits).
MAX_CREDENTIAL_CHARS = 8192

_STATUS_TO_PB = {
    model.Status.QUEUED: common_pb2.TASK_STATUS_QUEUED,
    model.Status.RUNNING: common_pb2.TASK_STATUS_RUNNING,
    model.Status.OK: common_pb2.TASK_STATUS_OK,
    model.Status.ERROR: common_pb2.TASK_STATUS_ERROR,
    model.Status.TIMEOUT: common_pb2.TASK_STATUS_TIMEOUT,
    model.Status.CANCELED: common_pb2.TASK_STATUS_CANCELED,
}


class _Scoped(Protocol):
    tenant: str


def tenant(msg: _Scoped) -> str:
    """The tenant an internal call is made for: required (INVALID_ARGUMENT when empty),
    never defaulted; the gateway and the operator always set it."""
    return authz.require_tenant(msg.tenant)


def spec_from_pb(
    msg: agent_pb2.RunRequest, *, timeout_s: float, asynchronous: bool = False
) -> model.TaskSpec:
    """The TaskSpec of a Run or Submit request (validated by the runner)."""
    if not msg.HasField("task"):
        raise errors.InvalidArgument("task is required", field="task")
    opts = msg.task.options
    return model.TaskSpec(
        tenant=tenant(msg),
        agent=msg.task.agent,
        input=msg.task.input,
        idempotency_key=msg.task.idempotency_key,
        max_tokens=opts.max_tokens if opts.HasField("max_tokens") else None,
        temperature=opts.temperature if opts.HasField("temperature") else None,
        seed=opts.seed if opts.HasField("seed") else None,
        timeout_s=timeout_s,
        budget_usd=opts.budget_usd if opts.HasField("budget_usd") else None,
        sla_ms=opts.sla_ms if opts.HasField("sla_ms") else None,
        asynchronous=asynchronous,
    )


def decision_from_pb(msg: router_pb2.Decision) -> model.Decision:
    """The router's decision; an absent one (or an unknown route) means local.

    ``estimated_cost_usd`` is not read: the router compares it with the budget before
    routing; while the task runs, the agent counts its real spend (``budget``).
    """
    if not msg.HasField("engine"):
        return model.Decision(
            route=privacy.Route.LOCAL,
            chosen_by="default",
            reason="no routing decision was given: running locally",
        )
    return model.Decision(
        route=privacy.route_from_pb(msg.engine.route) or privacy.Route.LOCAL,
        chosen_by=msg.engine.chosen_by,
        reason=msg.engine.reason,
        provider=msg.provider,
    )


def _ts(value: datetime.datetime | None) -> timestamp_pb2.Timestamp | None:
    if value is None:
        return None
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(value)
    return ts


def engine_to_pb(task: model.TaskRecord) -> common_pb2.Engine:
    """The Engine a task ran with."""
    d = task.decision
    return common_pb2.Engine(
        route=privacy.route_to_pb(d.route),
        chosen_by=d.chosen_by,
        reason=d.reason,
        model=task.model_name,
    )


def result_to_pb(task: model.TaskRecord) -> common_pb2.TaskResult:
    """The canonical result of a task, as it stands."""
    u = task.usage
    result = common_pb2.TaskResult(
        task_id=task.id,
        agent=task.spec.agent,
        status=_STATUS_TO_PB[task.status],
        output=task.output,
        engine=engine_to_pb(task),
        usage=common_pb2.Usage(
            latency_ms=u.latency_ms,
            prompt_tokens=u.prompt_tokens,
            completion_tokens=u.completion_tokens,
            tokens=u.prompt_tokens + u.completion_tokens,
            cost_usd=u.cost_usd,
        ),
        created_at=_ts(task.created_at),
        finished_at=_ts(task.finished_at),
        citations=[citation_to_pb(c) for c in task.citations],
        trace_id=task.trace_id,
    )
    if task.error is not None:
        result.error.CopyFrom(
            common_pb2.TaskError(
                code=task.error.code, message=task.error.message, retriable=task.error.retriable
            )
        )
    return result


def event_to_pb(task: model.TaskRecord, event: model.Event) -> tasks_pb2.TaskEvent:
    """One task event as sent to clients."""
    msg = tasks_pb2.TaskEvent(task_id=task.id, seq=event.seq)
    match event.kind:
        case model.EventKind.STARTED:
            msg.started.engine.CopyFrom(engine_to_pb(task))
        case model.EventKind.TOKEN:
            msg.token.text = event.text
        case model.EventKind.PARTIAL:
            msg.partial.text = event.text
            msg.partial.step = event.step
        case model.EventKind.DONE:
            msg.done.result.CopyFrom(result_to_pb(task))
        case model.EventKind.ERROR:
            msg.error.result.CopyFrom(result_to_pb(task))
    return msg


def agent_to_pb(agent: model.AgentRecord) -> agents_pb2.Agent:
    """An agent as callers see it."""
    return agents_pb2.Agent(
        name=agent.name,
        description=agent.description,
        model=agent.model,
        model_task=agent.model_task,
        privacy=privacy.to_pb(agent.privacy),
        knowledge_bases=list(agent.knowledge_bases),
        ready=agent.ready,
        node_pool=agent.node_pool,
        max_tokens=agent.max_tokens,
        budget_usd_per_task=agent.budget_usd_per_task,
        p95_target_ms=agent.p95_target_ms,
    )


_OWNER = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?/[-a-zA-Z0-9]{0,64}$")


def owner(text: str) -> str:
    """A registration's owner: ``"<namespace>/<uid>"`` of an Agent resource, else the
    API's (empty or ``"api"``); InvalidArgument for anything else."""
    if text in ("", model.API_OWNER):
        return model.API_OWNER
    if not _OWNER.match(text):
        raise errors.InvalidArgument(
            f"owner {text[:80]!r} is not '<namespace>/<uid>' of an Agent resource (or 'api')",
            field="owner",
        )
    return text


def routing_targets(agent: agents_pb2.Agent) -> tuple[float | None, int | None]:
    """A registration's routing targets (budget per task in USD, p95 latency in ms): None
    when unset; InvalidArgument below the CRD's minimums."""
    budget = agent.budget_usd_per_task if agent.HasField("budget_usd_per_task") else None
    p95 = agent.p95_target_ms if agent.HasField("p95_target_ms") else None
    if budget is not None and not budget >= 0:  # NaN too
        raise errors.InvalidArgument(
            f"agent.budget_usd_per_task must be at least 0; got {budget}",
            field="agent.budget_usd_per_task",
        )
    if p95 is not None and p95 < 1:
        raise errors.InvalidArgument(
            f"agent.p95_target_ms must be at least 1; got {p95}", field="agent.p95_target_ms"
        )
    return budget, p95


# A header value as HTTP carries it: visible ASCII, spaces and tabs inside.
_HEADER_VALUE = re.compile(r"[\x21-\x7e]([\x20-\x7e\t]*[\x21-\x7e])?")


def tool_credentials(msg: agent_pb2.RegisterAgentRequest) -> tuple[model.ToolCredential, ...]:
    """A registration's credentials, each for a server its tools name, with a header the
    clients do not set themselves and a value HTTP can carry; InvalidArgument (never
    quoting a value) otherwise."""
    servers = {u for u in map(agentspec.server_url, msg.tools) if u is not None}
    found: list[model.ToolCredential] = []
    for i, c in enumerate(msg.tool_credentials):
        field = f"tool_credentials[{i}]"
        if c.url not in servers:
            raise errors.InvalidArgument(
                f"{field}.url {c.url[:200]!r} is not a server of the agent's tools "
                "(mcp:<url> or a2a:<url>)",
                field=f"{field}.url",
            )
        if any(f.url == c.url for f in found):
            raise errors.InvalidArgument(
                f"{field}: a second credential for {c.url[:200]!r}", field=f"{field}.url"
            )
        if (
            not re.fullmatch(agentspec.HEADER_PATTERN, c.header)
            or len(c.header) > 128
            or c.header.lower() in agentspec.RESERVED_HEADERS
        ):
            raise errors.InvalidArgument(
                f"{field}.header {c.header[:130]!r} is not an HTTP header a credential may use",
                field=f"{field}.header",
            )
        if not _HEADER_VALUE.fullmatch(c.value) or len(c.value) > MAX_CREDENTIAL_CHARS:
            raise errors.InvalidArgument(
                f"{field}.value is not an HTTP header value (empty, over "
                f"{MAX_CREDENTIAL_CHARS} characters, or not printable ASCII)",
                field=f"{field}.value",
            )
        found.append(model.ToolCredential(url=c.url, header=c.header, value=c.value))
    return tuple(found)


def agent_from_pb(msg: agent_pb2.RegisterAgentRequest) -> model.AgentRecord:
    """The agent a registration describes."""
    a = msg.agent
    declared = privacy.from_pb(msg.privacy or a.privacy)
    budget, p95 = routing_targets(a)
    return model.AgentRecord(
        tenant=tenant(msg),
        name=a.name,
        model=a.model,
        model_task=a.model_task or "generate",
        instructions=msg.instructions,
        description=a.description,
        privacy=declared or privacy.Privacy.LOCAL_ONLY,
        knowledge_bases=tuple(a.knowledge_bases),
        executor_endpoints=tuple(msg.executor_endpoints),
        max_tokens=a.max_tokens or 256,
        node_pool=a.node_pool,
        tools=tuple(msg.tools),
        owner=owner(msg.owner),
        budget_usd_per_task=budget,
        p95_target_ms=p95,
        tool_credentials=tool_credentials(msg),
    )


# -- Kafka event payloads -------------------------------------------------------------
def state_changed(task: model.TaskRecord) -> events_pb2.TaskStateChanged:
    """A task's state change, for the task-events topic.

    The topic is shared by every tenant, so an event carries the tenant (on the
    envelope), ids, state, engine and usage, never the output text nor the citations
    (the tenant's documents): whoever needs them asks the agent service (Get, as the
    tenant), which checks the tenant.
    One shared topic keeps the consumers simple (one group reads every task) and Kafka
    ACLs need no per-tenant topics.
    """
    data = events_pb2.TaskStateChanged(task_id=task.id, agent=task.spec.agent)
    result = result_to_pb(task)
    data.status = result.status
    if task.status.final:
        data.result.CopyFrom(result)
        data.result.ClearField("output")
        data.result.ClearField("citations")
    return data


def queued(task: model.TaskRecord) -> events_pb2.TaskQueued:
    """A queued task, for the work topic."""
    return events_pb2.TaskQueued(task_id=task.id, agent=task.spec.agent, attempt=task.attempts)


# -- the executor's generate call -----------------------------------------------------
def generate_request(call: model.ModelCall) -> executor_pb2.GenerateRequest:
    """The executor request of one model call."""
    request = executor_pb2.GenerateRequest(
        model=call.model,
        max_tokens=call.max_tokens,
        messages=[executor_pb2.ChatMessage(role=r, content=c) for r, c in call.messages],
    )
    if call.temperature is not None:
        request.temperature = call.temperature
    if call.seed is not None:
        request.seed = call.seed
    return request


def chunk_from_pb(msg: executor_pb2.GenerateChunk) -> model.Chunk:
    """A piece of the executor's reply; usage only on the last one."""
    if not msg.HasField("usage"):
        return model.Chunk(text=msg.text)
    return model.Chunk(
        text=msg.text,
        prompt_tokens=msg.usage.prompt_tokens,
        completion_tokens=msg.usage.completion_tokens,
        final=True,
    )


def passages(hits: Sequence[public_knowledge_pb2.SearchHit]) -> list[model.Passage]:
    """The knowledge service's hits, in its order, each with its citation."""
    return [
        model.Passage(
            text=h.text,
            citation=model.Citation(
                knowledge_base=h.knowledge_base,
                document_id=h.document_id,
                version=h.version,
                chunk_index=h.chunk_index,
                char_start=h.char_start,
                char_end=h.char_end,
                title=h.title,
                score=h.score,
            ),
        )
        for h in hits
    ]


def citation_to_pb(c: model.Citation) -> common_pb2.Citation:
    """A citation of the canonical result."""
    return common_pb2.Citation(
        knowledge_base=c.knowledge_base,
        document_id=c.document_id,
        version=c.version,
        chunk_index=c.chunk_index,
        char_start=c.char_start,
        char_end=c.char_end,
        title=c.title,
        score=c.score,
    )
