"""The replica's background work as one component (the shape of temporal's ``Worker``).

``Worker`` owns this replica's named background tasks, in a dict:

- ``outbox``: the outbox relay (``outbox.Publisher.run``), committed events to Kafka;
- ``heartbeats``: the leases of the tasks this replica runs (``Runner.heartbeats``);
- ``recovery``: tasks whose worker was lost (``recovery.Recovery.run``);
- ``retention``: old tasks and processed-event records deleted (``Recovery.retain``);
- ``work-queue``: the work topic's consumer (``work_queue.consumer``), which marks
  queued tasks ready;
- ``dispatcher``: claims ready tasks while this replica has room (``Runner.dispatch``);
- ``listener``: Postgres notifications of stored task events, which wake this
  replica's followers of tasks run elsewhere (``TaskStore.listen``).

``async with Worker(...)`` starts them in a task group (one that fails stops the
replica). ``shutdown`` drains them in the one order that loses nothing, once:

1. stop ``work-queue`` and ``dispatcher``: take no new work;
2. let the running tasks end within the grace (alongside whatever the caller drains
   with them, such as the gRPC server), then give the rest back to the queue;
3. stop ``outbox`` and publish what is committed (the releases too) in what is left
   of the grace, instead of waiting for another replica to start;
4. stop the rest.

To add a background task, add it to ``_start`` and say where ``shutdown`` stops it.
"""

from __future__ import annotations

import asyncio
import logging
import types
from collections.abc import Awaitable, Coroutine
from typing import Any, Self

from aion.agent import kafka, outbox, recovery, runner
from aion.agent import load_feed as load_feed_mod

log = logging.getLogger(__name__)


class Worker:
    """This replica's background tasks, started together and drained in order."""

    def __init__(
        self,
        *,
        run: runner.Runner,
        recovery: recovery.Recovery,
        publisher: outbox.Publisher,
        consumer: kafka.IdempotentConsumer,
        queue: str,
        grace_s: float,
        load_feed: load_feed_mod.LoadFeed | None = None,
    ) -> None:
        self._load_feed = load_feed
        self._runner = run
        self._recovery = recovery
        self._publisher = publisher
        self._consumer = consumer
        self._queue = queue
        self._grace_s = grace_s
        self._group: asyncio.TaskGroup | None = None
        self._shutdown: asyncio.Task[None] | None = None
        self.tasks: dict[str, asyncio.Task[None]] = {}

    def _start(self, group: asyncio.TaskGroup) -> None:
        background: dict[str, Coroutine[Any, Any, None]] = {
            "outbox": self._publisher.run(),
            "heartbeats": self._runner.heartbeats(),
            "recovery": self._recovery.run(),
            "retention": self._recovery.retain(),
            "work-queue": self._consumer.run(),
            "dispatcher": self._runner.dispatch(self._queue),
            "listener": self._runner.tasks.listen(),
        }
        if self._load_feed is not None:
            background["executor-load"] = self._load_feed.run()
        for name, coro in background.items():
            self.tasks[name] = group.create_task(coro, name=f"agent.{name}")

    async def _stop(self, *names: str) -> None:
        stopping = [self.tasks[n] for n in names if not self.tasks[n].done()]
        for task in stopping:
            task.cancel()
        if stopping:
            await asyncio.wait(stopping)

    async def shutdown(self, *alongside: Awaitable[object]) -> None:
        """Drain in order (see the module); ``alongside`` (the gRPC server's shutdown)
        runs while the running tasks get their grace. A second call waits for the
        first."""
        if self._shutdown is None:
            self._shutdown = asyncio.ensure_future(self._drain(*alongside))
        await asyncio.shield(self._shutdown)

    async def _drain(self, *alongside: Awaitable[object]) -> None:
        loop = asyncio.get_running_loop()
        stopping = loop.time()
        await self._stop("work-queue", "dispatcher")
        await asyncio.gather(*alongside, self._runner.wait_idle(self._grace_s))
        await self._runner.release_all()
        await self._stop("outbox")
        left = self._grace_s - (loop.time() - stopping)
        await self._publisher.drain(max(1.0, left))
        await self._stop(*self.tasks)

    async def __aenter__(self) -> Self:
        self._group = asyncio.TaskGroup()
        await self._group.__aenter__()
        self._start(self._group)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: types.TracebackType | None,
    ) -> None:
        assert self._group is not None
        try:
            if exc_type is None:
                await self.shutdown()
            else:  # failing: no drain, but no run outlives the worker either
                await self._runner.release_all()
                await self._stop(*self.tasks)
        finally:
            await self._group.__aexit__(exc_type, exc, tb)
