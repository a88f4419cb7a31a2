"""Task state in Postgres: create, claim, a run's writes, end, release, read.

Every state change is one transaction that also writes the matching outbox
event (``rows``). Writes of a run are fenced by its attempt number and its
``worker_id``: once another worker took the task over (its lease ran out), the
old run's writes match no row and raise ``model.LeaseLost`` instead of landing.
What happens to tasks whose worker was lost is ``recovery``'s; streams that
follow a task are ``follow``'s (``TaskStore.follow``).
"""

from __future__ import annotations

import dataclasses
import datetime
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from psycopg.types import json as pg_json

from aion.agent import db, events, follow, metrics, model, outbox, recovery, rows
from aion.core import errors

Conn = rows.Conn
Followers = follow.Followers


# A task that holds a running slot of its tenant (a synchronous one is recorded RUNNING).
_RUNNING = "state = 'RUNNING'"
_UNCAPPED = 2**31 - 1

# A task created claimed (``TaskStore._create_running``): unless the tenant already runs
# ``cap`` tasks (counted after its lock), or an earlier task has its idempotency key, the
# task is inserted RUNNING (attempt 1, the lease taken, ``started`` its first event), and
# its QUEUED and RUNNING states go to the outbox. Returns the tenant's count before it and
# the task's row (all NULL when nothing was written).
_CREATE_RUNNING = (
    "WITH running AS (SELECT count(*) AS n FROM tasks WHERE tenant = %(tenant)s AND "
    + _RUNNING
    + "), added AS (INSERT INTO tasks (id, tenant, agent, input, idempotency_key, options,"
    " decision, model, asynchronous, max_attempts, lease_owner, lease_until, deadline,"
    " trace_context, state, attempts, started_at, last_seq)"
    " SELECT %(id)s::uuid, %(tenant)s::text, %(agent)s::text, %(input)s::text, %(key)s::text,"
    " %(options)s::jsonb, %(decision)s::jsonb, %(model)s::text, %(asynchronous)s::boolean,"
    " %(max_attempts)s::integer, %(worker_id)s::text, now() + %(lease)s,"
    " now() + %(timeout)s, %(trace)s::jsonb, 'RUNNING', 1, now(), 1 FROM running"
    " WHERE running.n < %(cap)s"
    " ON CONFLICT (tenant, agent, idempotency_key)"
    " WHERE idempotency_key IS NOT NULL DO NOTHING RETURNING *),"
    " started AS (INSERT INTO task_events (task_id, seq, attempt, kind, text, step)"
    " SELECT id, 1, 1, 'started', '', 0 FROM added),"
    " announced AS (" + outbox.INSERT_COLUMNS + " WHERE EXISTS (SELECT FROM added) ORDER BY o.n)"
    " SELECT added.*, running.n AS running_before FROM running LEFT JOIN added ON true"
)


_LOCK_TENANT = "SELECT pg_advisory_xact_lock(hashtext(%s))"


def _tenant_key(tenant: str) -> str:
    return f"aion.tenant:{tenant}"


async def _try_lock_tenant(conn: Conn, tenant: str) -> bool:
    """Serialise, until the transaction ends, the decisions that start a tenant's tasks
    (``_LOCK_TENANT`` waits for the lock; this gives up at once, False)."""
    cur = await conn.execute(
        "SELECT pg_try_advisory_xact_lock(hashtext(%s)) AS ok", (_tenant_key(tenant),)
    )
    row = await cur.fetchone()
    return row is None or row["ok"] is not False


async def _running(conn: Conn, tenant: str) -> int:
    cur = await conn.execute(
        f"SELECT count(*) AS n FROM tasks WHERE tenant = %s AND {_RUNNING}", (tenant,)
    )
    row = await cur.fetchone()
    return int(row["n"]) if row else 0


def _usage(steps: Sequence[model.StepRecord]) -> dict[str, float]:
    """The steps' usage, as the parameters that add it to their task's row."""
    return {
        "prompt": sum(s.prompt_tokens for s in steps),
        "completion": sum(s.completion_tokens for s in steps),
        "cost": sum(s.cost_usd for s in steps),
    }


