"""The streaming hot path: tokens reach followers without a database round trip each,
and a follower on another replica is woken by Postgres notifications, not polling.

Two agent service replicas share one database. Replica A runs a task; replica B's
``Follow`` stream polls only every 60 s, so it can only keep up if the notifications
that every stored batch of events sends wake it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import psycopg
import pytest

from aion.agent import follow, model
from aion.agent import testing as agent_testing
from aion.api.agent.v1 import agent_pb2, agent_pb2_grpc
from aion.api.v1 import agents_pb2, tasks_pb2

TENANT = "streaming"


@pytest.fixture(scope="module")
async def replicas(
    new_service: Callable[..., Any], executor: Any
) -> AsyncIterator[tuple[Any, Any]]:
    """Two replicas of one agent service (same database, same topics; B polls rarely),
    with the echo agent registered."""
    async with new_service() as a:
        b = new_service(topic_prefix=a.cfg.topic_prefix, follow_poll_s=60.0)
        async with b, agent_testing.channel(a.address) as chan:
            stub = agent_pb2_grpc.AgentServiceStub(chan)
            await stub.RegisterAgent(
                agent_pb2.RegisterAgentRequest(
                    tenant=TENANT,
                    agent=agents_pb2.Agent(name="echo", model="m"),
                    executor_endpoints=[executor.address],
                )
            )
            yield a, b


async def _run_on(
    address: str,
    text: str,
    out: list[tasks_pb2.TaskEvent],
    started: asyncio.Event | None = None,
) -> None:
    async with agent_testing.channel(address) as chan:
        stub = agent_pb2_grpc.AgentServiceStub(chan)
        request = agent_pb2.RunRequest(
            tenant=TENANT, task=tasks_pb2.TaskSpec(agent="echo", input=text)
        )
        async for event in stub.Run(request, timeout=60):
            out.append(event)
            if started is not None:
                started.set()


async def test_a_follower_on_another_replica_gets_the_tokens_without_polling(
    replicas: tuple[Any, Any], executor: Any
) -> None:
    a, b = replicas
    was_released = executor.release.is_set()
    executor.release.clear()
    on_a: list[tasks_pb2.TaskEvent] = []
    started = asyncio.Event()  # the STARTED event: the task is stored and runs on A
    running = asyncio.create_task(
        _run_on(a.address, "slow one two three four five six", on_a, started)
    )
    try:
        await asyncio.wait_for(started.wait(), 30)
        on_b: list[tasks_pb2.TaskEvent] = []
        async with agent_testing.channel(b.address) as chan:
            stub = agent_pb2_grpc.AgentServiceStub(chan)
            follow_b = stub.Follow(
                agent_pb2.TaskRef(tenant=TENANT, task_id=on_a[0].task_id), timeout=60
            )
            first = await anext(aiter(follow_b))  # B read what was stored, then waits
            on_b.append(first)
            executor.release.set()  # the words flow now; B hears of them only by NOTIFY
            # Polling every 60 s, B would take a minute; notifications wake it at once.
            async with asyncio.timeout(20):
                async for event in follow_b:
                    on_b.append(event)
        await asyncio.wait_for(running, 20)
    finally:
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running
        if not was_released:
            executor.release.clear()

    def seen(events: list[tasks_pb2.TaskEvent]) -> list[tuple[int, str, str]]:
        return [(e.seq, e.WhichOneof("event") or "", e.token.text) for e in events]

    assert on_b[-1].WhichOneof("event") == "done"
    assert seen(on_b) == seen(on_a)
    tokens = "".join(e.token.text for e in on_b if e.WhichOneof("event") == "token")
    assert tokens == "slow one two three four five six "


async def test_each_stored_batch_notifies_the_task_id(
    replicas: tuple[Any, Any], agent_dsn: str
) -> None:
    a, _ = replicas
    async with await psycopg.AsyncConnection.connect(agent_dsn, autocommit=True) as conn:
        await conn.execute("LISTEN aion_task_events")
        out: list[tasks_pb2.TaskEvent] = []
        await _run_on(a.address, "notify me please", out)
        heard: set[str] = set()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                async for note in conn.notifies():
                    heard.add(note.payload)
                    if out[0].task_id in heard:
                        break
    assert out[-1].WhichOneof("event") == "done"
    assert out[0].task_id in heard


# -- the followers' bookkeeping, without a database ---------------------------------------
class _Stored:
    """Events as ``task_events`` would hold them."""

    def __init__(self) -> None:
        self.events: list[model.Event] = []
        self.reads = 0

    async def read(self, task_id: str, after: int) -> list[model.Event]:
        self.reads += 1
        return [e for e in self.events if e.seq > after]


def _token(seq: int, text: str) -> model.Event:
    return model.Event(seq=seq, kind=model.EventKind.TOKEN, text=text)


async def _take(stream: AsyncIterator[model.Event], n: int) -> list[model.Event]:
    async with asyncio.timeout(5):
        return [await anext(stream) for _ in range(n)]


async def test_live_events_reach_a_follower_without_a_read() -> None:
    stored = _Stored()
    stored.events = [model.Event(seq=1, kind=model.EventKind.STARTED)]
    followers = follow.Followers(stored.read)
    stream = followers.follow("t", poll_s=60)
    assert [e.seq for e in await _take(stream, 1)] == [1]
    reads = stored.reads
    for seq, word in enumerate(["a", "b", "c"], start=2):
        followers.publish("t", _token(seq, word))
    assert [e.text for e in await _take(stream, 3)] == ["a", "b", "c"]
    assert stored.reads == reads  # none of them was read back from the database
    stored.events += [_token(2, "a"), _token(3, "b"), _token(4, "c")]
    stored.events.append(model.Event(seq=5, kind=model.EventKind.DONE))
    followers.end("t", stored=5)
    assert [e.kind for e in await _take(stream, 1)] == [model.EventKind.DONE]


async def test_a_run_that_stops_unstored_rewinds_its_followers() -> None:
    stored = _Stored()
    stored.events = [model.Event(seq=1, kind=model.EventKind.STARTED), _token(2, "a")]
    followers = follow.Followers(stored.read)
    stream = followers.follow("t", poll_s=60)
    assert [e.seq for e in await _take(stream, 2)] == [1, 2]
    followers.publish("t", _token(3, "b"))  # handed out, never stored: the run dies
    assert [e.text for e in await _take(stream, 1)] == ["b"]
    followers.end("t", stored=2)
    # The next attempt numbers on from what was stored.
    stored.events += [
        model.Event(seq=3, kind=model.EventKind.STARTED),
        _token(4, "a2"),
        model.Event(seq=5, kind=model.EventKind.DONE),
    ]
    followers.changed("t")
    got = await _take(stream, 3)
    assert [(e.seq, e.kind) for e in got] == [
        (3, model.EventKind.STARTED),
        (4, model.EventKind.TOKEN),
        (5, model.EventKind.DONE),
    ]
