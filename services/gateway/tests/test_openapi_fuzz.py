"""A property-based run (schemathesis) of the HTTP surface from its own OpenAPI document, over
the scripted peers of ``fakes``: no request it makes gets a 5xx, and every answer
is one the document lists."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import hypothesis
import pytest
import schemathesis
from schemathesis import checks

from aion.gateway import openapi

from .fakes import EMBEDDING_MODEL, KEY
from .fakes import gateway as _gateway

SCHEMA = schemathesis.openapi.from_dict(openapi.document())
# The same document, with requests aimed at the agent (and the embedding model) that exists,
# so bodies reach the servicers and the A2A dispatcher instead of stopping at "not found".
KNOWN = schemathesis.openapi.from_dict(openapi.document())
CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
]


@KNOWN.hook
def map_path_parameters(
    context: schemathesis.HookContext, path_parameters: dict[str, Any] | None
) -> dict[str, Any] | None:
    if not path_parameters:
        return path_parameters
    return {name: "demo" for name in path_parameters}


@KNOWN.hook
def map_body(context: schemathesis.HookContext, body: Any) -> Any:
    if isinstance(body, dict) and "messages" in body:
        return {**body, "model": "demo"}
    if isinstance(body, dict) and "input" in body:
        return {**body, "model": EMBEDDING_MODEL}
    return body


@contextlib.contextmanager
def _serving() -> Iterator[str]:
    """The gateway over scripted peers, in an event loop of its own thread (schemathesis
    calls it synchronously)."""
    loop = asyncio.new_event_loop()
    url: list[str] = []
    ready, stop = threading.Event(), asyncio.Event()

    async def serve() -> None:
        async with _gateway(rate=1000, burst=1000) as gw:
            url.append(gw.url)
            ready.set()
            await stop.wait()

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    assert ready.wait(30), "the gateway did not start"
    yield url[0]
    loop.call_soon_threadsafe(stop.set)
    thread.join(30)
    loop.close()


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    with _serving() as url:
        yield url


@pytest.fixture
def fresh_url() -> Iterator[str]:
    """A gateway of its own: the fuzz runs' failed authentications (from this address)
    do not count against it."""
    with _serving() as url:
        yield url


@SCHEMA.parametrize()
@hypothesis.settings(
    max_examples=25, deadline=None, suppress_health_check=list(hypothesis.HealthCheck)
)
def test_no_request_gets_a_server_error(case: schemathesis.Case[Any], base_url: str) -> None:
    case.call_and_validate(
        base_url=base_url, headers={"Authorization": f"Bearer {KEY}"}, checks=CHECKS
    )


@KNOWN.parametrize()
@hypothesis.settings(
    max_examples=25, deadline=None, suppress_health_check=list(hypothesis.HealthCheck)
)
def test_no_request_to_a_known_agent_gets_a_server_error(
    case: schemathesis.Case[Any], base_url: str
) -> None:
    case.call_and_validate(
        base_url=base_url, headers={"Authorization": f"Bearer {KEY}"}, checks=CHECKS
    )


@pytest.mark.parametrize(
    ("path", "body"),
    [
        (
            "/v1/chat/completions",
            {"model": "demo", "stream": True, "messages": [{"role": "user", "content": "Hi"}]},
        ),
    ],
)
def test_a_streamed_answer_matches_the_documents_event_schema(
    path: str, body: dict[str, Any], fresh_url: str
) -> None:
    # The fuzz runs above reach a stream only when hypothesis happens to ask for one.
    case = KNOWN[path]["POST"].Case(body=body, media_type="application/json")
    response = case.call_and_validate(
        base_url=fresh_url, headers={"Authorization": f"Bearer {KEY}"}, checks=CHECKS
    )
    assert response.headers["content-type"][0].startswith("text/event-stream"), (
        response.status_code,
        response.text,
    )
