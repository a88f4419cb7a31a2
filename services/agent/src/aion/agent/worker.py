"""The agent worker: takes queued tasks from the work topic and runs them.

Every replica consumes the work topic in one consumer group, so each queued
task reaches one replica; the claim in Postgres (QUEUED -> RUNNING under a
lease) makes sure that even a redelivered record runs a task once at a time.
"""

from __future__ import annotations

import uuid
from typing import Any

import psycopg

from aion.agent import db, events, kafka, runner
from aion.api.events.v1 import events_pb2
from aion.core import kafka as core_kafka


def consumer(*, run: runner.Runner, pool: db.Pool, topics: events.Topics,
             bootstrap: str,
             security: core_kafka.KafkaSettings | None = None) -> kafka.IdempotentConsumer:
    """The work topic's consumer, gated by the runner's concurrency limit."""

    async def handle(env: events_pb2.Envelope,
                     conn: psycopg.AsyncConnection[Any]) -> kafka.Then | None:
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
        # Claimed in the transaction that records the event as processed: both or neither.
        task = await run.claim(task_id, conn=conn)
        if task is None:
            return None

        async def then() -> None:
            await run.run_claimed(task)

        return then

    return kafka.IdempotentConsumer(
        name="worker", topic=topics.work, group=topics.group("agent-workers"),
        bootstrap=bootstrap, pool=pool, handle=handle,
        dead_letter=topics.dead_letter(topics.work), gate=run.wait_for_room,
        security=security)
