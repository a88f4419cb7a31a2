"""Each replica keeps the agents its tasks look up in memory (``registry.CachedRegistry``),
and a change of an agent reaches the next task wherever it was made: on this replica
(at once), on another replica, or by hand in Postgres (as soon as its notification
arrives: migration 0009's trigger).

Two real agent services on one real Postgres, their tasks run on the scripted executor,
which records the instructions each model call got.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from typing import Any

import grpc
import psycopg

from aion.agent import db, model, registry
from aion.agent import testing as agent_testing
from aion.api.agent.v1 import agent_pb2, agent_pb2_grpc
from aion.api.v1 import agents_pb2, common_pb2, tasks_pb2

TENANT = "cache"


async def _register(stub: Any, name: str, instructions: str, target: str) -> None:
    await stub.RegisterAgent(
        agent_pb2.RegisterAgentRequest(
            tenant=TENANT,
            agent=agents_pb2.Agent(name=name, model="m"),
            instructions=instructions,
            executor_endpoints=[target],
        )
    )


async def _instructions_seen(stub: Any, executor: Any, name: str) -> str:
    """Run one task of ``name``: the instructions its model call got."""
    before = len(executor.requests)
    req = agent_pb2.RunRequest(tenant=TENANT, task=tasks_pb2.TaskSpec(agent=name, input="hi"))
    events = [e async for e in stub.Run(req, timeout=30)]
    assert events[-1].done.result.status == common_pb2.TASK_STATUS_OK, events[-1]
    [call] = executor.requests[before:]
    return str(next(m.content for m in call.messages if m.role == "system"))


async def _until_seen(stub: Any, executor: Any, name: str, wanted: str) -> float:
    """Seconds until a task of ``name`` runs with ``wanted`` (fails after 5 s)."""
    started = time.monotonic()
    seen = ""
    while time.monotonic() - started < 5:
        seen = await _instructions_seen(stub, executor, name)
        if seen == wanted:
            return time.monotonic() - started
        await asyncio.sleep(0.05)
    raise AssertionError(f"tasks still run with {seen!r}, 5 s after {wanted!r} was registered")


async def test_a_change_made_anywhere_reaches_the_next_task(
    new_service: Callable[..., Any], executor: Any, agent_dsn: str
) -> None:
    name = f"cached-{uuid.uuid4().hex[:6]}"
    async with (
        new_service() as one,
        new_service() as other,
        agent_testing.channel(one.address) as a,
        agent_testing.channel(other.address) as b,
    ):
        here, there = agent_pb2_grpc.AgentServiceStub(a), agent_pb2_grpc.AgentServiceStub(b)
        await _register(here, name, "first", executor.address)
        assert await _instructions_seen(there, executor, name) == "first"
        # Kept now: the same again, read from memory.
        assert await _instructions_seen(there, executor, name) == "first"

        # Changed on the other replica: heard.
        await _register(here, name, "second", executor.address)
        await _until_seen(there, executor, name, "second")

        # Changed by hand in Postgres: heard too.
        async with await psycopg.AsyncConnection.connect(agent_dsn, autocommit=True) as conn:
            await conn.execute(
                "UPDATE agents SET instructions = 'third' WHERE tenant = %s AND name = %s",
                (TENANT, name),
            )
        await _until_seen(there, executor, name, "third")

        # Changed on this replica: its very next task has it.
        await _register(there, name, "fourth", executor.address)
        assert await _instructions_seen(there, executor, name) == "fourth"

        # Deregistered elsewhere: the next task here is refused.
        await here.DeregisterAgent(
            agent_pb2.DeregisterAgentRequest(tenant=TENANT, name=name, owner="api")
        )
        deadline = time.monotonic() + 5
        code = None
        while code is None and time.monotonic() < deadline:
            try:
                await _instructions_seen(there, executor, name)
            except grpc.aio.AioRpcError as exc:  # NOT_FOUND, once the drop is heard
                code = exc.code()
            await asyncio.sleep(0.05)
        assert code == grpc.StatusCode.NOT_FOUND, "a deregistered agent still runs tasks"


class _Stored:
    """A stored registry that counts its reads, and can hold one until ``go`` is set."""

    def __init__(self) -> None:
        self.reads = 0
        self.instructions = "old"
        self.go = asyncio.Event()
        self.go.set()
        self.reading = asyncio.Event()  # a read is under way

    async def get(self, tenant: str, name: str) -> model.AgentRecord:
        self.reads += 1
        read = self.instructions
        self.reading.set()
        await self.go.wait()
        return model.AgentRecord(tenant=tenant, name=name, model="m", instructions=read)


async def test_nothing_is_kept_unheard() -> None:
    """Kept only while notifications are heard, and never a read that a change raced."""
    stored = _Stored()
    cache = registry.CachedRegistry(stored)  # type: ignore[arg-type]
    listener = db.Listener()
    cache.listen(listener)
    assert db.AGENTS_CHANNEL in listener.handlers

    # Before the listener connects: every lookup reads.
    for _ in range(2):
        await cache.get(TENANT, "a")
    assert stored.reads == 2

    cache.heard()
    await cache.get(TENANT, "a")
    await cache.get(TENANT, "a")
    assert stored.reads == 3  # kept

    # A read that a change overtook is not kept: it may hold the old row.
    cache.changed(f'["{TENANT}", "a"]')
    stored.go.clear()
    stored.reading.clear()
    reading = asyncio.ensure_future(cache.get(TENANT, "a"))
    await stored.reading.wait()
    stored.instructions = "new"
    cache.changed(f'["{TENANT}", "a"]')
    stored.go.set()
    assert (await reading).instructions == "old"
    assert (await cache.get(TENANT, "a")).instructions == "new"
    assert stored.reads == 5

    # The connection lost: nothing kept, every lookup reads, until heard again.
    cache.lost()
    await cache.get(TENANT, "a")
    await cache.get(TENANT, "a")
    assert stored.reads == 7

    # A notification it cannot parse drops everything.
    cache.heard()
    await cache.get(TENANT, "a")
    cache.changed("not json")
    await cache.get(TENANT, "a")
    assert stored.reads == 9
