"""The pipelined outbox publisher against the real Postgres and Kafka: order per key
across batches in flight, a lower id committed late, one publisher at a time, the drain
after a cancelled run, and the rows re-sent after a crash."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiokafka  # type: ignore[import-untyped]
import psycopg
import pytest

from aion.agent import db, events, outbox
from aion.agent import kafka as agent_kafka
from aion.api.events.v1 import events_pb2
from aion.infra.kafka import Kafka
from aion.infra.postgres import Postgres

KEYS = 8


@pytest.fixture
def dsn(postgres: Postgres) -> Iterator[str]:
    """A database of this test's own: no service publishes from its outbox."""
    with postgres.scratch_database("outbox") as dsn:
        yield dsn


@pytest.fixture
async def pool(dsn: str) -> AsyncIterator[db.Pool]:
    await db.migrate(dsn)
    async with db.pool(dsn, max_size=6) as pool:
        yield pool


@pytest.fixture
async def topic(kafka: Kafka) -> str:
    name = f"outbox{uuid.uuid4().hex[:8]}.events"
    await agent_kafka.ensure_topics(kafka.bootstrap, {name: 4})
    return name


def envelope(key: str, seq: int) -> events_pb2.Envelope:
    return events.envelope(
        type_="aion.test",
        tenant="outbox",
        subject=key,
        data=events_pb2.TaskStateChanged(task_id=f"{key}/{seq}"),
    )


async def write(conn: psycopg.AsyncConnection[Any], topic: str, key: str, seq: int) -> None:
    await outbox.add(conn, topic=topic, env=envelope(key, seq))


async def write_many(pool: db.Pool, topic: str, n: int, start: int = 0) -> None:
    """Rows ``start..start+n`` spread over KEYS keys, in one transaction."""
    async with pool.connection() as conn, conn.transaction():
        for i in range(start, start + n):
            await write(conn, topic, f"k{i % KEYS}", i)


async def rows_left(pool: db.Pool) -> int:
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT count(*) AS n FROM outbox")
        row = await cur.fetchone()
    assert row is not None
    return int(row["n"])


async def read_all(bootstrap: str, topic: str) -> list[events_pb2.Envelope]:
    """Every record's envelope of ``topic`` up to its end offsets now, in partition order."""
    return [events_pb2.Envelope.FromString(r.value) for r in await read_records(bootstrap, topic)]


async def read_records(bootstrap: str, topic: str) -> list[Any]:
    """Every record of ``topic`` up to its end offsets now, in partition order."""
    consumer = aiokafka.AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False
    )
    await consumer.start()
    try:
        parts = [aiokafka.TopicPartition(topic, p) for p in range(4)]
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        ends = await consumer.end_offsets(parts)
        got: dict[Any, list[Any]] = collections.defaultdict(list)
        deadline = asyncio.get_running_loop().time() + 30
        while [tp for tp in parts if await consumer.position(tp) < ends[tp]]:
            assert asyncio.get_running_loop().time() < deadline, "the topic did not read out"
            for tp, records in (await consumer.getmany(timeout_ms=500)).items():
                got[tp].extend(records)
    finally:
        await consumer.stop()
    return [r for tp in parts for r in got[tp]]


def sequences(envs: list[events_pb2.Envelope], *, dedupe: bool = False) -> dict[str, list[int]]:
    """Per key, the sequence numbers in the order the topic holds them (the first copy of
    each envelope when ``dedupe``, as the consumers do)."""
    seen: set[str] = set()
    out: dict[str, list[int]] = collections.defaultdict(list)
    for env in envs:
        if dedupe and env.id in seen:
            continue
        seen.add(env.id)
        data = events_pb2.TaskStateChanged()
        env.data.Unpack(data)
        key, seq = data.task_id.split("/")
        assert key == env.subject
        out[key].append(int(seq))
    return dict(out)


def expected(n: int, start: int = 0) -> dict[str, list[int]]:
    out: dict[str, list[int]] = collections.defaultdict(list)
    for i in range(start, start + n):
        out[f"k{i % KEYS}"].append(i)
    return dict(out)


