"""This process's finished spans, kept in memory: what unit tests assert traces on.

``exporter()`` installs, once per process, a global tracer provider that hands
every span to an ``InMemorySpanExporter`` as it ends (modules' tracers are
proxies, so spans of tracers taken before it count too), and returns that
exporter; ``clear()`` it between tests. A process that ran
``telemetry.setup`` keeps its own provider (the global one is set once): tests
only.
"""

from __future__ import annotations

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

_exporter: InMemorySpanExporter | None = None


def exporter() -> InMemorySpanExporter:
    """The in-memory exporter of this process's spans (installed on the first call)."""
    global _exporter
    if _exporter is None:
        _exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(_exporter))
        trace.set_tracer_provider(provider)
    return _exporter


def named(spans: tuple[ReadableSpan, ...] | list[ReadableSpan], name: str) -> list[ReadableSpan]:
    """The spans called ``name``, in the order they ended."""
    return [s for s in spans if s.name == name]
