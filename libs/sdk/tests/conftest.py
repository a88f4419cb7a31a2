"""The SDK's own tests run against ``aion.sdk.testing.FakeGateway``, the fake its users get.

The end-to-end tests (tests/e2e) use the real gateway.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from aion.sdk import client, retry, sync_client, testing

FAST = retry.RetryPolicy(max_attempts=3, initial_backoff_s=0.01, max_backoff_s=0.05)


@pytest.fixture(autouse=True)
def _no_aion_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AION_TARGET", "AION_API_KEY", "AION_TOKEN", "AION_TLS"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
async def gateway() -> AsyncIterator[testing.FakeGateway]:
    """A fake gateway on 127.0.0.1 at a free port (``gateway.target``)."""
    async with testing.FakeGateway() as fake:
        yield fake


@pytest.fixture
async def aclient(gateway: testing.FakeGateway) -> AsyncIterator[client.AsyncClient]:
    """An async client of the fake gateway, with quick retries."""
    async with client.AsyncClient(gateway.target, retries=FAST) as c:
        yield c


@pytest.fixture
def sclient(gateway: testing.FakeGateway) -> Iterator[sync_client.Client]:
    """A sync client of the fake gateway, with quick retries (call it off the loop)."""
    with sync_client.Client(gateway.target, retries=FAST) as c:
        yield c
