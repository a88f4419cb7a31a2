"""The gateway's Postgres: API keys and the rate limits its replicas share. Migration ids
start with ``gateway-`` and tables with ``gateway_``, as the database may be shared with the
agent and knowledge services. Autocommit: each statement is its own transaction. The pool, the
migration runner and the outage mapping are ``aion.core.db``'s."""

from __future__ import annotations

import functools

from aion.core import db

Pool = db.Pool
reachable = db.reachable
unavailable = db.unavailable
UnavailableInterceptor = db.UnavailableInterceptor


async def migrate(dsn: str) -> list[str]:
    """Apply the migrations of this service that the database lacks; returns their ids."""
    return await db.migrate(dsn, "aion.gateway")


# An open, checked pool (``aion.core.db.pool``) named after this service.
pool = functools.partial(db.pool, name="gateway", autocommit=True)
