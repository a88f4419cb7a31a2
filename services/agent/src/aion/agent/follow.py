"""Following a task: replay its stored events, then wake on new ones as they commit.

Events written by this process wake their followers at once (an in-process signal per
followed task); events written by another replica are found by polling. Postgres stays
the one log: a follower always reads events back from ``task_events``.
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

    def changed(self, task_id: str) -> None:
        """A change of the task committed here: wake its followers."""
        signal = self._signals.pop(task_id, None)
        if signal is not None:
            signal.set()

    async def follow(
        self, task_id: str, *, after: int = 0, poll_s: float = 0.25
    ) -> AsyncIterator[model.Event]:
        """Replay the stored events, then follow new ones until the final event. Events
        written by this process wake the follower at once; others within ``poll_s``."""
        sent = after
        self._followers[task_id] = self._followers.get(task_id, 0) + 1
        try:
            while True:
                signal = self._signals.setdefault(task_id, asyncio.Event())
                batch = await self._read(task_id, sent)
                for event in batch:
                    sent = event.seq
                    yield event
                    if event.kind in model.FINAL_KINDS:
                        return
                if not batch:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(signal.wait(), poll_s)
        finally:
            left = self._followers.pop(task_id) - 1
            if left:
                self._followers[task_id] = left
            else:  # nobody here follows it now (its writes may come from another replica)
                self._signals.pop(task_id, None)
