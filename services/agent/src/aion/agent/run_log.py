"""A run's events: numbered here, handed to followers at once, stored in batches.

A run holds its task's lease, so nobody else numbers the task's events while it
runs: ``RunLog`` numbers them in memory, hands each to this process's followers the
moment it is made (``follow.Followers.publish``: no database round trip between the
executor's token and the caller), and stores them in one transaction per batch
(``TaskStore.write``): ``flush_s`` after the first unstored event or step record, at once when
``max_events`` wait, and at the end (with the final event, ``finish``).

The citations of the passages the run put into its model's context (``cite``) are
kept here, each passage once, and stored with the end (``finish``).

The task's ``output`` column is rewritten only when the output has doubled since it
was last written, with a step's record and at the end, so a long generation costs linear
time to store (the events hold every token in between). A run that dies loses at
most its last unstored batch, which recovery runs again; its followers here are
rewound to what was stored (``close``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

import psycopg

from aion.agent import follow, model, store

log = logging.getLogger(__name__)

FLUSH_S = 0.05
MAX_EVENTS = 64


class RunLog:
    """The events of one run of a task, as the run makes them."""

    def __init__(
        self,
        tasks: store.TaskStore,
        task: model.TaskRecord,
        *,
        flush_s: float = FLUSH_S,
        max_events: int = MAX_EVENTS,
    ) -> None:
        self._tasks = tasks
        self._task = task
        self._followers: follow.Followers = tasks.followers
        self._flush_s = flush_s
        self._max_events = max_events
        self._seq = self._stored = task.seq
        self._pending: list[model.Event] = []
        self._steps: list[model.StepRecord] = []  # ended, not stored yet
        self.output = task.output
        self.citations: tuple[model.Citation, ...] = ()
        self._written = len(task.output)  # the output's length when last stored
        self._rewrite = False  # the output was replaced (a partial): store it next time
        self._lock = asyncio.Lock()
        self._timer: asyncio.Task[None] | None = None  # while it waits to flush
        self._flushing: set[asyncio.Task[None]] = set()  # timers, held until they end
        self._failed: BaseException | None = None
        self._closed = False  # the followers were told the run ended
        tasks.running_here(task)

    async def add(self, kind: model.EventKind, *, text: str = "", step: int = 0) -> None:
        """A token (appended to the output) or a partial (replacing it)."""
        if self._failed is not None:
            raise self._failed
        self._seq += 1
        event = model.Event(seq=self._seq, kind=kind, text=text, step=step)
        if kind is model.EventKind.TOKEN:
            self.output += text
        else:
            self.output, self._rewrite = text, True
        self._pending.append(event)
        self._followers.publish(self._task.id, event)
        if len(self._pending) >= self._max_events:
            await self.flush()
        else:
            self._flush_soon()

    def _flush_soon(self) -> None:
        """Store what waits ``flush_s`` from now, unless a flush is already due."""
        if self._timer is None:
            self._timer = asyncio.create_task(self._flush_later())
            self._flushing.add(self._timer)
            self._timer.add_done_callback(self._flushing.discard)

    async def _flush_later(self) -> None:
        await asyncio.sleep(self._flush_s)
        self._timer = None
        try:
            await self.flush()
        except (model.LeaseLost, psycopg.Error) as exc:
            self._failed = exc  # the run's next event raises it

    async def flush(self) -> None:
        """Store what waits (with the whole output when a step ended)."""
        async with self._lock:
            batch, self._pending = self._pending, []
            steps, self._steps = self._steps, []
            rewrite = bool(steps) or self._rewrite or len(self.output) >= 2 * self._written
            if not batch and not steps:
                return
            output = self.output if rewrite else None
            try:
                await self._tasks.write(self._task, batch, output=output, steps=steps)
            except BaseException:
                self._pending[:0] = batch
                self._steps[:0] = steps
                raise
            if batch:
                self._stored = batch[-1].seq
            if output is not None:
                self._written, self._rewrite = len(output), False

    def cite(self, citations: Sequence[model.Citation]) -> None:
        """Passages the run put into its model's context: each kept once, in order of use."""
        self.citations = model.cited(self.citations, citations)

    async def step(self, rec: model.StepRecord) -> None:
        """A step of the loop ended: its record is stored with the next batch (within
        ``flush_s``, or with the end when that comes first: a one-step task ends in one
        transaction)."""
        if self._failed is not None:
            raise self._failed
        self._steps.append(rec)
        self._flush_soon()

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()  # still waiting: it clears itself before it flushes
            self._timer = None

    async def finish(
        self,
        status: model.Status,
        *,
        error: model.TaskError | None,
        latency_ms: int,
    ) -> model.TaskRecord:
        """End the run with its final status, storing what waits in the same transaction."""
        self._stop_timer()
        async with self._lock:
            ended = await self._tasks.finish(
                self._task,
                status,
                output=self.output,
                error=error,
                latency_ms=latency_ms,
                logged=self._pending,
                citations=self.citations,
                steps=self._steps,
            )
            self._pending, self._steps = [], []
            self._stored = ended.seq
            # Before anything else runs: the followers here take the end from memory.
            self._followers.end(self._task.id, ended=ended)
            self._closed = True
        return ended

    async def close(self) -> None:
        """The run stopped: nothing more is handed out. Followers here that got events
        never stored are rewound to the last stored one."""
        self._stop_timer()
        self._tasks.ran(self._task)
        async with self._lock:  # a flush in flight lands (or fails) first
            if not self._closed:
                self._followers.end(self._task.id, stored=self._stored)
                self._closed = True
