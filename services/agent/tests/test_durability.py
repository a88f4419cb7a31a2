"""Durability against the real broker and database: a SIGKILLed service, a restarted
Kafka broker, a restarted Postgres. Nothing accepted is lost, nothing runs twice at once.

The broker and Postgres that these tests stop are instances of their own (own
ports, own folders), never the shared ones.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import psycopg
import pytest
from prometheus_client import parser

from aion.agent import db, events, kafka, outbox
from aion.agent import testing as agent_testing
from aion.api.agent.v1 import agent_pb2, agent_pb2_grpc
from aion.api.events.v1 import events_pb2
from aion.api.v1 import agents_pb2, common_pb2, tasks_pb2
from aion.infra.component import Component
from aion.infra.devstack import suite
from aion.infra.kafka import Kafka
from aion.infra.paths import Layout
from aion.infra.postgres import Postgres

FINAL = (
    common_pb2.TASK_STATUS_OK,
    common_pb2.TASK_STATUS_ERROR,
    common_pb2.TASK_STATUS_TIMEOUT,
    common_pb2.TASK_STATUS_CANCELED,
)
TENANT = "durable"


# -- helpers ------------------------------------------------------------------------
class Proc:
    """``python -m aion.agent`` as a child process, logging to a file."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.port = suite.free_port()
        self.metrics_port = suite.free_port()
        self.health_port = suite.free_port()
        self.log = log
        full = {
            **os.environ,
            **env,
            **agent_testing.process_env(log.parent / "tls"),
            "AION_AGENT_PORT": str(self.port),
            "AION_AGENT_METRICS_PORT": str(self.metrics_port),
            "AION_AGENT_HEALTH_PORT": str(self.health_port),
        }
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "aion.agent"],
                env=full,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def ready(self, timeout: float = 90) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while (
            await asyncio.to_thread(suite.health_status, f"127.0.0.1:{self.health_port}")
            != "SERVING"
        ):
            assert self.process.poll() is None, f"agent exited; its log:\n{self.tail()}"
            assert loop.time() < deadline, f"agent not SERVING; its log:\n{self.tail()}"
            await asyncio.sleep(0.2)

    def metric(self, name: str, **labels: str) -> float:
        """A sample of the process's /metrics (0 when absent)."""
        text = httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10).text
        for family in parser.text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and sample.labels == labels:
                    return float(sample.value)
        return 0.0

    def tail(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-40:])

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def service_env(
    dsn: str,
    bootstrap: str,
    prefix: str,
    executor: str,
    worker: str,
) -> dict[str, str]:
    return {
        "AION_AGENT_POSTGRES_DSN": dsn,
        "AION_AGENT_KAFKA_BOOTSTRAP": bootstrap,
        "AION_AGENT_TOPIC_PREFIX": prefix,
        "AION_AGENT_EXECUTOR_TARGET": executor,
        "AION_AGENT_WORKER_ID": worker,
        "AION_AGENT_LEASE_S": "3",
        "AION_AGENT_HEARTBEAT_S": "0.5",
        "AION_AGENT_REAPER_INTERVAL_S": "0.5",
        "AION_AGENT_GRACE_S": "1",
        "AION_AGENT_POOL_TIMEOUT_S": "2",
    }


async def register(target: str, executor: str) -> None:
    async with agent_testing.channel(target) as chan:
        stub: agent_pb2_grpc.AgentServiceAsyncStub = agent_pb2_grpc.AgentServiceStub(chan)
        await stub.RegisterAgent(
            agent_pb2.RegisterAgentRequest(
                tenant=TENANT,
                agent=agents_pb2.Agent(name="worker", model="m"),
                executor_endpoints=[executor],
            ),
            timeout=20,
        )


