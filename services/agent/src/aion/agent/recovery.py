"""Recovery: what happens to tasks nobody runs any more, and old records.

A worker that dies stops renewing its leases. ``Recovery.reap`` finds tasks whose lease
ran out and applies the outcome policy (``outcome``): queue them again for another
worker, or end them with a clear status (TIMEOUT past the deadline, CANCELED when asked,
ERROR once they lost too many workers). Queued tasks past their deadline time out the
same way, and ``end_unclaimable`` ends one a worker found it cannot claim. Each reclaimed
lease counts in ``LEASE_RECLAIMS``. ``Recovery.run`` is the reaper loop;
``Recovery.retain`` the retention loop (``purge``).
"""

from __future__ import annotations

import asyncio
import datetime
import logging
from collections.abc import Callable

import psycopg

from aion.agent import db, events, metrics, model, rows

log = logging.getLogger(__name__)


def outcome(*, late: bool, cancel_requested: bool, attempts: int, max_attempts: int) -> str:
    """What recovery does with a task whose lease ran out (or that waited past its
    deadline): ``timeout``, ``canceled``, ``abandoned`` or ``requeued``."""
    if late:
        return "timeout"
    if cancel_requested:
        return "canceled"
    if attempts >= max_attempts:
        return "abandoned"
    return "requeued"


async def end_unclaimable(conn: rows.Conn, topics: events.Topics, task_id: str) -> None:
    """End a queued task that could not be claimed because it was asked to cancel or
    waited past its deadline (in ``conn``'s transaction); leave any other as it is."""
    cur = await conn.execute(
        "SELECT state, cancel_requested, deadline < now() AS late FROM tasks"
        " WHERE id = %s FOR UPDATE",
        (task_id,),
    )
    row = await cur.fetchone()
    if row is None or row["state"] != "QUEUED":
        return
    if row["cancel_requested"]:
        await rows.end(
            conn,
            topics,
            task_id,
            model.Status.CANCELED,
            model.TaskError("CANCELLED", "the task was canceled before it ran"),
        )
    elif row["late"]:
        await rows.end(
            conn,
            topics,
            task_id,
            model.Status.TIMEOUT,
            model.TaskError(
                "DEADLINE_EXCEEDED",
                "the task waited in the queue past its deadline",
                retriable=True,
            ),
        )


