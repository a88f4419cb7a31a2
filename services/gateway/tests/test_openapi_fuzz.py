"""A property-based run (schemathesis) of the HTTP surface from its own OpenAPI document, over
the scripted peers of ``test_openai_http``: no request it makes gets a 5xx, and every answer
is one the document lists."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import hypothesis
import pytest
import schemathesis
from schemathesis import checks

from aion.gateway import openapi

from .test_openai_http import KEY, _gateway

SCHEMA = schemathesis.openapi.from_dict(openapi.document())


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
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


@SCHEMA.parametrize()
@hypothesis.settings(max_examples=40, deadline=None,
                     suppress_health_check=list(hypothesis.HealthCheck))
def test_no_request_gets_a_server_error(case: schemathesis.Case[Any], base_url: str) -> None:
    case.call_and_validate(
        base_url=base_url, headers={"Authorization": f"Bearer {KEY}"},
        checks=[checks.not_a_server_error, checks.status_code_conformance,
                checks.content_type_conformance, checks.response_schema_conformance])
