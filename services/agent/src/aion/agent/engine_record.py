"""Rewrites a task's engine when the route choice changed who served it.

The task row keeps the router's decision (``decision``) and the model it
meant (``model``) from the start. When ``placement`` spills a call to the
external API (or the pool failed and the API served), this rewrites
``chosen_by``, ``reason`` and ``model``, so the task's result says who served
it and why; the route (``hybrid``) stays the router's.
"""

from __future__ import annotations

from psycopg.types import json as pg_json

from aion.agent import db


class EngineRecorder:
    """A ``placement.Recorder`` on the task store's Postgres."""

    def __init__(self, pool: db.Pool) -> None:
        self._pool = pool

    async def __call__(self, task_id: str, *, chosen_by: str, reason: str, model: str) -> None:
        """Record that ``model`` served ``task_id``, chosen by ``chosen_by`` for ``reason``."""
        async with self._pool.connection() as conn, conn.transaction():
            await conn.execute(
                "UPDATE tasks SET decision = decision || %s, model = %s WHERE id = %s",
                (pg_json.Jsonb({"chosen_by": chosen_by, "reason": reason}), model, task_id),
            )
