"""Kafka clients: the idempotent consumer, over the shared producer and topic creation.

``IdempotentConsumer`` handles each record inside a Postgres transaction that
also records the envelope id in ``processed_events``: a redelivered record
finds its id there and is skipped. A record that cannot be handled (not an
envelope, an unknown type, a handler that keeps failing on it) goes to the
topic's dead-letter topic with the error in its headers, and the consumer
moves on. Offsets are committed only after the record was handled. Each record
is handled in a CONSUMER span ``process <topic>``, a child of the span that sent
it (``aion.core.kafka_spans``).

The producer and topic creation are ``aion.core.kafka``'s (every service
uses the same ones); ``producer`` here only names the agent as the client.
Every client here connects with the service's Kafka security settings
(``aion.core.kafka``: TLS, SASL), passed as ``security``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import aiokafka  # type: ignore[import-untyped]
import psycopg
from aiokafka import errors as kafka_errors
from google.protobuf import message as pb_message

from aion.agent import db, metrics
from aion.api.events.v1 import events_pb2
from aion.core import errors, kafka_spans
from aion.core import kafka as core_kafka

log = logging.getLogger(__name__)

KafkaError = kafka_errors.KafkaError
Then = Callable[[], Awaitable[None]]
Handle = Callable[[events_pb2.Envelope, psycopg.AsyncConnection[Any]], Awaitable[Then | None]]


class Poison(errors.AionError):
    """A record that no retry will make handleable; it goes to the dead-letter topic."""


CLIENT_ID = "aion-agent"


def producer(
    bootstrap: str, security: core_kafka.KafkaSettings | None = None, **overrides: Any
) -> Any:
    """The shared idempotent producer (``aion.core.kafka.producer``) as the agent; not
    started."""
    return core_kafka.producer(bootstrap, security, client_id=CLIENT_ID, **overrides)


ensure_topics = core_kafka.ensure_topics


class IdempotentConsumer:
    """Consumes one topic in a consumer group, each envelope once, poison to the dead letter."""

    def __init__(
        self,
        *,
        name: str,
        topic: str,
        group: str,
        bootstrap: str,
        pool: db.Pool,
        handle: Handle,
        dead_letter: str,
        gate: Callable[[], Awaitable[None]] | None = None,
        attempts_before_dead_letter: int = 3,
        retry_s: float = 0.5,
        security: core_kafka.KafkaSettings | None = None,
    ) -> None:
        self.name = name
        self._security = security
        self._topic = topic
        self._group = group
        self._bootstrap = bootstrap
        self._pool = pool
        self._handle = handle
        self._dead_letter = dead_letter
        self._gate = gate
        self._tries = attempts_before_dead_letter
        self._retry_s = retry_s
        self._consumer: Any = None
        self._producer: Any = None

    async def run(self) -> None:
        """Consume until cancelled, reconnecting when the broker goes away."""
        while True:
            try:
                await self._start()
                await self._consume()
            except asyncio.CancelledError:
                await self._stop()
                raise
            except (KafkaError, OSError) as exc:
                log.warning("consumer %s lost Kafka, retrying: %s", self.name, exc)
                await self._stop()
                await asyncio.sleep(1.0)

    async def _start(self) -> None:
        if self._consumer is not None:
            return
        consumer = aiokafka.AIOKafkaConsumer(
            self._topic,
            bootstrap_servers=self._bootstrap,
            group_id=self._group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            client_id=f"aion-agent-{self.name}",
            **core_kafka.client_options(self._security),
        )
        dlq = producer(self._bootstrap, self._security)
        try:
            await consumer.start()
            await dlq.start()
        except BaseException:
            await consumer.stop()
            await dlq.stop()
            raise
        self._consumer, self._producer = consumer, dlq

    async def _stop(self) -> None:
        consumer, dlq, self._consumer, self._producer = (self._consumer, self._producer, None, None)
        for client in (consumer, dlq):
            if client is not None:
                try:
                    await client.stop()
                except Exception as exc:  # closing a client of a dead broker may fail too
                    log.debug("closing a Kafka client failed: %s", exc)

    async def _consume(self) -> None:
        while True:
            if self._gate is not None:
                await self._gate()
            record = await self._consumer.getone()
            await self._process(record)
            tp = aiokafka.TopicPartition(record.topic, record.partition)
            await self._consumer.commit({tp: record.offset + 1})

    async def _process(self, record: Any) -> None:
        try:
            env = events_pb2.Envelope.FromString(record.value)
            if not env.id:
                raise Poison("the record is not an aion envelope (no id)")
        except (pb_message.DecodeError, Poison) as exc:
            await self._to_dead_letter(record, f"cannot decode the envelope: {exc}")
            return
        with kafka_spans.process(
            record,
            group=self._group,
            message_id=env.id,
            attributes={"aion.tenant": env.tenant} if env.tenant else None,
        ):
            await self._with_retries(record, env)

    async def _with_retries(self, record: Any, env: events_pb2.Envelope) -> None:
        failures = 0
        while True:
            try:
                then = await self._once(env)
            except (psycopg.OperationalError, errors.Unavailable) as exc:
                # The database (or a peer) is away: the record is fine, wait for it.
                log.warning("consumer %s: retrying %s: %s", self.name, env.id, exc)
                await asyncio.sleep(self._retry_s)
                continue
            except Poison as exc:
                await self._to_dead_letter(record, exc.message, env=env)
                return
            except Exception as exc:
                failures += 1
                log.exception("consumer %s: handling %s failed (%d)", self.name, env.id, failures)
                if failures >= self._tries:
                    await self._to_dead_letter(record, f"{type(exc).__name__}: {exc}", env=env)
                    return
                await asyncio.sleep(self._retry_s)
                continue
            if then is not None:
                try:
                    await then()
                except Exception:
                    # The record's effect is committed; what follows is recovered elsewhere
                    # (an unstarted run's lease lapses and the reaper queues it again).
                    log.exception("consumer %s: after handling %s", self.name, env.id)
            return

    async def _once(self, env: events_pb2.Envelope) -> Then | None:
        async with self._pool.connection() as conn, conn.transaction():
            cur = await conn.execute(
                "INSERT INTO processed_events (consumer, event_id) VALUES (%s, %s) "
                "ON CONFLICT DO NOTHING",
                (self._group, env.id),
            )
            if cur.rowcount == 0:
                log.info("consumer %s: %s was processed before; skipped", self.name, env.id)
                return None
            return await self._handle(env, conn)

    async def _to_dead_letter(
        self, record: Any, error: str, *, env: events_pb2.Envelope | None = None
    ) -> None:
        headers = [
            *(record.headers or ()),
            ("dlt.error", error.encode()),
            ("dlt.topic", record.topic.encode()),
            ("dlt.partition", str(record.partition).encode()),
            ("dlt.offset", str(record.offset).encode()),
            ("dlt.consumer", self._group.encode()),
        ]
        await self._producer.send_and_wait(
            self._dead_letter, value=record.value, key=record.key, headers=headers
        )
        metrics.DEAD_LETTERS.labels(self.name).inc()
        log.error("consumer %s: record sent to %s: %s", self.name, self._dead_letter, error)
        if env is not None:
            async with self._pool.connection() as conn, conn.transaction():
                await conn.execute(
                    "INSERT INTO processed_events (consumer, event_id) VALUES (%s, %s) "
                    "ON CONFLICT DO NOTHING",
                    (self._group, env.id),
                )
