"""The one Kafka event envelope of every aion service, and the trace context in its headers.

Every record any service writes to Kafka is an ``aion.events.v1.Envelope``
(a CloudEvents-shaped header: id, type, source, time, tenant, subject, and the
event itself packed in ``data``), keyed by its subject so that one subject's
events stay in order within a partition. The record's headers carry the W3C
trace context (``traceparent``, ``tracestate``) of the change that caused the
event, and its type as ``ce_type``, so a consumer continues the trace and can
route a record without decoding it.

- ``envelope`` builds one (stamped now, a fresh id unless given);
- ``trace_headers`` / ``to_kafka_headers`` / ``record_headers`` are what a
  producer puts on the record (the agent's outbox stores them with the row and
  sends them later; ``aion.core.kafka.send`` puts them on at once);
- ``trace_context`` is what a consumer reads back.

Only protobuf and the OpenTelemetry API are needed here: the aiokafka clients
are in ``aion.core.kafka``.
"""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Mapping, Sequence

from google.protobuf import any_pb2, message, timestamp_pb2
from opentelemetry import context, propagate

from aion.api.events.v1 import events_pb2

TYPE_HEADER = "ce_type"
Headers = Sequence[tuple[str, bytes]]


def envelope(
    *,
    type_: str,
    source: str,
    subject: str,
    data: message.Message,
    tenant: str = "",
    event_id: str | None = None,
) -> events_pb2.Envelope:
    """A new envelope around ``data``, stamped now; ``source`` names the service."""
    packed = any_pb2.Any()
    packed.Pack(data)
    now = timestamp_pb2.Timestamp()
    now.FromDatetime(datetime.datetime.now(datetime.UTC))
    return events_pb2.Envelope(
        id=event_id or str(uuid.uuid4()),
        type=type_,
        source=source,
        time=now,
        tenant=tenant,
        subject=subject,
        data=packed,
    )


def trace_headers(ctx: context.Context | None = None) -> dict[str, str]:
    """The trace context of ``ctx`` (the current one when None) as W3C headers (empty
    outside a span)."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=ctx)
    return carrier


def to_kafka_headers(
    headers: Mapping[str, str], *, type_: str | None = None
) -> list[tuple[str, bytes]]:
    """Record headers from a string mapping (and ``ce_type``, when ``type_`` is given)."""
    out = [(k, v.encode()) for k, v in headers.items()]
    if type_ is not None:
        out.append((TYPE_HEADER, type_.encode()))
    return out


def record_headers(env: events_pb2.Envelope) -> list[tuple[str, bytes]]:
    """The headers of a record of ``env`` sent now: the current trace context and its type."""
    return to_kafka_headers(trace_headers(), type_=env.type)


def trace_context(headers: Headers | None) -> context.Context:
    """The trace context a record carries, to continue the trace in its consumer."""
    carrier = {k: v.decode(errors="replace") for k, v in headers or ()}
    return propagate.extract(carrier)