class Recovery:
    """Reaps lost leases and applies retention, one replica's share at a time."""

    def __init__(
        self,
        *,
        pool: db.Pool,
        topics: events.Topics,
        interval_s: float = 2.0,
        task_retention_s: float = 7 * 86400.0,
        processed_event_retention_s: float = 7 * 86400.0,
        retention_interval_s: float = 300.0,
        on_commit: Callable[[], None] = lambda: None,
    ) -> None:
        self._pool = pool
        self._topics = topics
        self._interval_s = interval_s
        self._task_retention_s = task_retention_s
        self._processed_retention_s = processed_event_retention_s
        self._retention_interval_s = retention_interval_s
        self._on_commit = on_commit

    async def run(self) -> None:
        """Recover tasks with expired leases until cancelled."""
        while True:
            try:
                await self.reap()
            except psycopg.Error as exc:
                log.warning("cannot recover tasks now: %s", exc)
            await asyncio.sleep(self._interval_s)

    async def retain(self) -> None:
        """Apply retention every ``retention_interval_s`` until cancelled."""
        while True:
            await self._purge()
            await asyncio.sleep(self._retention_interval_s)

    async def reap(self, *, limit: int = 100) -> int:
        """Recover tasks whose lease ran out: queue them again for another worker, or end
        them (TIMEOUT past the deadline, CANCELED when asked, ERROR after too many
        attempts). Also times out queued tasks past their deadline. Returns how many."""
        async with self._pool.connection() as conn, conn.transaction():
            cur = await conn.execute(
                "SELECT *, deadline < now() AS late FROM tasks"
                " WHERE state IN ('QUEUED', 'RUNNING')"
                " AND (lease_until < now() OR (state = 'QUEUED' AND deadline < now()))"
                " ORDER BY lease_until NULLS FIRST LIMIT %s FOR UPDATE SKIP LOCKED",
                (limit,),
            )
            found = await cur.fetchall()
            reclaimed: list[str] = []
            for r in found:
                task = rows.record(r)
                what = await self._apply(conn, task, late=r["late"], max_attempts=r["max_attempts"])
                if r["lease_until"] is not None:  # a worker held it and was lost
                    reclaimed.append(what)
        if found:
            self._on_commit()
        for what in reclaimed:  # counted once the transaction committed
            metrics.LEASE_RECLAIMS.labels(what).inc()
        return len(found)

    async def _apply(
        self, conn: rows.Conn, task: model.TaskRecord, *, late: bool, max_attempts: int
    ) -> str:
        lost = task.status is model.Status.RUNNING
        what = outcome(
            late=late,
            cancel_requested=task.cancel_requested,
            attempts=task.attempts,
            max_attempts=max_attempts,
        )
        match what:
            case "timeout":
                await rows.end(
                    conn,
                    self._topics,
                    task.id,
                    model.Status.TIMEOUT,
                    model.TaskError(
                        "DEADLINE_EXCEEDED",
                        "the task's worker was lost and its deadline has passed"
                        if lost
                        else "the task waited past its deadline",
                        retriable=True,
                    ),
                )
            case "canceled":
                await rows.end(
                    conn,
                    self._topics,
                    task.id,
                    model.Status.CANCELED,
                    model.TaskError("CANCELLED", "the task was canceled"),
                )
            case "abandoned":
                await rows.end(
                    conn,
                    self._topics,
                    task.id,
                    model.Status.ERROR,
                    model.TaskError(
                        "ABORTED",
                        f"the worker running the task was lost "
                        f"{task.attempts} times; it was not run again",
                        retriable=True,
                    ),
                )
            case _:
                log.warning("task %s: lease of %s expired; queued again", task.id, task.worker_id)
                await conn.execute(
                    "UPDATE tasks SET state = 'QUEUED', lease_owner = NULL,"
                    " lease_until = NULL WHERE id = %s",
                    (task.id,),
                )
                task.status = model.Status.QUEUED
                await rows.state_changed(conn, self._topics, task)
                await rows.queued(conn, self._topics, task)
        return what

    # -- retention ----------------------------------------------------------------
    async def _purge(self) -> None:
        """Retention, one replica at a time; a database out is tried again next time."""
        try:
            removed = await self.purge(
                tasks_older_s=self._task_retention_s, processed_older_s=self._processed_retention_s
            )
        except psycopg.Error as exc:
            log.warning("cannot apply retention now: %s", exc)
            return
        if removed and any(removed):
            log.info(
                "retention deleted old records",
                extra={"tasks": removed[0], "processed_events": removed[1]},
            )

    async def purge(
        self, *, tasks_older_s: float, processed_older_s: float, batch: int = 1000
    ) -> tuple[int, int] | None:
        """Delete finished tasks that ended over ``tasks_older_s`` ago (their events and
        steps go with them) and processed-event records over ``processed_older_s`` old, in
        batches; returns how many of each. One replica at a time: None when another one
        is purging now."""
        removed = [0, 0]
        statements = (
            "DELETE FROM tasks WHERE id IN (SELECT id FROM tasks WHERE finished_at < %s"
            " AND state IN ('OK', 'ERROR', 'TIMEOUT', 'CANCELED') LIMIT %s)",
            "DELETE FROM processed_events WHERE ctid IN (SELECT ctid FROM processed_events"
            " WHERE processed_at < %s LIMIT %s)",
        )
        now = datetime.datetime.now(datetime.UTC)
        cutoffs = (
            now - datetime.timedelta(seconds=tasks_older_s),
            now - datetime.timedelta(seconds=processed_older_s),
        )
        for i, (sql, cutoff) in enumerate(zip(statements, cutoffs, strict=True)):
            while True:
                async with self._pool.connection() as conn, conn.transaction():
                    cur = await conn.execute(
                        "SELECT pg_try_advisory_xact_lock(hashtext('aion.agent.retention')) AS ok"
                    )
                    row = await cur.fetchone()
                    if row is None or not row["ok"]:
                        return None
                    cur = await conn.execute(sql, (cutoff, batch))
                    removed[i] += cur.rowcount
                if cur.rowcount < batch:
                    break
        return removed[0], removed[1]
