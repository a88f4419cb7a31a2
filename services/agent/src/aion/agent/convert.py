"""Protobuf at the edge: the agent service's messages to and from its own types."""

from __future__ import annotations

import datetime
import re

from google.protobuf import timestamp_pb2

from aion.agent import model, store
from aion.api.agent.v1 import agent_pb2
from aion.api.router.v1 import router_pb2
from aion.api.v1 import agents_pb2, common_pb2, tasks_pb2
from aion.core import authz, errors

_PRIVACY_TO_PB = {
    model.Privacy.LOCAL_ONLY: common_pb2.PRIVACY_LOCAL_ONLY,
    model.Privacy.ALLOW_API: common_pb2.PRIVACY_ALLOW_API,
    model.Privacy.HYBRID: common_pb2.PRIVACY_HYBRID,
}
_PRIVACY_FROM_PB = {v: k for k, v in _PRIVACY_TO_PB.items()}
_ROUTE_FROM_PB = {common_pb2.ROUTE_LOCAL: "local", common_pb2.ROUTE_API: "api",
                  common_pb2.ROUTE_HYBRID: "hybrid"}
_ROUTE_TO_PB = {v: k for k, v in _ROUTE_FROM_PB.items()}
_STATUS_TO_PB = {
    model.Status.QUEUED: common_pb2.TASK_STATUS_QUEUED,
    model.Status.RUNNING: common_pb2.TASK_STATUS_RUNNING,
    model.Status.OK: common_pb2.TASK_STATUS_OK,
    model.Status.ERROR: common_pb2.TASK_STATUS_ERROR,
    model.Status.TIMEOUT: common_pb2.TASK_STATUS_TIMEOUT,
    model.Status.CANCELED: common_pb2.TASK_STATUS_CANCELED,
}


def spec_from_pb(tenant: str, msg: tasks_pb2.TaskSpec, *, timeout_s: float,
                 asynchronous: bool = False) -> model.TaskSpec:
    """A TaskSpec from the request (validated by the runner)."""
    opts = msg.options
    return model.TaskSpec(
        tenant=authz.require_tenant(tenant),
        agent=msg.agent,
        input=msg.input,
        idempotency_key=msg.idempotency_key,
        max_tokens=opts.max_tokens if opts.HasField("max_tokens") else None,
        temperature=opts.temperature if opts.HasField("temperature") else None,
        seed=opts.seed if opts.HasField("seed") else None,
        timeout_s=timeout_s,
        asynchronous=asynchronous,
    )


def decision_from_pb(msg: router_pb2.Decision) -> model.Decision:
    """The router's decision; an absent one means local."""
    if not msg.HasField("engine"):
        return model.Decision(route="local", chosen_by="default",
                              reason="no routing decision was given: running locally")
    return model.Decision(route=_ROUTE_FROM_PB.get(msg.engine.route, "local"),
                          chosen_by=msg.engine.chosen_by, reason=msg.engine.reason,
                          provider=msg.provider)


def _ts(value: datetime.datetime | None) -> timestamp_pb2.Timestamp | None:
    if value is None:
        return None
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(value)
    return ts


def engine_to_pb(task: store.Task) -> common_pb2.Engine:
    """The Engine a task ran with."""
    d = task.decision
    return common_pb2.Engine(route=_ROUTE_TO_PB.get(d.route, common_pb2.ROUTE_LOCAL),
                             chosen_by=d.chosen_by, reason=d.reason, model=task.model_name)


def result_to_pb(task: store.Task) -> common_pb2.TaskResult:
    """The canonical result of a task, as it stands."""
    u = task.usage
    result = common_pb2.TaskResult(
        task_id=task.id, agent=task.spec.agent, status=_STATUS_TO_PB[task.status],
        output=task.output, engine=engine_to_pb(task),
        usage=common_pb2.Usage(latency_ms=u.latency_ms, prompt_tokens=u.prompt_tokens,
                               completion_tokens=u.completion_tokens,
                               tokens=u.prompt_tokens + u.completion_tokens,
                               cost_usd=u.cost_usd),
        created_at=_ts(task.created_at), finished_at=_ts(task.finished_at))
    if task.error is not None:
        result.error.CopyFrom(common_pb2.TaskError(code=task.error.code,
                                                   message=task.error.message,
                                                   retriable=task.error.retriable))
    return result


