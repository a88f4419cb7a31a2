"""The canonical result as plain data, for the HTTP surfaces' ``aion`` objects.

The same shape as ``aion.sdk.results.result_to_dict`` (what ``aionctl --json``
prints); services do not import the SDK, so a test holds the two equal.
"""

from __future__ import annotations

from typing import Any

from aion.api.v1 import common_pb2

_ROUTES = {
    common_pb2.ROUTE_LOCAL: "local",
    common_pb2.ROUTE_API: "api",
    common_pb2.ROUTE_HYBRID: "hybrid",
}


def status_name(status: common_pb2.TaskStatus.ValueType) -> str:
    """``"OK"`` for TASK_STATUS_OK, and so on."""
    return common_pb2.TaskStatus.Name(status).removeprefix("TASK_STATUS_")


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
            "route": _ROUTES.get(result.engine.route),
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
        "created_at": (result.created_at.ToJsonString() if result.HasField("created_at") else None),
        "finished_at": (
            result.finished_at.ToJsonString() if result.HasField("finished_at") else None
        ),
        "citations": [citation_to_dict(c) for c in result.citations],
    }
