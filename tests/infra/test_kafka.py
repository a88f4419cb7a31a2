"""The local Kafka: a topic takes keyed messages, and a consumer group reads them
once, in order, resuming from the offset it committed."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from aiokafka import (  # type: ignore[import-untyped]
    AIOKafkaConsumer,
    AIOKafkaProducer,
    ConsumerRecord,
    TopicPartition,
)
from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # type: ignore[import-untyped]

from aion.infra.kafka import NODE_ID, Kafka, metadata_brokers
from aion.infra.podnet import HOST_IP

pytestmark = pytest.mark.kafka

# Keys repeat on purpose: a key decides the partition, not uniqueness.
MESSAGES = [(f"agent-{i % 3}".encode(), f"event {i}: {'x' * i}".encode()) for i in range(7)]


@pytest.fixture
async def admin(kafka: Kafka) -> AsyncIterator[AIOKafkaAdminClient]:
    client = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap)
    await client.start()
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
async def topic(admin: AIOKafkaAdminClient) -> AsyncIterator[str]:
    """A fresh one-partition topic, deleted afterwards."""
    name = f"aion-smoke-{uuid.uuid4().hex[:12]}"
    await admin.create_topics([NewTopic(name, num_partitions=1, replication_factor=1)])
    yield name
    await admin.delete_topics([name])


def _consumer(kafka: Kafka, topic: str, group: str) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        topic,
        bootstrap_servers=kafka.bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )


async def _take(
    consumer: AIOKafkaConsumer, count: int, timeout: float = 60.0
) -> list[ConsumerRecord]:
    """Exactly the next `count` records (more in the same fetch fail the test)."""
    records: list[ConsumerRecord] = []
    async with asyncio.timeout(timeout):
        while len(records) < count:
            batch = await consumer.getmany(timeout_ms=500)
            for part in batch.values():
                records.extend(part)
    assert len(records) == count
    return records


async def _wait_assigned(
    consumer: AIOKafkaConsumer, tp: TopicPartition, timeout: float = 60.0
) -> None:
    """Poll until the group has assigned `tp`; no records may arrive meanwhile."""
    async with asyncio.timeout(timeout):
        while tp not in consumer.assignment():
            batch = await consumer.getmany(timeout_ms=200)
            assert batch == {}, "the group handed out records it had committed already"


def test_endpoints(kafka: Kafka) -> None:
    assert kafka.bootstrap == f"127.0.0.1:{kafka.port}"
    assert kafka.endpoints() == {
        "AION_KAFKA_BOOTSTRAP": kafka.bootstrap,
        "AION_KAFKA_POD_BOOTSTRAP": f"{HOST_IP}:{kafka.pod_port}",
    }


def test_pods_are_told_to_come_back_to_the_pod_address(kafka: Kafka) -> None:
    # A pod cannot use 127.0.0.1 (that is itself): the pod listener advertises HOST_IP.
    assert kafka.pod_port is not None
    brokers, controller = metadata_brokers(HOST_IP, kafka.pod_port)
    assert brokers == [(NODE_ID, HOST_IP, kafka.pod_port)]
    assert controller == NODE_ID


async def test_a_group_consumes_once_and_resumes_from_its_commit(
    kafka: Kafka, admin: AIOKafkaAdminClient, topic: str
) -> None:
    group = f"aion-smoke-group-{uuid.uuid4().hex[:12]}"
    tp = TopicPartition(topic, 0)

    async with AIOKafkaProducer(bootstrap_servers=kafka.bootstrap, acks="all") as producer:
        offsets = [
            (await producer.send_and_wait(topic, value, key=key)).offset for key, value in MESSAGES
        ]
    assert offsets == list(range(len(MESSAGES)))

    async with _consumer(kafka, topic, group) as first:
        records = await _take(first, len(MESSAGES))
        assert [(r.key, r.value) for r in records] == MESSAGES
        assert [(r.topic, r.partition, r.offset) for r in records] == [
            (topic, 0, i) for i in range(len(MESSAGES))
        ]
        # Nothing committed until asked: auto commit is off.
        assert await first.committed(tp) is None
        await first.commit()
        assert await first.committed(tp) == len(MESSAGES)

    # The broker holds the group's offset: the next one to read.
    stored = await admin.list_consumer_group_offsets(group, partitions=[tp])
    assert {p: o.offset for p, o in stored.items()} == {tp: len(MESSAGES)}

    # A second member of the group starts where the first committed: it gets
    # none of the old messages, and exactly the one produced after them.
    async with _consumer(kafka, topic, group) as second:
        await _wait_assigned(second, tp)
        assert await second.position(tp) == len(MESSAGES)
        assert await second.getmany(timeout_ms=1000) == {}
        async with AIOKafkaProducer(bootstrap_servers=kafka.bootstrap) as producer:
            await producer.send_and_wait(topic, b"late", key=b"agent-9")
        [late] = await _take(second, 1)
        assert (late.key, late.value, late.offset) == (b"agent-9", b"late", len(MESSAGES))
