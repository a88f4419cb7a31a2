"""Tasks in Postgres: their rows, their event logs, their leases, and their outbox events.

Every state change is one transaction that also writes the matching outbox
event. Writes of a run are fenced by its attempt number and owner: once
another worker took the task over (its lease ran out), the old run's writes
match no row and raise ``LeaseLost`` instead of landing. A stream that joins
late replays ``task_events`` and then follows.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import enum
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import psycopg
from psycopg.types import json as pg_json

from aion.agent import db, events, metrics, model, outbox
from aion.api.events.v1 import events_pb2
from aion.core import errors

log = logging.getLogger(__name__)
Conn = psycopg.AsyncConnection[Any]


class EventKind(enum.Enum):
    """What a task event says."""

    STARTED = "started"
    TOKEN = "token"
    PARTIAL = "partial"
    DONE = "done"
    ERROR = "error"


FINAL_KINDS = (EventKind.DONE, EventKind.ERROR)


@dataclasses.dataclass(frozen=True)
class Event:
    """One event of a task, numbered from 1."""

    seq: int
    kind: EventKind
    text: str = ""
    step: int = 0


@dataclasses.dataclass(frozen=True)
class TaskError:
    """Why a task did not end OK."""

    code: str
    message: str
    retriable: bool = False


class LeaseLost(Exception):
    """This worker no longer owns the task: another one took it over, or it ended."""


@dataclasses.dataclass
class Task:
    """A task as stored."""

    id: str
    spec: model.TaskSpec
    decision: model.Decision
    model_name: str
    status: model.Status = model.Status.QUEUED
    attempts: int = 0
    lease_owner: str | None = None
    deadline: datetime.datetime | None = None
    cancel_requested: bool = False
    output: str = ""
    usage: model.Usage = dataclasses.field(default_factory=model.Usage)
    error: TaskError | None = None
    created_at: datetime.datetime | None = None
    finished_at: datetime.datetime | None = None

    @classmethod
    def from_row(cls, r: dict[str, Any]) -> Task:
        """The task a ``tasks`` row holds."""
        opts = r["options"] or {}
        d = r["decision"] or {}
        return cls(
            id=str(r["id"]),
            spec=model.TaskSpec(
                tenant=r["tenant"], agent=r["agent"], input=r["input"],
                idempotency_key=r["idempotency_key"] or "", max_tokens=opts.get("max_tokens"),
                temperature=opts.get("temperature"), seed=opts.get("seed"),
                timeout_s=float(opts.get("timeout_s", 300.0)),
                asynchronous=r["asynchronous"]),
            decision=model.Decision(route=d.get("route", "local"),
                                    chosen_by=d.get("chosen_by", ""),
                                    reason=d.get("reason", ""), provider=d.get("provider", "")),
            model_name=r["model"], status=model.Status(r["state"]), attempts=r["attempts"],
            lease_owner=r["lease_owner"], deadline=r["deadline"],
            cancel_requested=r["cancel_requested"], output=r["output"],
            usage=model.Usage(latency_ms=r["latency_ms"], prompt_tokens=r["prompt_tokens"],
                              completion_tokens=r["completion_tokens"], cost_usd=r["cost_usd"]),
            error=(TaskError(r["error_code"], r["error_message"] or "", r["error_retriable"])
                   if r["error_code"] else None),
            created_at=r["created_at"], finished_at=r["finished_at"])

    @property
    def remaining_s(self) -> float:
        """Seconds until the deadline (negative once past)."""
        assert self.deadline is not None
        return (self.deadline - datetime.datetime.now(datetime.UTC)).total_seconds()


@dataclasses.dataclass(frozen=True)
class StepRecord:
    """One model or tool call of the agent loop."""

    step: int
    kind: str
    name: str = ""
    input: dict[str, Any] = dataclasses.field(default_factory=dict)
    output: str = ""
    error: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    latency_ms: int = 0
    model_ms: int = 0  # of latency_ms, the wait for the model itself (model steps)


ToResult = Callable[[Task], Any]


# A task that holds a running slot of its tenant: running, or reserved for a synchronous run.
_RUNNING = "(state = 'RUNNING' OR (state = 'QUEUED' AND lease_owner IS NOT NULL))"


async def _lock_tenant(conn: Conn, tenant: str, *, wait: bool = True) -> bool:
    """Serialise, until the transaction ends, the decisions that start a tenant's tasks."""
    fn = "pg_advisory_xact_lock" if wait else "pg_try_advisory_xact_lock"
    cur = await conn.execute(f"SELECT {fn}(hashtext(%s)) AS ok", (f"aion.tenant:{tenant}",))
    row = await cur.fetchone()
    return row is None or row["ok"] is not False