async def submit(target: str, text: str, *, asynchronous: bool = True, retry_for: float = 0) -> str:
    """Submit a task; with ``retry_for``, retry a failing call that long."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + retry_for
    while True:
        try:
            async with agent_testing.channel(target) as chan:
                stub: agent_pb2_grpc.AgentServiceAsyncStub = agent_pb2_grpc.AgentServiceStub(chan)
                resp = await stub.Submit(
                    agent_pb2.RunRequest(
                        tenant=TENANT,
                        asynchronous=asynchronous,
                        task=tasks_pb2.TaskSpec(agent="worker", input=text),
                    ),
                    timeout=30,
                )
                return resp.task_id
        except grpc.aio.AioRpcError:
            if loop.time() >= deadline:
                raise
            await asyncio.sleep(0.5)


async def results(
    target: str,
    ids: list[str],
    *,
    timeout: float = 120,
) -> dict[str, common_pb2.TaskResult]:
    """Each task's result once all have ended (or what they are when ``timeout`` passes)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    out: dict[str, common_pb2.TaskResult] = {}
    async with agent_testing.channel(target) as chan:
        stub: agent_pb2_grpc.AgentServiceAsyncStub = agent_pb2_grpc.AgentServiceStub(chan)
        while True:
            for task_id in ids:
                # The service (or its database) may be coming back.
                with contextlib.suppress(grpc.aio.AioRpcError):
                    out[task_id] = await stub.GetTask(
                        agent_pb2.TaskRef(tenant=TENANT, task_id=task_id), timeout=10
                    )
            if all(task_id in out and out[task_id].status in FINAL for task_id in ids) or (
                loop.time() > deadline
            ):
                return out
            await asyncio.sleep(0.3)


class Private:
    """An instance of its own, on other ports, in its own folder, stopped and started
    at will (each start is a fresh Component object over the same folder and ports)."""

    def __init__(self, component: type[Component], env: dict[str, str]) -> None:
        self._cls = component
        self._env = env
        self.home = Path(f"/var/tmp/aion-test-{component.__name__.lower()}-{uuid.uuid4().hex[:8]}")
        self.current: Any = None

    def start(self) -> None:
        saved = {k: os.environ.get(k) for k in self._env}
        os.environ.update(self._env)
        try:
            self.current = self._cls(Layout(home=self.home, cache=Layout.from_env().cache))
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        try:
            self.current.up()
        except Exception as exc:
            self.current.down()
            pytest.fail(str(exc), pytrace=False)

    def stop(self) -> None:
        if self.current is not None:
            self.current.down()

    def kill(self) -> None:
        """SIGKILL every process of the instance (a crash: no clean shutdown)."""
        if self.current is not None:
            for daemon in self.current.daemons():
                daemon.kill()


def private(component: type[Component], env: dict[str, str]) -> Iterator[Private]:
    instance = Private(component, env)
    instance.start()
    try:
        yield instance
    finally:
        instance.stop()
        shutil.rmtree(instance.home, ignore_errors=True)


@pytest.fixture
def own_kafka() -> Iterator[Private]:
    yield from private(
        Kafka,
        {
            "AION_KAFKA_PORT": str(suite.free_port()),
            "AION_KAFKA_CONTROLLER_PORT": str(suite.free_port()),
        },
    )


@pytest.fixture
def own_postgres() -> Iterator[Private]:
    yield from private(Postgres, {"AION_POSTGRES_PORT": str(suite.free_port())})


