"""This process's finished spans, kept in memory: what unit tests assert traces on.

``exporter()`` installs, once per process, a global tracer provider that hands
every span to an ``InMemorySpanExporter`` as it ends (modules' tracers are
proxies, so spans of tracers taken before it count too), and returns that
exporter; ``clear()`` it between tests. ``wait_for`` waits until spans of given
names have ended (spans end as their work does, some after the answer). A process that ran
``telemetry.setup`` keeps its own provider (the global one is set once): tests
only.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

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


async def wait_for(
    *names: str,
    until: Callable[[tuple[ReadableSpan, ...]], bool] = lambda _: True,
    timeout_s: float = 30.0,
) -> tuple[ReadableSpan, ...]:
    """The finished spans, once spans of every one of ``names`` are among them and
    ``until`` holds of them (or ``timeout_s`` passed: the caller's assertions then show
    what is missing)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        spans = exporter().get_finished_spans()
        if (set(names) <= {s.name for s in spans} and until(spans)) or loop.time() >= deadline:
            return spans
        await asyncio.sleep(0.05)
