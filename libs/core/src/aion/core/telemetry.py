"""Telemetry, set up once per process from each service's ``main``.

``setup`` installs JSON logs on stderr (each line carries the current
trace_id and span_id), an OpenTelemetry tracer provider named after the
service (exporting over OTLP when an endpoint is set), and the gRPC aio
instrumentation on both the server and client side, so one trace follows a
task from the gateway through every service it touches.
"""

from __future__ import annotations

import atexit
import json
import logging
import sys

from opentelemetry import trace
from opentelemetry.instrumentation.grpc import GrpcAioInstrumentorClient, GrpcAioInstrumentorServer
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter

_done = False


class TraceContextFilter(logging.Filter):
    """Adds the current span's trace_id and span_id (hex) to every record."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self._service = service

    def filter(self, record: logging.LogRecord) -> bool:
        ctx = trace.get_current_span().get_span_context()
        record.service = self._service
        record.trace_id = format(ctx.trace_id, "032x") if ctx.is_valid else ""
        record.span_id = format(ctx.span_id, "016x") if ctx.is_valid else ""
        return True


def json_handler(service: str) -> logging.Handler:
    """A stderr handler writing one JSON object per record, with trace ids."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter(
            "{asctime}{levelname}{name}{message}{service}{trace_id}{span_id}",
            style="{",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            # Libraries attach objects to records (kopf: its whole settings dataclass, which
            # holds a queue). The plain encoder with str() writes any of them; `settings`
            # itself is noise and dropped.
            json_encoder=json.JSONEncoder,
            json_default=str,
            reserved_attrs=[*RESERVED_ATTRS, "settings"],
        )
    )
    handler.addFilter(TraceContextFilter(service))
    return handler


def setup(*, service: str, log_level: str = "INFO", otlp_endpoint: str | None = None) -> None:
    """Configure logs and traces for this process; later calls do nothing."""
    global _done
    if _done:
        return
    _done = True
    root = logging.getLogger()
    root.handlers[:] = [json_handler(service)]
    root.setLevel(log_level.upper())
    provider = TracerProvider(resource=Resource.create({"service.name": f"aion-{service}"}))
    if otlp_endpoint:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(
            BatchSpanProcessor(OTLPSpanExporter(endpoint=otlp_endpoint, insecure=True))
        )
    trace.set_tracer_provider(provider)
    atexit.register(provider.shutdown)
    GrpcAioInstrumentorServer().instrument()  # type: ignore[no-untyped-call]
    GrpcAioInstrumentorClient().instrument()  # type: ignore[no-untyped-call]