# -- SIGKILL ------------------------------------------------------------------------
async def test_sigkilled_service_loses_no_task_and_runs_none_twice_at_once(
    agent_dsn: str, kafka: Kafka, executor: Any, tmp_path: Path
) -> None:
    prefix = f"k{uuid.uuid4().hex[:8]}."
    env = {
        name: service_env(agent_dsn, kafka.bootstrap, prefix, executor.address, name)
        for name in ("a", "b", "c")
    }
    executor.release.clear()
    first = Proc(env["a"], tmp_path / "a.log")
    survivors: list[Proc] = []
    try:
        await first.ready()
        await register(first.target, executor.address)
        ids = [await submit(first.target, f"slow {i} words") for i in range(5)]

        def running_first_attempts() -> set[str]:
            return {t for t, a in executor.calls if a == "1" and t in ids}

        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60
        while running_first_attempts() != set(ids):
            assert loop.time() < deadline, f"tasks did not start: {first.tail()}"
            await asyncio.sleep(0.1)
        first.stop(signal.SIGKILL)  # mid-task: every run is waiting for its first token
        survivors = [Proc(env["b"], tmp_path / "b.log"), Proc(env["c"], tmp_path / "c.log")]
        for proc in survivors:
            await proc.ready()
        executor.release.set()
        got = await results(survivors[0].target, ids)
        # Each task's lost lease was reclaimed (queued again) once, by one survivor.
        reclaims = sum(
            p.metric("aion_agent_task_lease_reclaims_total", outcome="requeued") for p in survivors
        )
    finally:
        executor.release.set()
        first.stop(signal.SIGKILL)
        for proc in survivors:
            proc.stop()
    logs = "\n".join(p.tail() for p in survivors)
    assert {t: got[t].status for t in ids} == dict.fromkeys(ids, common_pb2.TASK_STATUS_OK), logs
    assert all(got[t].output.startswith("slow ") for t in ids)
    assert reclaims == len(ids)
    # The second attempt ran once per task: never by two workers, never again.
    later = collections.Counter((t, a) for t, a in executor.calls if t in ids and a != "1")
    assert later == {(t, "2"): 1 for t in ids}
    async with await psycopg.AsyncConnection.connect(agent_dsn) as conn:
        cur = await conn.execute(
            "SELECT id::text, attempts FROM tasks WHERE id = ANY(%s::uuid[])", (ids,)
        )
        assert dict(await cur.fetchall()) == dict.fromkeys(ids, 2)
        cur = await conn.execute(
            "SELECT DISTINCT worker FROM task_steps WHERE task_id = ANY(%s::uuid[])", (ids,)
        )
        assert {r[0] for r in await cur.fetchall()} <= {"b", "c"}


# -- Kafka broker restart -------------------------------------------------------------
async def outbox_rows(dsn: str, prefix: str) -> int:
    """Rows of these topics still waiting in the outbox."""
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        cur = await conn.execute(
            "SELECT count(*) FROM outbox WHERE starts_with(topic, %s)", (prefix,)
        )
        row = await cur.fetchone()
    return int(row[0]) if row else 0