async def assert_sent_once_in_order(bootstrap: str, topic: str, n: int) -> None:
    """``topic`` holds the ``n`` rows ``write_many`` wrote, each once (no envelope twice)
    and each key's in the order written."""
    got = await read_all(bootstrap, topic)
    assert len(got) == len({e.id for e in got}) == n
    assert sequences(got) == expected(n)


class Producer:
    """The real idempotent producer (a new one each time the publisher makes one),
    counting sends; the ``hold``-th send waits for ``release`` (``held`` is set when it
    gets there); ``probe`` runs at each send."""

    def __init__(self, bootstrap: str, *, hold: int = 0) -> None:
        self.bootstrap = bootstrap
        self.real: Any = None
        self.hold = hold
        self.held = asyncio.Event()
        self.release = asyncio.Event()
        self.sent = 0
        self.probe: Any = None

    def make(self, *_: Any) -> Producer:
        self.real = agent_kafka.producer(self.bootstrap)
        return self

    async def start(self) -> None:
        await self.real.start()

    async def stop(self) -> None:
        await self.real.stop()

    async def partitions_for(self, topic: str) -> Any:
        return await self.real.partitions_for(topic)

    async def send(self, topic: str, **kw: Any) -> Any:
        self.sent += 1
        if self.probe is not None:
            await self.probe(self.sent)
        if self.sent == self.hold:
            self.held.set()
            await self.release.wait()
        return await self.real.send(topic, **kw)


def publisher(pool: db.Pool, producer: Producer, **kw: Any) -> outbox.Publisher:
    return outbox.Publisher(pool=pool, bootstrap="unused", make_producer=producer.make, **kw)


async def test_batches_in_flight_keep_each_keys_order_and_leave_nothing(
    pool: db.Pool, kafka: Kafka, topic: str
) -> None:
    await write_many(pool, topic, 600)
    producer = Producer(kafka.bootstrap)
    waiting_at: dict[int, int] = {}

    async def probe(sent: int) -> None:
        if sent in (51, 101, 151):  # the first row of batches 2, 3 and 4
            waiting_at[sent] = await rows_left(pool)

    producer.probe = probe
    pub = publisher(pool, producer, batch=50, depth=4)
    try:
        assert await pub.publish() == 600
    finally:
        await pub.close()
    # Batches 2 to 4 went out while batch 1 was still in the table (not yet acked and
    # deleted): the pipeline, not one batch at a time.
    assert waiting_at == {51: 600, 101: 600, 151: 600}
    assert await rows_left(pool) == 0
    assert pub.published == 600
    await assert_sent_once_in_order(kafka.bootstrap, topic, 600)


async def test_a_lower_id_committed_late_goes_before_its_keys_later_rows(
    pool: db.Pool, kafka: Kafka, topic: str
) -> None:
    async with pool.connection() as late:
        await write(late, topic, "late", 0)  # the lowest id, not committed yet
        async with pool.connection() as conn, conn.transaction():
            for i in range(1, 9):
                await write(conn, topic, "other", i)
        producer = Producer(kafka.bootstrap, hold=1)
        pub = publisher(pool, producer, batch=2, depth=4)
        try:
            publishing = asyncio.create_task(pub.publish())
            await producer.held.wait()  # the first batch (ids 2, 3) is being sent
            await late.commit()
            async with pool.connection() as conn, conn.transaction():
                await write(conn, topic, "late", 9)  # same key, after the late row
            producer.release.set()
            assert await publishing == 10
        finally:
            await pub.close()
    assert await rows_left(pool) == 0
    got = sequences(await read_all(kafka.bootstrap, topic))
    assert got == {"late": [0, 9], "other": list(range(1, 9))}


async def test_a_second_publisher_does_not_publish_while_the_first_does(
    pool: db.Pool, kafka: Kafka, topic: str
) -> None:
    await write_many(pool, topic, 200)
    first = Producer(kafka.bootstrap, hold=60)
    second = Producer(kafka.bootstrap)
    one, two = publisher(pool, first, batch=50), publisher(pool, second, batch=50)
    try:
        publishing = asyncio.create_task(one.publish())
        await first.held.wait()  # mid-pipeline, the lock held
        assert await two.publish() == 0
        assert second.sent == 0
        first.release.set()
        assert await publishing == 200
        assert await two.publish() == 0  # nothing left
    finally:
        await one.close()
        await two.close()
    await assert_sent_once_in_order(kafka.bootstrap, topic, 200)