def event_to_pb(task: store.Task, event: store.Event) -> tasks_pb2.TaskEvent:
    """One task event as sent to clients."""
    msg = tasks_pb2.TaskEvent(task_id=task.id, seq=event.seq)
    match event.kind:
        case store.EventKind.STARTED:
            msg.started.engine.CopyFrom(engine_to_pb(task))
        case store.EventKind.TOKEN:
            msg.token.text = event.text
        case store.EventKind.PARTIAL:
            msg.partial.text = event.text
            msg.partial.step = event.step
        case store.EventKind.DONE:
            msg.done.result.CopyFrom(result_to_pb(task))
        case store.EventKind.ERROR:
            msg.error.result.CopyFrom(result_to_pb(task))
    return msg


def agent_to_pb(agent: model.AgentRecord) -> agents_pb2.Agent:
    """An agent as callers see it."""
    return agents_pb2.Agent(
        name=agent.name, description=agent.description, model=agent.model,
        model_task=agent.model_task, privacy=_PRIVACY_TO_PB[agent.privacy],
        knowledge_bases=list(agent.knowledge_bases), ready=agent.ready,
        node_pool=agent.node_pool, max_tokens=agent.max_tokens,
        budget_usd_per_task=agent.budget_usd_per_task, p95_target_ms=agent.p95_target_ms)


_OWNER = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?/[-a-zA-Z0-9]{0,64}$")


def owner(text: str) -> str:
    """A registration's owner: ``"<namespace>/<uid>"`` of an Agent resource, else the
    API's (empty or ``"api"``); InvalidArgument for anything else."""
    if text in ("", model.API_OWNER):
        return model.API_OWNER
    if not _OWNER.match(text):
        raise errors.InvalidArgument(
            f"owner {text[:80]!r} is not '<namespace>/<uid>' of an Agent resource (or 'api')",
            field="owner")
    return text


def routing_targets(agent: agents_pb2.Agent) -> tuple[float | None, int | None]:
    """A registration's routing targets (budget per task in USD, p95 latency in ms): None
    when unset; InvalidArgument below the CRD's minimums."""
    budget = agent.budget_usd_per_task if agent.HasField("budget_usd_per_task") else None
    p95 = agent.p95_target_ms if agent.HasField("p95_target_ms") else None
    if budget is not None and not budget >= 0:  # NaN too
        raise errors.InvalidArgument(
            f"agent.budget_usd_per_task must be at least 0; got {budget}",
            field="agent.budget_usd_per_task")
    if p95 is not None and p95 < 1:
        raise errors.InvalidArgument(f"agent.p95_target_ms must be at least 1; got {p95}",
                                     field="agent.p95_target_ms")
    return budget, p95


def agent_from_pb(msg: agent_pb2.RegisterAgentRequest) -> model.AgentRecord:
    """The agent a registration describes."""
    a = msg.agent
    privacy = msg.privacy or a.privacy
    budget, p95 = routing_targets(a)
    return model.AgentRecord(
        tenant=authz.require_tenant(msg.tenant), name=a.name, model=a.model,
        model_task=a.model_task or "generate", instructions=msg.instructions,
        description=a.description,
        privacy=_PRIVACY_FROM_PB.get(privacy, model.Privacy.LOCAL_ONLY),
        knowledge_bases=tuple(a.knowledge_bases),
        executor_endpoints=tuple(msg.executor_endpoints),
        max_tokens=a.max_tokens or 256, node_pool=a.node_pool, tools=tuple(msg.tools),
        owner=owner(msg.owner),
        budget_usd_per_task=budget, p95_target_ms=p95)
