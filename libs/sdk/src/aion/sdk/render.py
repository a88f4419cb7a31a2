"""How ``aionctl`` shows results and agents to a person (``--json`` uses ``results`` as is)."""

from __future__ import annotations

from collections.abc import Sequence

from aion.api.v1 import agents_pb2, common_pb2
from aion.sdk import results


def summary(result: common_pb2.TaskResult) -> str:
    """One line: status, route, tokens, latency, citations (when any) and the task id."""
    parts = [results.status_name(result.status)]
    route = results.route_name(result.engine.route)
    if route:
        parts.append(route)
    parts.append(f"{result.usage.tokens} tokens")
    parts.append(f"{result.usage.latency_ms} ms")
    if result.citations:
        cited = len(result.citations)
        parts.append(f"{cited} citation{'s' if cited > 1 else ''}")
    if result.task_id:
        parts.append(f"task {result.task_id}")
    return " · ".join(parts)


def failure(result: common_pb2.TaskResult) -> str | None:
    """The error line of a task that did not end OK; None when it is OK or still going."""
    status = results.status_name(result.status)
    if status not in results.FINAL_STATUSES or status == "OK":
        return None
    code = result.error.code or status
    message = result.error.message or f"the task ended {status}"
    return f"error: {code}: {message}"


def describe(result: common_pb2.TaskResult) -> str:
    """A task as aligned ``key  value`` lines (a ``cited`` line per citation), then its
    output."""
    data = results.result_to_dict(result)
    engine, usage, error = data["engine"], data["usage"], data["error"]
    rows = [("task", data["task_id"]), ("agent", data["agent"]), ("status", data["status"])]
    if engine["route"]:
        rows.append(("route", f"{engine['route']} ({engine['chosen_by']}): {engine['reason']}"))
    if engine["model"]:
        rows.append(("model", engine["model"]))
    rows.append(
        (
            "tokens",
            f"{usage['tokens']} (prompt {usage['prompt_tokens']}, "
            f"completion {usage['completion_tokens']})",
        )
    )
    rows.append(("latency", f"{usage['latency_ms']} ms"))
    rows.append(("cost", f"${usage['cost_usd']:.6f}"))
    if error:
        rows.append(("error", f"{error['code']}: {error['message']}"))
    for key in ("created_at", "finished_at"):
        if data[key]:
            rows.append((key.replace("_", " "), data[key]))
    rows.extend(("cited", cite(c)) for c in data["citations"])
    text = _rows(rows)
    return f"{text}\n\n{data['output']}" if data["output"] else text


def cite(citation: dict[str, object]) -> str:
    """A citation (``results.citation_to_dict``) on one line: where the passage is, and
    the document's title when it has one."""
    c = citation
    where = (
        f"{c['knowledge_base']}/{c['document_id']} v{c['version']} chunk {c['chunk_index']}"
        f" [{c['char_start']}:{c['char_end']}]"
    )
    return f"{where} {c['title']!r}" if c["title"] else where


def agents_table(agents: Sequence[agents_pb2.Agent]) -> str:
    """Agents as a table: name, model, privacy, ready."""
    header = ("NAME", "MODEL", "PRIVACY", "READY")
    lines = [header] + [
        (a.name, a.model, results.privacy_name(a.privacy) or "-", "yes" if a.ready else "no")
        for a in agents
    ]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


def describe_agent(agent: agents_pb2.Agent) -> str:
    """One agent as aligned ``key  value`` lines."""
    data = results.agent_to_dict(agent)
    return _rows(
        [
            ("name", data["name"]),
            ("description", data["description"]),
            (
                "model",
                f"{data['model']} ({data['model_task']})" if data["model_task"] else data["model"],
            ),
            ("privacy", data["privacy"] or "-"),
            ("ready", "yes" if data["ready"] else "no"),
            ("node pool", data["node_pool"] or "-"),
            ("max tokens", str(data["max_tokens"])),
            ("knowledge", ", ".join(data["knowledge_bases"]) or "-"),
        ]
    )


def _rows(rows: Sequence[tuple[str, str]]) -> str:
    width = max(len(key) for key, _ in rows)
    return "\n".join(f"{key.ljust(width)}  {value}" for key, value in rows)
