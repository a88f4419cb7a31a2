"""The one event envelope and the trace context its records carry (no broker needed)."""

from __future__ import annotations

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from aion.api.events.v1 import events_pb2
from aion.core import events


def load() -> events_pb2.ExecutorLoad:
    return events_pb2.ExecutorLoad(executor="pod-1", model="m", queue_depth=2)


def test_an_envelope_names_its_source_and_packs_the_event() -> None:
    env = events.envelope(type_="aion.test", source="executor", subject="pod-1", data=load())
    again = events.envelope(type_="aion.test", source="executor", subject="pod-1", data=load())
    assert (env.type, env.source, env.subject, env.tenant) == ("aion.test", "executor", "pod-1", "")
    assert env.id
    assert env.id != again.id
    assert env.time.seconds > 0
    unpacked = events_pb2.ExecutorLoad()
    assert env.data.Unpack(unpacked)
    assert unpacked == load()
    fixed = events.envelope(
        type_="t", source="agent", subject="s", data=load(), tenant="acme", event_id="e-1"
    )
    assert (fixed.id, fixed.tenant) == ("e-1", "acme")


def test_record_headers_carry_the_current_trace_and_the_type() -> None:
    env = events.envelope(type_="aion.test", source="executor", subject="s", data=load())
    assert events.record_headers(env) == [("ce_type", b"aion.test")]  # outside a span
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("change") as span:
        headers = events.record_headers(env)
    names = dict(headers)
    assert names["ce_type"] == b"aion.test"
    trace_id = format(span.get_span_context().trace_id, "032x")
    assert names["traceparent"].decode().split("-")[1] == trace_id
    # A consumer continues the same trace from the headers.
    parent = trace.get_current_span(events.trace_context(headers)).get_span_context()
    assert parent.trace_id == span.get_span_context().trace_id
    assert parent.span_id == span.get_span_context().span_id
