"""The canonical result, and an agent, as plain data (what ``aionctl --json`` prints).

The shape lives here alone::

    {"task_id", "agent", "status": "OK"|"ERROR"|"TIMEOUT"|"CANCELED"|"QUEUED"|"RUNNING",
     "output", "engine": {"route": "local"|"api"|"hybrid"|None, "chosen_by", "reason", "model"},
     "usage": {"latency_ms", "prompt_tokens", "completion_tokens", "tokens", "cost_usd"},
     "error": {"code", "message", "retriable"} | None,
     "created_at", "finished_at",          # RFC 3339, or None when unset
     "citations": [{"knowledge_base", "document_id", "version", "chunk_index",
                    "char_start", "char_end", "title", "score"}, ...]}

``citations`` are the knowledge base passages the answer drew on (``TaskResult.citations``
in ``aion/api/v1/common.proto``): each once, in the order the run first used them.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import timestamp_pb2

from aion.api.v1 import agents_pb2, common_pb2, tasks_pb2

FINAL_STATUSES = frozenset({"OK", "ERROR", "TIMEOUT", "CANCELED"})

_ROUTES = {
    common_pb2.ROUTE_LOCAL: "local",
    common_pb2.ROUTE_API: "api",
    common_pb2.ROUTE_HYBRID: "hybrid",
}
_PRIVACY = {
    common_pb2.PRIVACY_LOCAL_ONLY: "local-only",
    common_pb2.PRIVACY_ALLOW_API: "allow-api",
    common_pb2.PRIVACY_HYBRID: "hybrid",
}


def status_name(status: common_pb2.TaskStatus.ValueType) -> str:
    """``"OK"`` for TASK_STATUS_OK, and so on (``"UNSPECIFIED"`` for an unset status)."""
    return common_pb2.TaskStatus.Name(status).removeprefix("TASK_STATUS_")


def route_name(route: common_pb2.Route.ValueType) -> str | None:
    """``"local"``, ``"api"`` or ``"hybrid"``; None for an unset route."""
    return _ROUTES.get(route)


def privacy_name(privacy: common_pb2.Privacy.ValueType) -> str | None:
    """``"local-only"``, ``"allow-api"`` or ``"hybrid"``; None for an unset privacy."""
    return _PRIVACY.get(privacy)


def _time(stamp: timestamp_pb2.Timestamp, *, is_set: bool) -> str | None:
    return stamp.ToJsonString() if is_set else None


def citation_to_dict(citation: common_pb2.Citation) -> dict[str, Any]:
    """A citation of the canonical result as JSON-ready plain data."""
    return {
        "knowledge_base": citation.knowledge_base,
        "document_id": citation.document_id,
        "version": citation.version,
        "chunk_index": citation.chunk_index,
        "char_start": citation.char_start,
        "char_end": citation.char_end,
        "title": citation.title,
        "score": citation.score,
    }


def result_to_dict(result: common_pb2.TaskResult) -> dict[str, Any]:
    """The canonical result as JSON-ready plain data."""
    error = None
    if result.HasField("error"):
        error = {
            "code": result.error.code,
            "message": result.error.message,
            "retriable": result.error.retriable,
        }
    return {
        "task_id": result.task_id,
        "agent": result.agent,
        "status": status_name(result.status),
        "output": result.output,
        "engine": {
            "route": route_name(result.engine.route),
            "chosen_by": result.engine.chosen_by,
            "reason": result.engine.reason,
            "model": result.engine.model,
        },
        "usage": {
            "latency_ms": result.usage.latency_ms,
            "prompt_tokens": result.usage.prompt_tokens,
            "completion_tokens": result.usage.completion_tokens,
            "tokens": result.usage.tokens,
            "cost_usd": result.usage.cost_usd,
        },
        "error": error,
        "created_at": _time(result.created_at, is_set=result.HasField("created_at")),
        "finished_at": _time(result.finished_at, is_set=result.HasField("finished_at")),
        "citations": [citation_to_dict(c) for c in result.citations],
    }


def event_result(event: tasks_pb2.TaskEvent) -> common_pb2.TaskResult | None:
    """The final result a ``done`` or ``error`` event carries; None for other events."""
    kind = event.WhichOneof("event")
    if kind == "done":
        return event.done.result
    if kind == "error":
        return event.error.result
    return None


def agent_to_dict(agent: agents_pb2.Agent) -> dict[str, Any]:
    """An agent as JSON-ready plain data."""
    return {
        "name": agent.name,
        "description": agent.description,
        "model": agent.model,
        "model_task": agent.model_task,
        "privacy": privacy_name(agent.privacy),
        "knowledge_bases": list(agent.knowledge_bases),
        "ready": agent.ready,
        "node_pool": agent.node_pool,
        "max_tokens": agent.max_tokens,
    }
