"""The task lifecycle over real gRPC, with a scripted executor in place of the model."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from aion.agent import model, peers, registry, runner, servicer, store
from aion.api.agent.v1 import agent_pb2, agent_pb2_grpc
from aion.api.executor.v1 import executor_pb2, executor_pb2_grpc
from aion.api.v1 import agents_pb2, common_pb2, tasks_pb2
from aion.core import errors, server


class ScriptedExecutor(executor_pb2_grpc.ExecutorServicer):
    """Streams the words of the user's message back; 'hang' waits, 'fail' errors."""

    def __init__(self) -> None:
        self.requests: list[executor_pb2.GenerateRequest] = []
        self.hanging = asyncio.Event()

    async def Generate(self, request: executor_pb2.GenerateRequest,
                       context: grpc.aio.ServicerContext[Any, Any],
                       ) -> AsyncIterator[executor_pb2.GenerateChunk]:
        self.requests.append(request)
        text = request.messages[-1].content
        if text == "fail":
            raise errors.ResourceExhausted("executor queue is full", retry_after_s=1)
        words = text.split()
        for word in words[: request.max_tokens]:
            yield executor_pb2.GenerateChunk(text=word + " ")
        if text == "hang":
            self.hanging.set()
            await asyncio.Event().wait()
        yield executor_pb2.GenerateChunk(
            finish_reason=executor_pb2.FINISH_REASON_STOP,
            usage=executor_pb2.GenerateUsage(prompt_tokens=7, completion_tokens=len(words)))


    async def Embed(self, request: executor_pb2.EmbedRequest,
                    context: grpc.aio.ServicerContext[Any, Any]) -> executor_pb2.EmbedResponse:
        raise errors.FailedPrecondition("this scripted executor does not embed")

    async def Stats(self, request: executor_pb2.StatsRequest,
                    context: grpc.aio.ServicerContext[Any, Any]) -> executor_pb2.ExecutorStats:
        return executor_pb2.ExecutorStats(model="m", model_ready=True)


class Harness:
    def __init__(self, stub: agent_pb2_grpc.AgentServiceAsyncStub,
                 executor: ScriptedExecutor) -> None:
        self.stub = stub
        self.executor = executor

    def run(self, text: str, *, tenant: str = "acme", agent: str = "echo",
            **options: Any) -> agent_pb2.RunRequest:
        return agent_pb2.RunRequest(tenant=tenant, task=tasks_pb2.TaskSpec(
            agent=agent, input=text, options=tasks_pb2.TaskOptions(**options)))


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    executor = ScriptedExecutor()
    exec_srv = server.GrpcServer(name="executor", host="127.0.0.1", port=0, grace_s=1)
    exec_srv.add(executor_pb2_grpc.add_ExecutorServicer_to_server, executor,
                 "aion.executor.v1.Executor")
    agents = registry.MemoryRegistry()
    tasks = store.MemoryTaskStore()
    async with exec_srv, peers.Peers(knowledge_target=None) as clients, \
            asyncio.TaskGroup() as group:
        await agents.put(model.AgentRecord(tenant="acme", name="echo", model="m",
                                           instructions="Echo.",
                                           executor_endpoints=(exec_srv.address,)))
        run = runner.Runner(tasks=tasks, agents=agents, clients=clients,
                            spawn=group.create_task, max_input_chars=100,
                            max_tokens_limit=50, retrieval_top_k=0)
        srv = server.GrpcServer(name="agent", host="127.0.0.1", port=0, grace_s=1)
        srv.add(agent_pb2_grpc.add_AgentServiceServicer_to_server,
                servicer.AgentServicer(run=run, tasks=tasks, agents=agents,
                                       default_timeout_s=30),
                "aion.agent.v1.AgentService")
        async with srv, grpc.aio.insecure_channel(srv.address) as chan:
            yield Harness(agent_pb2_grpc.AgentServiceStub(chan), executor)
        await run.cancel_all()


async def _events(h: Harness, req: agent_pb2.RunRequest,
                  timeout: float = 10) -> list[tasks_pb2.TaskEvent]:
    return [e async for e in h.stub.Run(req, timeout=timeout)]


async def test_run_streams_started_tokens_partial_and_done(harness: Harness) -> None:
    events = await _events(harness, harness.run("one two three"))
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds == ["started", "token", "token", "token", "partial", "done"]
    assert [e.seq for e in events] == list(range(1, 7))
    result = events[-1].done.result
    assert result.status == common_pb2.TASK_STATUS_OK
    assert result.output == "one two three "
    assert result.usage.completion_tokens == 3
    assert result.usage.tokens == 10
    assert result.engine.model == "m"
    system = harness.executor.requests[-1].messages[0]
    assert (system.role, system.content) == ("system", "Echo.")


async def test_max_tokens_is_passed_to_the_executor(harness: Harness) -> None:
    events = await _events(harness, harness.run("a b c d", max_tokens=2))
    assert harness.executor.requests[-1].max_tokens == 2
    assert events[-1].done.result.output == "a b "


