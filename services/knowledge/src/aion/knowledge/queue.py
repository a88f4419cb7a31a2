"""Document events on Kafka: one per upload, keyed by document, consumed by a worker group.

An event carries only the version's id; everything else is read from
Postgres, which is also what makes handling idempotent (a version is claimed
once; a redelivered or repeated event finds it claimed or done). Offsets are
committed after the handler returns, so a worker killed mid-document leaves
its event to be delivered again to the group. Each event is sent in a PRODUCER
span and handled in a CONSUMER span of the upload's trace
(``aion.core.kafka_spans``). Every client connects with the
service's Kafka security settings (``aion.core.kafka``: TLS, SASL).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import aiokafka  # type: ignore[import-untyped]
from aiokafka import admin as kafka_admin
from aiokafka import errors as kafka_errors

from aion.core import kafka as core_kafka
from aion.core import kafka_spans

log = logging.getLogger(__name__)

KafkaError = kafka_errors.KafkaError
Handler = Callable[[int], Awaitable[None]]


async def ensure_topic(
    bootstrap: str, topic: str, partitions: int, security: core_kafka.KafkaSettings | None = None
) -> None:
    """Create the topic when it does not exist yet."""
    client = kafka_admin.AIOKafkaAdminClient(
        bootstrap_servers=bootstrap, request_timeout_ms=15000, **core_kafka.client_options(security)
    )
    await client.start()
    try:
        if topic not in set(await client.list_topics()):
            with contextlib.suppress(kafka_errors.TopicAlreadyExistsError):
                await client.create_topics(
                    [
                        kafka_admin.NewTopic(
                            name=topic, num_partitions=partitions, replication_factor=1
                        )
                    ]
                )
    finally:
        await client.close()


def encode(version_id: int) -> bytes:
    """An event's value."""
    return json.dumps({"version_id": version_id}).encode()


def decode(value: bytes) -> int:
    """The version id an event's value names; ValueError when it names none."""
    data = json.loads(value)
    version_id = data.get("version_id") if isinstance(data, dict) else None
    if not isinstance(version_id, int) or version_id <= 0:
        raise ValueError(f"no version_id in {value[:80]!r}")
    return version_id


class Publisher:
    """An idempotent producer of document events."""

    def __init__(
        self, bootstrap: str, topic: str, security: core_kafka.KafkaSettings | None = None
    ) -> None:
        self._topic = topic
        self._producer = core_kafka.producer(bootstrap, security, client_id="aion-knowledge")

    async def start(self) -> None:
        """Connect."""
        await self._producer.start()

    async def stop(self) -> None:
        """Flush and disconnect."""
        await self._producer.stop()

    async def publish(self, key: str, version_id: int, *, timeout_s: float = 5.0) -> None:
        """Send one event and wait for the broker's acknowledgement, at most ``timeout_s``
        (TimeoutError then: a broker that is away must not hold up an upload, whose
        version the reaper queues again)."""
        await asyncio.wait_for(
            core_kafka.send_record(
                self._producer, self._topic, encode(version_id), key=key.encode()
            ),
            timeout_s,
        )


class Worker:
    """One consumer of the group, handling one event at a time, reconnecting when Kafka goes."""

    def __init__(
        self,
        *,
        name: str,
        bootstrap: str,
        topic: str,
        group: str,
        handle: Handler,
        security: core_kafka.KafkaSettings | None = None,
    ) -> None:
        self.name = name
        self._security = security
        self._bootstrap = bootstrap
        self._topic = topic
        self._group = group
        self._handle = handle
        self._consumer: Any = None

    async def run(self) -> None:
        """Consume until cancelled."""
        while True:
            try:
                self._consumer = aiokafka.AIOKafkaConsumer(
                    self._topic,
                    bootstrap_servers=self._bootstrap,
                    group_id=self._group,
                    enable_auto_commit=False,
                    auto_offset_reset="earliest",
                    client_id=f"aion-knowledge-{self.name}",
                    max_poll_interval_ms=600_000,
                    **core_kafka.client_options(self._security),
                )
                await self._consumer.start()
                await self._consume()
            except asyncio.CancelledError:
                await self._stop()
                raise
            except (KafkaError, OSError) as exc:
                log.warning("indexer %s lost Kafka, retrying: %s", self.name, exc)
                await self._stop()
                await asyncio.sleep(1.0)

    async def _stop(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            try:
                await consumer.stop()
            except Exception as exc:  # closing a client of a dead broker may fail too
                log.debug("closing a Kafka consumer failed: %s", exc)

    async def _consume(self) -> None:
        while True:
            record = await self._consumer.getone()
            with kafka_spans.process(record, group=self._group):
                await self._process(record)
            tp = aiokafka.TopicPartition(record.topic, record.partition)
            await self._consumer.commit({tp: record.offset + 1})

    async def _process(self, record: Any) -> None:
        try:
            version_id = decode(record.value)
        except (ValueError, TypeError) as exc:
            log.error("indexer %s: skipping a record that is no document event: %s", self.name, exc)
        else:
            try:
                await self._handle(version_id)
            except asyncio.CancelledError:
                raise
            except Exception:
                # The version's lease lapses and the reaper queues it again.
                log.exception("indexer %s: version %d failed", self.name, version_id)
