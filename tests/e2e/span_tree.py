"""One trace as Jaeger's query API returns it (``GET /api/traces/<id>``), as a tree of spans,
and that tree as indented text (``service: span name (kind)``), for assertions and notes."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import httpx

from aion.infra.component import poll


@dataclasses.dataclass(frozen=True)
class Span:
    """One span of a trace: its service, name, kind, parent and tags."""

    span_id: str
    parent_id: str | None  # a CHILD_OF reference
    links: tuple[str, ...]  # FOLLOWS_FROM references (span ids)
    service: str
    name: str
    kind: str  # server, client, producer, consumer, internal
    start_us: int
    tags: Mapping[str, Any]


def spans_of(trace: Mapping[str, Any]) -> list[Span]:
    """The spans of one trace of Jaeger's JSON (an element of its ``data``), by start."""
    processes = trace.get("processes") or {}
    out = []
    for s in trace.get("spans") or ():
        refs = s.get("references") or ()
        parents = [r["spanID"] for r in refs if r.get("refType") == "CHILD_OF"]
        tags = {t["key"]: t.get("value") for t in s.get("tags") or ()}
        out.append(
            Span(
                span_id=s["spanID"],
                parent_id=parents[0] if parents else None,
                links=tuple(r["spanID"] for r in refs if r.get("refType") == "FOLLOWS_FROM"),
                service=processes.get(s.get("processID"), {}).get("serviceName", "?"),
                name=s["operationName"],
                kind=str(tags.get("span.kind", "internal")),
                start_us=int(s.get("startTime", 0)),
                tags=tags,
            )
        )
    return sorted(out, key=lambda span: span.start_us)


def render(spans: Iterable[Span], *, show: Iterable[str] = ()) -> str:
    """The spans as an indented tree, children under their parent in start order; a span
    whose parent is not in the trace is shown as a root, marked ``(parent missing)``. The
    tags named in ``show`` follow a span's name where it has them."""
    show = tuple(show)
    spans = list(spans)
    ids = {s.span_id for s in spans}
    children: dict[str | None, list[Span]] = {}
    for s in spans:
        children.setdefault(s.parent_id if s.parent_id in ids else None, []).append(s)
    lines: list[str] = []

    def walk(span: Span, depth: int) -> None:
        missing = " (parent missing)" if span.parent_id and span.parent_id not in ids else ""
        shown = ", ".join(f"{k}={span.tags[k]}" for k in show if k in span.tags)
        tags = f" [{shown}]" if shown else ""
        lines.append(f"{'  ' * depth}{span.service}: {span.name} ({span.kind}){missing}{tags}")
        for child in children.get(span.span_id, ()):
            walk(child, depth + 1)

    for root in children.get(None, ()):
        walk(root, 0)
    return "\n".join(lines)


def fetch(
    base_url: str,
    trace_id: str,
    *,
    until: Callable[[list[Span]], bool],
    timeout_s: float = 60.0,
) -> list[Span]:
    """The spans of trace ``trace_id`` from Jaeger at ``base_url``, fetched again until
    ``until(spans)`` holds (spans arrive in batches, some after the task's end) or
    ``timeout_s`` passes; the last fetch is returned either way, for the caller to assert
    on."""
    with httpx.Client(base_url=base_url, timeout=10) as http:

        def spans() -> list[Span]:
            got = http.get(f"/api/traces/{trace_id}")
            data = (got.json().get("data") or []) if got.status_code == 200 else []
            return spans_of(data[0]) if data else []

        return poll(spans, until, timeout=timeout_s, interval=0.25)


def find_trace_ids(
    base_url: str, *, service: str, operation: str, timeout_s: float = 60.0
) -> list[str]:
    """The ids of the traces of ``service`` holding a span named ``operation``, waiting up
    to ``timeout_s`` for the first one to arrive."""
    query: dict[str, str | int] = {
        "service": service,
        "operation": operation,
        "limit": 20,
        "lookback": "1h",
    }
    with httpx.Client(base_url=base_url, timeout=10) as http:

        def ids() -> list[str]:
            got = http.get("/api/traces", params=query)
            data = (got.json().get("data") or []) if got.status_code == 200 else []
            return [t["traceID"] for t in data]

        return poll(ids, bool, timeout=timeout_s, interval=0.25)