async def outbox_drained(dsn: str, prefix: str, timeout: float = 90) -> int:
    """Waits for the outbox rows of these topics to be published; returns those left."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        waiting = await outbox_rows(dsn, prefix)
        if not waiting or loop.time() > deadline:
            return waiting
        await asyncio.sleep(0.2)


@pytest.mark.parametrize("crash", [False, True], ids=["sigterm", "sigkill"])
async def test_broker_restart_loses_and_duplicates_no_event_for_consumers(
    agent_dsn: str,
    own_kafka: Private,
    executor: Any,
    tmp_path: Path,
    crash: bool,
) -> None:
    prefix = f"b{uuid.uuid4().hex[:8]}."
    proc = Proc(
        service_env(agent_dsn, own_kafka.current.bootstrap, prefix, executor.address, "br"),
        tmp_path / "agent.log",
    )
    ids: list[str] = []
    try:
        await proc.ready()
        await register(proc.target, executor.address)
        for i in range(12):
            ids.append(await submit(proc.target, f"word {i}", retry_for=30))
            if i == 4:  # tasks keep being accepted meanwhile
                await asyncio.to_thread(own_kafka.kill if crash else own_kafka.stop)
            if i == 8:
                await asyncio.to_thread(own_kafka.start)
        got = await results(proc.target, ids)
        # Every state change reaches the broker once it is back: the outbox empties.
        waiting = await outbox_drained(agent_dsn, prefix)
    finally:
        proc.stop()
    assert {t: got[t].status for t in ids} == dict.fromkeys(ids, common_pb2.TASK_STATUS_OK), (
        proc.tail()
    )
    assert waiting == 0, f"{waiting} events still in the outbox; the agent's log:\n{proc.tail()}"
    # A consumer of the task events (the service's own idempotent consumer) sees each
    # task's QUEUED, RUNNING, OK once, in order, whatever the broker went through.
    await assert_each_state_once(agent_dsn, own_kafka.current.bootstrap, prefix, ids)


async def assert_each_state_once(
    dsn: str,
    bootstrap: str,
    prefix: str,
    ids: list[str],
) -> None:
    """The task-events topic holds QUEUED, RUNNING, OK for each task, once each, in order."""
    seen: dict[str, list[int]] = collections.defaultdict(list)
    handled: collections.Counter[str] = collections.Counter()
    complete = asyncio.Event()

    async def handle(env: events_pb2.Envelope, conn: Any) -> None:
        handled[env.id] += 1
        data = events_pb2.TaskStateChanged()
        env.data.Unpack(data)
        seen[data.task_id].append(data.status)
        if all(len(seen[t]) >= 3 for t in ids):
            complete.set()

    topics = events.Topics(prefix)
    async with db.pool(dsn, max_size=2) as pool:
        consumer = kafka.IdempotentConsumer(
            name="check",
            topic=topics.task_events,
            group=topics.group("check"),
            bootstrap=bootstrap,
            pool=pool,
            handle=handle,
            dead_letter=topics.dead_letter(topics.task_events),
        )
        running = asyncio.create_task(consumer.run())
        with contextlib.suppress(TimeoutError):  # the assertions below show what came
            await asyncio.wait_for(complete.wait(), 90)
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running
    want = [
        common_pb2.TASK_STATUS_QUEUED,
        common_pb2.TASK_STATUS_RUNNING,
        common_pb2.TASK_STATUS_OK,
    ]
    assert {t: seen[t] for t in ids} == dict.fromkeys(ids, want)
    assert set(handled.values()) == {1}


@pytest.fixture
def empty_dsn(postgres: Postgres) -> Iterator[str]:
    """A database of this test's own (no service publishes from its outbox)."""
    with postgres.scratch_database("drain") as dsn:
        yield dsn


async def test_drain_publishes_what_is_committed(
    empty_dsn: str, kafka: Kafka, topic_reader: Any
) -> None:
    """At shutdown the publisher sends every committed row before it returns."""
    dsn = empty_dsn
    topic = f"drain{uuid.uuid4().hex[:8]}.task.events"
    await db.migrate(dsn)
    async with db.pool(dsn, max_size=2) as pool:
        async with pool.connection() as conn, conn.transaction():
            for i in range(5):
                await outbox.add(
                    conn,
                    topic=topic,
                    env=events.envelope(
                        type_="aion.test",
                        tenant=TENANT,
                        subject="s",
                        data=events_pb2.TaskStateChanged(task_id=str(i)),
                    ),
                )
        left = await outbox.Publisher(pool=pool, bootstrap=kafka.bootstrap).drain(30)
    records = await topic_reader(kafka.bootstrap, topic, until=lambda r: len(r) >= 5)
    assert left == 0
    ids = [events_pb2.Envelope.FromString(r.value) for r in records]
    assert len({e.id for e in ids}) == len(ids) == 5


