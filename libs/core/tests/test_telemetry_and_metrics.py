"""JSON logs carry trace ids; the metrics endpoint serves Prometheus text."""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import queue
import urllib.request

from opentelemetry.sdk.trace import TracerProvider

from aion.core import metrics, telemetry


def test_json_log_lines_carry_the_current_trace_id() -> None:
    handler = telemetry.json_handler("unit")
    buf = io.StringIO()
    handler.setStream(buf)  # type: ignore[attr-defined]
    logger = logging.getLogger("aion.test.telemetry")
    logger.addHandler(handler)
    logger.propagate = False
    tracer = TracerProvider().get_tracer("t")
    try:
        with tracer.start_as_current_span("work") as span:
            logger.warning("hello", extra={"task_id": "t1"})
            trace_id = format(span.get_span_context().trace_id, "032x")
        logger.warning("outside")
    finally:
        logger.removeHandler(handler)
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
    handler = telemetry.json_handler("unit")
    buf = io.StringIO()
    handler.setStream(buf)  # type: ignore[attr-defined]
    logger = logging.getLogger("aion.test.telemetry.objects")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning(
            "placed",
            extra={
                "settings": _HoldsAQueue(),
                "owner": _HoldsAQueue(),
                "k8s_ref": {"name": "demo"},
            },
        )
    finally:
        logger.removeHandler(handler)
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
