"""The protobuf edge: what each message becomes in the domain types, and back."""

from __future__ import annotations

import datetime

import pytest

from aion.agent import convert, model
from aion.api.agent.v1 import agent_pb2
from aion.api.executor.v1 import executor_pb2
from aion.api.router.v1 import router_pb2
from aion.api.v1 import agents_pb2, common_pb2, tasks_pb2
from aion.api.v1 import knowledge_pb2 as public_knowledge_pb2
from aion.core import errors, privacy


def test_the_routers_route_becomes_a_route() -> None:
    decision = convert.decision_from_pb(
        router_pb2.Decision(
            engine=common_pb2.Engine(
                route=common_pb2.ROUTE_HYBRID, chosen_by="policy:cost", reason="cheaper"
            ),
            provider="openai",
            estimated_cost_usd=0.2,
        )
    )
    assert decision == model.Decision(
        route=privacy.Route.HYBRID, chosen_by="policy:cost", reason="cheaper", provider="openai"
    )


def test_no_decision_or_an_unknown_route_runs_local() -> None:
    assert convert.decision_from_pb(router_pb2.Decision()).route is privacy.Route.LOCAL
    unknown = router_pb2.Decision(engine=common_pb2.Engine(route=99))  # type: ignore[arg-type]
    assert convert.decision_from_pb(unknown).route is privacy.Route.LOCAL


def test_a_run_request_needs_a_task_and_a_tenant() -> None:
    with pytest.raises(errors.InvalidArgument, match="task is required"):
        convert.spec_from_pb(agent_pb2.RunRequest(tenant="t"), timeout_s=5)
    with pytest.raises(errors.InvalidArgument, match="tenant"):
        convert.spec_from_pb(agent_pb2.RunRequest(task=tasks_pb2.TaskSpec(agent="a")), timeout_s=5)
    spec = convert.spec_from_pb(
        agent_pb2.RunRequest(
            tenant="t",
            task=tasks_pb2.TaskSpec(
                agent="a", input="hi", options=tasks_pb2.TaskOptions(max_tokens=9)
            ),
        ),
        timeout_s=5,
        asynchronous=True,
    )
    assert spec == model.TaskSpec(
        tenant="t", agent="a", input="hi", max_tokens=9, timeout_s=5, asynchronous=True
    )


def registration(value: int) -> agent_pb2.RegisterAgentRequest:
    return agent_pb2.RegisterAgentRequest(
        tenant="t",
        agent=agents_pb2.Agent(name="a", model="m", privacy=value),  # type: ignore[arg-type]
    )


def test_a_registrations_privacy_is_cores_and_an_unknown_one_is_refused() -> None:
    assert convert.agent_from_pb(registration(common_pb2.PRIVACY_HYBRID)).privacy is (
        privacy.Privacy.HYBRID
    )
    assert convert.agent_from_pb(registration(common_pb2.PRIVACY_UNSPECIFIED)).privacy is (
        privacy.Privacy.LOCAL_ONLY
    )
    with pytest.raises(errors.InvalidArgument, match="unknown privacy"):
        convert.agent_from_pb(registration(42))
    agent = model.AgentRecord(tenant="t", name="a", model="m", privacy=privacy.Privacy.ALLOW_API)
    assert convert.agent_to_pb(agent).privacy == common_pb2.PRIVACY_ALLOW_API


def task(status: model.Status) -> model.TaskRecord:
    now = datetime.datetime.now(datetime.UTC)
    return model.TaskRecord(
        id="00000000-0000-0000-0000-000000000001",
        spec=model.TaskSpec(tenant="t", agent="a", input="secret input"),
        decision=model.Decision(route=privacy.Route.API, chosen_by="policy"),
        model_name="m",
        status=status,
        attempts=2,
        output="the secret output",
        usage=model.Usage(prompt_tokens=3, completion_tokens=4, cost_usd=0.5),
        error=model.TaskError("CANCELLED", "asked") if status is model.Status.CANCELED else None,
        created_at=now,
        finished_at=now,
        citations=(model.Citation("kb", "secret.md", 2, 5, 10, 90, "Secret", 0.25),),
    )


def test_a_state_change_never_carries_the_output() -> None:
    running = convert.state_changed(task(model.Status.RUNNING))
    assert running.status == common_pb2.TASK_STATUS_RUNNING
    assert not running.HasField("result")
    ended = convert.state_changed(task(model.Status.CANCELED))
    assert ended.result.status == common_pb2.TASK_STATUS_CANCELED
    assert ended.result.error.code == "CANCELLED"
    assert ended.result.engine.route == common_pb2.ROUTE_API
    assert ended.result.usage.tokens == 7
    assert ended.result.output == ""
    assert list(ended.result.citations) == []  # the tenant's documents stay off the topic
    assert convert.result_to_pb(task(model.Status.OK)).output == "the secret output"
    assert convert.queued(task(model.Status.QUEUED)).attempt == 2