async def _running(conn: Conn, tenant: str) -> int:
    cur = await conn.execute(f"SELECT count(*) AS n FROM tasks WHERE tenant = %s AND {_RUNNING}",
                             (tenant,))
    row = await cur.fetchone()
    return int(row["n"]) if row else 0


def _parse_id(task_id: str) -> uuid.UUID:
    try:
        return uuid.UUID(task_id)
    except ValueError:
        raise errors.NotFound(f"task '{task_id}' not found") from None


class TaskStore:
    """Tasks, their events and their leases in Postgres."""

    def __init__(self, *, pool: db.Pool, topics: events.Topics, lease_s: float,
                 to_result: ToResult, on_commit: Callable[[], None] = lambda: None) -> None:
        self._pool = pool
        self._topics = topics
        self._lease = datetime.timedelta(seconds=lease_s)
        self._to_result = to_result
        self._on_commit = on_commit
        self._signals: dict[str, asyncio.Event] = {}
        self._followers: dict[str, int] = {}  # task id -> streams following it here

    # -- events -------------------------------------------------------------------
    async def _state_event(self, conn: Conn, task: Task) -> None:
        # The task-events topic is shared by every tenant, so an event carries the
        # tenant (on the envelope), ids, state, engine and usage, never the output text:
        # whoever needs the output asks the agent service for it (Get, as the tenant),
        # which checks the tenant. One shared topic keeps the consumers simple (one
        # group reads every task) and Kafka ACLs need no per-tenant topics.
        data = events_pb2.TaskStateChanged(task_id=task.id, agent=task.spec.agent)
        result = self._to_result(task)
        data.status = result.status
        if task.status.final:
            data.result.CopyFrom(result)
            data.result.ClearField("output")
        await outbox.add(conn, topic=self._topics.task_events, env=events.envelope(
            type_=events.TASK_STATE_CHANGED, tenant=task.spec.tenant, subject=task.id,
            data=data))

    async def _queue_event(self, conn: Conn, task: Task) -> None:
        await outbox.add(conn, topic=self._topics.work, env=events.envelope(
            type_=events.TASK_QUEUED, tenant=task.spec.tenant, subject=task.id,
            data=events_pb2.TaskQueued(task_id=task.id, agent=task.spec.agent,
                                       attempt=task.attempts)))

    async def _event_row(self, conn: Conn, task: Task, seq: int, kind: EventKind, *,
                         text: str = "", step: int = 0) -> None:
        await conn.execute(
            "INSERT INTO task_events (task_id, seq, attempt, kind, text, step) "
            "VALUES (%s, %s, %s, %s, %s, %s)", (task.id, seq, task.attempts, kind.value, text,
                                                step))

    def _changed(self, task_id: str) -> None:
        signal = self._signals.pop(task_id, None)
        if signal is not None:
            signal.set()

    # -- creating and claiming ----------------------------------------------------
    async def create(self, spec: model.TaskSpec, *, decision: model.Decision, model_name: str,
                     owner: str | None, max_attempts: int,
                     tenant_cap: int | None = None) -> tuple[Task, bool]:
        """A new QUEUED task (reserved by ``owner`` when given, else published to the
        work topic), or the existing one for the same idempotency key (then False).
        With ``tenant_cap``, a reserved task is refused (ResourceExhausted, nothing
        written) when the tenant already runs that many tasks."""
        options = {"max_tokens": spec.max_tokens, "temperature": spec.temperature,
                   "seed": spec.seed, "timeout_s": spec.timeout_s}
        params = {
            "id": uuid.uuid4(), "tenant": spec.tenant, "agent": spec.agent, "input": spec.input,
            "key": spec.idempotency_key or None,
            "options": pg_json.Jsonb(options),
            "decision": pg_json.Jsonb(dataclasses.asdict(decision)),
            "model": model_name, "asynchronous": spec.asynchronous,
            "max_attempts": max_attempts, "owner": owner, "lease": self._lease,
            "timeout": datetime.timedelta(seconds=spec.timeout_s)}
        async with self._pool.connection() as conn, conn.transaction():
            cur = await conn.execute(
                "INSERT INTO tasks (id, tenant, agent, input, idempotency_key, options, decision,"
                " model, asynchronous, max_attempts, lease_owner, lease_until, deadline) VALUES"
                " (%(id)s, %(tenant)s, %(agent)s, %(input)s, %(key)s, %(options)s, %(decision)s,"
                " %(model)s, %(asynchronous)s, %(max_attempts)s, %(owner)s::text,"
                " CASE WHEN %(owner)s::text IS NULL THEN NULL ELSE now() + %(lease)s END,"
                " now() + %(timeout)s)"
                " ON CONFLICT (tenant, agent, idempotency_key)"
                " WHERE idempotency_key IS NOT NULL DO NOTHING RETURNING *", params)
            row = await cur.fetchone()
            if row is None:
                cur = await conn.execute(
                    "SELECT * FROM tasks WHERE tenant = %s AND agent = %s"
                    " AND idempotency_key = %s", (spec.tenant, spec.agent, spec.idempotency_key))
                existing = await cur.fetchone()
                assert existing is not None
                if existing["input"] != spec.input:
                    raise errors.AlreadyExists(
                        f"idempotency key '{spec.idempotency_key}' was used for another input; "
                        "use a new key for a new task")
                return Task.from_row(existing), False
            if owner is not None and tenant_cap is not None:
                await _lock_tenant(conn, spec.tenant)
                running = await _running(conn, spec.tenant)  # this task included
                if running > tenant_cap:
                    raise errors.ResourceExhausted(
                        f"tenant '{spec.tenant}' already runs {running - 1} tasks, its limit; "
                        "retry when one ends, or submit asynchronously to queue",
                        retry_after_s=1.0)
            task = Task.from_row(row)
            await self._state_event(conn, task)
            if owner is None:
                await self._queue_event(conn, task)
        self._on_commit()
        return task, True

    async def mark_ready(self, task_id: str, queue: str, *, conn: Conn) -> bool:
        """Put a queued task in ``queue``'s ready pool (within ``conn``'s transaction), where
        ``claim_next`` takes it; False when it is not waiting there to be run."""
        cur = await conn.execute(
            "UPDATE tasks SET ready_on = %s WHERE id = %s AND state = 'QUEUED'"
            " AND lease_owner IS NULL", (queue, task_id))
        return cur.rowcount > 0

    async def claim_next(self, queue: str, *, owner: str, tenant_cap: int) -> Task | None:
        """Claim the next ready task of ``queue`` for ``owner``, fairly between tenants: the
        tenant running the fewest tasks first (then the one waiting longest), never one
        already running ``tenant_cap`` tasks. None when there is nothing to take."""
        async with self._pool.connection() as conn, conn.transaction():
            cur = await conn.execute(
                "SELECT q.tenant FROM (SELECT tenant, min(created_at) AS oldest FROM tasks"
                "  WHERE state = 'QUEUED' AND ready_on = %(queue)s AND lease_owner IS NULL"
                "  GROUP BY tenant) q"
                " LEFT JOIN (SELECT tenant, count(*) AS n FROM tasks WHERE " + _RUNNING +
                "  GROUP BY tenant) r USING (tenant)"
                " WHERE coalesce(r.n, 0) < %(cap)s"
                " ORDER BY coalesce(r.n, 0), q.oldest LIMIT 16", {"queue": queue,
                                                                  "cap": tenant_cap})
            tenants = [r["tenant"] for r in await cur.fetchall()]
            for tenant in tenants:
                # Another replica choosing for this tenant now: leave it the tenant.
                if not await _lock_tenant(conn, tenant, wait=False):
                    continue
                if await _running(conn, tenant) >= tenant_cap:
                    continue
                cur = await conn.execute(
                    "SELECT id FROM tasks WHERE state = 'QUEUED' AND ready_on = %s"
                    " AND tenant = %s AND lease_owner IS NULL ORDER BY created_at LIMIT 8"
                    " FOR UPDATE SKIP LOCKED", (queue, tenant))
                for r in await cur.fetchall():
                    task = await self._claim(conn, str(r["id"]), owner)
                    if task is not None:
                        break
                else:
                    continue
                break
            else:
                task = None
        if task is not None:
            self.committed(task.id)
        else:
            self._on_commit()  # queued tasks found late or canceled were ended
        return task

    async def claim(self, task_id: str, *, owner: str, conn: Conn | None = None) -> Task | None:
        """QUEUED -> RUNNING for ``owner``; None when the task is not there to take
        (another worker has it, it ended, or it was reserved by someone else). A
        queued task past its deadline or asked to cancel is ended instead. With
        ``conn``, runs in that connection's transaction (the caller commits)."""
        if conn is not None:
            return await self._claim(conn, task_id, owner)
        async with self._pool.connection() as own, own.transaction():
            claimed = await self._claim(own, task_id, owner)
        self.committed(task_id)
        return claimed

    def committed(self, task_id: str) -> None:
        """Tell this process's publisher and followers that a change of the task committed."""
        self._on_commit()
        self._changed(task_id)

    async def _claim(self, conn: Conn, task_id: str, owner: str) -> Task | None:
        cur = await conn.execute(
            "UPDATE tasks SET state = 'RUNNING', attempts = attempts + 1,"
            " lease_owner = %(owner)s, lease_until = now() + %(lease)s,"
            " started_at = coalesce(started_at, now()), output = '',"
            " last_seq = last_seq + 1"
            " WHERE id = %(id)s AND state = 'QUEUED'"
            " AND (lease_owner IS NULL OR lease_owner = %(owner)s)"
            " AND NOT cancel_requested AND deadline > now() RETURNING *",
            {"id": task_id, "owner": owner, "lease": self._lease})
        row = await cur.fetchone()
        if row is None:
            await self._end_unclaimable(conn, task_id)
            return None
        task = Task.from_row(row)
        await self._event_row(conn, task, row["last_seq"], EventKind.STARTED)
        await self._state_event(conn, task)
        return task

    async def _end_unclaimable(self, conn: Conn, task_id: str) -> None:
        cur = await conn.execute(
            "SELECT state, cancel_requested, deadline < now() AS late FROM tasks"
            " WHERE id = %s FOR UPDATE", (task_id,))
        row = await cur.fetchone()
        if row is None or row["state"] != "QUEUED":
            return
        if row["cancel_requested"]:
            await self._end(conn, task_id, model.Status.CANCELED,
                            TaskError("CANCELLED", "the task was canceled before it ran"))
        elif row["late"]:
            await self._end(conn, task_id, model.Status.TIMEOUT, TaskError(
                "DEADLINE_EXCEEDED", "the task waited in the queue past its deadline",
                retriable=True))

    async def _end(self, conn: Conn, task_id: str, status: model.Status,
                   error: TaskError) -> Task | None:
        """End a task nobody runs (queued, or whose worker was lost), in ``conn``'s transaction."""
        cur = await conn.execute(
            "UPDATE tasks SET state = %s, error_code = %s, error_message = %s,"
            " error_retriable = %s, finished_at = now(), lease_owner = NULL, lease_until = NULL,"
            " last_seq = last_seq + 1,"
            " latency_ms = (extract(epoch FROM now() - created_at) * 1000)::int"
            " WHERE id = %s AND state IN ('QUEUED', 'RUNNING') RETURNING *",
            (status.value, error.code, error.message, error.retriable, task_id))
        row = await cur.fetchone()
        if row is None:
            return None
        task = Task.from_row(row)
        await self._event_row(conn, task, row["last_seq"], EventKind.ERROR)
        await self._state_event(conn, task)
        return task

    # -- a run's writes, fenced by attempt and owner --------------------------------
    async def append(self, task: Task, kind: EventKind, *, text: str = "",
                     step: int = 0) -> Event:
        """Add a token or partial event of the current run."""
        async with self._pool.connection() as conn, conn.transaction():
            cur = await conn.execute(
                "UPDATE tasks SET last_seq = last_seq + 1"
                + (", output = output || %s" if kind is EventKind.TOKEN else ", output = %s")
                + " WHERE id = %s AND attempts = %s AND lease_owner = %s AND state = 'RUNNING'"
                " RETURNING last_seq", (text, task.id, task.attempts, task.lease_owner))
            row = await cur.fetchone()
            if row is None:
                raise LeaseLost(task.id)
            await self._event_row(conn, task, row["last_seq"], kind, text=text, step=step)
        self._changed(task.id)
        return Event(seq=row["last_seq"], kind=kind, text=text, step=step)

    async def record_step(self, task: Task, rec: StepRecord) -> None:
        """Store one step of the loop and add its tokens and cost to the task's usage."""
        async with self._pool.connection() as conn, conn.transaction():
            cur = await conn.execute(
                "UPDATE tasks SET prompt_tokens = prompt_tokens + %s,"
                " completion_tokens = completion_tokens + %s, cost_usd = cost_usd + %s"
                " WHERE id = %s AND attempts = %s AND lease_owner = %s AND state = 'RUNNING'"
                " RETURNING id", (rec.prompt_tokens, rec.completion_tokens, rec.cost_usd,
                                  task.id, task.attempts, task.lease_owner))
            if await cur.fetchone() is None:
                raise LeaseLost(task.id)
            await conn.execute(
                "INSERT INTO task_steps (task_id, attempt, step, kind, name, worker, input,"
                " output, error, prompt_tokens, completion_tokens, cost_usd, latency_ms, model_ms)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                (task.id, task.attempts, rec.step, rec.kind, rec.name, task.lease_owner,
                 pg_json.Jsonb(rec.input), rec.output, rec.error, rec.prompt_tokens,
                 rec.completion_tokens, rec.cost_usd, rec.latency_ms, rec.model_ms))
        task.usage.add(prompt_tokens=rec.prompt_tokens, completion_tokens=rec.completion_tokens,
                       cost_usd=rec.cost_usd)

    async def finish(self, task: Task, status: model.Status, *, output: str,
                     error: TaskError | None = None, latency_ms: int = 0) -> Task:
        """End the current run with its final status and emit done or error; once only."""
        async with self._pool.connection() as conn, conn.transaction():
            cur = await conn.execute(
                "UPDATE tasks SET state = %s, output = %s, error_code = %s, error_message = %s,"
                " error_retriable = %s, latency_ms = %s, finished_at = now(),"
                " lease_owner = NULL, lease_until = NULL, last_seq = last_seq + 1"
                " WHERE id = %s AND attempts = %s AND lease_owner = %s AND state = 'RUNNING'"
                " RETURNING *",
                (status.value, output, error.code if error else None,
                 error.message if error else None, error.retriable if error else False,
                 latency_ms, task.id, task.attempts, task.lease_owner))
            row = await cur.fetchone()
            if row is None:
                raise LeaseLost(task.id)
            ended = Task.from_row(row)
            kind = EventKind.DONE if status is model.Status.OK else EventKind.ERROR
            await self._event_row(conn, ended, row["last_seq"], kind)
            await self._state_event(conn, ended)
        self._on_commit()
        self._changed(task.id)
        return ended

    async def release(self, task: Task) -> bool:
        """Give a running task back to the queue (this worker stops); False if not ours."""
        async with self._pool.connection() as conn, conn.transaction():
            cur = await conn.execute(
                "UPDATE tasks SET state = 'QUEUED', lease_owner = NULL, lease_until = NULL"
                " WHERE id = %s AND attempts = %s AND lease_owner = %s AND state = 'RUNNING'"
                " RETURNING *", (task.id, task.attempts, task.lease_owner))
            row = await cur.fetchone()
            if row is None:
                return False
            queued = Task.from_row(row)
            await self._state_event(conn, queued)
            await self._queue_event(conn, queued)
        self._on_commit()
        return True

    async def heartbeat(self, owner: str, task_ids: list[str]) -> dict[str, bool]:
        """Extend ``owner``'s leases; returns each task still owned -> cancel requested."""
        async with self._pool.connection() as conn, conn.transaction():
            cur = await conn.execute(
                "UPDATE tasks SET lease_until = now() + %s WHERE lease_owner = %s"
                " AND state = 'RUNNING' AND id = ANY(%s::uuid[]) RETURNING id, cancel_requested",
                (self._lease, owner, task_ids))
            return {str(r["id"]): r["cancel_requested"] for r in await cur.fetchall()}

    # -- cancel and recovery --------------------------------------------------------
    async def request_cancel(self, tenant: str, task_id: str) -> Task:
        """End a queued task as CANCELED, or flag a running one for its worker to stop."""
        task = await self.get(tenant, task_id)
        if task.status.final:
            return task
        async with self._pool.connection() as conn, conn.transaction():
            await conn.execute("UPDATE tasks SET cancel_requested = true WHERE id = %s"
                               " AND state IN ('QUEUED', 'RUNNING')", (task.id,))
            ended = await self._end(conn, task.id, model.Status.CANCELED, TaskError(
                "CANCELLED", "the task was canceled before it ran")) if (
                    task.status is model.Status.QUEUED) else None
        self._on_commit()
        self._changed(task.id)
        return ended or await self.get(tenant, task_id)

    async def reap(self, *, limit: int = 100) -> int:
        """Recover tasks whose lease ran out: queue them again for another worker, or end
        them (TIMEOUT past the deadline, CANCELED when asked, ERROR after too many
        attempts). Also times out queued tasks past their deadline. Returns how many."""
        async with self._pool.connection() as conn, conn.transaction():
            cur = await conn.execute(
                "SELECT *, deadline < now() AS late FROM tasks"
                " WHERE state IN ('QUEUED', 'RUNNING')"
                " AND (lease_until < now() OR (state = 'QUEUED' AND deadline < now()))"
                " ORDER BY lease_until NULLS FIRST LIMIT %s FOR UPDATE SKIP LOCKED", (limit,))
            rows = await cur.fetchall()
            reclaimed: list[str] = []
            for r in rows:
                task = Task.from_row(r)
                lost = task.status is model.Status.RUNNING
                outcome = "requeued"
                if r["late"]:
                    outcome = "timeout"
                    await self._end(conn, task.id, model.Status.TIMEOUT, TaskError(
                        "DEADLINE_EXCEEDED",
                        "the task's worker was lost and its deadline has passed" if lost
                        else "the task waited past its deadline", retriable=True))
                elif task.cancel_requested:
                    outcome = "canceled"
                    await self._end(conn, task.id, model.Status.CANCELED,
                                    TaskError("CANCELLED", "the task was canceled"))
                elif task.attempts >= r["max_attempts"]:
                    outcome = "abandoned"
                    await self._end(conn, task.id, model.Status.ERROR, TaskError(
                        "ABORTED", f"the worker running the task was lost {task.attempts} "
                        "times; it was not run again", retriable=True))
                else:
                    log.warning("task %s: lease of %s expired; queued again", task.id,
                                task.lease_owner)
                    await conn.execute(
                        "UPDATE tasks SET state = 'QUEUED', lease_owner = NULL,"
                        " lease_until = NULL WHERE id = %s", (task.id,))
                    task.status = model.Status.QUEUED
                    await self._state_event(conn, task)
                    await self._queue_event(conn, task)
                if r["lease_until"] is not None:  # a worker held it and was lost
                    reclaimed.append(outcome)
        if rows:
            self._on_commit()
        for outcome in reclaimed:  # counted once the transaction committed
            metrics.LEASE_RECLAIMS.labels(outcome).inc()
        return len(rows)

    # -- reading ------------------------------------------------------------------
    async def get(self, tenant: str, task_id: str) -> Task:
        """The tenant's task; another tenant's task is reported as not found."""
        async with self._pool.connection() as conn:
            cur = await conn.execute("SELECT * FROM tasks WHERE id = %s AND tenant = %s",
                                     (_parse_id(task_id), tenant))
            row = await cur.fetchone()
        if row is None:
            raise errors.NotFound(f"task '{task_id}' not found")
        return Task.from_row(row)

    async def events_after(self, task_id: str, after: int) -> list[Event]:
        """The task's stored events after ``after``, in order."""
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                "SELECT seq, kind, text, step FROM task_events WHERE task_id = %s AND seq > %s"
                " ORDER BY seq", (task_id, after))
            rows = await cur.fetchall()
        return [Event(seq=r["seq"], kind=EventKind(r["kind"]), text=r["text"], step=r["step"])
                for r in rows]

    async def follow(self, task: Task, *, after: int = 0,
                     poll_s: float = 0.25) -> AsyncIterator[Event]:
        """Replay the stored events, then follow new ones until the final event. Events
        written by this process wake the follower at once; others within ``poll_s``."""
        sent = after
        self._followers[task.id] = self._followers.get(task.id, 0) + 1
        try:
            while True:
                signal = self._signals.setdefault(task.id, asyncio.Event())
                batch = await self.events_after(task.id, sent)
                for event in batch:
                    sent = event.seq
                    yield event
                    if event.kind in FINAL_KINDS:
                        return
                if not batch:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(signal.wait(), poll_s)
        finally:
            left = self._followers.pop(task.id) - 1
            if left:
                self._followers[task.id] = left
            else:  # nobody here follows it now (its writes may come from another replica)
                self._signals.pop(task.id, None)

    # -- retention ----------------------------------------------------------------
    async def purge(self, *, tasks_older_s: float, processed_older_s: float,
                    batch: int = 1000) -> tuple[int, int] | None:
        """Delete finished tasks that ended over ``tasks_older_s`` ago (their events and
        steps go with them) and processed-event records over ``processed_older_s`` old, in
        batches; returns how many of each. One replica at a time: None when another one
        is purging now."""
        removed = [0, 0]
        statements = (
            "DELETE FROM tasks WHERE id IN (SELECT id FROM tasks WHERE finished_at < %s"
            " AND state IN ('OK', 'ERROR', 'TIMEOUT', 'CANCELED') LIMIT %s)",
            "DELETE FROM processed_events WHERE ctid IN (SELECT ctid FROM processed_events"
            " WHERE processed_at < %s LIMIT %s)")
        now = datetime.datetime.now(datetime.UTC)
        cutoffs = (now - datetime.timedelta(seconds=tasks_older_s),
                   now - datetime.timedelta(seconds=processed_older_s))
        for i, (sql, cutoff) in enumerate(zip(statements, cutoffs, strict=True)):
            while True:
                async with self._pool.connection() as conn, conn.transaction():
                    cur = await conn.execute(
                        "SELECT pg_try_advisory_xact_lock(hashtext('aion.agent.retention'))"
                        " AS ok")
                    row = await cur.fetchone()
                    if row is None or not row["ok"]:
                        return None
                    cur = await conn.execute(sql, (cutoff, batch))
                    removed[i] += cur.rowcount
                if cur.rowcount < batch:
                    break
        return removed[0], removed[1]
