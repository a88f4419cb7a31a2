"""The writes every task state change shares: row mapping, event rows, outbox events.

``store`` (a run's lifecycle) and ``recovery`` (tasks nobody runs any more) both end
tasks, log events and announce state changes; each of those is written once, here.
Every function runs inside the caller's transaction.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import psycopg

from aion.agent import convert, db, events, model, outbox
from aion.core import privacy

Conn = psycopg.AsyncConnection[Any]


def _route(value: str) -> privacy.Route:
    try:
        return privacy.Route(value)
    except ValueError:  # not one this version knows: the nearest, as the loop would
        return privacy.Route.LOCAL


def citations_to_json(citations: Sequence[model.Citation]) -> list[dict[str, Any]]:
    """Citations as the ``citations`` column (jsonb) holds them."""
    return [dataclasses.asdict(c) for c in citations]


def _citations(stored: list[dict[str, Any]] | None) -> tuple[model.Citation, ...]:
    fields = {f.name for f in dataclasses.fields(model.Citation)}
    return tuple(
        model.Citation(**{k: v for k, v in c.items() if k in fields}) for c in stored or ()
    )


def record(r: dict[str, Any]) -> model.TaskRecord:
    """The task a ``tasks`` row holds (its ``lease_owner`` column is the ``worker_id``)."""
    opts = r["options"] or {}
    d = r["decision"] or {}
    return model.TaskRecord(
        id=str(r["id"]),
        spec=model.TaskSpec(
            tenant=r["tenant"],
            agent=r["agent"],
            input=r["input"],
            idempotency_key=r["idempotency_key"] or "",
            max_tokens=opts.get("max_tokens"),
            temperature=opts.get("temperature"),
            seed=opts.get("seed"),
            timeout_s=float(opts.get("timeout_s", 300.0)),
            asynchronous=r["asynchronous"],
            budget_usd=opts.get("budget_usd"),
            sla_ms=opts.get("sla_ms"),
        ),
        decision=model.Decision(
            route=_route(d.get("route", "local")),
            chosen_by=d.get("chosen_by", ""),
            reason=d.get("reason", ""),
            provider=d.get("provider", ""),
        ),
        model_name=r["model"],
        status=model.Status(r["state"]),
        attempts=r["attempts"],
        worker_id=r["lease_owner"],
        deadline=r["deadline"],
        cancel_requested=r["cancel_requested"],
        output=r["output"],
        usage=model.Usage(
            latency_ms=r["latency_ms"],
            prompt_tokens=r["prompt_tokens"],
            completion_tokens=r["completion_tokens"],
            cost_usd=r["cost_usd"],
        ),
        error=(
            model.TaskError(r["error_code"], r["error_message"] or "", r["error_retriable"])
            if r["error_code"]
            else None
        ),
        created_at=r["created_at"],
        finished_at=r["finished_at"],
        seq=r["last_seq"],
        citations=_citations(r["citations"]),
        trace_context=dict(r.get("trace_context") or {}),
    )


async def add_event(
    conn: Conn,
    task: model.TaskRecord,
    seq: int,
    kind: model.EventKind,
    *,
    text: str = "",
    step: int = 0,
) -> None:
    """Log one event of the task's current attempt."""
    await add_events(conn, task, [model.Event(seq=seq, kind=kind, text=text, step=step)])


async def add_events(conn: Conn, task: model.TaskRecord, logged: list[model.Event]) -> None:
    """Log events of the task's current attempt in one statement, and NOTIFY
    ``db.TASK_EVENTS_CHANNEL`` with the task's id (delivered when the transaction
    commits: followers on any replica wake then)."""
    if not logged:
        return
    await conn.execute(
        "WITH added AS (INSERT INTO task_events (task_id, seq, attempt, kind, text, step)"
        " SELECT %(id)s::uuid, e.seq, %(attempt)s, e.kind, e.text, e.step"
        " FROM unnest(%(seq)s::integer[], %(kind)s::text[], %(text)s::text[],"
        " %(step)s::integer[]) AS e(seq, kind, text, step) RETURNING 1)"
        " SELECT pg_notify(%(channel)s, %(id)s::text) FROM (SELECT 1 FROM added LIMIT 1) AS one",
        {
            "id": task.id,
            "attempt": task.attempts,
            "seq": [e.seq for e in logged],
            "kind": [e.kind.value for e in logged],
            "text": [e.text for e in logged],
            "step": [e.step for e in logged],
            "channel": db.TASK_EVENTS_CHANNEL,
        },
    )


def state_event(topics: events.Topics, task: model.TaskRecord) -> tuple[str, events.Envelope]:
    """The task's new state as an event of the task-events topic: (topic, envelope)."""
    env = events.envelope(
        type_=events.TASK_STATE_CHANGED,
        tenant=task.spec.tenant,
        subject=task.id,
        data=convert.state_changed(task),
    )
    return topics.task_events, env


async def state_changed(conn: Conn, topics: events.Topics, task: model.TaskRecord) -> None:
    """Announce the task's new state on the task-events topic (through the outbox)."""
    topic, env = state_event(topics, task)
    await outbox.add(conn, trace=task.trace_context, topic=topic, env=env)


async def queued(conn: Conn, topics: events.Topics, task: model.TaskRecord) -> None:
    """Hand the task to the workers (the work topic, through the outbox)."""
    await outbox.add(
        conn,
        trace=task.trace_context,
        topic=topics.work,
        env=events.envelope(
            type_=events.TASK_QUEUED,
            tenant=task.spec.tenant,
            subject=task.id,
            data=convert.queued(task),
        ),
    )


async def end(
    conn: Conn, topics: events.Topics, task_id: str, status: model.Status, error: model.TaskError
) -> model.TaskRecord | None:
    """End a task nobody runs (queued, or whose worker was lost); None when it had ended."""
    cur = await conn.execute(
        "UPDATE tasks SET state = %s, error_code = %s, error_message = %s,"
        " error_retriable = %s, finished_at = now(), lease_owner = NULL, lease_until = NULL,"
        " last_seq = last_seq + 1,"
        " latency_ms = (extract(epoch FROM now() - created_at) * 1000)::int"
        " WHERE id = %s AND state IN ('QUEUED', 'RUNNING') RETURNING *",
        (status.value, error.code, error.message, error.retriable, task_id),
    )
    row = await cur.fetchone()
    if row is None:
        return None
    task = record(row)
    await add_event(conn, task, row["last_seq"], model.EventKind.ERROR)
    await state_changed(conn, topics, task)
    return task
