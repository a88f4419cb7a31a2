"""Postgres for every service that keeps state: a checked pool, migrations applied at start,
and what a database failure means to a caller.

Migrations are plain SQL files in the service package's ``migrations/`` folder, applied by
yoyo-migrations under its lock in the database, so replicas that start together apply each
once. Services may share one database: yoyo keys migrations by id, so each service prefixes
its ids and its tables (``gateway-``/``gateway_``, ``knowledge-``/``kb_``).

:func:`reachable` turns a database that cannot be reached (or a pool with no connection to
give in time) into ``errors.Unavailable``, retriable, and input the database cannot hold into
``errors.InvalidArgument``; :class:`UnavailableInterceptor` applies it to every RPC of a
server, so callers retry an outage instead of seeing INTERNAL.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from importlib import resources
from typing import Any

import grpc
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


def _apply(dsn: str, package: str) -> list[str]:
    backend = yoyo.get_backend(_yoyo_uri(dsn))
    try:
        folder = resources.files(package) / "migrations"
        with resources.as_file(folder) as path:
            migrations = yoyo.read_migrations(str(path))
            with backend.lock():
                todo = backend.to_apply(migrations)
                backend.apply_migrations(todo)
        return [m.id for m in todo]
    finally:
        backend.connection.close()


async def migrate(dsn: str, package: str) -> list[str]:
    """Apply the migrations of ``package`` (its ``migrations/`` folder) that the database
    lacks; returns their ids."""
    applied: list[str] = await asyncio.to_thread(_apply, dsn, package)
    if applied:
        log.info("applied migrations", extra={"migrations": applied, "package": package})
    return applied


class _Recent:
    """The pool's check, skipped for a connection given back less than ``within_s`` ago.

    A check is a round trip on every checkout, as long as a short transaction's own; a
    connection that worked a moment ago is as good as checked. Were Postgres restarted in
    that moment, the next query on it fails (UNAVAILABLE, retriable) and the pool drops it.
    """

    def __init__(self, within_s: float = 1.0) -> None:
        self._within_s = within_s
        self._returned: weakref.WeakKeyDictionary[Any, float] = weakref.WeakKeyDictionary()

    async def reset(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """The pool got ``conn`` back, idle and working."""
        self._returned[conn] = time.monotonic()

    async def check(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Raise unless ``conn`` works: checked by a round trip unless just given back."""
        returned = self._returned.pop(conn, None)
        if returned is not None and time.monotonic() - returned < self._within_s:
            return
        await psycopg_pool.AsyncConnectionPool.check_connection(conn)


@contextlib.asynccontextmanager
async def pool(
    dsn: str,
    *,
    name: str,
    autocommit: bool = False,
    min_size: int = 1,
    max_size: int = 10,
    open_timeout: float = 30.0,
    timeout: float = 5.0,
) -> AsyncIterator[Pool]:
    """An open pool whose connections are checked before use, so a restarted Postgres costs
    one failed check instead of a failed query (except a connection given back within the
    last second, see ``_Recent``). A caller waits at most ``timeout`` for a connection
    (then ``PoolTimeout``, which :func:`reachable` makes UNAVAILABLE)."""
    recent = _Recent()
    p: Pool = psycopg_pool.AsyncConnectionPool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        open=False,
        name=name,
        timeout=timeout,
        connection_class=psycopg.AsyncConnection[rows.DictRow],
        kwargs={"row_factory": rows.dict_row, "autocommit": autocommit},
        check=recent.check,
        reset=recent.reset,
        reconnect_timeout=3600.0,
    )
    try:
        await p.open(wait=True, timeout=open_timeout)
    except psycopg_pool.PoolTimeout as exc:
        await p.close()
        raise errors.Unavailable(f"cannot connect to Postgres within {open_timeout:g}s") from exc
    try:
        yield p
    finally:
        await p.close()


def unavailable(exc: psycopg.OperationalError) -> errors.Unavailable:
    """The retriable error a caller gets for ``exc``, saying what happened."""
    if isinstance(exc, psycopg_pool.PoolTimeout):
        why = "no database connection could be had in time; the database is unreachable"
    elif exc.sqlstate is None or exc.sqlstate.startswith(("08", "57P")):
        # No SQLSTATE: the connection failed or broke; 08: connection exceptions;
        # 57P: the server is shutting down or starting.
        why = "the database is unreachable"
    else:
        why = f"the database could not complete the request (SQLSTATE {exc.sqlstate})"
    return errors.Unavailable(f"{why}; retry shortly", retry_after_s=1.0)


@contextlib.contextmanager
def reachable() -> Iterator[None]:
    """Raise ``errors.Unavailable`` for a database that cannot be reached within, and
    ``errors.InvalidArgument`` for input the database cannot hold (a NUL in a text, a
    number out of range, a key too long for its index): the caller's to fix, not retry."""
    try:
        yield
    except (psycopg.DataError, psycopg.errors.ProgramLimitExceeded) as exc:
        log.info("input the database refused: %s: %s", type(exc).__name__, exc)
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise errors.InvalidArgument(
            f"the input cannot be stored: {first} (SQLSTATE {exc.sqlstate})"
        ) from exc
    except psycopg.OperationalError as exc:  # PoolTimeout is one too
        log.warning("database unavailable: %s: %s", type(exc).__name__, exc)
        raise unavailable(exc) from exc


def _unary(behavior: Callable[[Any, Any], Awaitable[Any]]) -> Callable[[Any, Any], Awaitable[Any]]:
    async def handler(request: Any, context: Any) -> Any:
        with reachable():
            return await behavior(request, context)

    return handler


def _streaming(
    behavior: Callable[[Any, Any], AsyncIterator[Any]],
) -> Callable[[Any, Any], AsyncIterator[Any]]:
    async def handler(request: Any, context: Any) -> AsyncIterator[Any]:
        with reachable():
            async for item in behavior(request, context):
                yield item

    return handler


class UnavailableInterceptor(grpc.aio.ServerInterceptor):
    """Maps a database outage met by any RPC to UNAVAILABLE (inside the error interceptor,
    which turns it into the status)."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        if handler.unary_unary is not None:
            return handler._replace(unary_unary=_unary(handler.unary_unary))
        if handler.unary_stream is not None:
            return handler._replace(unary_stream=_streaming(handler.unary_stream))
        return handler
