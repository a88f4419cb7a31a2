"""How every aion service talks to Kafka: one producer, one way to create topics and one
way to send an event, with the security settings of ``aion.core.kafka_security``
(re-exported here: ``KafkaSettings``, ``client_options``).

``producer`` builds the aiokafka producer every service uses (idempotent,
``acks=all``, unless a caller overrides it), ``ensure_topics`` creates the
topics a service writes, and ``send`` publishes one envelope
(``aion.core.events``) inside a PRODUCER span, with the W3C trace context and
the event type in the record's headers. aiokafka is the ``kafka`` extra of
aion-core (``aion-core[kafka]``): only the services that use Kafka import this
module, so the gateway's, router's and operator's images stay without it.
"""

from __future__ import annotations

import contextlib
from typing import Any

import aiokafka  # type: ignore[import-untyped]
from aiokafka import admin as kafka_admin
from aiokafka import errors as kafka_errors
from opentelemetry import trace

from aion.api.events.v1 import events_pb2
from aion.core import events
from aion.core.kafka_security import KafkaSettings, Mechanism, Protocol, client_options

__all__ = [
    "KafkaSettings",
    "Mechanism",
    "Protocol",
    "client_options",
    "ensure_topics",
    "producer",
    "send",
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


_tracer = trace.get_tracer(__name__)


async def send(client: Any, topic: str, env: events_pb2.Envelope) -> None:
    """Publish ``env`` to ``topic``, keyed by its subject, and wait for the broker's ack.

    The send is a PRODUCER span (a child of the caller's, or a trace of its
    own), whose W3C context travels in the record's headers with ``ce_type``.
    """
    with _tracer.start_as_current_span(f"send {topic}", kind=trace.SpanKind.PRODUCER) as span:
        span.set_attribute("messaging.system", "kafka")
        span.set_attribute("messaging.destination.name", topic)
        span.set_attribute("messaging.message.id", env.id)
        await client.send_and_wait(
            topic,
            env.SerializeToString(),
            key=env.subject.encode(),
            headers=events.record_headers(env),
        )
