"""The Worker's background tasks and their drain order, with fakes in process."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest

from aion.agent import worker


class Journal:
    """What the fakes did, in order."""

    def __init__(self) -> None:
        self.entries: list[str] = []

    def forever(self, name: str) -> Any:
        async def run() -> None:
            self.entries.append(f"{name} started")
            try:
                await asyncio.Event().wait()
            finally:
                self.entries.append(f"{name} stopped")

        return run


class FakeTasks:
    def __init__(self, journal: Journal) -> None:
        self.listen = journal.forever("listener")


class FakeRunner:
    def __init__(self, journal: Journal) -> None:
        self._journal = journal
        self.heartbeats = journal.forever("heartbeats")
        self.dispatching = journal.forever("dispatcher")
        self.tasks = FakeTasks(journal)

    def dispatch(self, queue: str) -> Any:
        assert queue == "work"
        return self.dispatching()

    async def wait_idle(self, timeout: float) -> None:
        self._journal.entries.append("runs given their grace")

    async def release_all(self) -> None:
        self._journal.entries.append("runs released")


class FakePublisher:
    def __init__(self, journal: Journal) -> None:
        self._journal = journal
        self.run = journal.forever("outbox")

    async def drain(self, timeout_s: float) -> int:
        self._journal.entries.append("outbox drained")
        return 0


class Named:
    def __init__(self, journal: Journal, name: str) -> None:
        self.run = journal.forever(name)


class FakeRecovery:
    def __init__(self, journal: Journal) -> None:
        self.run = journal.forever("recovery")
        self.retain = journal.forever("retention")


def new_worker(journal: Journal) -> worker.Worker:
    return worker.Worker(
        run=cast(Any, FakeRunner(journal)),
        recovery=cast(Any, FakeRecovery(journal)),
        publisher=cast(Any, FakePublisher(journal)),
        consumer=cast(Any, Named(journal, "work-queue")),
        queue="work",
        grace_s=1.0,
    )


async def test_the_worker_names_its_tasks_and_drains_them_in_order() -> None:
    journal = Journal()
    server_stopped = asyncio.Event()

    async def stop_server() -> None:
        journal.entries.append("server stopped")
        server_stopped.set()

    async with new_worker(journal) as background:
        assert set(background.tasks) == {
            "outbox",
            "heartbeats",
            "recovery",
            "retention",
            "work-queue",
            "dispatcher",
            "listener",
        }
        await asyncio.sleep(0)
        await background.shutdown(stop_server())
        await background.shutdown()  # a second call does nothing more
    assert server_stopped.is_set()
    drain = journal.entries[journal.entries.index("dispatcher started") + 1 :]
    drain = [e for e in drain if not e.endswith("started")]
    assert sorted(drain[:2]) == ["dispatcher stopped", "work-queue stopped"]
    assert set(drain[2:4]) == {"server stopped", "runs given their grace"}
    assert drain[4:7] == ["runs released", "outbox stopped", "outbox drained"]
    # Followers hear of stored events until the end.
    assert sorted(drain[7:]) == [
        "heartbeats stopped",
        "listener stopped",
        "recovery stopped",
        "retention stopped",
    ]
    assert all(t.done() for t in background.tasks.values())


async def test_leaving_without_shutdown_drains_once() -> None:
    journal = Journal()
    async with new_worker(journal):
        await asyncio.sleep(0)
    assert journal.entries.count("outbox drained") == 1
    assert journal.entries.count("runs released") == 1


async def test_a_failing_body_stops_every_task_without_a_drain() -> None:
    journal = Journal()

    async def fail() -> None:
        async with new_worker(journal):
            await asyncio.sleep(0)
            raise RuntimeError("boom")

    with pytest.raises(BaseExceptionGroup) as failed:
        await fail()
    assert failed.group_contains(RuntimeError)
    assert "outbox drained" not in journal.entries
    assert "runs released" in journal.entries
    assert {
        "outbox stopped",
        "heartbeats stopped",
        "recovery stopped",
        "retention stopped",
        "work-queue stopped",
        "dispatcher stopped",
        "listener stopped",
    } <= set(journal.entries)
