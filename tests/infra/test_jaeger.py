"""The local Jaeger (v2): a span sent with OpenTelemetry's OTLP gRPC exporter comes back
from its query APIs, Jaeger's JSON (/api/traces/<id>) and OTLP JSON (/api/v3), with its
service, name, attributes and parent."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from aion.infra.component import http_get, poll
from aion.infra.jaeger import Jaeger

pytestmark = pytest.mark.jaeger


def _get_json(url: str) -> tuple[int | None, Any]:
    status, body = http_get(url)
    try:
        return status, json.loads(body) if body else None
    except ValueError:
        return status, body


def _send_two_spans(jaeger: Jaeger, service: str) -> tuple[str, str, str]:
    """A parent span with a child, exported over OTLP gRPC; (trace id, parent id, child id)
    in hex."""
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(
        SimpleSpanProcessor(OTLPSpanExporter(endpoint=jaeger.otlp_endpoint, insecure=True))
    )
    tracer = provider.get_tracer("aion.tests")
    with (
        tracer.start_as_current_span("task", attributes={"aion.tenant": "acme"}) as parent,
        tracer.start_as_current_span(
            "model.call", attributes={"gen_ai.usage.output_tokens": 7}
        ) as child,
    ):
        pass
    provider.shutdown()
    trace_id = parent.get_span_context().trace_id
    return (
        f"{trace_id:032x}",
        f"{parent.get_span_context().span_id:016x}",
        f"{child.get_span_context().span_id:016x}",
    )


def test_endpoints(jaeger: Jaeger) -> None:
    env = jaeger.endpoints()
    assert env["AION_JAEGER_OTLP_ENDPOINT"] == f"127.0.0.1:{jaeger.otlp_port}"
    assert env["AION_JAEGER_URL"] == f"http://127.0.0.1:{jaeger.ui_port}"
    assert jaeger.status() == "ready"
    assert jaeger.trace_url("ab" * 16) == f"{jaeger.url}/trace/{'ab' * 16}"


def test_a_span_sent_over_otlp_comes_back_from_the_query_api(jaeger: Jaeger) -> None:
    service = f"aion-test-{uuid.uuid4().hex[:8]}"
    trace_id, parent_id, child_id = _send_two_spans(jaeger, service)

    status, reply = poll(
        lambda: _get_json(f"{jaeger.url}/api/traces/{trace_id}"),
        lambda r: r[0] == 200 and len(r[1]["data"][0]["spans"]) == 2,
        timeout=30,
    )
    assert status == 200, f"Jaeger did not return trace {trace_id}: {reply}"
    trace = reply["data"][0]
    spans = {s["operationName"]: s for s in trace["spans"]}
    assert set(spans) == {"task", "model.call"}
    assert spans["task"]["spanID"] == parent_id
    assert spans["model.call"]["spanID"] == child_id
    assert spans["model.call"]["references"] == [
        {"refType": "CHILD_OF", "traceID": trace_id, "spanID": parent_id}
    ]
    tags = {t["key"]: t["value"] for t in spans["task"]["tags"]}
    assert tags["aion.tenant"] == "acme"
    assert trace["processes"][spans["task"]["processID"]]["serviceName"] == service

    # The service is listed, and the v3 API returns the same trace as OTLP JSON.
    assert service in _get_json(f"{jaeger.url}/api/services")[1]["data"]
    status, v3 = _get_json(f"{jaeger.url}/api/v3/traces/{trace_id}")
    assert status == 200, v3
    names = [
        span["name"]
        for rs in v3["result"]["resourceSpans"]
        for ss in rs["scopeSpans"]
        for span in ss["spans"]
    ]
    assert sorted(names) == ["model.call", "task"]


def test_an_unknown_trace_is_not_found(jaeger: Jaeger) -> None:
    status, _ = _get_json(f"{jaeger.url}/api/traces/{uuid.uuid4().hex}")
    assert status == 404


def test_traces_survive_a_restart(jaeger: Jaeger) -> None:
    """Badger keeps the spans on disk: a restarted Jaeger still returns them."""
    trace_id, _, _ = _send_two_spans(jaeger, f"aion-test-{uuid.uuid4().hex[:8]}")
    url = f"{jaeger.url}/api/traces/{trace_id}"
    stored = poll(lambda: _get_json(url), lambda r: r[0] == 200, timeout=30)
    assert stored[0] == 200, stored
    jaeger.down()
    jaeger.up()
    status, reply = _get_json(url)
    assert status == 200, reply
    assert len(reply["data"][0]["spans"]) == 2
