"""The agent service's Kafka events: its topic names and event types.

Every record is an ``aion.events.v1.Envelope`` (``aion.core.events``, the one
envelope of every service) keyed by its subject (the task id), so one task's
events stay in order within a partition. The W3C trace context of the change
that caused the event travels in the headers.
"""

from __future__ import annotations

import dataclasses

from google.protobuf import message

from aion.api.events.v1 import events_pb2
from aion.core import events as core_events

SOURCE = "agent"
TASK_STATE_CHANGED = "aion.task.state_changed"
TASK_QUEUED = "aion.task.queued"


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


# What every record holds.
Envelope = events_pb2.Envelope


def envelope(
    *, type_: str, tenant: str, subject: str, data: message.Message, event_id: str | None = None
) -> events_pb2.Envelope:
    """A new envelope around ``data`` from the agent service, stamped now."""
    return core_events.envelope(
        type_=type_, source=SOURCE, tenant=tenant, subject=subject, data=data, event_id=event_id
    )


# The record headers are the same for every service (aion.core.events).
trace_headers = core_events.trace_headers
to_kafka_headers = core_events.to_kafka_headers
