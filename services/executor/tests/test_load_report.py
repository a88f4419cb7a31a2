"""Load reports on the real Kafka broker: the Stats figures, at an interval, keyed by executor."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Callable

import prometheus_client
import pytest
from aiokafka import AIOKafkaConsumer  # type: ignore[import-untyped]
from opentelemetry.sdk.trace import TracerProvider

from aion.api.events.v1 import events_pb2
from aion.executor import load_report, stats
from aion.infra.kafka import Kafka

pytestmark = pytest.mark.kafka

LOAD = stats.Load(
    model_ready=True,
    queue_depth=3,
    in_flight=2,
    max_queue=16,
    tokens_per_s=41.5,
    p95_latency_s=0.75,
    max_batch=8,
)


Record = tuple[bytes, events_pb2.Envelope, dict[str, bytes]]


async def read(
    bootstrap: str, topic: str, count: int, until: Callable[[Record], bool] | None = None
) -> list[Record]:
    """The first ``count`` records of ``topic`` (or up to the first that ``until`` accepts)."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    try:
        out: list[Record] = []
        async with asyncio.timeout(60):
            while len(out) < count:
                record = await consumer.getone()
                out.append(
                    (record.key, events_pb2.Envelope.FromString(record.value), dict(record.headers))
                )
                if until is not None and until(out[-1]):
                    break
        return out
    finally:
        await consumer.stop()


def not_ready(record: Record) -> bool:
    load = events_pb2.ExecutorLoad()
    return record[1].data.Unpack(load) and not load.model_ready


async def test_reports_carry_the_stats_figures_at_the_interval(kafka: Kafka) -> None:
    topic = f"aion-test-load-{uuid.uuid4().hex[:10]}"
    reporter = load_report.LoadReporter(
        lambda: LOAD,
        bootstrap=kafka.bootstrap,
        topic=topic,
        interval_s=0.2,
        executor="pod-7",
        model="m",
    )
    async with reporter:
        task = asyncio.create_task(reporter.run())
        try:
            records = await read(kafka.bootstrap, topic, 3)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    # A report whose send was cancelled may still have reached the broker, so
    # ``published`` can be one short: read on to the first report not ready.
    last = (await read(kafka.bootstrap, topic, reporter.published + 1, until=not_ready))[-1][1]

    key, envelope, _ = records[0]
    assert key == b"pod-7"
    assert (envelope.type, envelope.source, envelope.subject) == (
        "aion.executor.load",
        "executor",
        "pod-7",
    )
    assert len({e.id for _, e, _ in records}) == 3
    load = events_pb2.ExecutorLoad()
    assert envelope.data.Unpack(load)
    assert load == events_pb2.ExecutorLoad(
        executor="pod-7",
        model="m",
        queue_depth=3,
        in_flight=2,
        tokens_per_s=41.5,
        p95_latency_ms=750.0,
        model_ready=True,
    )
    # The Prometheus gauges read the same snapshot.
    stats.export(lambda: LOAD)
    gauge = prometheus_client.REGISTRY.get_sample_value
    assert (
        gauge("aion_executor_queue_depth"),
        gauge("aion_executor_in_flight"),
        gauge("aion_executor_tokens_per_second"),
        gauge("aion_executor_p95_latency_seconds"),
    ) == (3, 2, 41.5, 0.75)
    # The report sent while shutting down says the model is no longer ready.
    final = events_pb2.ExecutorLoad()
    assert last.data.Unpack(final)
    assert not final.model_ready


async def test_an_unreachable_broker_delays_reports_without_failing() -> None:
    reporter = load_report.LoadReporter(
        lambda: LOAD, bootstrap="127.0.0.1:1", topic="t", interval_s=0.1, executor="e", model="m"
    )
    async with reporter:
        task = asyncio.create_task(reporter.run())
        # It keeps trying, and the task keeps running, instead of failing.
        deadline = asyncio.get_running_loop().time() + 30
        while reporter.connect_attempts < 2 and not task.done():
            assert asyncio.get_running_loop().time() < deadline, "no second attempt in 30 s"
            await asyncio.sleep(0.05)
        assert not task.done()
        assert reporter.published == 0
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert reporter.published == 0


async def test_reports_carry_the_w3c_trace_context_and_the_type(kafka: Kafka) -> None:
    topic = f"aion-test-load-{uuid.uuid4().hex[:10]}"
    reporter = load_report.LoadReporter(
        lambda: LOAD,
        bootstrap=kafka.bootstrap,
        topic=topic,
        interval_s=0.2,
        executor="pod-8",
        model="m",
    )
    # The executor's process has a tracer provider (telemetry.setup); here, a span of one.
    tracer = TracerProvider().get_tracer("test")
    async with reporter:
        with tracer.start_as_current_span("executor") as span:
            task = asyncio.create_task(reporter.run())
        try:
            records = await read(kafka.bootstrap, topic, 2)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    trace_id = format(span.get_span_context().trace_id, "032x")
    for *_, headers in records:
        assert headers["ce_type"] == b"aion.executor.load"
        version, trace, parent, _flags = headers["traceparent"].decode().split("-")
        assert (version, trace) == ("00", trace_id)
        assert len(parent) == 16