@pytest.mark.parametrize(("req_kw", "field"), [
    ({"text": ""}, "task.input"),
    ({"text": "x" * 101}, "task.input"),
    ({"text": "hi", "max_tokens": -1}, "task.options.max_tokens"),
    ({"text": "hi", "temperature": 3.0}, "task.options.temperature"),
])
async def test_bad_input_is_refused_naming_the_field(harness: Harness, req_kw: dict[str, Any],
                                                     field: str) -> None:
    text = req_kw.pop("text")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await _events(harness, harness.run(text, **req_kw))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert errors.from_rpc_error(info.value).field == field


async def test_unknown_agent_and_other_tenants_are_not_found(harness: Harness) -> None:
    for req in (harness.run("hi", agent="nope"), harness.run("hi", tenant="globex")):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await _events(harness, req)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
    done = await harness.stub.Submit(harness.run("mine"), timeout=10)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await harness.stub.GetTask(agent_pb2.TaskRef(tenant="globex", task_id=done.task_id))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


async def test_executor_error_ends_the_task_with_its_code(harness: Harness) -> None:
    events = await _events(harness, harness.run("fail"))
    result = events[-1].error.result
    assert result.status == common_pb2.TASK_STATUS_ERROR
    assert result.error.code == "RESOURCE_EXHAUSTED"
    assert result.error.retriable


async def test_cancel_stops_a_running_task(harness: Harness) -> None:
    req = harness.run("hang")
    req.asynchronous = True
    submitted = await harness.stub.Submit(req, timeout=10)
    assert submitted.result.status in (common_pb2.TASK_STATUS_QUEUED,
                                       common_pb2.TASK_STATUS_RUNNING)
    await asyncio.wait_for(harness.executor.hanging.wait(), 10)
    ref = agent_pb2.TaskRef(tenant="acme", task_id=submitted.task_id)
    result = await harness.stub.CancelTask(ref, timeout=10)
    assert result.status == common_pb2.TASK_STATUS_CANCELED
    assert result.output == "hang "  # what was produced before the cancel is kept
    # Following a finished task replays it to the end.
    replay = [e async for e in harness.stub.Follow(ref, timeout=10)]
    assert replay[-1].WhichOneof("event") == "error"
    assert replay[-1].error.result.status == common_pb2.TASK_STATUS_CANCELED


async def test_deadline_ends_the_task_as_timeout(harness: Harness) -> None:
    events = await _events(harness, harness.run("hang"), timeout=1.5)
    assert events[-1].error.result.status == common_pb2.TASK_STATUS_TIMEOUT
    assert events[-1].error.result.error.code == "DEADLINE_EXCEEDED"


async def test_same_idempotency_key_returns_the_same_task(harness: Harness) -> None:
    first = harness.run("same")
    first.task.idempotency_key = "k1"
    a = await harness.stub.Submit(first, timeout=10)
    b = await harness.stub.Submit(first, timeout=10)
    assert a.task_id == b.task_id
    assert len(harness.executor.requests) == 1
    other = harness.run("different")
    other.task.idempotency_key = "k1"
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await harness.stub.Submit(other, timeout=10)
    assert info.value.code() == grpc.StatusCode.ALREADY_EXISTS


async def test_register_list_and_deregister(harness: Harness) -> None:
    reg = agent_pb2.RegisterAgentRequest(
        tenant="acme", agent=agents_pb2.Agent(name="new", model="m2"),
        executor_endpoints=["127.0.0.1:1"])
    assert (await harness.stub.RegisterAgent(reg)).ready
    names = [a.name for a in (await harness.stub.ListAgents(
        agent_pb2.ListAgentsRequest(tenant="acme"))).agents]
    assert names == ["echo", "new"]
    gone = await harness.stub.DeregisterAgent(agent_pb2.AgentRef(tenant="acme", name="new"))
    assert gone.deregistered
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await harness.stub.RegisterAgent(agent_pb2.RegisterAgentRequest(tenant="acme"))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_agents_file_loads_agent_resources(tmp_path: Path) -> None:
    path = tmp_path / "a.yaml"
    path.write_text("""
apiVersion: aion.dev/v1alpha1
kind: Agent
metadata: {name: demo}
spec:
  model: {name: smollm2-135m-instruct, task: generate}
  instructions: Be brief.
  routing: {privacy: allow-api}
  gpu: {count: 0}
""")
    [agent] = registry.load_file(path, tenant="t", executor_target="127.0.0.1:9")
    assert (agent.name, agent.model, agent.privacy) == (
        "demo", "smollm2-135m-instruct", model.Privacy.ALLOW_API)
    assert agent.ready
    path.write_text("apiVersion: aion.dev/v1alpha1\nkind: Agent\nmetadata: {name: Bad_Name}\n"
                    "spec: {model: {name: m}}\n")
    with pytest.raises(errors.InvalidArgument, match="metadata"):
        registry.load_file(path, tenant="t", executor_target=None)
