"""Telemetry, set up once per process from each service's ``main``.

``setup`` installs JSON logs on stderr (each line carries the current
trace_id and span_id, and the tenant the work is for: ``bind_tenant``, called
where a service learns its caller's verified tenant), an OpenTelemetry tracer
provider named after the service (exporting over OTLP when an endpoint is set), and the gRPC aio
instrumentation on both the server and client side, so one trace follows a
task from the gateway through every service it touches.

``model_call`` is the span of one generation, with the GenAI semantic
conventions' attributes (``gen_ai.operation.name``, ``gen_ai.request.model``,
and ``model_usage``: tokens and finish reasons), in the agent (the call) and the
executor (the generation).
"""

from __future__ import annotations

import atexit
import contextlib
import contextvars
import json
import logging
import sys
from collections.abc import Iterator, Sequence

from opentelemetry import trace
from opentelemetry.instrumentation.grpc import GrpcAioInstrumentorClient, GrpcAioInstrumentorServer
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter

_done = False
_tracer = trace.get_tracer(__name__)

# The tenant the current work is for (a request's verified caller, a task's, an event's).
_tenant: contextvars.ContextVar[str] = contextvars.ContextVar("aion_tenant", default="")

TENANT = "aion.tenant"
TASK_ID = "aion.task.id"


def bind_tenant(tenant: str) -> None:
    """The current work (this asyncio task, and those it starts) is for ``tenant``: its
    log lines carry it, and so does the current span (``aion.tenant``)."""
    _tenant.set(tenant)
    if tenant:
        trace.get_current_span().set_attribute(TENANT, tenant)


def current_tenant() -> str:
    """The tenant ``bind_tenant`` set for the current work ("" when none)."""
    return _tenant.get()


class TraceContextFilter(logging.Filter):
    """Adds the current span's trace_id and span_id (hex), and the current tenant, to
    every record (a record that names its own tenant keeps it)."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self._service = service

    def filter(self, record: logging.LogRecord) -> bool:
        ctx = trace.get_current_span().get_span_context()
        record.service = self._service
        record.trace_id = format(ctx.trace_id, "032x") if ctx.is_valid else ""
        record.span_id = format(ctx.span_id, "016x") if ctx.is_valid else ""
        if not getattr(record, "tenant", ""):
            record.tenant = _tenant.get()
        return True


@contextlib.contextmanager
def model_call(
    model: str,
    *,
    operation: str = "chat",
    kind: trace.SpanKind = trace.SpanKind.CLIENT,
    current: bool = True,
    attributes: dict[str, str | int | float] | None = None,
) -> Iterator[trace.Span]:
    """A GenAI span ``<operation> <model>`` around one model call. ``current=False`` keeps
    it out of the context (an async generator that yields inside it cannot detach it)."""
    attrs: dict[str, str | int | float] = {
        "gen_ai.operation.name": operation,
        "gen_ai.request.model": model,
    }
    if tenant := _tenant.get():
        attrs[TENANT] = tenant
    attrs.update(attributes or {})
    span = _tracer.start_span(f"{operation} {model}", kind=kind, attributes=attrs)
    scope = (
        trace.use_span(span, record_exception=False, set_status_on_exception=False)
        if current
        else contextlib.nullcontext()
    )
    try:
        with scope:
            yield span
    except Exception as exc:
        span.record_exception(exc)
        span.set_status(trace.StatusCode.ERROR, f"{type(exc).__name__}: {exc}")
        raise
    finally:
        span.end()


def model_usage(
    span: trace.Span,
    *,
    input_tokens: int,
    output_tokens: int,
    finish_reasons: Sequence[str] = (),
) -> None:
    """Record a model call's usage on its span (GenAI semantic conventions)."""
    span.set_attribute("gen_ai.usage.input_tokens", input_tokens)
    span.set_attribute("gen_ai.usage.output_tokens", output_tokens)
    if finish_reasons:
        span.set_attribute("gen_ai.response.finish_reasons", list(finish_reasons))


def json_handler(service: str) -> logging.Handler:
    """A stderr handler writing one JSON object per record, with trace ids."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter(
            "{asctime}{levelname}{name}{message}{service}{trace_id}{span_id}{tenant}",
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
