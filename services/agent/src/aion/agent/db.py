"""The agent service's Postgres: tasks, their events and steps, the agent registry and the
outbox; migrations in ``migrations/`` (ids unprefixed). The pool, the migration runner and the
outage mapping are ``aion.core.db``'s."""

from __future__ import annotations

import functools

from aion.core import db

Pool = db.Pool

# The NOTIFY channel that announces stored task events (payload: the task's id).
TASK_EVENTS_CHANNEL = "aion_task_events"
reachable = db.reachable
unavailable = db.unavailable
UnavailableInterceptor = db.UnavailableInterceptor


async def migrate(dsn: str) -> list[str]:
    """Apply the migrations of this service that the database lacks; returns their ids."""
    return await db.migrate(dsn, "aion.agent")


# An open, checked pool (``aion.core.db.pool``) named after this service.
pool = functools.partial(db.pool, name="agent", autocommit=False)
