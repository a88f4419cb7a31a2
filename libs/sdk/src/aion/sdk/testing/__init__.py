"""Test your own code that uses the aion SDK, without running aion.

``FakeGateway`` serves aion's public Tasks and Agents services on a free local
port, answers as the test scripts it, and records every request::

    import grpc
    import pytest
    import aion.sdk
    from aion.sdk import testing

    async def summarize(client: aion.sdk.AsyncClient, text: str) -> str:  # your code
        response = await client.submit("demo", f"Summarize: {text}")
        return response.result.output

    async def test_summarize_returns_the_agents_answer() -> None:
        async with testing.FakeGateway() as gateway:
            gateway.result = testing.task_result(output="A short summary.")
            async with aion.sdk.AsyncClient(gateway.target) as client:
                assert await summarize(client, "long text") == "A short summary."
        assert gateway.seen("Submit")[0].request.task.input == "Summarize: long text"

    async def test_summarize_lets_a_quota_error_through() -> None:
        async with testing.FakeGateway() as gateway:
            gateway.fail("Submit", grpc.StatusCode.RESOURCE_EXHAUSTED, "over quota")
            async with aion.sdk.AsyncClient(gateway.target) as client:
                with pytest.raises(aion.sdk.ResourceExhausted):
                    await summarize(client, "long text")

Streams yield ``gateway.events`` (``stream_events(tokens=...)`` builds them);
``fail_stream_after`` breaks a stream midway and ``end_with_error`` makes the
task fail. With the sync ``aion.sdk.Client``, call your code off the event loop
that serves the fake (``await asyncio.to_thread(...)``).

(The local suite of real services for aion's own end-to-end tests is
``aion.infra.devstack``, which is not part of the SDK.)
"""

from aion.sdk.testing._gateway import FakeGateway
from aion.sdk.testing._messages import (
    Call,
    Failure,
    error_events,
    stream_events,
    task_result,
)

__all__ = ["Call", "Failure", "FakeGateway", "error_events", "stream_events", "task_result"]