def _used(task: model.TaskRecord, steps: Sequence[model.StepRecord]) -> None:
    """Count the stored steps' usage in the run's record too."""
    for rec in steps:
        task.usage.add(
            prompt_tokens=rec.prompt_tokens,
            completion_tokens=rec.completion_tokens,
            cost_usd=rec.cost_usd,
        )


def _run_write(set_columns: str, *, ends: bool) -> str:
    """A run's write (``TaskStore.write``, ``TaskStore.finish``) as one statement, so that
    it costs one round trip: the task's row updated (``set_columns``), fenced by the
    run's attempt and worker; only when it was, the run's events (and the final one,
    ``%(final)s``, numbered ``last_seq``), its steps and (``ends``) the outbox row of its
    new state are added. Returns the updated row; none when the run no longer holds the
    task."""
    return (
        "WITH t AS (UPDATE tasks SET " + set_columns + " WHERE id = %(id)s AND"
        " attempts = %(attempt)s AND lease_owner = %(worker)s AND state = 'RUNNING'"
        " RETURNING *),"
        " logged AS (INSERT INTO task_events (task_id, seq, attempt, kind, text, step)"
        " SELECT t.id, e.seq, t.attempts, e.kind, e.text, e.step FROM t, unnest("
        "%(ev_seq)s::integer[], %(ev_kind)s::text[], %(ev_text)s::text[],"
        " %(ev_step)s::integer[]) AS e(seq, kind, text, step)"
        " UNION ALL SELECT t.id, t.last_seq, t.attempts, %(final)s::text, '', 0 FROM t"
        " WHERE %(final)s::text IS NOT NULL RETURNING 1),"
        " stepped AS (INSERT INTO task_steps (task_id, attempt, step, kind, name, worker,"
        " input, output, error, prompt_tokens, completion_tokens, cost_usd, latency_ms,"
        " model_ms) SELECT t.id, t.attempts, s.step, s.kind, s.name, %(worker)s::text,"
        " s.input, s.output, s.error, s.prompt_tokens, s.completion_tokens, s.cost_usd,"
        " s.latency_ms, s.model_ms FROM t, unnest(%(st_step)s::integer[],"
        " %(st_kind)s::text[], %(st_name)s::text[], %(st_input)s::jsonb[],"
        " %(st_output)s::text[], %(st_error)s::text[], %(st_prompt)s::integer[],"
        " %(st_completion)s::integer[], %(st_cost)s::float8[], %(st_latency)s::integer[],"
        " %(st_model)s::integer[]) AS s(step, kind, name, input, output, error,"
        " prompt_tokens, completion_tokens, cost_usd, latency_ms, model_ms))"
        + (
            ", announced AS (" + outbox.INSERT_COLUMNS + " WHERE EXISTS (SELECT FROM t)"
            " ORDER BY o.n)"
            if ends
            else ""
        )
        # Followers are notified after the commit (``db.Notifier``), not by it.
        + " SELECT t.* FROM t"
        # A write in the run's course commits without waiting for its WAL flush: the
        # end's commit (synchronous) flushes it, and a run whose write a crash of
        # Postgres lost is recovered from what was flushed, as a run that died is.
        + ("" if ends else " WHERE set_config('synchronous_commit', 'off', true) IS NOT NULL")
    )


# The task's usage grows by its stored steps'.
_ADD_USAGE = (
    "prompt_tokens = prompt_tokens + %(prompt)s,"
    " completion_tokens = completion_tokens + %(completion)s, cost_usd = cost_usd + %(cost)s"
)
_WRITE = _run_write(
    "last_seq = greatest(last_seq, %(seq)s), output = coalesce(%(output)s, output), " + _ADD_USAGE,
    ends=False,
)
_FINISH = _run_write(
    "state = %(state)s, output = %(output)s, error_code = %(code)s,"
    " error_message = %(message)s, error_retriable = %(retriable)s,"
    " latency_ms = %(latency)s, finished_at = %(finished_at)s, citations = %(citations)s,"
    " lease_owner = NULL, lease_until = NULL, last_seq = greatest(last_seq, %(seq)s) + 1, "
    + _ADD_USAGE,
    ends=True,
)


