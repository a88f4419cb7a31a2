"""Limits, fairness and retention of the agent service, over real gRPC, Postgres and Kafka.

Each test uses tenants of its own (the test database is shared by the session), so
the per-tenant limits count only its tasks.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeAlias

import grpc
import psycopg
import pytest

from aion.agent import testing
from aion.api.agent.v1 import agent_pb2, agent_pb2_grpc
from aion.api.v1 import agents_pb2, common_pb2, tasks_pb2
from aion.core import errors

Stub: TypeAlias = "agent_pb2_grpc.AgentServiceAsyncStub"
CAP = 2  # tasks one tenant may run at once in this module's service


def _tenant() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


def bomb(depth: int) -> str:
    """The security review's alias bomb (H3): nested aliases, fan-out 9."""
    lines = ['x0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"x{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, depth + 1)]
    lines.append(
        "apiVersion: aion.dev/v1alpha1\nkind: Agent\nmetadata: {name: x}\nspec:\n"
        f"  model: {{name: m}}\n  instructions: *a{depth}"
    )
    return "\n".join(lines)


def manifest(name: str, **spec: str) -> str:
    extra = "".join(f"\n  {k}: {v}" for k, v in spec.items())
    return (
        f"apiVersion: aion.dev/v1alpha1\nkind: Agent\nmetadata: {{name: {name}}}\n"
        f"spec:\n  model: {{name: m}}{extra}\n"
    )


@pytest.fixture(scope="module")
async def service(new_service: Callable[..., Any]) -> AsyncIterator[Any]:
    """A service with a small per-tenant limit, and retention that runs often."""
    async with new_service(
        max_running_per_tenant=CAP,
        max_concurrent_tasks=4,
        retention_interval_s=0.5,
        task_retention_s=3600.0,
        processed_event_retention_s=3600.0,
    ) as svc:
        yield svc


async def register(stub: Stub, tenant: str, address: str) -> None:
    await stub.RegisterAgent(
        agent_pb2.RegisterAgentRequest(
            tenant=tenant,
            agent=agents_pb2.Agent(name="echo", model="m"),
            instructions="Echo.",
            executor_endpoints=[address],
        )
    )


def run(
    tenant: str, text: str, *, asynchronous: bool = False, key: str = ""
) -> agent_pb2.RunRequest:
    return agent_pb2.RunRequest(
        tenant=tenant,
        asynchronous=asynchronous,
        task=tasks_pb2.TaskSpec(agent="echo", input=text, idempotency_key=key),
    )


async def rows(dsn: str, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        cur = await conn.execute(sql, args)
        return list(await cur.fetchall())


async def states(dsn: str, tenant: str) -> dict[str, str]:
    return dict(await rows(dsn, "SELECT id::text, state FROM tasks WHERE tenant = %s", tenant))


async def until(check: Callable[[], Any], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


# -- inputs ---------------------------------------------------------------------------
async def test_the_alias_bomb_is_refused_fast_and_registers_nothing(
    stub: Stub, service: Any
) -> None:
    tenant = _tenant()
    started = time.perf_counter()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.ApplyAgents(
            agent_pb2.ApplyAgentsRequest(
                tenant=tenant, request=agents_pb2.ApplyAgentsRequest(manifest=bomb(8))
            ),
            timeout=30,
        )
    took = time.perf_counter() - started
    print(f"alias bomb (depth 8, {len(bomb(8))} bytes) refused in {took * 1000:.1f} ms")
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "aliases" in (info.value.details() or "")
    assert errors.from_rpc_error(info.value).field == "manifest"
    assert (
        await rows(
            service.cfg.postgres_dsn.get_secret_value(),
            "SELECT name FROM agents WHERE tenant = %s",
            tenant,
        )
        == []
    )


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("# " + "x" * (256 * 1024), "bytes; the limit is"),
        (manifest("big", maxTokens="100000"), "spec.maxTokens is 100000"),
        (manifest("bad", instructions="[" + ",".join(["1"] * 5000) + "]"), "spec.instructions"),
        (manifest("ok") + "---\n" + manifest("Not_A_Name"), "metadata.name"),
        ("key: &anchor value\n", "anchors"),
    ],
)
async def test_bad_manifests_are_invalid_argument_saying_what_to_fix(
    stub: Stub, service: Any, text: str, says: str
) -> None:
    tenant = _tenant()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.ApplyAgents(
            agent_pb2.ApplyAgentsRequest(
                tenant=tenant, request=agents_pb2.ApplyAgentsRequest(manifest=text)
            ),
            timeout=30,
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = info.value.details() or ""
    assert says in details
    assert len(details) < 2000  # bounded, whatever the input
    assert (
        await rows(
            service.cfg.postgres_dsn.get_secret_value(),
            "SELECT name FROM agents WHERE tenant = %s",
            tenant,
        )
        == []
    )


@pytest.mark.parametrize(
    ("text", "key", "field"),
    [
        ("x" * 101, "", "task.input"),  # the suite's max_input_chars is 100
        ("hi", "k" * 257, "task.idempotency_key"),
        ("hi", "k" * 6000, "task.idempotency_key"),  # once UNAVAILABLE "retry shortly" (L6)
    ],
)
@pytest.mark.parametrize("asynchronous", [False, True])
async def test_oversized_inputs_are_invalid_argument_and_write_nothing(
    stub: Stub, service: Any, text: str, key: str, field: str, asynchronous: bool
) -> None:
    tenant = _tenant()
    await register(stub, tenant, service.executor.address)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Submit(run(tenant, text, asynchronous=asynchronous, key=key), timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert errors.from_rpc_error(info.value).field == field
    assert await states(service.cfg.postgres_dsn.get_secret_value(), tenant) == {}


# -- per-tenant limit and callers that leave -------------------------------------------
async def test_a_tenant_at_its_limit_is_refused_while_another_runs_and_leaving_frees_slots(
    stub: Stub, service: Any
) -> None:
    dsn = service.cfg.postgres_dsn.get_secret_value()
    a, b = _tenant(), _tenant()
    for t in (a, b):
        await register(stub, t, service.executor.address)
    # Tenant A fills its limit with synchronous runs that hang: one Run stream, one Submit.
    stream = stub.Run(run(a, "hang"), timeout=60)
    assert (await anext(aiter(stream))).WhichOneof("event") == "started"
    submit = stub.Submit(run(a, "hang"), timeout=60)

    async def a_full() -> bool:
        return list((await states(dsn, a)).values()) == ["RUNNING"] * CAP

    await until(a_full, "tenant A to run its limit")

    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Submit(run(a, "one more"), timeout=10)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    refused = errors.from_rpc_error(info.value)
    assert refused.retry_after_s is not None
    assert refused.retry_after_s > 0
    assert len(await states(dsn, a)) == CAP  # the refused one was not recorded

    # Tenant B is not held back by A.
    done = await stub.Submit(run(b, "b runs"), timeout=20)
    assert done.result.status == common_pb2.TASK_STATUS_OK

    # A's callers leave: both synchronous tasks end CANCELED and free the slots.
    stream.cancel()
    submit.cancel()

    async def a_canceled() -> bool:
        return list((await states(dsn, a)).values()) == ["CANCELED"] * CAP

    await until(a_canceled, "tenant A's abandoned tasks to end CANCELED")
    again = await stub.Submit(run(a, "room again"), timeout=20)
    assert again.result.status == common_pb2.TASK_STATUS_OK


async def test_simultaneous_starts_of_a_tenant_never_pass_its_limit_and_keys_still_find_tasks(
    new_service: Callable[..., Any],
) -> None:
    """The limit is counted under the tenant's lock, in the statement that records the
    task: starts that race are admitted up to the limit, never past it. (A replica of
    its own, running nothing else: its own limit refuses nothing here.)"""
    async with (
        new_service(max_running_per_tenant=CAP, max_concurrent_tasks=16) as service,
        testing.channel(service.address) as channel,
    ):
        await _race_a_full_tenant(agent_pb2_grpc.AgentServiceStub(channel), service)


async def _race_a_full_tenant(stub: Stub, service: Any) -> None:
    dsn = service.cfg.postgres_dsn.get_secret_value()
    tenant = _tenant()
    await register(stub, tenant, service.executor.address)
    streams = [stub.Run(run(tenant, "hang", key=f"k{i}"), timeout=60) for i in range(6)]
    try:
        firsts = await asyncio.gather(*(anext(aiter(s)) for s in streams), return_exceptions=True)
        started = {i: f for i, f in enumerate(firsts) if isinstance(f, tasks_pb2.TaskEvent)}
        refused = [f for f in firsts if isinstance(f, grpc.aio.AioRpcError)]
        assert len(started) == CAP, firsts
        assert [r.code() for r in refused] == [grpc.StatusCode.RESOURCE_EXHAUSTED] * (6 - CAP)
        assert sorted(await states(dsn, tenant)) == sorted(e.task_id for e in started.values())
        assert list((await states(dsn, tenant)).values()) == ["RUNNING"] * CAP

        # The tenant is full, yet a caller repeating a running task's key is given it.
        i, event = next(iter(started.items()))
        again = stub.Run(run(tenant, "hang", key=f"k{i}"), timeout=60)
        first = await anext(aiter(again))
        assert (first.WhichOneof("event"), first.task_id) == ("started", event.task_id)
        again.cancel()
        # A new key is still refused, and nothing of it is recorded.
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Submit(run(tenant, "hang", key="new"), timeout=10)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert len(await states(dsn, tenant)) == CAP
    finally:
        for s in streams:
            s.cancel()

    async def canceled() -> bool:
        return list((await states(dsn, tenant)).values()) == ["CANCELED"] * CAP

    await until(canceled, "the admitted tasks to end CANCELED once their callers left")


async def test_a_run_calls_its_model_while_its_task_is_recorded_and_a_refused_one_leaves_nothing(
    new_service: Callable[..., Any],
) -> None:
    """A synchronous task's model call starts while its task is recorded (held here by
    the tenant's lock, which recording takes): the caller gets nothing until the record
    commits, then the whole stream. A start the record refuses (the tenant full) ends
    RESOURCE_EXHAUSTED with nothing recorded and its model call cancelled; the tenant's
    next starts wait for their record before calling the model."""
    async with (
        new_service(max_running_per_tenant=CAP, max_concurrent_tasks=16) as service,
        testing.channel(service.address) as channel,
    ):
        stub = agent_pb2_grpc.AgentServiceStub(channel)
        executor = service.executor
        dsn = service.cfg.postgres_dsn.get_secret_value()
        tenant = _tenant()
        await register(stub, tenant, executor.address)

        async def recording_held(text: str) -> tuple[Any, Any]:
            """A Run of ``text`` started while the tenant's lock is held elsewhere: its
            stream, and its first event's read, once its model call came in."""
            before, sent = len(executor.requests), executor.sent
            async with await psycopg.AsyncConnection.connect(dsn) as lock:
                await lock.execute(
                    "SELECT pg_advisory_xact_lock(hashtext(%s))", (f"aion.tenant:{tenant}",)
                )
                stream = stub.Run(run(tenant, text), timeout=60)
                first = asyncio.ensure_future(anext(aiter(stream)))

                async def called() -> bool:
                    return len(executor.requests) > before

                async def answered() -> bool:
                    return bool(executor.sent - sent >= len(text.split()))

                await until(called, "the model call, while the task is being recorded")
                # Every token is on the wire to the run: none may reach the caller yet.
                await until(answered, "the model's tokens, while the task is being recorded")
                assert not first.done(), "the caller got an event before the task was recorded"
                assert len(await states(dsn, tenant)) == known, "recorded under the lock"
            return stream, first

        known = 0
        stream, first = await recording_held("early words")
        events = [await first, *[e async for e in stream]]
        kinds = [e.WhichOneof("event") for e in events]
        assert kinds == ["started", "token", "token", "partial", "done"], kinds
        assert events[-1].done.result.output == "early words "
        assert {e.task_id for e in events} == set(await states(dsn, tenant))

        # The tenant full: a start the record refuses.
        done = set(await states(dsn, tenant))
        hanging = [stub.Run(run(tenant, "hang"), timeout=60) for _ in range(CAP)]
        try:
            for s in hanging:
                assert (await anext(aiter(s))).WhichOneof("event") == "started"
            known = len(done) + CAP
            stream, first = await recording_held("hang")
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await first
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            recorded = await states(dsn, tenant)
            assert sorted(v for k, v in recorded.items() if k not in done) == ["RUNNING"] * CAP

            async def cancelled() -> bool:
                return bool(executor.streaming == CAP)

            await until(
                cancelled,
                f"the refused start's model call to be cancelled ({executor.streaming} calls)",
            )
            # Refused a moment ago: the next start is recorded (refused) before any call.
            before = len(executor.requests)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.Submit(run(tenant, "hang"), timeout=10)
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert len(executor.requests) == before
        finally:
            for s in hanging:
                s.cancel()


async def test_a_caller_given_an_existing_task_does_not_cancel_it_by_leaving(
    stub: Stub, service: Any
) -> None:
    dsn = service.cfg.postgres_dsn.get_secret_value()
    tenant = _tenant()
    await register(stub, tenant, service.executor.address)
    first = stub.Run(run(tenant, "hang", key="same"), timeout=60)
    assert (await anext(aiter(first))).WhichOneof("event") == "started"
    second = stub.Run(run(tenant, "hang", key="same"), timeout=60)  # the same task
    assert (await anext(aiter(second))).WhichOneof("event") == "started"
    second.cancel()
    await asyncio.sleep(1.5)
    assert list((await states(dsn, tenant)).values()) == ["RUNNING"]
    first.cancel()  # its own caller leaves: now it ends

    async def canceled() -> bool:
        return list((await states(dsn, tenant)).values()) == ["CANCELED"]

    await until(canceled, "the task to end CANCELED once its own caller left")


async def test_an_asynchronous_task_survives_its_caller(stub: Stub, service: Any) -> None:
    dsn = service.cfg.postgres_dsn.get_secret_value()
    tenant = _tenant()
    await register(stub, tenant, service.executor.address)
    submitted = await stub.Submit(run(tenant, "hang", asynchronous=True), timeout=10)
    follow = stub.Follow(agent_pb2.TaskRef(tenant=tenant, task_id=submitted.task_id), timeout=30)
    async for event in follow:
        if event.WhichOneof("event") == "token":
            break
    follow.cancel()
    await asyncio.sleep(1.5)  # past a few heartbeats
    assert (await states(dsn, tenant))[submitted.task_id] == "RUNNING"
    result = await stub.CancelTask(
        agent_pb2.TaskRef(tenant=tenant, task_id=submitted.task_id), timeout=20
    )
    assert result.status == common_pb2.TASK_STATUS_CANCELED


async def test_queued_tasks_of_a_tenant_wait_for_its_limit(stub: Stub, service: Any) -> None:
    dsn = service.cfg.postgres_dsn.get_secret_value()
    tenant = _tenant()
    await register(stub, tenant, service.executor.address)
    service.executor.release.clear()
    try:
        ids = [
            (await stub.Submit(run(tenant, f"slow {i}", asynchronous=True), timeout=10)).task_id
            for i in range(5)
        ]

        async def capped() -> bool:
            got = list((await states(dsn, tenant)).values())
            return got.count("RUNNING") == CAP and got.count("QUEUED") == 5 - CAP

        await until(capped, "the tenant's limit to hold its queued tasks")
        await asyncio.sleep(1.5)  # several dispatcher polls: still no more than its limit
        assert await capped()
    finally:
        service.executor.release.set()

    async def all_ok() -> bool:
        return list((await states(dsn, tenant)).values()) == ["OK"] * len(ids)

    await until(all_ok, "every queued task to run")


async def test_queued_work_is_shared_fairly_between_tenants(
    new_service: Callable[..., Any],
) -> None:
    # No per-tenant limit in the way here: two slots, and tenant A queues 50 tasks first.
    async with new_service(max_concurrent_tasks=2, max_running_per_tenant=100) as svc:
        dsn = svc.cfg.postgres_dsn.get_secret_value()
        a, b = _tenant(), _tenant()
        async with testing.channel(svc.address) as chan:
            stub: Stub = agent_pb2_grpc.AgentServiceStub(chan)
            for t in (a, b):
                await register(stub, t, svc.executor.address)
            svc.executor.release.clear()
            try:
                for i in range(50):
                    await stub.Submit(run(a, f"slow a{i}", asynchronous=True), timeout=10)

                async def a_fills() -> bool:
                    return list((await states(dsn, a)).values()).count("RUNNING") == 2

                await until(a_fills, "tenant A to fill both slots")
                task_b = (
                    await stub.Submit(run(b, "slow b", asynchronous=True), timeout=10)
                ).task_id
                await asyncio.sleep(1.0)  # B's record is consumed and B is ready
            finally:
                svc.executor.release.set()

            async def drained() -> bool:
                got = list((await states(dsn, a)).values()) + list((await states(dsn, b)).values())
                return got == ["OK"] * 51

            await until(drained, "all 51 tasks to run", timeout=120)
        ((b_started,),) = await rows(dsn, "SELECT started_at FROM tasks WHERE id = %s", task_b)
        ((later,),) = await rows(
            dsn, "SELECT count(*) FROM tasks WHERE tenant = %s AND started_at > %s", a, b_started
        )
    # B ran in one of the first slots freed, not after A's queue: A's 48 waiting tasks
    # but at most one more (a slot freed while B's record was on its way) started after.
    assert later >= 46, f"only {later} of tenant A's tasks started after tenant B's"


# -- retention ------------------------------------------------------------------------
async def test_retention_deletes_old_finished_tasks_with_their_events_and_steps(
    stub: Stub, service: Any
) -> None:
    dsn = service.cfg.postgres_dsn.get_secret_value()
    tenant = _tenant()
    await register(stub, tenant, service.executor.address)
    old = (await stub.Submit(run(tenant, "old words"), timeout=20)).task_id
    recent = (await stub.Submit(run(tenant, "recent words"), timeout=20)).task_id
    running = (await stub.Submit(run(tenant, "hang", asynchronous=True), timeout=10)).task_id

    async def is_running() -> bool:
        return (await states(dsn, tenant)).get(running) == "RUNNING"

    await until(is_running, "the hanging task to run")
    assert (await rows(dsn, "SELECT count(*) FROM task_events WHERE task_id = %s", old))[0][0]
    assert (await rows(dsn, "SELECT count(*) FROM task_steps WHERE task_id = %s", old))[0][0]
    gone_event, kept_event = f"old-{uuid.uuid4()}", f"new-{uuid.uuid4()}"
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        await conn.execute(
            "UPDATE tasks SET finished_at = now() - interval '2 hours',"
            " created_at = now() - interval '2 hours' WHERE id = %s",
            (old,),
        )
        # Created long ago but still running: kept.
        await conn.execute(
            "UPDATE tasks SET created_at = now() - interval '2 hours' WHERE id = %s", (running,)
        )
        await conn.execute(
            "INSERT INTO processed_events (consumer, event_id, processed_at) VALUES"
            " ('test', %s, now() - interval '2 hours'), ('test', %s, now())",
            (gone_event, kept_event),
        )
        await conn.commit()

    async def purged() -> bool:
        return old not in await states(dsn, tenant)

    await until(purged, "retention to delete the old task")
    assert set(await states(dsn, tenant)) == {recent, running}
    for table in ("task_events", "task_steps"):
        assert (await rows(dsn, f"SELECT count(*) FROM {table} WHERE task_id = %s", old))[0][0] == 0
        assert (await rows(dsn, f"SELECT count(*) FROM {table} WHERE task_id = %s", recent))[0][
            0
        ] > 0

    async def events_pruned() -> bool:
        return not await rows(dsn, "SELECT 1 FROM processed_events WHERE event_id = %s", gone_event)

    await until(events_pruned, "retention to prune the old processed-event record")
    assert await rows(dsn, "SELECT 1 FROM processed_events WHERE event_id = %s", kept_event)
    await stub.CancelTask(agent_pb2.TaskRef(tenant=tenant, task_id=running), timeout=20)