def test_events_and_generation_chunks() -> None:
    done = convert.event_to_pb(task(model.Status.OK), model.Event(seq=5, kind=model.EventKind.DONE))
    assert (done.seq, done.done.result.status) == (5, common_pb2.TASK_STATUS_OK)
    assert list(done.done.result.citations) == [
        common_pb2.Citation(
            knowledge_base="kb",
            document_id="secret.md",
            version=2,
            chunk_index=5,
            char_start=10,
            char_end=90,
            title="Secret",
            score=0.25,
        )
    ]
    error = convert.event_to_pb(
        task(model.Status.CANCELED), model.Event(seq=6, kind=model.EventKind.ERROR)
    )
    assert [c.document_id for c in error.error.result.citations] == ["secret.md"]
    partial = convert.event_to_pb(
        task(model.Status.RUNNING),
        model.Event(seq=2, kind=model.EventKind.PARTIAL, text="so far", step=1),
    )
    assert (partial.partial.text, partial.partial.step) == ("so far", 1)
    assert convert.chunk_from_pb(executor_pb2.GenerateChunk(text="hi")) == model.Chunk(text="hi")
    assert convert.chunk_from_pb(
        executor_pb2.GenerateChunk(
            usage=executor_pb2.GenerateUsage(prompt_tokens=3, completion_tokens=4)
        )
    ) == model.Chunk(prompt_tokens=3, completion_tokens=4, final=True)
    request = convert.generate_request(
        model.ModelCall(model="m", messages=(("system", "s"), ("user", "u")), max_tokens=8, seed=1)
    )
    assert [(m.role, m.content) for m in request.messages] == [("system", "s"), ("user", "u")]
    assert (request.max_tokens, request.seed, request.HasField("temperature")) == (8, 1, False)


def test_search_hits_become_passages_with_their_citations() -> None:
    hit = public_knowledge_pb2.SearchHit(
        knowledge_base="handbook",
        document_id="vacation.md",
        version=3,
        chunk_index=1,
        char_start=800,
        char_end=1500,
        title="Vacation",
        score=0.03,
        text="30 days",
        metadata={"team": "hr"},
    )
    assert convert.passages([hit]) == [
        model.Passage(
            "30 days", model.Citation("handbook", "vacation.md", 3, 1, 800, 1500, "Vacation", 0.03)
        )
    ]


TOKEN = "s3cr3t-token-value"


def credentialed(**credential: str) -> agent_pb2.RegisterAgentRequest:
    """A registration of an agent with one MCP and one A2A server, and one credential."""
    values = {"url": "http://tools/mcp", "header": "Authorization", "value": f"Bearer {TOKEN}"}
    return agent_pb2.RegisterAgentRequest(
        tenant="t",
        agent=agents_pb2.Agent(name="a", model="m"),
        tools=["mcp:http://tools/mcp#add", "a2a:http://peer"],
        tool_credentials=[agent_pb2.ToolCredential(**(values | credential))],
    )


def test_a_registrations_credentials_are_kept_and_never_shown() -> None:
    agent = convert.agent_from_pb(credentialed())
    assert agent.tool_credentials == (
        model.ToolCredential("http://tools/mcp", "Authorization", f"Bearer {TOKEN}"),
    )
    assert agent.headers("http://tools/mcp") == {"Authorization": f"Bearer {TOKEN}"}
    assert agent.headers("http://peer") == {}
    assert TOKEN not in repr(agent)
    assert TOKEN not in repr(agent.tool_credentials)
    assert TOKEN.encode() not in convert.agent_to_pb(agent).SerializeToString()
    a2a = convert.agent_from_pb(credentialed(url="http://peer", header="X-API-Key", value=TOKEN))
    assert a2a.headers("http://peer") == {"X-API-Key": TOKEN}


@pytest.mark.parametrize(
    ("credential", "field", "says"),
    [
        ({"url": "http://elsewhere/mcp"}, "tool_credentials[0].url", "not a server"),
        ({"header": "Bad Header"}, "tool_credentials[0].header", "not an HTTP header"),
        ({"header": "Mcp-Session-Id"}, "tool_credentials[0].header", "not an HTTP header"),
        ({"value": ""}, "tool_credentials[0].value", "not an HTTP header value"),
        ({"value": f"Bearer {TOKEN}\r\nX-Evil: 1"}, "tool_credentials[0].value", "printable"),
        ({"value": f"Bearer {TOKEN}\n"}, "tool_credentials[0].value", "printable"),
        ({"value": "x" * 9000}, "tool_credentials[0].value", "over 8192"),
    ],
)
def test_a_bad_credential_is_refused_without_quoting_its_value(
    credential: dict[str, str], field: str, says: str
) -> None:
    with pytest.raises(errors.InvalidArgument) as caught:
        convert.agent_from_pb(credentialed(**credential))
    assert caught.value.field == field
    assert says in caught.value.message
    assert TOKEN not in caught.value.message


def test_two_credentials_for_one_server_are_refused() -> None:
    msg = credentialed()
    msg.tool_credentials.append(msg.tool_credentials[0])
    with pytest.raises(errors.InvalidArgument, match="a second credential"):
        convert.agent_from_pb(msg)
