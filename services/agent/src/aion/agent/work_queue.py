"""The work queue: takes queued tasks from the work topic and runs them, fairly.

Every replica consumes the work topic in one consumer group, so each queued
task's record reaches one replica. The record does not start the task: it puts
it in the work topic's ready pool in Postgres (``tasks.ready_on``), in the
transaction that records the event as processed. Each replica's dispatcher
then claims ready tasks while it has room, the tenant running the fewest tasks
first and never one at its limit (``TaskStore.claim_next``), so a tenant's flood
of queued tasks does not hold back another tenant's. The claim (QUEUED ->
RUNNING under a lease) makes sure a task runs once at a time; a replica killed
at any point loses nothing, since the pool is in Postgres and any replica
claims from it.
"""

from __future__ import annotations

import uuid
from typing import Any

import psycopg

from aion.agent import db, events, kafka, runner
from aion.api.events.v1 import events_pb2
from aion.core import kafka as core_kafka


def consumer(
    *,
    run: runner.Runner,
    pool: db.Pool,
    topics: events.Topics,
    bootstrap: str,
    security: core_kafka.KafkaSettings | None = None,
) -> kafka.IdempotentConsumer:
    """The work topic's consumer, feeding the runner's fair dispatcher (``Runner.dispatch``
    of ``topics.work``, which the ``Worker`` runs beside it)."""

    async def handle(
        env: events_pb2.Envelope, conn: psycopg.AsyncConnection[Any]
    ) -> kafka.Then | None:
        if env.type != events.TASK_QUEUED:
            raise kafka.Poison(f"unexpected event type '{env.type}' on the work topic")
        queued = events_pb2.TaskQueued()
        if not env.data.Unpack(queued) or not queued.task_id:
            raise kafka.Poison("the event carries no TaskQueued")
        try:
            task_id = str(uuid.UUID(queued.task_id))
        except ValueError:
            raise kafka.Poison(f"'{queued.task_id}' is not a task id") from None
        cur = await conn.execute("SELECT 1 FROM tasks WHERE id = %s", (task_id,))
        if await cur.fetchone() is None:
            raise kafka.Poison(f"task '{task_id}' does not exist")
        # Made ready in the transaction that records the event as processed: both or neither.
        if not await run.tasks.mark_ready(task_id, topics.work, conn=conn):
            return None

        async def then() -> None:
            run.ready()

        return then

    return kafka.IdempotentConsumer(
        name="worker",
        topic=topics.work,
        group=topics.group("agent-workers"),
        bootstrap=bootstrap,
        pool=pool,
        handle=handle,
        dead_letter=topics.dead_letter(topics.work),
        security=security,
    )
