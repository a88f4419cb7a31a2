"""The agent service's Postgres: tasks, their events and steps, the agent registry and the
outbox; migrations in ``migrations/`` (ids unprefixed). The pool, the migration runner and the
outage mapping are ``aion.core.db``'s."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from aion.core import db

Pool = db.Pool
reachable = db.reachable
unavailable = db.unavailable
UnavailableInterceptor = db.UnavailableInterceptor


async def migrate(dsn: str) -> list[str]:
    """Apply the migrations of this service that the database lacks; returns their ids."""
    return await db.migrate(dsn, "aion.agent")


@contextlib.asynccontextmanager
async def pool(
    dsn: str,
    *,
    min_size: int = 1,
    max_size: int = 10,
    open_timeout: float = 30.0,
    timeout: float = 5.0,
) -> AsyncIterator[Pool]:
    """An open, checked pool (see ``aion.core.db.pool``)."""
    async with db.pool(
        dsn,
        name="agent",
        autocommit=False,
        min_size=min_size,
        max_size=max_size,
        open_timeout=open_timeout,
        timeout=timeout,
    ) as p:
        yield p
