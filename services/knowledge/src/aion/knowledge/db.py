"""The knowledge service's Postgres: documents and versions. Migration ids start with
``knowledge-`` and tables with ``kb_``, as the database may be shared with the agent service.
The pool, the migration runner and the outage mapping are ``aion.core.db``'s."""

from __future__ import annotations

import functools

from aion.core import db

Pool = db.Pool
reachable = db.reachable
unavailable = db.unavailable
UnavailableInterceptor = db.UnavailableInterceptor


async def migrate(dsn: str) -> list[str]:
    """Apply the migrations of this service that the database lacks; returns their ids."""
    return await db.migrate(dsn, "aion.knowledge")


# An open, checked pool (``aion.core.db.pool``) named after this service.
pool = functools.partial(db.pool, name="knowledge", autocommit=False)