async def test_two_running_publishers_send_each_row_once_in_order(
    pool: db.Pool, kafka: Kafka, topic: str
) -> None:
    producers = [Producer(kafka.bootstrap), Producer(kafka.bootstrap)]
    pubs = [publisher(pool, p, batch=40, depth=3, poll_s=0.01) for p in producers]
    async with asyncio.TaskGroup() as group:
        running = [group.create_task(p.run()) for p in pubs]
        for start in range(0, 1000, 100):
            await write_many(pool, topic, 100, start)
            for p in pubs:
                p.wake()
            await asyncio.sleep(0.01)
        deadline = asyncio.get_running_loop().time() + 60
        while await rows_left(pool):
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.05)
        for task in running:
            task.cancel()
    # No row twice: never two publishers at once.
    await assert_sent_once_in_order(kafka.bootstrap, topic, 1000)
    assert sum(p.published for p in pubs) == 1000


async def test_a_cancelled_run_leaves_its_batches_in_flight_to_drain(
    pool: db.Pool, kafka: Kafka, topic: str
) -> None:
    await write_many(pool, topic, 300)
    producer = Producer(kafka.bootstrap, hold=130)
    pub = publisher(pool, producer, batch=50, depth=4)
    running = asyncio.create_task(pub.run())
    await producer.held.wait()  # batches 1 and 2 and part of 3 were handed over
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    producer.hold = 0
    assert await rows_left(pool) > 0
    assert await pub.drain(30) == 0
    assert await rows_left(pool) == 0
    # The batches in flight were awaited and deleted, not sent again.
    await assert_sent_once_in_order(kafka.bootstrap, topic, 300)


async def test_after_a_crash_the_rows_not_deleted_are_sent_again(
    pool: db.Pool, kafka: Kafka, topic: str
) -> None:
    await write_many(pool, topic, 200)
    crashed = Producer(kafka.bootstrap, hold=70)
    pub = publisher(pool, crashed, batch=50, depth=4)
    publishing = asyncio.create_task(pub.publish())
    await crashed.held.wait()  # batch 1 and 19 rows of batch 2 sent, none deleted
    publishing.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await publishing
    await pub.close()  # what was handed over reaches the broker; the publisher is gone
    assert await rows_left(pool) == 200
    assert await publisher(pool, Producer(kafka.bootstrap)).drain(30) == 0
    assert await rows_left(pool) == 0
    got = await read_all(kafka.bootstrap, topic)
    # The first 69 rows went out twice (consumers skip the copies by envelope id).
    assert len(got) == 200 + 69
    assert sequences(got, dedupe=True) == expected(200)


async def test_rows_sent_untraced_carry_their_stored_trace_and_type(
    pool: db.Pool, kafka: Kafka, topic: str
) -> None:
    """Rows whose send spans record nothing (their trace sampled out, as here, or no
    tracing at all) share the headers of their stored context: each record still
    carries its own row's trace and type, whichever trace its neighbours came from."""
    traces = [f"00-{uuid.uuid4().hex}-{uuid.uuid4().hex[:16]}-00" for _ in range(3)]
    async with pool.connection() as conn, conn.transaction():
        for i in range(60):
            env = envelope(f"k{i % KEYS}", i)
            env.type = f"aion.test.{i % 2}"
            await outbox.add(conn, topic=topic, env=env, trace={"traceparent": traces[i % 3]})
    pub = publisher(pool, Producer(kafka.bootstrap), batch=25)
    try:
        assert await pub.publish() == 60
    finally:
        await pub.close()
    records = await read_records(kafka.bootstrap, topic)
    assert len(records) == 60
    for record in records:
        env = events_pb2.Envelope.FromString(record.value)
        data = events_pb2.TaskStateChanged()
        env.data.Unpack(data)
        i = int(data.task_id.split("/")[1])
        headers = dict(record.headers)
        assert headers["ce_type"] == f"aion.test.{i % 2}".encode()
        # The stored trace (and, its span recording nothing, that span's parent context).
        assert headers["traceparent"].decode().split("-")[1] == traces[i % 3].split("-")[1]
