"""``aion.sdk.testing.FakeGateway`` itself, read through raw gRPC stubs (not the SDK client,
so a client bug cannot hide a fake's bug): scripted streams, scripted errors, recorded
requests, and the module docstring's example run as written."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

import aion.sdk
from aion.api.v1 import agents_pb2, agents_pb2_grpc, common_pb2, tasks_pb2, tasks_pb2_grpc
from aion.sdk import testing


@pytest.fixture
async def tasks(gateway: testing.FakeGateway) -> AsyncIterator[tasks_pb2_grpc.TasksAsyncStub]:
    """A raw Tasks stub on the fake gateway."""
    async with grpc.aio.insecure_channel(gateway.target) as channel:
        yield tasks_pb2_grpc.TasksStub(channel)


def _task(agent: str = "demo", *, max_tokens: int | None = None) -> tasks_pb2.TaskSpec:
    return tasks_pb2.TaskSpec(
        agent=agent, input="hi", options=tasks_pb2.TaskOptions(max_tokens=max_tokens)
    )


async def _stream(tasks: tasks_pb2_grpc.TasksAsyncStub) -> list[tasks_pb2.TaskEvent]:
    call = tasks.Stream(tasks_pb2.StreamRequest(task=_task()), timeout=10)
    return [event async for event in call]


async def test_stream_yields_the_scripted_events_in_order(
    gateway: testing.FakeGateway, tasks: tasks_pb2_grpc.TasksAsyncStub
) -> None:
    gateway.events = testing.stream_events("t-7", tokens=("a", "b", "c"))
    events = await _stream(tasks)
    assert [e.WhichOneof("event") for e in events] == ["started", "token", "token", "token", "done"]
    assert [e.seq for e in events] == [1, 2, 3, 4, 5]
    assert "".join(e.token.text for e in events) == "abc"
    assert events[-1].done.result.task_id == "t-7"
    assert events[-1].done.result.output == "abc"


async def test_a_stream_fails_midway_as_scripted(
    gateway: testing.FakeGateway, tasks: tasks_pb2_grpc.TasksAsyncStub
) -> None:
    gateway.fail_stream_after(2, grpc.StatusCode.UNAVAILABLE, "connection lost")
    call = tasks.Stream(tasks_pb2.StreamRequest(task=_task()), timeout=10)
    received: list[tasks_pb2.TaskEvent] = []

    async def read_all() -> None:
        async for event in call:
            received.append(event)

    with pytest.raises(grpc.aio.AioRpcError) as info:
        await read_all()
    assert [e.WhichOneof("event") for e in received] == ["started", "token"]
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert info.value.details() == "connection lost"


async def test_end_with_error_ends_the_stream_with_the_tasks_error(
    gateway: testing.FakeGateway, tasks: tasks_pb2_grpc.TasksAsyncStub
) -> None:
    gateway.end_with_error("INTERNAL", "the model crashed")
    events = await _stream(tasks)
    assert [e.WhichOneof("event") for e in events] == ["started", "error"]
    failed = events[-1].error.result
    assert failed.status == common_pb2.TASK_STATUS_ERROR
    assert (failed.error.code, failed.error.message) == ("INTERNAL", "the model crashed")


async def test_a_scripted_error_answers_once_with_its_details(
    gateway: testing.FakeGateway, tasks: tasks_pb2_grpc.TasksAsyncStub
) -> None:
    gateway.fail(
        "Get",
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "tenant over its rate",
        field="task_id",
        retry_after_s=1.5,
    )
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await tasks.Get(tasks_pb2.GetTaskRequest(task_id="t-1"), timeout=10)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert info.value.details() == "tenant over its rate"
    status = rpc_status.from_call(info.value)
    assert status is not None
    bad, retry = error_details_pb2.BadRequest(), error_details_pb2.RetryInfo()
    assert status.details[0].Unpack(bad)
    assert status.details[1].Unpack(retry)
    assert bad.field_violations[0].field == "task_id"
    assert retry.retry_delay.ToNanoseconds() == 1_500_000_000
    # Queued, not sticky: the next call is answered.
    again = await tasks.Get(tasks_pb2.GetTaskRequest(task_id="t-1"), timeout=10)
    assert again.output == "Hello"


async def test_failures_queue_per_method(
    gateway: testing.FakeGateway, tasks: tasks_pb2_grpc.TasksAsyncStub
) -> None:
    gateway.fail("Submit", grpc.StatusCode.UNAVAILABLE, "first")
    gateway.fail("Submit", grpc.StatusCode.INTERNAL, "second")
    codes = []
    for _ in range(2):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await tasks.Submit(tasks_pb2.SubmitRequest(task=_task()), timeout=10)
        codes.append(info.value.code())
    assert codes == [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL]
    assert (await tasks.Get(tasks_pb2.GetTaskRequest(task_id="t-1"), timeout=10)).task_id == "t-1"


async def test_the_scripted_result_answers_submit_and_get(
    gateway: testing.FakeGateway, tasks: tasks_pb2_grpc.TasksAsyncStub
) -> None:
    gateway.result = testing.task_result("t-42", output="forty-two")
    submitted = await tasks.Submit(tasks_pb2.SubmitRequest(task=_task()), timeout=10)
    assert (submitted.task_id, submitted.result.output) == ("t-42", "forty-two")
    assert (await tasks.Get(tasks_pb2.GetTaskRequest(task_id="t-42"), timeout=10)).output == (
        "forty-two"
    )
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await tasks.Get(tasks_pb2.GetTaskRequest(task_id="t-1"), timeout=10)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    queued = await tasks.Submit(
        tasks_pb2.SubmitRequest(task=_task(), asynchronous=True), timeout=10
    )
    assert (queued.task_id, queued.result.status) == ("t-9", common_pb2.TASK_STATUS_QUEUED)


async def test_bad_tasks_get_the_gateways_statuses(tasks: tasks_pb2_grpc.TasksAsyncStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await tasks.Submit(tasks_pb2.SubmitRequest(task=_task("nobody")), timeout=10)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await tasks.Submit(tasks_pb2.SubmitRequest(task=_task(max_tokens=0)), timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_requests_are_recorded_with_metadata_and_deadline(
    gateway: testing.FakeGateway, tasks: tasks_pb2_grpc.TasksAsyncStub
) -> None:
    await tasks.Submit(
        tasks_pb2.SubmitRequest(task=_task(max_tokens=8)),
        timeout=30,
        metadata=(("x-api-key", "k-1"),),
    )
    await tasks.Cancel(tasks_pb2.CancelTaskRequest(task_id="t-3"))
    submit, cancel = gateway.calls
    assert submit.method == "Submit"
    assert submit.request.task.options.max_tokens == 8
    assert submit.metadata["x-api-key"] == "k-1"
    assert submit.time_remaining is not None
    assert submit.time_remaining == pytest.approx(30, abs=5)
    assert cancel.method == "Cancel"
    assert cancel.request.task_id == "t-3"
    assert cancel.time_remaining is None
    assert gateway.seen("Cancel") == [cancel]


async def test_agents_calls_are_answered_and_recorded(gateway: testing.FakeGateway) -> None:
    gateway.agents["extra"] = agents_pb2.Agent(name="extra", model="m", ready=True)
    async with grpc.aio.insecure_channel(gateway.target) as channel:
        agents: agents_pb2_grpc.AgentsAsyncStub = agents_pb2_grpc.AgentsStub(channel)
        listed = await agents.List(agents_pb2.ListAgentsRequest(), timeout=10)
        got = await agents.Get(agents_pb2.GetAgentRequest(name="extra"), timeout=10)
        await agents.Apply(agents_pb2.ApplyAgentsRequest(), timeout=10)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await agents.Get(agents_pb2.GetAgentRequest(name="nobody"), timeout=10)
    assert [a.name for a in listed.agents] == ["demo", "big", "extra"]
    assert got.model == "m"
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert [c.method for c in gateway.calls] == [
        "ListAgents",
        "GetAgent",
        "ApplyAgents",
        "GetAgent",
    ]


async def test_it_has_a_target_only_while_started() -> None:
    fake = testing.FakeGateway()
    with pytest.raises(RuntimeError, match="not started"):
        _ = fake.target
    async with fake:
        host, port = fake.target.rsplit(":", 1)
        assert host == "127.0.0.1"
        assert int(port) > 0
    await fake.stop()  # idempotent


# The module docstring's example, as written there.


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
