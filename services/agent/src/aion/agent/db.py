"""The agent service's Postgres: tasks, their events and steps, the agent registry and the
outbox; migrations in ``migrations/`` (ids unprefixed). The pool, the migration runner and the
outage mapping are ``aion.core.db``'s."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Mapping

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