def _logged(
    task: model.TaskRecord,
    logged: Sequence[model.Event],
    steps: Sequence[model.StepRecord],
    *,
    final: model.EventKind | None = None,
) -> dict[str, Any]:
    """The parameters of ``_run_write`` but its SET columns': the run's fence, events,
    steps and usage."""
    return {
        "id": task.id,
        "attempt": task.attempts,
        "worker": task.worker_id,
        "seq": logged[-1].seq if logged else 0,
        "final": final.value if final is not None else None,
        "ev_seq": [e.seq for e in logged],
        "ev_kind": [e.kind.value for e in logged],
        "ev_text": [e.text for e in logged],
        "ev_step": [e.step for e in logged],
        "st_step": [r.step for r in steps],
        "st_kind": [r.kind for r in steps],
        "st_name": [r.name for r in steps],
        "st_input": [pg_json.Jsonb(r.input) for r in steps],
        "st_output": [r.output for r in steps],
        "st_error": [r.error for r in steps],
        "st_prompt": [r.prompt_tokens for r in steps],
        "st_completion": [r.completion_tokens for r in steps],
        "st_cost": [r.cost_usd for r in steps],
        "st_latency": [r.latency_ms for r in steps],
        "st_model": [r.model_ms for r in steps],
        **_usage(steps),
    }


def _parse_id(task_id: str) -> uuid.UUID:
    try:
        return uuid.UUID(task_id)
    except ValueError:
        raise errors.NotFound(f"task '{task_id}' not found") from None


