"""The gateway's Postgres: a connection pool, and its migrations applied at start.

The gateway keeps API keys and the rate limits its replicas share here.
Migration ids start with ``gateway-`` and tables with ``gateway_``: the gateway
may share a database with the agent and knowledge services (yoyo keys
migrations by id), and applies them under yoyo's lock, so replicas that start
together apply each once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterator
from importlib import resources

import psycopg
import psycopg_pool
import yoyo  # type: ignore[import-untyped]
from psycopg import rows

from aion.core import errors

log = logging.getLogger(__name__)

Pool = psycopg_pool.AsyncConnectionPool[psycopg.AsyncConnection[rows.DictRow]]


def _yoyo_uri(dsn: str) -> str:
    scheme, sep, rest = dsn.partition("://")
    if not sep or scheme not in ("postgres", "postgresql"):
        raise errors.InvalidArgument("the Postgres DSN must start with postgresql://")
    return f"postgresql+psycopg://{rest}"


def _apply(dsn: str) -> list[str]:
    backend = yoyo.get_backend(_yoyo_uri(dsn))
    try:
        folder = resources.files("aion.gateway") / "migrations"
        with resources.as_file(folder) as path:
            migrations = yoyo.read_migrations(str(path))
            with backend.lock():
                todo = backend.to_apply(migrations)
                backend.apply_migrations(todo)
        return [m.id for m in todo]
    finally:
        backend.connection.close()


async def migrate(dsn: str) -> list[str]:
    """Apply the migrations the database lacks; returns their ids."""
    applied: list[str] = await asyncio.to_thread(_apply, dsn)
    if applied:
        log.info("applied migrations", extra={"migrations": applied})
    return applied


@contextlib.asynccontextmanager
async def pool(dsn: str, *, max_size: int = 10, open_timeout: float = 30.0,
               timeout: float = 5.0) -> AsyncIterator[Pool]:
    """An open pool (autocommit: each statement is its own transaction)."""
    p: Pool = psycopg_pool.AsyncConnectionPool(
        dsn, min_size=1, max_size=max_size, open=False, name="gateway", timeout=timeout,
        connection_class=psycopg.AsyncConnection[rows.DictRow],
        kwargs={"row_factory": rows.dict_row, "autocommit": True},
        check=psycopg_pool.AsyncConnectionPool.check_connection, reconnect_timeout=3600.0)
    try:
        await p.open(wait=True, timeout=open_timeout)
    except psycopg_pool.PoolTimeout as exc:
        await p.close()
        raise errors.Unavailable(f"cannot connect to Postgres within {open_timeout:g}s") from exc
    try:
        yield p
    finally:
        await p.close()


@contextlib.contextmanager
def reachable() -> Iterator[None]:
    """Raise ``errors.Unavailable`` (retriable) for a database that cannot be reached within."""
    try:
        yield
    except psycopg.OperationalError as exc:  # PoolTimeout is one too
        log.warning("database unavailable: %s: %s", type(exc).__name__, exc)
        raise errors.Unavailable("the gateway's database is unreachable; retry shortly",
                                 retry_after_s=1.0) from exc
