"""Rewrites a task's engine when the route choice changed who served it.

The task row keeps the router's decision (``decision``) and the agent's model
(``model``) from the start. When the external API serves a call, this rewrites
``model`` (the provider's), and, when ``placement`` spilled the call to it or
the pool failed before answering, ``chosen_by`` and ``reason``, so the task's
result says who served it and why; the route stays the router's.
"""

from __future__ import annotations

from psycopg.types import json as pg_json

from aion.agent import db


class EngineRecorder:
    """A ``placement.Recorder`` on the task store's Postgres."""

    def __init__(self, pool: db.Pool) -> None:
        self._pool = pool

    async def __call__(
        self, task_id: str, *, chosen_by: str | None, reason: str | None, model: str
    ) -> None:
        """Record that ``model`` served ``task_id``, and (when given) that ``chosen_by``
        chose it for ``reason``."""
        why = {k: v for k, v in (("chosen_by", chosen_by), ("reason", reason)) if v is not None}
        async with self._pool.connection() as conn, conn.transaction():
            await conn.execute(
                "UPDATE tasks SET decision = decision || %s, model = %s WHERE id = %s",
                (pg_json.Jsonb(why), model, task_id),
            )
