"""One protocol request is one call against the rate limits, read from the gateway's buckets in
Postgres: an A2A message (sent or streamed), an MCP tool call and an embeddings request each
take one token from the tenant's and the API key's call buckets, although each passes a door
(credentials, role, rate limits) and then a servicer call that checks them again; and an
embedding request's tokens are charged to the tenant's tokens per minute.

Each measured bucket is set to a low level first, so it refills linearly (below its burst)
and what a request took is exact: the level before, plus the refill until the bucket's last
update (the gateway's last draw), minus the level after.
"""

from __future__ import annotations

import contextlib
import datetime
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import psycopg
import pytest
from a2a.client import client as a2a_client
from a2a.client import client_factory
from a2a.types import a2a_pb2 as a2a

from aion.gateway import keys, settings

from .suite import API_KEYS, USER_KEY, HttpSuite

pytestmark = pytest.mark.e2e

_DEFAULTS = settings.GatewaySettings()
KEY_ID = keys.hash_id(str(API_KEYS[0]["hash"]))  # USER_KEY's: its own call bucket
CALLS = {  # the call buckets of USER_KEY's calls, and their refill rates (the defaults)
    "call:t:default": _DEFAULTS.rate_per_s,
    f"call:k:{KEY_ID}": _DEFAULTS.key_rate_per_s,
}
TPM = {"tpm:default": _DEFAULTS.tokens_per_minute / 60}
LOW = 10.0  # far below every burst: with the requests below, no bucket refills to its cap


def _set(conn: psycopg.Connection[Any], key: str, level: float) -> tuple[float, datetime.datetime]:
    row = conn.execute(
        "INSERT INTO gateway_rate_buckets (key, tokens, updated_at) "
        "VALUES (%s, %s, clock_timestamp()) ON CONFLICT (key) DO UPDATE "
        "SET tokens = EXCLUDED.tokens, updated_at = EXCLUDED.updated_at "
        "RETURNING tokens, updated_at",
        (key, level),
    ).fetchone()
    assert row is not None
    return float(row[0]), row[1]


def _get(conn: psycopg.Connection[Any], key: str) -> tuple[float, datetime.datetime]:
    row = conn.execute(
        "SELECT tokens, updated_at FROM gateway_rate_buckets WHERE key = %s", (key,)
    ).fetchone()
    assert row is not None
    return float(row[0]), row[1]


@contextlib.contextmanager
def taken(suite: HttpSuite, rates: dict[str, float]) -> Iterator[dict[str, float]]:
    """What each bucket of ``rates`` lost to the requests made inside (filled in on exit);
    the buckets are full again afterwards (a missing bucket starts full)."""
    spent: dict[str, float] = {}
    with psycopg.connect(suite.dsn, autocommit=True) as conn:
        start = {key: _set(conn, key, LOW) for key in rates}
        try:
            yield spent
            for key, rate in rates.items():
                (before, since), (after, until) = start[key], _get(conn, key)
                spent[key] = before + max(0.0, (until - since).total_seconds()) * rate - after
        finally:
            conn.execute("DELETE FROM gateway_rate_buckets WHERE key = ANY(%s)", (list(rates),))


def _one_call_each(spent: dict[str, float]) -> None:
    assert spent == {key: pytest.approx(1.0, abs=0.01) for key in CALLS}, spent


@contextlib.asynccontextmanager
async def _a2a(suite: HttpSuite, *, streaming: bool) -> AsyncIterator[a2a_client.Client]:
    headers = {"Authorization": f"Bearer {USER_KEY}"}
    async with httpx.AsyncClient(headers=headers, timeout=120) as http:
        client = await client_factory.create_client(
            f"{suite.base_url}/a2a/demo",
            client_config=a2a_client.ClientConfig(streaming=streaming, httpx_client=http),
            resolver_http_kwargs={"headers": headers},
        )
        async with client:
            yield client


def _message(text: str) -> a2a.SendMessageRequest:
    return a2a.SendMessageRequest(
        message=a2a.Message(
            message_id=str(uuid.uuid4()), role=a2a.ROLE_USER, parts=[a2a.Part(text=text)]
        )
    )


@pytest.mark.parametrize("streaming", [False, True], ids=["send", "stream"])
async def test_an_a2a_message_is_one_call(http_suite: HttpSuite, streaming: bool) -> None:
    async with _a2a(http_suite, streaming=streaming) as client:  # the card read first
        for text in ("Name a color.", "Name a fruit."):
            with taken(http_suite, CALLS) as spent:
                events = [e async for e in client.send_message(_message(text))]
            assert events
            _one_call_each(spent)


async def _mcp(suite: HttpSuite, method: str, params: dict[str, Any]) -> httpx.Response:
    async with httpx.AsyncClient(timeout=120) as http:
        return await http.post(
            f"{suite.base_url}/mcp",
            json={"jsonrpc": "2.0", "id": 1, "method": method, "params": params},
            headers={"Authorization": f"Bearer {USER_KEY}", "Accept": "application/json"},
        )


async def test_an_mcp_tool_call_is_one_call(http_suite: HttpSuite) -> None:
    run = {"name": "run_agent", "arguments": {"agent": "demo", "input": "Name a color."}}
    for _ in range(2):
        with taken(http_suite, CALLS) as spent:
            ran = await _mcp(http_suite, "tools/call", run)
        assert ran.status_code == 200, ran.text
        assert not ran.json()["result"]["isError"], ran.text
        _one_call_each(spent)
    # A message that reaches no servicer is one call too: the door's.
    with taken(http_suite, CALLS) as spent:
        listed = await _mcp(http_suite, "tools/list", {})
    assert listed.status_code == 200, listed.text
    _one_call_each(spent)


def test_an_embeddings_request_is_one_call_and_its_tokens_count(http_suite: HttpSuite) -> None:
    client = http_suite.client()
    with taken(http_suite, {**CALLS, **TPM}) as spent:
        embedded = client.embeddings.create(
            model="all-minilm-l6-v2", input=["Kubernetes schedules pods.", "GPUs are nodes."]
        )
    assert embedded.usage.prompt_tokens > 0
    assert spent == {
        **{key: pytest.approx(1.0, abs=0.01) for key in CALLS},
        "tpm:default": pytest.approx(embedded.usage.prompt_tokens, abs=0.5),
    }, spent
