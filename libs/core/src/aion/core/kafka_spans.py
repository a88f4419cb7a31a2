"""OpenTelemetry spans around Kafka records, per the messaging semantic conventions.

Every flow through Kafka is two spans of one trace: ``send <topic>`` (PRODUCER),
whose W3C context travels in the record's headers, and ``process <topic>``
(CONSUMER) in whoever handles the record, a child of the send span. Both carry
``messaging.system=kafka``, ``messaging.operation.type`` and ``.name``,
``messaging.destination.name`` and what is known of the record (key, partition,
offset, message id, consumer group).

- ``start_send`` opens a send span (a child of ``parent``, or of the current
  span), ``headers`` is its context as record headers, ``acked`` ends it with
  the broker's partition and offset (or the send's error): the agent's outbox
  sends many records before their acks come, each in its own span;
- ``process`` is the context manager a consumer handles one record in, with the
  producer's context taken from the record's headers.

Only the OpenTelemetry API is needed here (and ``aion.core.events`` for the
headers); the aiokafka clients are in ``aion.core.kafka``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

from opentelemetry import context, trace
from opentelemetry.util import types as otel_types

from aion.core import events

SYSTEM = "kafka"
_tracer = trace.get_tracer(__name__)
# Stored headers that a send replaces: the context it was caused in, and the type.
_TRACE_FIELDS = frozenset({"traceparent", "tracestate", events.TYPE_HEADER})


def _key(key: bytes | str | None) -> str | None:
    if isinstance(key, bytes):
        return key.decode(errors="replace")
    return key


def _common(topic: str, operation: str, key: bytes | str | None) -> dict[str, Any]:
    attrs: dict[str, Any] = {
        "messaging.system": SYSTEM,
        "messaging.operation.type": operation,
        "messaging.operation.name": operation,
        "messaging.destination.name": topic,
    }
    if (text := _key(key)) is not None:
        attrs["messaging.kafka.message.key"] = text
    return attrs


def start_send(
    topic: str,
    *,
    key: bytes | str | None = None,
    message_id: str | None = None,
    parent: context.Context | None = None,
) -> trace.Span:
    """A started PRODUCER span ``send <topic>``, a child of ``parent`` (the current span
    when None); the caller ends it (``acked``, or ``trace.use_span``)."""
    attrs = _common(topic, "send", key)
    if message_id:
        attrs["messaging.message.id"] = message_id
    return _tracer.start_span(
        f"send {topic}", context=parent, kind=trace.SpanKind.PRODUCER, attributes=attrs
    )


def headers(
    span: trace.Span, extra: Mapping[str, str] | None = None, *, type_: str | None = None
) -> list[tuple[str, bytes]]:
    """Record headers carrying ``span``'s W3C context, with ``extra`` (other stored
    headers; a stored trace context in them is replaced) and ``ce_type``."""
    carrier = events.trace_headers(trace.set_span_in_context(span))
    rest = {k: v for k, v in (extra or {}).items() if k not in _TRACE_FIELDS}
    return events.to_kafka_headers({**rest, **carrier}, type_=type_)


def record_metadata(span: trace.Span, metadata: Any) -> None:
    """Set the partition and offset the broker gave the record (aiokafka's RecordMetadata)."""
    partition = getattr(metadata, "partition", None)
    offset = getattr(metadata, "offset", None)
    if partition is not None:
        span.set_attribute("messaging.destination.partition.id", str(partition))
    if offset is not None and offset >= 0:
        span.set_attribute("messaging.kafka.offset", offset)


def acked(span: trace.Span, ack: Any) -> None:
    """End ``span`` when ``ack`` (the future of the send) completes: with its partition
    and offset, or with its error."""

    def done(fut: Any) -> None:
        if fut.cancelled():
            span.set_status(trace.StatusCode.ERROR, "cancelled")
        elif (exc := fut.exception()) is not None:
            span.record_exception(exc)
            span.set_status(trace.StatusCode.ERROR, f"{type(exc).__name__}: {exc}")
        else:
            record_metadata(span, fut.result())
        span.end()

    ack.add_done_callback(done)


@contextlib.contextmanager
def process(
    record: Any,
    *,
    group: str | None = None,
    message_id: str | None = None,
    attributes: otel_types.Attributes = None,
) -> Iterator[trace.Span]:
    """Handle ``record`` (aiokafka's ConsumerRecord) inside the current CONSUMER span
    ``process <topic>``, a child of the span that sent it (its headers' context)."""
    attrs = _common(record.topic, "process", record.key)
    attrs["messaging.destination.partition.id"] = str(record.partition)
    attrs["messaging.kafka.offset"] = record.offset
    if group:
        attrs["messaging.consumer.group.name"] = group
    if message_id:
        attrs["messaging.message.id"] = message_id
    attrs.update(attributes or {})
    with _tracer.start_as_current_span(
        f"process {record.topic}",
        context=events.trace_context(record.headers),
        kind=trace.SpanKind.CONSUMER,
        attributes=attrs,
    ) as span:
        yield span
