"""Following a task: replay its stored events, then get new ones as they happen.

Three ways an event reaches a follower, fastest first:

- **live**: a run of this process hands each event to its followers here the moment it
  is made (``publish``), before it is stored (the run stores events in batches,
  ``run_log``);
- **notified**: events stored by any replica wake the followers of their task here:
  every event insert NOTIFYs ``db.TASK_EVENTS_CHANNEL`` (a run's batches just after they
  commit, ``db.Notifier``; other writers as they commit) and the replica's ``db.Listener``
  turns each notification into a ``changed`` (``TaskStore.listener``);
- **polled**: as a safety net (a notification lost while the listener reconnects), a
  follower that heard nothing for ``poll_s`` reads again.

Postgres stays the one log: whatever a follower cannot take from a live run here, it
reads back from ``task_events``. When a run here stops without storing all it handed
out (its lease was lost, the database failed), its followers are rewound to what was
stored (``end``): the next attempt's events are numbered on from there.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

from aion.agent import model

Read = Callable[[str, int], Awaitable[list[model.Event]]]


class Followers:
    """The streams following tasks in this process, and the signals that wake them."""

    def __init__(self, read: Read) -> None:
        self._read = read
        self._signals: dict[str, asyncio.Event] = {}
        self._followers: dict[str, int] = {}  # task id -> streams following it here
        self._live: dict[str, list[model.Event]] = {}  # task id -> its run's events here
        self._rewinds: dict[str, tuple[int, int]] = {}  # task id -> (rewinds, to seq)
        self._ended: dict[str, model.TaskRecord] = {}  # task id -> as a run here ended it

    def changed(self, task_id: str) -> None:
        """A change of the task committed (here or on another replica): wake its followers."""
        signal = self._signals.pop(task_id, None)
        if signal is not None:
            signal.set()

    def changed_all(self) -> None:
        """Wake every follower here (after notifications may have been missed)."""
        for task_id in list(self._signals):
            self.changed(task_id)

    def publish(self, task_id: str, event: model.Event) -> None:
        """A run here made ``event`` (numbered on from the last one): hand it out now."""
        self._live.setdefault(task_id, []).append(event)
        self.changed(task_id)

    def end(
        self,
        task_id: str,
        *,
        stored: int | None = None,
        ended: model.TaskRecord | None = None,
    ) -> None:
        """The run here stopped handing out events. With ``ended`` (the task as its final
        event left it, stored), its followers here get that event and the record without
        reading them back. With ``stored`` (the last event it stored), it stopped short of
        storing them all: its followers are rewound to there."""
        live = self._live.pop(task_id, [])
        if ended is not None and task_id in self._followers:
            kind = (
                model.EventKind.DONE if ended.status is model.Status.OK else model.EventKind.ERROR
            )
            self._live[task_id] = [*live, model.Event(seq=ended.seq, kind=kind)]
            self._ended[task_id] = ended  # until its last follower here leaves
        elif stored is not None and live and live[-1].seq > stored:
            times, _ = self._rewinds.get(task_id, (0, 0))
            self._rewinds[task_id] = (times + 1, stored)
        self.changed(task_id)

    def ended(self, task_id: str) -> model.TaskRecord | None:
        """The task as a run here ended it, while it is followed here; else None."""
        return self._ended.get(task_id)

    def _from_live(self, task_id: str, sent: int) -> list[model.Event] | None:
        """The live events after ``sent``; None unless they follow on from it."""
        live = self._live.get(task_id)
        if not live or live[0].seq > sent + 1:
            return None
        return live[sent + 1 - live[0].seq :]

    async def follow(
        self,
        task_id: str,
        *,
        after: int = 0,
        poll_s: float = 2.0,
        started: model.Event | None = None,
    ) -> AsyncIterator[model.Event]:
        """Replay the stored events, then follow new ones until the final event.

        ``started``: the task's ``started`` event (stored) of a run this caller has just
        launched here, right after ``after``. It is handed out without a read, and so is
        the wait for the run's first event: that event comes live, or its run's end wakes
        this follower. Nothing is read until then, or until ``poll_s`` passes."""
        sent = after
        seen, _ = self._rewinds.get(task_id, (0, 0))
        self._followers[task_id] = self._followers.get(task_id, 0) + 1
        pending: list[model.Event] = [started] if started is not None else []
        try:
            while True:
                signal = self._signals.setdefault(task_id, asyncio.Event())
                times, to = self._rewinds.get(task_id, (0, 0))
                if times != seen:  # the run here handed out events it never stored
                    seen, sent = times, min(sent, to)
                batch = pending or self._from_live(task_id, sent)
                if batch is None:
                    batch = await self._read(task_id, sent)
                for event in batch:
                    sent = event.seq
                    yield event
                    if event.kind in model.FINAL_KINDS:
                        return
                if not batch or pending:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(signal.wait(), poll_s)
                pending = []
        finally:
            left = self._followers.pop(task_id) - 1
            if left:
                self._followers[task_id] = left
            else:  # nobody here follows it now (its writes may come from another replica)
                self._signals.pop(task_id, None)
                self._rewinds.pop(task_id, None)
                if self._ended.pop(task_id, None) is not None:
                    self._live.pop(task_id, None)
