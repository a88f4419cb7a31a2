"""Poison records go to the dead-letter topic with their error; the consumer goes on.

Against the real broker and database: the running service's work-topic consumer,
and an ``IdempotentConsumer`` whose handler keeps failing on one record.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any, TypeAlias

import prometheus_client
import psycopg
import pytest

from aion.agent import db, events
from aion.agent import kafka as agent_kafka
from aion.api.agent.v1 import agent_pb2, agent_pb2_grpc
from aion.api.events.v1 import events_pb2
from aion.api.v1 import agents_pb2, common_pb2, tasks_pb2

Stub: TypeAlias = "agent_pb2_grpc.AgentServiceAsyncStub"
TENANT = "dlt"


async def _produce(bootstrap: str, topic: str, records: list[tuple[bytes, bytes]]) -> None:
    producer = agent_kafka.producer(bootstrap)
    await producer.start()
    try:
        for key, value in records:
            await producer.send_and_wait(topic, value=value, key=key)
    finally:
        await producer.stop()


def _headers(record: Any) -> dict[str, str]:
    return {k: v.decode() for k, v in record.headers or ()}


def _queued(task_id: str, *, type_: str = events.TASK_QUEUED) -> events_pb2.Envelope:
    return events.envelope(
        type_=type_,
        tenant=TENANT,
        subject=task_id,
        data=events_pb2.TaskQueued(task_id=task_id, agent="echo"),
    )


async def test_poison_on_the_work_topic_goes_to_the_dead_letter_topic_and_work_goes_on(
    stub: Stub, service: Any, topic_reader: Any, agent_dsn: str
) -> None:
    topics = events.Topics(service.cfg.topic_prefix)
    bootstrap = service.cfg.kafka_bootstrap
    wrong_type = _queued(str(uuid.uuid4()), type_="aion.something.else")
    missing_task = _queued(str(uuid.uuid4()))
    poison = [
        (b"junk", b"\xff\xfe not an envelope"),
        (wrong_type.subject.encode(), wrong_type.SerializeToString()),
        (missing_task.subject.encode(), missing_task.SerializeToString()),
    ]
    await _produce(bootstrap, topics.work, poison)

    dead = await topic_reader(
        bootstrap, topics.dead_letter(topics.work), until=lambda got: len(got) >= 3
    )
    by_value = {r.value: _headers(r) for r in dead}
    assert set(by_value) == {value for _, value in poison}
    assert "cannot decode the envelope" in by_value[poison[0][1]]["dlt.error"]
    assert "unexpected event type 'aion.something.else'" in by_value[poison[1][1]]["dlt.error"]
    assert f"task '{missing_task.subject}' does not exist" in by_value[poison[2][1]]["dlt.error"]
    for headers in by_value.values():
        assert headers["dlt.topic"] == topics.work
        assert headers["dlt.consumer"] == topics.group("agent-workers")
        assert int(headers["dlt.offset"]) >= 0
    # Envelopes that decoded are remembered, so a redelivery is not dead-lettered twice.
    async with await psycopg.AsyncConnection.connect(agent_dsn) as conn:
        cur = await conn.execute(
            "SELECT event_id FROM processed_events WHERE consumer = %s AND event_id = ANY(%s)",
            (topics.group("agent-workers"), [wrong_type.id, missing_task.id]),
        )
        assert {r[0] for r in await cur.fetchall()} == {wrong_type.id, missing_task.id}

    # The consumer went on: an asynchronous task queued after the poison runs.
    await stub.RegisterAgent(
        agent_pb2.RegisterAgentRequest(
            tenant=TENANT,
            agent=agents_pb2.Agent(name="echo", model="m"),
            executor_endpoints=[service.executor.address],
        )
    )
    queued = await stub.Submit(
        agent_pb2.RunRequest(
            tenant=TENANT,
            asynchronous=True,
            task=tasks_pb2.TaskSpec(agent="echo", input="after the poison"),
        )
    )
    ref = agent_pb2.TaskRef(tenant=TENANT, task_id=queued.task_id)
    last = [e async for e in stub.Follow(ref, timeout=60)][-1]
    assert last.WhichOneof("event") == "done"
    assert last.done.result.status == common_pb2.TASK_STATUS_OK
    assert last.done.result.output == "after the poison "


async def test_a_handler_that_keeps_failing_dead_letters_the_record_and_handles_the_next(
    agent_dsn: str, kafka: Any, topic_reader: Any
) -> None:
    prefix = f"d{uuid.uuid4().hex[:8]}."
    topics = events.Topics(prefix)
    topic = f"{prefix}things"
    await kafka_ensure(kafka.bootstrap, topic)
    bad, good = _queued(str(uuid.uuid4())), _queued(str(uuid.uuid4()))
    tries: dict[str, int] = {}
    handled = asyncio.Event()

    async def handle(env: events_pb2.Envelope, conn: psycopg.AsyncConnection[Any]) -> None:
        tries[env.id] = tries.get(env.id, 0) + 1
        if env.id == bad.id:
            raise ValueError("cannot handle this one")
        await conn.execute("SELECT 1")
        handled.set()

    # One partition, the bad record first: the good one is reached only past it.
    await _produce(
        kafka.bootstrap, topic, [(b"k", bad.SerializeToString()), (b"k", good.SerializeToString())]
    )
    async with db.pool(agent_dsn, max_size=2) as pool:
        consumer = agent_kafka.IdempotentConsumer(
            name="things",
            topic=topic,
            group=topics.group("things"),
            bootstrap=kafka.bootstrap,
            pool=pool,
            handle=handle,
            dead_letter=topics.dead_letter(topic),
            retry_s=0.05,
        )
        running = asyncio.create_task(consumer.run())
        try:
            await asyncio.wait_for(handled.wait(), 60)
        finally:
            running.cancel()
            with pytest.raises(asyncio.CancelledError):
                await running
    assert tries == {bad.id: 3, good.id: 1}
    assert (
        prometheus_client.REGISTRY.get_sample_value(
            "aion_agent_dead_letters_total", {"consumer": "things"}
        )
        == 1
    )
    dead = await topic_reader(
        kafka.bootstrap, topics.dead_letter(topic), until=lambda got: len(got) >= 1
    )
    assert [r.value for r in dead] == [bad.SerializeToString()]
    assert _headers(dead[0])["dlt.error"] == "ValueError: cannot handle this one"


async def kafka_ensure(bootstrap: str, topic: str) -> None:
    """The topic with one partition, so records keep the order they were produced in."""
    await agent_kafka.ensure_topics(bootstrap, {topic: 1})