class TaskStore:
    """Tasks, their events and their leases in Postgres."""

    def __init__(
        self,
        *,
        pool: db.Pool,
        topics: events.Topics,
        lease_s: float,
        on_commit: Callable[[], None] = lambda: None,
    ) -> None:
        self._pool = pool
        self._topics = topics
        self._lease = datetime.timedelta(seconds=lease_s)
        self._on_commit = on_commit
        self._followers = follow.Followers(self.events_after)
        self._runs: dict[str, model.TaskRecord] = {}  # task id -> its run's record here
        # This replica's notification connection: stored events wake followers here;
        # others (the agent registry's cache) hear their channels on it too.
        self.listener = db.Listener()
        # What a run stores wakes the followers on other replicas after it commits.
        self._notifier = db.Notifier(pool, db.TASK_EVENTS_CHANNEL)
        self.listener.on(
            db.TASK_EVENTS_CHANNEL,
            self._followers.changed,
            on_connect=self._followers.changed_all,
        )

    def _changed(self, task_id: str) -> None:
        self._followers.changed(task_id)

    # -- creating and claiming ----------------------------------------------------
    def new_task(
        self,
        spec: model.TaskSpec,
        *,
        decision: model.Decision,
        model_name: str,
        worker_id: str | None = None,
    ) -> model.TaskRecord:
        """A new task as ``create`` will store it: QUEUED, or with ``worker_id`` claimed by
        that worker as it is created (RUNNING, attempt 1, its ``started`` event first),
        its deadline counted from now; its trace is the current one."""
        task = model.TaskRecord(
            id=str(uuid.uuid4()),
            spec=spec,
            decision=decision,
            model_name=model_name,
            trace_context=events.trace_headers(),
        )
        if worker_id is None:
            return task
        return dataclasses.replace(
            task,
            status=model.Status.RUNNING,
            attempts=1,
            worker_id=worker_id,
            seq=1,
            deadline=datetime.datetime.now(datetime.UTC)
            + datetime.timedelta(seconds=spec.timeout_s),
        )

    async def create(
        self, task: model.TaskRecord, *, max_attempts: int, tenant_cap: int | None = None
    ) -> tuple[model.TaskRecord, bool]:
        """Store ``task`` (``new_task``'s), or find the existing one for the same
        idempotency key (then False). A claimed task is stored RUNNING with its STARTED
        event; else it is QUEUED and published to the work topic. With ``tenant_cap``, a
        claimed task is refused (ResourceExhausted, nothing written) when the tenant
        already runs that many tasks."""
        spec = task.spec
        options = {
            "max_tokens": spec.max_tokens,
            "temperature": spec.temperature,
            "seed": spec.seed,
            "timeout_s": spec.timeout_s,
            "budget_usd": spec.budget_usd,
            "sla_ms": spec.sla_ms,
        }
        params = {
            "id": uuid.UUID(task.id),
            "tenant": spec.tenant,
            "agent": spec.agent,
            "input": spec.input,
            "key": spec.idempotency_key or None,
            "options": pg_json.Jsonb(options),
            "decision": pg_json.Jsonb(dataclasses.asdict(task.decision)),
            "model": task.model_name,
            "asynchronous": spec.asynchronous,
            "max_attempts": max_attempts,
            "worker_id": task.worker_id,
            "lease": self._lease,
            "timeout": datetime.timedelta(seconds=spec.timeout_s),
            "trace": pg_json.Jsonb(task.trace_context),
        }
        if task.worker_id is not None:
            return await self._create_running(task, params, tenant_cap=tenant_cap)
        async with self._pool.connection() as conn, conn.transaction():
            cur = await conn.execute(
                "INSERT INTO tasks (id, tenant, agent, input, idempotency_key, options, decision,"
                " model, asynchronous, max_attempts, deadline, trace_context) VALUES"
                " (%(id)s, %(tenant)s, %(agent)s, %(input)s, %(key)s, %(options)s, %(decision)s,"
                " %(model)s, %(asynchronous)s, %(max_attempts)s, now() + %(timeout)s, %(trace)s)"
                " ON CONFLICT (tenant, agent, idempotency_key)"
                " WHERE idempotency_key IS NOT NULL DO NOTHING RETURNING *",
                params,
            )
            row = await cur.fetchone()
            if row is None:
                existing = await self._existing(conn, spec)
                assert existing is not None, "the insert conflicted on its key"
                return existing, False
            task = rows.record(row)
            await rows.state_changed(conn, self._topics, task)
            await rows.queued(conn, self._topics, task)
        self.committed(task.id)
        return task, True

    async def _existing(self, conn: Conn, spec: model.TaskSpec) -> model.TaskRecord | None:
        """The task created before with ``spec``'s idempotency key, if any (AlreadyExists
        when it was for another input)."""
        cur = await conn.execute(
            "SELECT * FROM tasks WHERE tenant = %s AND agent = %s AND idempotency_key = %s",
            (spec.tenant, spec.agent, spec.idempotency_key),
        )
        existing = await cur.fetchone()
        if existing is None:
            return None
        if existing["input"] != spec.input:
            raise errors.AlreadyExists(
                f"idempotency key '{spec.idempotency_key}' was used for another input; "
                "use a new key for a new task"
            )
        return rows.record(existing)

    async def _create_running(
        self, running: model.TaskRecord, params: dict[str, Any], *, tenant_cap: int | None
    ) -> tuple[model.TaskRecord, bool]:
        """``create`` of a claimed task, in one round trip: one statement after the
        tenant's lock (``_CREATE_RUNNING``), so that the lock is held for Postgres's time
        alone, never while this process is busy elsewhere."""
        spec = running.spec
        queued = dataclasses.replace(
            running, status=model.Status.QUEUED, attempts=0, worker_id=None, seq=0
        )
        # Announced as if it had been queued, then claimed.
        announced = [rows.state_event(self._topics, t) for t in (queued, running)]
        params = {
            **params,
            **outbox.columns(announced, trace=queued.trace_context),
            "cap": _UNCAPPED if tenant_cap is None else tenant_cap,
        }
        async with self._pool.connection() as conn:
            async with conn.pipeline(), conn.transaction():
                if tenant_cap is not None:
                    await conn.execute(_LOCK_TENANT, (_tenant_key(spec.tenant),), prepare=True)
                cur = await conn.execute(_CREATE_RUNNING, params, prepare=True)
            row = await cur.fetchone()
            assert row is not None, "the statement always returns the tenant's count"
            if row["id"] is None and spec.idempotency_key:
                # Nothing was written: an earlier task has the key, or the tenant is full.
                async with conn.transaction():
                    existing = await self._existing(conn, spec)
                if existing is not None:
                    return existing, False
        if row["id"] is None:
            raise errors.ResourceExhausted(
                f"tenant '{spec.tenant}' already runs {row['running_before']} tasks, its "
                "limit; retry when one ends, or submit asynchronously to queue",
                retry_after_s=1.0,
            )
        task = rows.record(row)
        self.committed(task.id)
        return task, True

    async def mark_ready(self, task_id: str, queue: str, *, conn: Conn) -> bool:
        """Put a queued task in ``queue``'s ready pool (within ``conn``'s transaction), where
        ``claim_next`` takes it; False when it is not waiting there to be run. The current
        span (the work topic's consumer) becomes the parent of the task's run, when it is
        in the task's trace."""
        cur = await conn.execute(
            "UPDATE tasks SET ready_on = %(queue)s, trace_context = CASE"
            " WHEN split_part(trace_context->>'traceparent', '-', 2)"
            " = split_part(%(trace)s::jsonb->>'traceparent', '-', 2)"
            " THEN %(trace)s::jsonb ELSE trace_context END"
            " WHERE id = %(id)s AND state = 'QUEUED' AND lease_owner IS NULL",
            {"queue": queue, "id": task_id, "trace": pg_json.Jsonb(events.trace_headers())},
        )
        return cur.rowcount > 0

    async def claim_next(
        self, queue: str, *, worker_id: str, tenant_cap: int
    ) -> model.TaskRecord | None:
        """Claim the next ready task of ``queue`` for ``worker_id``, fairly between tenants: the
        tenant running the fewest tasks first (then the one waiting longest), never one
        already running ``tenant_cap`` tasks. None when there is nothing to take."""
        async with self._pool.connection() as conn, conn.transaction():
            cur = await conn.execute(
                "SELECT q.tenant FROM (SELECT tenant, min(created_at) AS oldest FROM tasks"
                "  WHERE state = 'QUEUED' AND ready_on = %(queue)s AND lease_owner IS NULL"
                "  GROUP BY tenant) q"
                " LEFT JOIN (SELECT tenant, count(*) AS n FROM tasks WHERE "
                + _RUNNING
                + "  GROUP BY tenant) r USING (tenant)"
                " WHERE coalesce(r.n, 0) < %(cap)s"
                " ORDER BY coalesce(r.n, 0), q.oldest LIMIT 16",
                {"queue": queue, "cap": tenant_cap},
            )
            tenants = [r["tenant"] for r in await cur.fetchall()]
            for tenant in tenants:
                # Another replica choosing for this tenant now: leave it the tenant.
                if not await _try_lock_tenant(conn, tenant):
                    continue
                if await _running(conn, tenant) >= tenant_cap:
                    continue
                cur = await conn.execute(
                    "SELECT id FROM tasks WHERE state = 'QUEUED' AND ready_on = %s"
                    " AND tenant = %s AND lease_owner IS NULL ORDER BY created_at LIMIT 8"
                    " FOR UPDATE SKIP LOCKED",
                    (queue, tenant),
                )
                for r in await cur.fetchall():
                    task = await self._claim(conn, str(r["id"]), worker_id)
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

    def committed(self, task_id: str) -> None:
        """Tell this process's publisher and followers that a change of the task committed."""
        self._on_commit()
        self._changed(task_id)

    async def _claim(self, conn: Conn, task_id: str, worker_id: str) -> model.TaskRecord | None:
        cur = await conn.execute(
            "UPDATE tasks SET state = 'RUNNING', attempts = attempts + 1,"
            " lease_owner = %(worker_id)s, lease_until = now() + %(lease)s,"
            " started_at = coalesce(started_at, now()), output = '',"
            " last_seq = last_seq + 1"
            " WHERE id = %(id)s AND state = 'QUEUED'"
            " AND lease_owner IS NULL"
            " AND NOT cancel_requested AND deadline > now() RETURNING *",
            {"id": task_id, "worker_id": worker_id, "lease": self._lease},
        )
        row = await cur.fetchone()
        if row is None:
            await recovery.end_unclaimable(conn, self._topics, task_id)
            return None
        task = rows.record(row)
        await rows.add_event(conn, task, row["last_seq"], model.EventKind.STARTED)
        await rows.state_changed(conn, self._topics, task)
        return task

    # -- a run's writes, fenced by attempt and worker_id --------------------------
    async def write(
        self,
        task: model.TaskRecord,
        logged: list[model.Event],
        *,
        output: str | None = None,
        steps: Sequence[model.StepRecord] = (),
    ) -> None:
        """Store events the run numbered (``run_log``), its output when given, and steps of
        its loop with their usage, in one transaction (one statement)."""
        params = {**_logged(task, logged, steps), "output": output}
        if await db.one_round_trip(self._pool, _WRITE, params) is None:
            raise model.LeaseLost(task.id)
        if logged:
            self._notifier.notify(task.id)
        _used(task, steps)

    async def finish(
        self,
        task: model.TaskRecord,
        status: model.Status,
        *,
        output: str,
        error: model.TaskError | None = None,
        latency_ms: int = 0,
        logged: list[model.Event] | None = None,
        citations: Sequence[model.Citation] = (),
        steps: Sequence[model.StepRecord] = (),
    ) -> model.TaskRecord:
        """End the current run with its final status and emit done or error; once only.
        ``logged`` and ``steps``: the run's events and steps not stored yet, stored in the
        same transaction; ``citations``: those of the passages the run used
        (``run_log.RunLog.cite``). One statement (``_FINISH``): the outbox event of the
        end is made here from ``task`` as the run holds it (its engine as served:
        ``record_engine``), ended."""
        logged = logged or []
        finished_at = datetime.datetime.now(datetime.UTC)
        usage = model.Usage(
            latency_ms=latency_ms,
            prompt_tokens=task.usage.prompt_tokens,
            completion_tokens=task.usage.completion_tokens,
            cost_usd=task.usage.cost_usd,
        )
        for rec in steps:
            usage.add(
                prompt_tokens=rec.prompt_tokens,
                completion_tokens=rec.completion_tokens,
                cost_usd=rec.cost_usd,
            )
        announced = dataclasses.replace(
            task,
            status=status,
            output=output,
            error=error,
            worker_id=None,
            usage=usage,
            finished_at=finished_at,
            citations=tuple(citations),
        )
        kind = model.EventKind.DONE if status is model.Status.OK else model.EventKind.ERROR
        params = {
            **_logged(task, logged, steps, final=kind),
            **outbox.columns([rows.state_event(self._topics, announced)], trace=task.trace_context),
            "state": status.value,
            "output": output,
            "code": error.code if error else None,
            "message": error.message if error else None,
            "retriable": error.retriable if error else False,
            "latency": latency_ms,
            "finished_at": finished_at,
            "citations": pg_json.Jsonb(rows.citations_to_json(citations)),
        }
        row = await db.one_round_trip(self._pool, _FINISH, params)
        if row is None:
            raise model.LeaseLost(task.id)
        self._notifier.notify(task.id)
        ended = rows.record(row)
        _used(task, steps)
        self._on_commit()
        self._changed(task.id)
        metrics.TASKS_FINISHED.labels(status.value).inc()
        if ended.created_at is not None and ended.finished_at is not None:
            metrics.TASK_SECONDS.observe((ended.finished_at - ended.created_at).total_seconds())
        return ended

    def running_here(self, task: model.TaskRecord) -> None:
        """``task`` is the record of a run of this process until ``ran`` (``RunLog``):
        ``record_engine`` keeps its engine as served."""
        self._runs[task.id] = task

    def ran(self, task: model.TaskRecord) -> None:
        """The run of ``task`` here ended (``running_here``)."""
        if self._runs.get(task.id) is task:
            del self._runs[task.id]

    async def record_engine(
        self, task_id: str, *, chosen_by: str | None, reason: str | None, model: str
    ) -> None:
        """Record that ``model`` served the task, and (when given) that ``chosen_by``
        chose it for ``reason`` (a ``placement.Recorder``): in its row at once, and in
        its run's record here, whose end announces its engine. The route stays the
        router's."""
        why = {k: v for k, v in (("chosen_by", chosen_by), ("reason", reason)) if v is not None}
        async with self._pool.connection() as conn, conn.transaction():
            await conn.execute(
                "UPDATE tasks SET decision = decision || %s, model = %s WHERE id = %s",
                (pg_json.Jsonb(why), model, task_id),
            )
        run = self._runs.get(task_id)
        if run is not None:
            run.decision = dataclasses.replace(
                run.decision,
                chosen_by=run.decision.chosen_by if chosen_by is None else chosen_by,
                reason=run.decision.reason if reason is None else reason,
            )
            run.model_name = model

    async def release(self, task: model.TaskRecord) -> bool:
        """Give a running task back to the queue (this worker stops); False if not ours."""
        async with self._pool.connection() as conn, conn.transaction():
            cur = await conn.execute(
                "UPDATE tasks SET state = 'QUEUED', lease_owner = NULL, lease_until = NULL"
                " WHERE id = %s AND attempts = %s AND lease_owner = %s AND state = 'RUNNING'"
                " RETURNING *",
                (task.id, task.attempts, task.worker_id),
            )
            row = await cur.fetchone()
            if row is None:
                return False
            queued = rows.record(row)
            await rows.state_changed(conn, self._topics, queued)
            await rows.queued(conn, self._topics, queued)
        self._on_commit()
        return True

    async def heartbeat(self, worker_id: str, task_ids: list[str]) -> dict[str, bool]:
        """Extend ``worker_id``'s leases; returns each task still owned -> cancel requested."""
        async with self._pool.connection() as conn, conn.transaction():
            cur = await conn.execute(
                "UPDATE tasks SET lease_until = now() + %s WHERE lease_owner = %s"
                " AND state = 'RUNNING' AND id = ANY(%s::uuid[]) RETURNING id, cancel_requested",
                (self._lease, worker_id, task_ids),
            )
            return {str(r["id"]): r["cancel_requested"] for r in await cur.fetchall()}

    # -- cancel -------------------------------------------------------------------
    async def request_cancel(self, tenant: str, task_id: str) -> model.TaskRecord:
        """End a queued task as CANCELED, or flag a running one for its worker to stop."""
        task = await self.get(tenant, task_id)
        if task.status.final:
            return task
        async with self._pool.connection() as conn, conn.transaction():
            await conn.execute(
                "UPDATE tasks SET cancel_requested = true WHERE id = %s"
                " AND state IN ('QUEUED', 'RUNNING')",
                (task.id,),
            )
            ended = (
                await rows.end(
                    conn,
                    self._topics,
                    task.id,
                    model.Status.CANCELED,
                    model.TaskError("CANCELLED", "the task was canceled before it ran"),
                )
                if (task.status is model.Status.QUEUED)
                else None
            )
        self._on_commit()
        self._changed(task.id)
        return ended or await self.get(tenant, task_id)

    # -- reading ------------------------------------------------------------------
    async def get(self, tenant: str, task_id: str) -> model.TaskRecord:
        """The tenant's task; another tenant's task is reported as not found."""
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                "SELECT * FROM tasks WHERE id = %s AND tenant = %s", (_parse_id(task_id), tenant)
            )
            row = await cur.fetchone()
        if row is None:
            raise errors.NotFound(f"task '{task_id}' not found")
        return rows.record(row)

    async def events_after(self, task_id: str, after: int) -> list[model.Event]:
        """The task's stored events after ``after``, in order."""
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                "SELECT seq, kind, text, step FROM task_events WHERE task_id = %s AND seq > %s"
                " ORDER BY seq",
                (task_id, after),
            )
            found = await cur.fetchall()
        return [
            model.Event(
                seq=r["seq"], kind=model.EventKind(r["kind"]), text=r["text"], step=r["step"]
            )
            for r in found
        ]

    def follow(
        self,
        task: model.TaskRecord,
        *,
        after: int = 0,
        poll_s: float = 2.0,
        launched: bool = False,
    ) -> AsyncIterator[model.Event]:
        """Replay the task's stored events, then follow new ones until the final event
        (``follow``: live from a run here, woken by notifications from any replica).
        ``launched``: the caller has just created ``task`` and launched its run here, so
        its only stored event is the claim's ``started``, and nothing needs reading."""
        started = model.Event(seq=task.seq, kind=model.EventKind.STARTED) if launched else None
        return self._followers.follow(task.id, after=after, poll_s=poll_s, started=started)

    async def ended(self, task: model.TaskRecord) -> model.TaskRecord:
        """The task as it is now that a follower saw its final event: as the run here
        ended it when it ran here, else read."""
        return self._followers.ended(task.id) or await self.get(task.spec.tenant, task.id)

    @property
    def followers(self) -> Followers:
        """The streams following tasks in this process (a run here hands them events)."""
        return self._followers

    async def listen(self) -> None:
        """Hear ``listener``'s channels (stored events wake this process's followers),
        until cancelled."""
        conninfo = self._pool.conninfo
        assert isinstance(conninfo, str), "the pool is opened with a DSN (db.pool)"
        await self.listener.run(conninfo)
