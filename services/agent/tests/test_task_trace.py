"""One asynchronous task is one trace: the Submit call, the outbox's send to the work topic,
the worker's process span, the run and its model call; each executor load report read is
a child of its send; over real Postgres and Kafka (the spans kept in memory,
``aion.core.span_capture``)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.instrumentation.grpc import GrpcAioInstrumentorServer
from opentelemetry.sdk.trace import ReadableSpan

from aion.agent import load_testing
from aion.agent import testing as agent_testing
from aion.api.agent.v1 import agent_pb2, agent_pb2_grpc
from aion.api.v1 import agents_pb2, common_pb2, tasks_pb2
from aion.core import span_capture

TENANT = "acme"


@pytest.fixture
def instrumented() -> Iterator[None]:
    """The gRPC server side instrumented (as ``telemetry.setup`` does), for this test."""
    instrumentor = GrpcAioInstrumentorServer()  # type: ignore[no-untyped-call]
    instrumentor.instrument()
    try:
        yield
    finally:
        instrumentor.uninstrument()


def _parent(span: ReadableSpan, spans: dict[int, ReadableSpan]) -> ReadableSpan | None:
    return spans.get(span.parent.span_id) if span.parent is not None else None


async def test_an_async_task_is_one_trace_through_the_work_topic(
    instrumented: None, new_service: Callable[..., Any]
) -> None:
    exporter = span_capture.exporter()
    exporter.clear()
    async with new_service() as svc, agent_testing.channel(svc.address) as chan:
        stub = agent_pb2_grpc.AgentServiceStub(chan)
        await stub.RegisterAgent(
            agent_pb2.RegisterAgentRequest(
                tenant=TENANT,
                agent=agents_pb2.Agent(name="echo", model="m"),
                instructions="Echo.",
                executor_endpoints=[svc.executor.address],
            )
        )
        submitted = await stub.Submit(
            agent_pb2.RunRequest(
                tenant=TENANT,
                asynchronous=True,
                task=tasks_pb2.TaskSpec(agent="echo", input="traced words"),
            ),
            timeout=10,
        )
        ref = agent_pb2.TaskRef(tenant=TENANT, task_id=submitted.task_id)
        events = [e async for e in stub.Follow(ref, timeout=30)]
        assert events[-1].WhichOneof("event") == "done", events[-1]
        result = await stub.GetTask(ref)
        assert result.status == common_pb2.TASK_STATUS_OK
        work = svc.cfg.topic_prefix + "agent.tasks"
        # The spans end as their work does (the run's after its end is stored).
        finished = await span_capture.wait_for("invoke_agent echo", f"process {work}")
    assert len(result.trace_id) == 32, result
    trace_id = int(result.trace_id, 16)
    spans = {s.context.span_id: s for s in finished}
    mine = [s for s in spans.values() if s.context.trace_id == trace_id]
    shown = "\n".join(f"{s.name} <- {getattr(_parent(s, spans), 'name', None)}" for s in mine)
    by_name = {s.name: s for s in mine}
    submit = by_name.get("/aion.agent.v1.AgentService/Submit")
    assert submit is not None, shown
    assert submit.kind is trace.SpanKind.SERVER
    assert (submit.attributes or {})["aion.task.id"] == submitted.task_id
    assert (submit.attributes or {})["aion.tenant"] == TENANT
    send = by_name[f"send {work}"]
    assert send.kind is trace.SpanKind.PRODUCER
    assert _parent(send, spans) is submit, shown
    process = by_name[f"process {work}"]
    assert process.kind is trace.SpanKind.CONSUMER
    assert _parent(process, spans) is send, shown
    assert (process.attributes or {})["messaging.message.id"] == (send.attributes or {})[
        "messaging.message.id"
    ]
    run = by_name["invoke_agent echo"]
    assert _parent(run, spans) is process, shown
    assert (run.attributes or {})["aion.task.id"] == submitted.task_id
    call = by_name["chat m"]
    assert _parent(call, spans) is run, shown
    attrs = dict(call.attributes or {})
    assert attrs["gen_ai.request.model"] == "m"
    assert attrs["gen_ai.usage.output_tokens"] == result.usage.completion_tokens > 0
    assert attrs["aion.tenant"] == TENANT
    # The task's state changes go to the task-events topic in its trace too.
    events_topic = svc.cfg.topic_prefix + "task.events"
    assert any(s.name == f"send {events_topic}" for s in mine), shown


async def test_a_load_report_is_read_in_a_child_of_its_send(
    new_service: Callable[..., Any], kafka: Any
) -> None:
    exporter = span_capture.exporter()
    exporter.clear()
    topic = f"load-{uuid.uuid4().hex[:8]}"

    def read_after_its_send(finished: tuple[ReadableSpan, ...]) -> bool:
        # A send span ends on the broker's acknowledgement, which may come after the
        # consumer has read the report: wait for a read whose send has ended too.
        ended = {s.context.span_id: s for s in finished}
        return any(_parent(s, ended) for s in span_capture.named(finished, f"process {topic}"))

    async with (
        load_testing.pods(1, kafka.bootstrap, topic),
        new_service(executor_load_topic=topic),
    ):
        finished = await span_capture.wait_for(f"process {topic}", until=read_after_its_send)
    spans = {s.context.span_id: s for s in finished}
    read = span_capture.named(list(spans.values()), f"process {topic}")
    assert read, f"no process {topic} span in 30s"
    sent = _parent(read[0], spans)
    assert sent is not None
    assert (sent.name, sent.kind) == (f"send {topic}", trace.SpanKind.PRODUCER)
    assert read[0].kind is trace.SpanKind.CONSUMER
    key = "messaging.kafka.message.key"  # the executor's id
    assert (read[0].attributes or {})[key] == (sent.attributes or {})[key]