async def test_a_stop_with_the_broker_down_leaves_the_outbox_to_the_next_replica(
    agent_dsn: str, own_kafka: Private, executor: Any, tmp_path: Path
) -> None:
    prefix = f"d{uuid.uuid4().hex[:8]}."
    first = Proc(
        service_env(agent_dsn, own_kafka.current.bootstrap, prefix, executor.address, "d1"),
        tmp_path / "first.log",
    )
    second: Proc | None = None
    try:
        await first.ready()
        await register(first.target, executor.address)
        await asyncio.to_thread(own_kafka.kill)
        ids = [await submit(first.target, f"word {i}", asynchronous=False) for i in range(3)]
        got = await results(first.target, ids)
        assert await outbox_rows(agent_dsn, prefix) > 0
        first.stop()  # SIGTERM: the drain finds no broker and says what it leaves
        assert first.process.returncode == 0, first.tail()
        assert "rows left for the next replica" in first.log.read_text(), first.tail()
        await asyncio.to_thread(own_kafka.start)
        second = Proc(
            service_env(agent_dsn, own_kafka.current.bootstrap, prefix, executor.address, "d2"),
            tmp_path / "second.log",
        )
        await second.ready()
        waiting = await outbox_drained(agent_dsn, prefix)
        assert waiting == 0, second.tail()
    finally:
        first.stop(signal.SIGKILL)
        if second is not None:
            second.stop()
    assert {t: r.status for t, r in got.items()} == dict.fromkeys(ids, common_pb2.TASK_STATUS_OK)
    await assert_each_state_once(agent_dsn, own_kafka.current.bootstrap, prefix, ids)


# -- Postgres restart -----------------------------------------------------------------
async def _calls_during_outage(target: str, task_id: str) -> list[tuple[grpc.StatusCode, str]]:
    """The status of a GetTask, a waiting Submit and a Run while the database is down."""
    got: list[tuple[grpc.StatusCode, str]] = []
    async with agent_testing.channel(target) as chan:
        stub: agent_pb2_grpc.AgentServiceAsyncStub = agent_pb2_grpc.AgentServiceStub(chan)
        spec = tasks_pb2.TaskSpec(agent="worker", input="during the outage")
        for call in (
            lambda: stub.GetTask(agent_pb2.TaskRef(tenant=TENANT, task_id=task_id), timeout=30),
            lambda: stub.Submit(agent_pb2.RunRequest(tenant=TENANT, task=spec), timeout=30),
        ):
            try:
                await call()
            except grpc.aio.AioRpcError as exc:
                got.append((exc.code(), exc.details() or ""))
        try:
            async for _ in stub.Run(agent_pb2.RunRequest(tenant=TENANT, task=spec), timeout=30):
                pass
        except grpc.aio.AioRpcError as exc:
            got.append((exc.code(), exc.details() or ""))
    return got


async def test_postgres_restart_the_service_reconnects_and_carries_on(
    own_postgres: Private, kafka: Kafka, executor: Any, tmp_path: Path
) -> None:
    prefix = f"p{uuid.uuid4().hex[:8]}."
    env = service_env(own_postgres.current.dsn, kafka.bootstrap, prefix, executor.address, "pg")
    proc = Proc(env, tmp_path / "agent.log")
    try:
        await proc.ready()
        await register(proc.target, executor.address)
        before = [await submit(proc.target, f"before {i}") for i in range(3)]
        assert all(
            r.status == common_pb2.TASK_STATUS_OK
            for r in (await results(proc.target, before)).values()
        ), proc.tail()
        executor.release.clear()
        in_flight = await submit(proc.target, "slow in flight")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while not any(t == in_flight for t, _ in executor.calls):
            assert loop.time() < deadline, proc.tail()
            await asyncio.sleep(0.1)
        await asyncio.to_thread(own_postgres.stop)
        # Meanwhile calls fail UNAVAILABLE (retriable), saying why, never INTERNAL.
        outage = await _calls_during_outage(proc.target, before[0])
        await asyncio.to_thread(own_postgres.start)
        executor.release.set()
        after = [await submit(proc.target, f"after {i}", retry_for=30) for i in range(3)]
        got = await results(proc.target, [*before, in_flight, *after])
        assert proc.process.poll() is None, proc.tail()
    finally:
        executor.release.set()
        proc.stop()
    assert {t: r.status for t, r in got.items()} == dict.fromkeys(
        [*before, in_flight, *after], common_pb2.TASK_STATUS_OK
    ), proc.tail()
    assert got[after[0]].output == "after 0 "
    assert [code for code, _ in outage] == [grpc.StatusCode.UNAVAILABLE] * 3, outage
    assert all("database is unreachable" in text for _, text in outage), outage
    assert got[in_flight].output == "slow in flight "
