"""Kafka events: topic names, the envelope, and trace context in record headers.

Every record is an ``aion.events.v1.Envelope`` keyed by its subject (the
task id), so one task's events stay in order within a partition. The W3C
trace context of the change that caused the event travels in the headers.
"""

from __future__ import annotations

import dataclasses
import datetime
import uuid
from collections.abc import Mapping, Sequence

from google.protobuf import any_pb2, message, timestamp_pb2
from opentelemetry import context, propagate

from aion.api.events.v1 import events_pb2

SOURCE = "agent"
TASK_STATE_CHANGED = "aion.task.state_changed"
TASK_QUEUED = "aion.task.queued"
Headers = Sequence[tuple[str, bytes]]


@dataclasses.dataclass(frozen=True)
class Topics:
    """The agent service's topics, under one prefix."""

    prefix: str = "aion."

    @property
    def task_events(self) -> str:
        """Every task's state changes, for anyone to consume: the tenant, ids, state and
        usage, never the task's output (read it from the agent service as the tenant)."""
        return f"{self.prefix}task.events"

    @property
    def work(self) -> str:
        """Tasks waiting for a worker; the agent workers consume it as one group."""
        return f"{self.prefix}agent.tasks"

    def dead_letter(self, topic: str) -> str:
        """Where a consumer of ``topic`` puts the messages it cannot handle."""
        return f"{topic}.dlt"

    def group(self, name: str) -> str:
        """A consumer group's name."""
        return f"{self.prefix}{name}"


def envelope(*, type_: str, tenant: str, subject: str, data: message.Message,
             event_id: str | None = None) -> events_pb2.Envelope:
    """A new envelope around ``data``, stamped now."""
    packed = any_pb2.Any()
    packed.Pack(data)
    now = timestamp_pb2.Timestamp()
    now.FromDatetime(datetime.datetime.now(datetime.UTC))
    return events_pb2.Envelope(id=event_id or str(uuid.uuid4()), type=type_, source=SOURCE,
                               time=now, tenant=tenant, subject=subject, data=packed)


def trace_headers() -> dict[str, str]:
    """The current trace context as W3C headers (empty outside a span)."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier


def to_kafka_headers(headers: Mapping[str, str], *, type_: str | None = None) -> list[
        tuple[str, bytes]]:
    """Record headers from a string mapping."""
    out = [(k, v.encode()) for k, v in headers.items()]
    if type_ is not None:
        out.append(("ce_type", type_.encode()))
    return out


def trace_context(headers: Headers | None) -> context.Context:
    """The trace context a record carries, to continue the trace in its consumer."""
    carrier = {k: v.decode(errors="replace") for k, v in headers or ()}
    return propagate.extract(carrier)
