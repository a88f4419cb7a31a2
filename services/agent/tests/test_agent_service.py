"""The task lifecycle over real gRPC, Postgres and Kafka, with a scripted executor."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, TypeAlias

import grpc
import prometheus_client
import psycopg
import pytest

from aion.agent import db, outbox, registry
from aion.agent import testing as agent_testing
from aion.api.agent.v1 import agent_pb2, agent_pb2_grpc
from aion.api.events.v1 import events_pb2
from aion.api.v1 import agents_pb2, common_pb2, tasks_pb2
from aion.core import errors, privacy

Stub: TypeAlias = "agent_pb2_grpc.AgentServiceAsyncStub"
TENANT = "acme"


@pytest.fixture(scope="module", autouse=True)
async def agents(service: Any) -> None:
    """The agents the tests call, registered the way the operator does."""
    async with agent_testing.channel(service.address) as chan:
        stub: Stub = agent_pb2_grpc.AgentServiceStub(chan)
        for name, tools in (("echo", []), ("helper", ["agent:echo"])):
            await stub.RegisterAgent(
                agent_pb2.RegisterAgentRequest(
                    tenant=TENANT,
                    agent=agents_pb2.Agent(name=name, model="m"),
                    instructions="Echo.",
                    executor_endpoints=[service.executor.address],
                    tools=tools,
                )
            )


def run(
    text: str,
    *,
    tenant: str = TENANT,
    agent: str = "echo",
    asynchronous: bool = False,
    **options: Any,
) -> agent_pb2.RunRequest:
    return agent_pb2.RunRequest(
        tenant=tenant,
        asynchronous=asynchronous,
        task=tasks_pb2.TaskSpec(agent=agent, input=text, options=tasks_pb2.TaskOptions(**options)),
    )


async def _events(
    stub: Stub, req: agent_pb2.RunRequest, timeout: float = 20
) -> list[tasks_pb2.TaskEvent]:
    return [e async for e in stub.Run(req, timeout=timeout)]


async def _final(stub: Stub, task_id: str, *, tenant: str = TENANT) -> common_pb2.TaskResult:
    ref = agent_pb2.TaskRef(tenant=tenant, task_id=task_id)
    events = [e async for e in stub.Follow(ref, timeout=30)]
    kind = events[-1].WhichOneof("event")
    assert kind in ("done", "error"), kind
    return events[-1].done.result if kind == "done" else events[-1].error.result


async def test_run_streams_started_tokens_partial_and_done(stub: Stub, service: Any) -> None:
    events = await _events(stub, run("one two three"))
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds == ["started", "token", "token", "token", "partial", "done"]
    assert [e.seq for e in events] == list(range(1, 7))
    result = events[-1].done.result
    assert result.status == common_pb2.TASK_STATUS_OK
    assert result.output == "one two three "
    assert result.usage.completion_tokens == 3
    assert result.usage.tokens == 10
    assert result.engine.model == "m"
    system = service.executor.requests[-1].messages[0]
    assert (system.role, system.content) == ("system", "Echo.")
    # Get returns the stored result, the same as the stream's.
    got = await stub.GetTask(agent_pb2.TaskRef(tenant=TENANT, task_id=result.task_id))
    assert got.output == result.output
    assert got.usage.tokens == 10
    assert got.status == common_pb2.TASK_STATUS_OK


async def test_steps_and_usage_are_stored_per_step(stub: Stub, service: Any) -> None:
    events = await _events(stub, run("a b"))
    task_id = events[-1].done.result.task_id
    async with await psycopg.AsyncConnection.connect(
        service.cfg.postgres_dsn.get_secret_value()
    ) as conn:
        cur = await conn.execute(
            "SELECT step, kind, prompt_tokens, completion_tokens, worker FROM task_steps"
            " WHERE task_id = %s",
            (task_id,),
        )
        rows = await cur.fetchall()
    assert rows == [(1, "model", 7, 2, service.cfg.worker_id)]


async def test_max_tokens_is_passed_to_the_executor(stub: Stub, service: Any) -> None:
    events = await _events(stub, run("a b c d", max_tokens=2))
    assert service.executor.requests[-1].max_tokens == 2
    assert events[-1].done.result.output == "a b "


@pytest.mark.parametrize(
    ("req_kw", "field"),
    [
        ({"text": ""}, "task.input"),
        ({"text": "x" * 101}, "task.input"),
        ({"text": "hi", "max_tokens": -1}, "task.options.max_tokens"),
        ({"text": "hi", "temperature": 3.0}, "task.options.temperature"),
        ({"text": "hi", "sla_ms": 0}, "task.options.sla_ms"),
    ],
)
async def test_bad_input_is_refused_naming_the_field(
    stub: Stub, req_kw: dict[str, Any], field: str
) -> None:
    text = req_kw.pop("text")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await _events(stub, run(text, **req_kw))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert errors.from_rpc_error(info.value).field == field


async def test_unknown_agent_and_other_tenants_are_not_found(stub: Stub) -> None:
    for req in (run("hi", agent="nope"), run("hi", tenant="globex")):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await _events(stub, req)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
    done = await stub.Submit(run("mine"), timeout=20)
    for ref in (
        agent_pb2.TaskRef(tenant="globex", task_id=done.task_id),
        agent_pb2.TaskRef(tenant=TENANT, task_id="not-a-uuid"),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.GetTask(ref)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND


async def test_executor_error_ends_the_task_with_its_code(stub: Stub) -> None:
    events = await _events(stub, run("fail"))
    result = events[-1].error.result
    assert result.status == common_pb2.TASK_STATUS_ERROR
    assert result.error.code == "RESOURCE_EXHAUSTED"
    assert result.error.retriable


async def test_async_submit_goes_through_kafka_and_get_returns_the_result(stub: Stub) -> None:
    submitted = await stub.Submit(run("queued words", asynchronous=True), timeout=10)
    assert submitted.result.status == common_pb2.TASK_STATUS_QUEUED
    result = await _final(stub, submitted.task_id)
    assert result.status == common_pb2.TASK_STATUS_OK
    got = await stub.GetTask(agent_pb2.TaskRef(tenant=TENANT, task_id=submitted.task_id))
    assert got.output == "queued words "
    assert got.usage.completion_tokens == 2


async def test_cancel_stops_a_running_task(stub: Stub, service: Any) -> None:
    service.executor.hanging.clear()
    submitted = await stub.Submit(run("hang", asynchronous=True), timeout=10)
    await asyncio.wait_for(service.executor.hanging.wait(), 20)
    ref = agent_pb2.TaskRef(tenant=TENANT, task_id=submitted.task_id)
    follow = stub.Follow(ref, timeout=20)
    async for event in follow:
        if event.WhichOneof("event") == "token":
            break  # the run is mid-stream
    follow.cancel()
    result = await stub.CancelTask(ref, timeout=20)
    assert result.status == common_pb2.TASK_STATUS_CANCELED
    assert result.output == "hang "  # what was produced before the cancel is kept
    # Following a finished task replays it to the end.
    replay = [e async for e in stub.Follow(ref, timeout=10)]
    assert [e.WhichOneof("event") for e in replay] == ["started", "token", "error"]
    assert replay[-1].error.result.status == common_pb2.TASK_STATUS_CANCELED


async def test_deadline_ends_the_task_as_timeout(stub: Stub) -> None:
    events = await _events(stub, run("hang"), timeout=1.5)
    assert events[-1].error.result.status == common_pb2.TASK_STATUS_TIMEOUT
    assert events[-1].error.result.error.code == "DEADLINE_EXCEEDED"


async def test_same_idempotency_key_returns_the_same_task(stub: Stub, service: Any) -> None:
    first = run("same")
    first.task.idempotency_key = "k1"
    before = len(service.executor.requests)
    a = await stub.Submit(first, timeout=10)
    b = await stub.Submit(first, timeout=10)
    assert a.task_id == b.task_id
    assert len(service.executor.requests) == before + 1
    other = run("different")
    other.task.idempotency_key = "k1"
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Submit(other, timeout=10)
    assert info.value.code() == grpc.StatusCode.ALREADY_EXISTS


async def test_every_state_change_is_an_event_on_kafka_in_order(
    stub: Stub, service: Any, topic_reader: Any
) -> None:
    done = await stub.Submit(run("evented"), timeout=20)
    topic = service.cfg.topic_prefix + "task.events"

    def states(records: list[Any]) -> list[int]:
        out: list[int] = []
        for r in records:
            env = events_pb2.Envelope.FromString(r.value)
            if env.subject == done.task_id:
                data = events_pb2.TaskStateChanged()
                env.data.Unpack(data)
                out.append(data.status)
        return out

    records = await topic_reader(
        service.cfg.kafka_bootstrap, topic, until=lambda rs: len(states(rs)) >= 3
    )
    assert states(records) == [
        common_pb2.TASK_STATUS_QUEUED,
        common_pb2.TASK_STATUS_RUNNING,
        common_pb2.TASK_STATUS_OK,
    ]
    mine = [r for r in records if r.key == done.task_id.encode()]
    assert len({r.partition for r in mine}) == 1
    envs = [events_pb2.Envelope.FromString(r.value) for r in mine]
    assert all(
        e.type == "aion.task.state_changed" and e.source == "agent" and e.tenant == TENANT
        for e in envs
    )
    assert len({e.id for e in envs}) == 3
    final = events_pb2.TaskStateChanged()
    envs[-1].data.Unpack(final)
    # The shared topic carries the state and usage, never the output (Get returns it).
    assert final.result.status == common_pb2.TASK_STATUS_OK
    assert final.result.output == ""
    assert final.result.usage.completion_tokens > 0
    # The end announced is the end stored (times, usage, engine), but the output.
    stored = await stub.GetTask(agent_pb2.TaskRef(tenant=TENANT, task_id=done.task_id))
    stored.ClearField("output")
    assert final.result == stored
    assert b"evented" not in b"".join(r.value for r in mine)


async def test_outbox_metrics_show_the_backlog_and_what_was_published(
    stub: Stub, service: Any, agent_dsn: str
) -> None:
    def sample(name: str) -> float:
        return prometheus_client.REGISTRY.get_sample_value(name) or 0.0

    published, lagged = (
        sample("aion_agent_outbox_published_total"),
        sample("aion_agent_outbox_lag_seconds_count"),
    )
    async with db.pool(agent_dsn, max_size=2) as pool:
        meter = outbox.Publisher(pool=pool, bootstrap=service.cfg.kafka_bootstrap)
        async with pool.connection() as holder:
            async with holder.transaction():
                # As if another replica were publishing: the service's publisher waits.
                await holder.execute("SELECT pg_advisory_xact_lock(%s, %s)", outbox.LOCK)
                done = await stub.Submit(run("held back"), timeout=20)
                assert done.result.status == common_pb2.TASK_STATUS_OK
                waiting = await meter.sample()
            assert waiting >= 3  # the task's QUEUED, RUNNING and OK at least
            assert sample("aion_agent_outbox_backlog") == waiting
            assert sample("aion_agent_outbox_oldest_age_seconds") > 0
            # Released: the service's publisher sends them and counts them.
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 30
            while sample("aion_agent_outbox_published_total") < published + waiting:
                assert loop.time() < deadline, "the held-back rows were not published"
                await asyncio.sleep(0.1)
            assert sample("aion_agent_outbox_lag_seconds_count") >= lagged + waiting
            assert await meter.sample() == 0
            assert sample("aion_agent_outbox_backlog") == 0
        await meter.close()


async def test_ended_tasks_are_counted_by_status_with_their_end_to_end_time(stub: Stub) -> None:
    def sample(name: str, **labels: str) -> float:
        return prometheus_client.REGISTRY.get_sample_value(name, labels) or 0.0

    before = {s: sample("aion_agent_tasks_finished_total", status=s) for s in ("OK", "ERROR")}
    timed = sample("aion_agent_task_seconds_count")
    assert (await _events(stub, run("counted")))[-1].WhichOneof("event") == "done"
    assert (await _events(stub, run("fail")))[-1].WhichOneof("event") == "error"
    # Counted as the end commits, before the final event reaches a follower.
    assert sample("aion_agent_tasks_finished_total", status="OK") == before["OK"] + 1
    assert sample("aion_agent_tasks_finished_total", status="ERROR") == before["ERROR"] + 1
    assert sample("aion_agent_task_seconds_count") == timed + 2
    assert sample("aion_agent_task_seconds_sum") > 0


async def test_an_agent_called_as_a_tool(stub: Stub, service: Any) -> None:
    events = await _events(stub, run('call:agent_echo {"input": "inner words"}', agent="helper"))
    result = events[-1].done.result
    assert result.status == common_pb2.TASK_STATUS_OK, result.error.message
    assert result.output == "answer: inner words "
    partials = [e.partial.step for e in events if e.WhichOneof("event") == "partial"]
    assert partials == [1, 3]  # model, tool (step 2), model
    # The tool's own model call (2 tokens) counts in the task's usage.
    assert result.usage.completion_tokens == 1 + 2 + 1


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('call:agent_echo {"inp": 1}', "do not match its schema"),
        ('call:nope {"input": "x"}', "does not have"),
        ('raw:{"tool": "agent_echo", "arguments": ', "not valid tool JSON"),
    ],
)
async def test_bad_tool_calls_end_the_task_with_a_clear_error(
    stub: Stub, service: Any, text: str, message: str
) -> None:
    events = await _events(stub, run(text, agent="helper"))
    result = events[-1].error.result
    assert result.status == common_pb2.TASK_STATUS_ERROR
    assert result.error.code == "INVALID_ARGUMENT"
    assert message in result.error.message
    stored = await stub.GetTask(agent_pb2.TaskRef(tenant=TENANT, task_id=result.task_id))
    assert stored.error.message == result.error.message


async def test_register_list_apply_and_deregister(stub: Stub, service: Any) -> None:
    reg = agent_pb2.RegisterAgentRequest(
        tenant="reg",
        agent=agents_pb2.Agent(name="new", model="m2"),
        executor_endpoints=["127.0.0.1:1"],
    )
    assert (await stub.RegisterAgent(reg)).ready
    manifest = (
        "apiVersion: aion.dev/v1alpha1\nkind: Agent\nmetadata: {name: applied}\n"
        "spec: {model: {name: m3}, tools: [knowledge_search]}\n"
    )
    applied = await stub.ApplyAgents(
        agent_pb2.ApplyAgentsRequest(
            tenant="reg", request=agents_pb2.ApplyAgentsRequest(manifest=manifest)
        )
    )
    assert [a.name for a in applied.agents] == ["applied"]
    assert applied.agents[0].ready  # it got the service's default executor
    names = [
        a.name for a in (await stub.ListAgents(agent_pb2.ListAgentsRequest(tenant="reg"))).agents
    ]
    assert names == ["applied", "new"]
    gone = await stub.DeregisterAgent(agent_pb2.DeregisterAgentRequest(tenant="reg", name="new"))
    assert gone.deregistered
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.RegisterAgent(agent_pb2.RegisterAgentRequest(tenant="reg"))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.ApplyAgents(
            agent_pb2.ApplyAgentsRequest(
                tenant="reg", request=agents_pb2.ApplyAgentsRequest(manifest="kind: Pod\n")
            )
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_routing_targets_are_registered_and_shown(stub: Stub, service: Any) -> None:
    """spec.routing's budget and p95 target: through the operator's registration and
    Agents.Apply alike, recorded and shown by GetAgent (unset stays unset)."""
    reg = agent_pb2.RegisterAgentRequest(
        tenant="targets",
        agent=agents_pb2.Agent(name="fast", model="m", p95_target_ms=800, budget_usd_per_task=0.02),
        executor_endpoints=["127.0.0.1:1"],
    )
    await stub.RegisterAgent(reg)
    got = await stub.GetAgent(agent_pb2.AgentRef(tenant="targets", name="fast"))
    assert (got.budget_usd_per_task, got.p95_target_ms) == (0.02, 800)
    manifest = (
        "apiVersion: aion.dev/v1alpha1\nkind: Agent\nmetadata: {name: cheap}\n"
        "spec: {model: {name: m}, description: cheap one, maxTokens: 16,"
        " routing: {budgetUsdPerTask: 0.5}}\n"
    )
    await stub.ApplyAgents(
        agent_pb2.ApplyAgentsRequest(
            tenant="targets", request=agents_pb2.ApplyAgentsRequest(manifest=manifest)
        )
    )
    got = await stub.GetAgent(agent_pb2.AgentRef(tenant="targets", name="cheap"))
    assert (got.description, got.max_tokens, got.budget_usd_per_task) == ("cheap one", 16, 0.5)
    assert not got.HasField("p95_target_ms")
    bad = agent_pb2.RegisterAgentRequest(
        tenant="targets", agent=agents_pb2.Agent(name="bad", model="m", p95_target_ms=0)
    )
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.RegisterAgent(bad)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "p95_target_ms" in (info.value.details() or "")


async def test_input_postgres_cannot_hold_is_invalid_argument_not_internal(stub: Stub) -> None:
    keyed = run("hi", asynchronous=True)
    keyed.task.idempotency_key = "k\x00"
    calls: list[tuple[str, Awaitable[Any]]] = [
        ("agent name", stub.GetAgent(agent_pb2.AgentRef(tenant=TENANT, name="a\x00b"))),
        ("input", stub.Submit(run("hi\x00there"))),
        ("idempotency key", stub.Submit(keyed)),
    ]
    for name, call in calls:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (name, info.value)
        assert "cannot be stored" in (info.value.details() or ""), name


MANIFEST_HEAD = "apiVersion: aion.dev/v1alpha1\nkind: Agent\nmetadata: {name: bad}\n"


@pytest.mark.parametrize(
    "manifest",
    [
        "[" * 5000 + "]" * 5000,  # deeper than the parser goes
        MANIFEST_HEAD + "spec: {model: {name: m}, maxTokens: " + "9" * 5000 + "}\n",
        MANIFEST_HEAD + "spec: {model: {name: m}, maxTokens: 99999999999}\n",
        MANIFEST_HEAD + 'spec: {model: {name: m}, instructions: "a\\0b"}\n',
    ],
    ids=["deep", "digits", "int32", "nul"],
)
async def test_a_manifest_postgres_cannot_hold_is_invalid_and_nothing_is_written(
    stub: Stub, manifest: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.ApplyAgents(
            agent_pb2.ApplyAgentsRequest(
                tenant="badmanifest", request=agents_pb2.ApplyAgentsRequest(manifest=manifest)
            )
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
    listed = await stub.ListAgents(agent_pb2.ListAgentsRequest(tenant="badmanifest"))
    assert list(listed.agents) == []


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
  tools: [knowledge_search, "agent:other"]
  gpu: {count: 0}
""")
    [agent] = registry.load_file(path, tenant="t", executor_target="127.0.0.1:9")
    assert (agent.name, agent.model, agent.privacy) == (
        "demo",
        "smollm2-135m-instruct",
        privacy.Privacy.ALLOW_API,
    )
    assert agent.tools == ("knowledge_search", "agent:other")
    assert agent.ready
    path.write_text(
        "apiVersion: aion.dev/v1alpha1\nkind: Agent\nmetadata: {name: Bad_Name}\n"
        "spec: {model: {name: m}}\n"
    )
    with pytest.raises(errors.InvalidArgument, match="metadata"):
        registry.load_file(path, tenant="t", executor_target=None)
