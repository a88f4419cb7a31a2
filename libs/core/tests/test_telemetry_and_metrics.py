"""JSON logs carry trace ids; the metrics endpoint serves Prometheus text."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import json
import logging
import queue
import urllib.request
from collections.abc import Iterator

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from aion.core import metrics, span_capture, telemetry


@contextlib.contextmanager
def _json_log(name: str) -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A logger writing through the services' JSON handler into a buffer."""
    handler = telemetry.json_handler("unit")
    buf = io.StringIO()
    handler.setStream(buf)  # type: ignore[attr-defined]
    logger = logging.getLogger(name)
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield logger, buf
    finally:
        logger.removeHandler(handler)


def test_json_log_lines_carry_the_current_trace_id() -> None:
    tracer = TracerProvider().get_tracer("t")
    with _json_log("aion.test.telemetry") as (logger, buf):
        with tracer.start_as_current_span("work") as span:
            logger.warning("hello", extra={"task_id": "t1"})
            trace_id = format(span.get_span_context().trace_id, "032x")
        logger.warning("outside")
    first, second = (json.loads(line) for line in buf.getvalue().splitlines())
    assert first["message"] == "hello"
    assert first["service"] == "unit"
    assert first["trace_id"] == trace_id
    assert first["task_id"] == "t1"
    assert first["level"] == "WARNING"
    assert second["trace_id"] == ""


@dataclasses.dataclass
class _HoldsAQueue:
    # Like kopf's settings, which kopf attaches to every per-object log record.
    inbox: queue.SimpleQueue[int] = dataclasses.field(default_factory=queue.SimpleQueue)


def test_records_carrying_objects_still_log() -> None:
    with _json_log("aion.test.telemetry.objects") as (logger, buf):
        logger.warning(
            "placed",
            extra={
                "settings": _HoldsAQueue(),
                "owner": _HoldsAQueue(),
                "k8s_ref": {"name": "demo"},
            },
        )
    line = json.loads(buf.getvalue())
    assert line["message"] == "placed"
    assert "settings" not in line
    assert line["owner"].startswith("_HoldsAQueue(")
    assert line["k8s_ref"] == {"name": "demo"}


def test_metrics_endpoint_serves_prometheus_text() -> None:
    metrics.RPC_HANDLED.labels("svc", "M", "OK").inc()
    with metrics.MetricsServer(host="127.0.0.1", port=0) as srv:
        assert srv.port
        with urllib.request.urlopen(f"http://127.0.0.1:{srv.port}/metrics", timeout=5) as r:
            body = r.read().decode()
    assert 'grpc_server_handled_total{grpc_code="OK",grpc_method="M",grpc_service="svc"}' in body
    srv.close()  # idempotent


def test_disabled_metrics_endpoint_binds_nothing() -> None:
    with metrics.MetricsServer(host="127.0.0.1", port=None) as srv:
        assert srv.port is None


def test_log_lines_carry_trace_span_and_the_bound_tenant() -> None:
    spans = span_capture.exporter()
    spans.clear()

    async def request(logger: logging.Logger, tenant: str, both_bound: asyncio.Barrier) -> None:
        with trace.get_tracer("test").start_as_current_span("rpc"):
            telemetry.bind_tenant(tenant)
            await both_bound.wait()  # the other request has bound its tenant too
            logger.warning("work")

    async def both(logger: logging.Logger) -> None:
        # Two requests at once, each its own asyncio task (as gRPC runs them).
        both_bound = asyncio.Barrier(2)
        async with asyncio.TaskGroup() as group:
            group.create_task(request(logger, "acme", both_bound))
            group.create_task(request(logger, "globex", both_bound))

    with _json_log("aion.test.tenant") as (logger, buf):
        asyncio.run(both(logger))
        logger.warning("outside")
        logger.warning("named", extra={"tenant": "own"})
    lines = [json.loads(line) for line in buf.getvalue().splitlines()]
    rpcs = {s.context.span_id: s for s in spans.get_finished_spans()}
    assert sorted(line["tenant"] for line in lines[:2]) == ["acme", "globex"]
    for line in lines[:2]:
        span = rpcs[int(line["span_id"], 16)]
        assert line["trace_id"] == format(span.context.trace_id, "032x")
        assert (span.attributes or {})["aion.tenant"] == line["tenant"]
    assert (lines[2]["tenant"], lines[2]["trace_id"]) == ("", "")
    assert lines[3]["tenant"] == "own"
