"""Tasks and their event logs.

``TaskStore`` is the seam; ``MemoryTaskStore`` keeps tasks in this process
(the durable-tasks issue replaces it with Postgres and an outbox). Every
task keeps its ordered events, so a stream that joins late replays what was
produced and then follows.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import enum
import uuid
from collections.abc import AsyncIterator
from typing import Protocol

from aion.agent import model
from aion.core import errors


class EventKind(enum.Enum):
    """What a task event says."""

    STARTED = "started"
    TOKEN = "token"
    PARTIAL = "partial"
    DONE = "done"
    ERROR = "error"


@dataclasses.dataclass(frozen=True)
class Event:
    """One event of a task, numbered from 1."""

    seq: int
    kind: EventKind
    text: str = ""
    step: int = 0


@dataclasses.dataclass(frozen=True)
class TaskError:
    """Why a task did not end OK."""

    code: str
    message: str
    retriable: bool = False


@dataclasses.dataclass
class Task:
    """A task's record; mutated only through the store."""

    id: str
    spec: model.TaskSpec
    decision: model.Decision
    model_name: str
    status: model.Status = model.Status.QUEUED
    output: str = ""
    usage: model.Usage = dataclasses.field(default_factory=model.Usage)
    error: TaskError | None = None
    created_at: datetime.datetime = dataclasses.field(
        default_factory=lambda: datetime.datetime.now(datetime.UTC))
    finished_at: datetime.datetime | None = None
    events: list[Event] = dataclasses.field(default_factory=list)


class TaskStore(Protocol):
    """Where tasks live."""

    async def create(self, spec: model.TaskSpec, *, decision: model.Decision,
                     model_name: str) -> tuple[Task, bool]:
        """A new task, or the existing one for the same idempotency key (then False)."""
        ...

    async def get(self, tenant: str, task_id: str) -> Task:
        """The tenant's task, or NotFound."""
        ...

    async def set_running(self, task: Task) -> None:
        """QUEUED -> RUNNING."""
        ...

    async def append(self, task: Task, kind: EventKind, *, text: str = "",
                     step: int = 0) -> Event:
        """Add an event (final kinds go through ``finish``)."""
        ...

    async def finish(self, task: Task, status: model.Status, *,
                     error: TaskError | None = None) -> None:
        """End the task with its final status and emit done or error; once only."""
        ...

    def follow(self, task: Task, *, after: int = 0) -> AsyncIterator[Event]:
        """The task's events after ``after``: the ones so far, then new ones until it ends."""
        ...


class MemoryTaskStore:
    """An in-process task store."""

    def __init__(self) -> None:
        self._tasks: dict[str, Task] = {}
        self._by_key: dict[tuple[str, str, str], str] = {}
        self._changed: dict[str, asyncio.Condition] = {}

    async def create(self, spec: model.TaskSpec, *, decision: model.Decision,
                     model_name: str) -> tuple[Task, bool]:
        """A new task, or the existing one for the same idempotency key."""
        key = (spec.tenant, spec.agent, spec.idempotency_key)
        if spec.idempotency_key and key in self._by_key:
            existing = self._tasks[self._by_key[key]]
            if existing.spec.input != spec.input:
                raise errors.AlreadyExists(
                    f"idempotency key '{spec.idempotency_key}' was used for another input; "
                    "use a new key for a new task")
            return existing, False
        task = Task(id=str(uuid.uuid4()), spec=spec, decision=decision, model_name=model_name)
        self._tasks[task.id] = task
        self._changed[task.id] = asyncio.Condition()
        if spec.idempotency_key:
            self._by_key[key] = task.id
        return task, True

    async def get(self, tenant: str, task_id: str) -> Task:
        """The tenant's task; another tenant's task is reported as not found."""
        task = self._tasks.get(task_id)
        if task is None or task.spec.tenant != tenant:
            raise errors.NotFound(f"task '{task_id}' not found")
        return task

    async def set_running(self, task: Task) -> None:
        """QUEUED -> RUNNING."""
        task.status = model.Status.RUNNING

    async def append(self, task: Task, kind: EventKind, *, text: str = "",
                     step: int = 0) -> Event:
        """Add an event and wake the followers."""
        event = Event(seq=len(task.events) + 1, kind=kind, text=text, step=step)
        cond = self._changed[task.id]
        async with cond:
            task.events.append(event)
            cond.notify_all()
        return event

    async def finish(self, task: Task, status: model.Status, *,
                     error: TaskError | None = None) -> None:
        """Record the end and emit the final event; later calls do nothing."""
        if task.status.final:
            return
        task.status = status
        task.error = error
        task.finished_at = datetime.datetime.now(datetime.UTC)
        kind = EventKind.DONE if status is model.Status.OK else EventKind.ERROR
        await self.append(task, kind)

    async def follow(self, task: Task, *, after: int = 0) -> AsyncIterator[Event]:
        """Replay, then follow until the final event."""
        cond = self._changed[task.id]
        sent = after
        while True:
            seen = sent

            def more(seen: int = seen) -> bool:
                return len(task.events) > seen

            async with cond:
                await cond.wait_for(more)
                batch = task.events[sent:]
            for event in batch:
                sent = event.seq
                yield event
                if event.kind in (EventKind.DONE, EventKind.ERROR):
                    return
