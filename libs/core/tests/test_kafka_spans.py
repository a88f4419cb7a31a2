"""Kafka spans: a send span's context rides in the headers and parents the process span;
GenAI spans carry model and usage (no broker needed)."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from aion.api.events.v1 import events_pb2
from aion.core import events, kafka, kafka_spans, span_capture, telemetry


@pytest.fixture
def spans() -> InMemorySpanExporter:
    exporter = span_capture.exporter()
    exporter.clear()
    return exporter


def _parent_id(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


@dataclasses.dataclass
class _Record:
    """The fields of aiokafka's ConsumerRecord a consumer span reads."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]]


@dataclasses.dataclass
class _Metadata:
    partition: int
    offset: int


class _Client:
    """Records what ``send_and_wait`` was given; answers like a broker would."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, bytes, list[tuple[str, bytes]]]] = []

    async def send_and_wait(
        self, topic: str, value: bytes, *, key: bytes, headers: list[tuple[str, bytes]]
    ) -> _Metadata:
        self.sent.append((topic, value, key, headers))
        return _Metadata(partition=3, offset=41)


async def test_send_then_process_is_one_trace_producer_parent_of_consumer(
    spans: InMemorySpanExporter,
) -> None:
    tracer = trace.get_tracer("test")
    env = events.envelope(
        type_="aion.test",
        source="test",
        subject="task-1",
        data=events_pb2.ExecutorLoad(executor="e"),
        tenant="acme",
    )
    client = _Client()
    with tracer.start_as_current_span("cause") as cause:
        await kafka.send(client, "aion.work", env)
    topic, value, key, headers = client.sent[0]
    assert dict(headers)["ce_type"] == b"aion.test"
    with kafka_spans.process(
        _Record(topic, 3, 41, key, value, headers), group="workers", message_id=env.id
    ):
        tracer.start_span("handled").end()
    by_name = {s.name: s for s in spans.get_finished_spans()}
    send, proc, handled = (
        by_name["send aion.work"],
        by_name["process aion.work"],
        by_name["handled"],
    )
    trace_id = cause.get_span_context().trace_id
    assert {s.context.trace_id for s in (send, proc, handled)} == {trace_id}
    assert (send.kind, proc.kind) == (trace.SpanKind.PRODUCER, trace.SpanKind.CONSUMER)
    assert _parent_id(send) == cause.get_span_context().span_id
    assert _parent_id(proc) == send.context.span_id
    assert _parent_id(handled) == proc.context.span_id
    assert dict(send.attributes or {}) == {
        "messaging.system": "kafka",
        "messaging.operation.type": "send",
        "messaging.operation.name": "send",
        "messaging.destination.name": "aion.work",
        "messaging.kafka.message.key": "task-1",
        "messaging.message.id": env.id,
        "aion.tenant": "acme",
        "messaging.destination.partition.id": "3",
        "messaging.kafka.offset": 41,
    }
    attrs = dict(proc.attributes or {})
    assert attrs["messaging.operation.type"] == "process"
    assert attrs["messaging.consumer.group.name"] == "workers"
    assert attrs["messaging.destination.partition.id"] == "3"
    assert attrs["messaging.kafka.offset"] == 41


async def test_a_stored_context_parents_a_later_send_ended_by_its_ack(
    spans: InMemorySpanExporter,
) -> None:
    tracer = trace.get_tracer("test")
    with tracer.start_as_current_span("write") as write:
        stored = {**events.trace_headers(), "ce_type": "aion.task.queued"}
    # Later, elsewhere (the outbox publisher: no span of its own).
    span = kafka_spans.start_send(
        "aion.work",
        key=b"k",
        message_id="e-1",
        parent=events.trace_context(events.to_kafka_headers(stored)),
    )
    headers = kafka_spans.headers(span, stored, type_=stored["ce_type"])
    assert [k for k, _ in headers].count("traceparent") == 1
    assert dict(headers)["ce_type"] == b"aion.task.queued"
    ack: asyncio.Future[_Metadata] = asyncio.get_running_loop().create_future()
    kafka_spans.acked(span, ack)
    # Open until the broker answers.
    assert not span_capture.named(spans.get_finished_spans(), "send aion.work")
    ack.set_result(_Metadata(partition=0, offset=7))
    finished = await span_capture.wait_for("send aion.work", timeout_s=5)  # ended on the ack
    (sent,) = span_capture.named(finished, "send aion.work")
    assert sent.context.trace_id == write.get_span_context().trace_id
    assert _parent_id(sent) == write.get_span_context().span_id
    assert (sent.attributes or {})["messaging.kafka.offset"] == 7
    carried = trace.get_current_span(events.trace_context(headers)).get_span_context()
    assert carried.span_id == sent.context.span_id


async def test_a_failed_send_ends_its_span_with_the_error(spans: InMemorySpanExporter) -> None:
    span = kafka_spans.start_send("aion.work", key="k")
    ack: asyncio.Future[_Metadata] = asyncio.get_running_loop().create_future()
    kafka_spans.acked(span, ack)
    ack.set_exception(ConnectionError("broker gone"))
    (sent,) = await span_capture.wait_for("send aion.work", timeout_s=5)
    assert sent.status.status_code is trace.StatusCode.ERROR
    assert "broker gone" in (sent.status.description or "")
    with pytest.raises(ConnectionError):
        ack.result()


def test_a_model_call_span_carries_the_genai_attributes(spans: InMemorySpanExporter) -> None:
    with telemetry.model_call("smollm2", attributes={telemetry.TASK_ID: "t-1"}) as span:
        telemetry.model_usage(span, input_tokens=12, output_tokens=5, finish_reasons=["stop"])
    with pytest.raises(ValueError, match="bad"), telemetry.model_call("smollm2", current=False):
        raise ValueError("bad")
    ok, failed = spans.get_finished_spans()
    assert (ok.name, ok.kind) == ("chat smollm2", trace.SpanKind.CLIENT)
    assert dict(ok.attributes or {}) == {
        "gen_ai.operation.name": "chat",
        "gen_ai.request.model": "smollm2",
        "aion.task.id": "t-1",
        "gen_ai.usage.input_tokens": 12,
        "gen_ai.usage.output_tokens": 5,
        "gen_ai.response.finish_reasons": ("stop",),
    }
    assert failed.status.status_code is trace.StatusCode.ERROR
