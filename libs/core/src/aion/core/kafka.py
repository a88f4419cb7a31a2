"""How every aion service talks to Kafka: one producer, one way to create topics and one
way to send an event, with the security settings of ``aion.core.kafka_security``
(re-exported here: ``KafkaSettings``, ``client_options``).

``producer`` builds the aiokafka producer every service uses (idempotent,
``acks=all``, unless a caller overrides it), ``ensure_topics`` creates the
topics a service writes, ``send`` publishes one envelope (``aion.core.events``)
and ``send_record`` any record, inside a PRODUCER span (``aion.core.kafka_spans``)
with its W3C trace context (and the event type) in the record's headers.
aiokafka is the ``kafka`` extra of aion-core (``aion-core[kafka]``): only the
services that use Kafka import this module, so the gateway's, router's and
operator's images stay without it.
"""

from __future__ import annotations

import contextlib
from typing import Any

import aiokafka  # type: ignore[import-untyped]
from aiokafka import admin as kafka_admin
from aiokafka import errors as kafka_errors
from opentelemetry import trace

from aion.api.events.v1 import events_pb2
from aion.core import kafka_spans
from aion.core.kafka_security import KafkaSettings, Mechanism, Protocol, client_options

__all__ = [
    "KafkaSettings",
    "Mechanism",
    "Protocol",
    "client_options",
    "ensure_topics",
    "producer",
    "send",
    "send_record",
]


def producer(
    bootstrap: str,
    security: KafkaSettings | None = None,
    *,
    client_id: str = "aion",
    **overrides: Any,
) -> Any:
    """An idempotent producer (acks=all, one producer id, ordered retries); not started.

    ``overrides`` are aiokafka keyword arguments (a best-effort producer passes
    ``enable_idempotence=False, acks=1``: it then needs no IdempotentWrite ACL).
    """
    options: dict[str, Any] = {
        "bootstrap_servers": bootstrap,
        "enable_idempotence": True,
        "acks": "all",
        "linger_ms": 2,
        "request_timeout_ms": 15000,
        "max_batch_size": 256 * 1024,
        "client_id": client_id,
        **client_options(security),
    }
    options.update(overrides)
    return aiokafka.AIOKafkaProducer(**options)


async def ensure_topics(
    bootstrap: str,
    topics: dict[str, int],
    security: KafkaSettings | None = None,
    *,
    request_timeout_ms: int = 15000,
) -> None:
    """Create the topics that do not exist yet, with their partition counts."""
    client = kafka_admin.AIOKafkaAdminClient(
        bootstrap_servers=bootstrap,
        request_timeout_ms=request_timeout_ms,
        **client_options(security),
    )
    await client.start()
    try:
        existing = set(await client.list_topics())
        missing = [
            kafka_admin.NewTopic(name=name, num_partitions=parts, replication_factor=1)
            for name, parts in topics.items()
            if name not in existing
        ]
        if missing:
            # Another replica may create them meanwhile.
            with contextlib.suppress(kafka_errors.TopicAlreadyExistsError):
                await client.create_topics(missing)
    finally:
        await client.close()


async def send_record(
    client: Any,
    topic: str,
    value: bytes,
    *,
    key: bytes,
    message_id: str | None = None,
    type_: str | None = None,
    attributes: dict[str, str] | None = None,
) -> Any:
    """Publish one record and wait for the broker's ack (its RecordMetadata), inside a
    PRODUCER span ``send <topic>`` (``aion.core.kafka_spans``: a child of the caller's, or
    a trace of its own) whose W3C context travels in the record's headers, with
    ``ce_type`` when ``type_`` is given."""
    span = kafka_spans.start_send(topic, key=key, message_id=message_id)
    for name, val in (attributes or {}).items():
        span.set_attribute(name, val)
    with trace.use_span(span, end_on_exit=True):
        metadata = await client.send_and_wait(
            topic, value, key=key, headers=kafka_spans.headers(span, type_=type_)
        )
        kafka_spans.record_metadata(span, metadata)
        return metadata


async def send(client: Any, topic: str, env: events_pb2.Envelope) -> None:
    """Publish ``env`` to ``topic``, keyed by its subject, and wait for the broker's ack
    (``send_record``: in a PRODUCER span, its context and ``ce_type`` in the headers)."""
    await send_record(
        client,
        topic,
        env.SerializeToString(),
        key=env.subject.encode(),
        message_id=env.id,
        type_=env.type,
        attributes={"aion.tenant": env.tenant} if env.tenant else None,
    )
