"""The agent service's Postgres: tasks, their events and steps, the agent registry and the
outbox; migrations in ``migrations/`` (ids unprefixed). The pool, the migration runner and the
outage mapping are ``aion.core.db``'s."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Mapping
from typing import Any

import psycopg

from aion.core import db

log = logging.getLogger(__name__)

Pool = db.Pool

# The NOTIFY channel that announces stored task events (payload: the task's id).
TASK_EVENTS_CHANNEL = "aion_task_events"
# The NOTIFY channel that announces changed agents (payload: [tenant, name] as JSON; the
# trigger of migration 0009).
AGENTS_CHANNEL = "aion_agents"
reachable = db.reachable
unavailable = db.unavailable
UnavailableInterceptor = db.UnavailableInterceptor


async def migrate(dsn: str) -> list[str]:
    """Apply the migrations of this service that the database lacks; returns their ids."""
    return await db.migrate(dsn, "aion.agent")


# An open, checked pool (``aion.core.db.pool``) named after this service.
pool = functools.partial(db.pool, name="agent", autocommit=False)


async def one_round_trip(
    pool: Pool, statement: str, params: Mapping[str, Any] | list[Any], *, prepare: bool = True
) -> Any:
    """Run ``statement`` as a transaction of its own, in autocommit (one round trip, and
    the fewest waits: no BEGIN, no COMMIT, no pipeline), prepared on its connection from
    the first time (parsing and planning a run's write cost more than running it); its
    first row, or None."""
    async with pool.connection() as conn:
        await conn.set_autocommit(True)
        try:
            cur = await conn.execute(statement, params, prepare=prepare)
            return await cur.fetchone()
        finally:
            if not conn.closed:  # else the pool drops it
                await conn.set_autocommit(False)


class Notifier:
    """NOTIFYs of changes already committed, sent in batches from transactions of their
    own (a round trip each, while the writes go on).

    A transaction that notifies holds Postgres's notification lock, one for the whole
    server, from its commit until the commit's WAL is flushed: the runs' writes that
    notified as they committed waited for each other's flushes (on the local suite, a
    write's round trip was 5 ms at the median under bench-agent's load against 3.8 ms
    without). A notification sent after the commit still finds its change stored; one
    lost with this process is a follower's next poll (``follow``)."""

    def __init__(self, pool: Pool, channel: str) -> None:
        self._pool = pool
        self._channel = channel
        self._pending: dict[str, None] = {}  # payloads in order, each once
        self._sending: asyncio.Task[None] | None = None

    def notify(self, payload: str) -> None:
        """Send ``payload`` on the channel soon (with what else waits by then)."""
        self._pending[payload] = None
        if self._sending is None:
            self._sending = asyncio.get_running_loop().create_task(self._send())

    async def _send(self) -> None:
        try:
            while self._pending:
                batch, self._pending = list(self._pending), {}
                try:
                    await one_round_trip(
                        self._pool,
                        "SELECT pg_notify(%s, p) FROM unnest(%s::text[]) AS p",
                        [self._channel, batch],
                    )
                except psycopg.Error as exc:
                    log.warning(
                        "cannot notify %s (their followers elsewhere read at their next poll): %s",
                        self._channel,
                        exc,
                    )
        finally:
            self._sending = None


class Listener:
    """What one replica hears on its notification connection (``listen``): a handler per
    channel, and who is told when notifications may have been missed (``on_connect``, each
    time it starts hearing them again) or stop coming (``on_lost``)."""

    def __init__(self) -> None:
        self._handlers: dict[str, Callable[[str], None]] = {}
        self._connected: list[Callable[[], None]] = []
        self._lost: list[Callable[[], None]] = []

    def on(
        self,
        channel: str,
        handler: Callable[[str], None],
        *,
        on_connect: Callable[[], None] = lambda: None,
        on_lost: Callable[[], None] = lambda: None,
    ) -> None:
        """Call ``handler`` with the payload of each notification on ``channel``."""
        self._handlers[channel] = handler
        self._connected.append(on_connect)
        self._lost.append(on_lost)

    @property
    def handlers(self) -> Mapping[str, Callable[[str], None]]:
        """The channels listened to, and their handlers."""
        return self._handlers

    async def run(self, conninfo: str, *, retry_s: float = 1.0) -> None:
        """Hear the channels until cancelled, on a dedicated connection; reconnect after a
        failure (``on_lost``, then ``on_connect`` once listening again)."""
        failing = False
        try:
            while True:
                try:
                    async with await psycopg.AsyncConnection.connect(
                        conninfo, autocommit=True
                    ) as conn:
                        for channel in self._handlers:
                            await conn.execute(f"LISTEN {channel}")
                        if failing:
                            log.info("hearing notifications again")
                        failing = False
                        for connected in self._connected:
                            connected()  # anything changed while not listening
                        async for note in conn.notifies():
                            self._handlers[note.channel](note.payload)
                except psycopg.Error as exc:
                    if not failing:
                        log.warning("cannot listen for notifications (followers poll): %s", exc)
                    failing = True
                for lost in self._lost:
                    lost()
                await asyncio.sleep(retry_s)
        finally:
            for lost in self._lost:
                lost()
