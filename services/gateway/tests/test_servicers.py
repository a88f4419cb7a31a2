"""The public servicers at their edge, in process: each RPC's role, the caller's tenant on
every internal call, the Stream deadline rule and what reaches the router about privacy.

The router, agent and knowledge stubs are in-process fakes that record each call (the e2e
suite runs the real path); authentication and rate limits are the real ones.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pydantic
import pytest

from aion.api.router.v1 import router_pb2
from aion.api.v1 import (
    agents_pb2,
    common_pb2,
    keys_pb2,
    knowledge_pb2,
    tasks_pb2,
)
from aion.core import errors
from aion.gateway import auth, http_calls, keys, ratelimit, servicers, settings

TENANT = "acme"
ROLES: tuple[settings.Role, ...] = ("viewer", "user", "admin")
KEYS = {role: f"key-{role}" for role in ROLES}


class FakeStub:
    """Any internal stub: each method records ``(name, request, timeout)`` and answers from
    ``answers`` (a list is streamed, anything else returned; a missing name gets ``Empty``)."""

    def __init__(self, **answers: Any) -> None:
        self.calls: list[tuple[str, Any, float | None]] = []
        self._answers = answers

    def __getattr__(self, name: str) -> Callable[..., Any]:
        if name.startswith("_"):
            raise AttributeError(name)

        def method(request: Any, *, timeout: float | None = None) -> Any:
            answer = self._answers.get(name, common_pb2.TaskResult())
            if isinstance(request, AsyncIterator):  # a client stream: recorded as a list
                return self._gather(name, request, timeout, answer)
            self.calls.append((name, request, timeout))
            if isinstance(answer, list):
                return _stream(answer)
            return _value(answer)

        return method

    async def _gather(
        self, name: str, requests: AsyncIterator[Any], timeout: float | None, answer: Any
    ) -> Any:
        self.calls.append((name, [r async for r in requests], timeout))
        return answer

    def requests(self, name: str) -> list[Any]:
        return [request for called, request, _ in self.calls if called == name]


async def _value(answer: Any) -> Any:
    return answer


async def _stream(items: list[Any]) -> AsyncIterator[Any]:
    for item in items:
        yield item


class Context:
    """The part of a gRPC servicer context the servicers read: metadata, peer, deadline."""

    def __init__(self, key: str | None, *, deadline: float | None = 30.0) -> None:
        self._metadata = (("x-api-key", key),) if key else ()
        self._deadline = deadline

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    def peer(self) -> str:
        return "ipv4:127.0.0.1:5555"

    def time_remaining(self) -> float | None:
        return self._deadline


DECISION = common_pb2.Engine(route=common_pb2.ROUTE_LOCAL, chosen_by="test", reason="fake")
DONE = tasks_pb2.TaskEvent(
    task_id="t1",
    seq=1,
    done=tasks_pb2.Done(
        result=common_pb2.TaskResult(task_id="t1", usage=common_pb2.Usage(tokens=3))
    ),
)


class Edge:
    """The four public servicers over recording fakes."""

    def __init__(
        self,
        *,
        agent_privacy: common_pb2.Privacy.ValueType,
        agent_budget: float | None = None,
        policy: ratelimit.Policy | None = None,
    ) -> None:
        self.router = FakeStub(Decide=router_pb2.Decision(engine=DECISION))
        self.agent = FakeStub(
            GetAgent=agents_pb2.Agent(
                name="demo", privacy=agent_privacy, budget_usd_per_task=agent_budget
            ),
            Submit=tasks_pb2.SubmitResponse(task_id="t1"),
            Run=[DONE],
            Follow=[DONE],
            ListAgents=agents_pb2.ListAgentsResponse(),
            ApplyAgents=agents_pb2.ApplyAgentsResponse(),
        )
        self.knowledge = FakeStub(
            Ingest=knowledge_pb2.IngestResponse(),
            IngestStream=knowledge_pb2.IngestResponse(),
            Search=knowledge_pb2.SearchResponse(),
            Delete=knowledge_pb2.DeleteDocumentResponse(),
            GetDocument=knowledge_pb2.Document(),
            ListDocuments=knowledge_pb2.ListDocumentsResponse(),
            Embed=knowledge_pb2.EmbedResponse(prompt_tokens=3),
        )
        fakes: Any = (self.router, self.agent, self.knowledge)
        upstreams = servicers.Upstreams(router=fakes[0], agent=fakes[1], knowledge=fakes[2])
        cfg = settings.GatewaySettings(
            api_keys=[
                settings.ApiKey(hash=keys.hash_key(key), tenant=TENANT, roles=[role])
                for role, key in KEYS.items()
            ],
            jwt_secret=pydantic.SecretStr("jwt-secret-for-tests-32-bytes-long"),
            jwt_audience="aion",
            jwt_issuer="https://issuer.test",
        )
        self.guard = guard = servicers.Guard(
            authenticator=auth.Authenticator(cfg),
            limiter=ratelimit.RateLimiter(ratelimit.MemoryBuckets(), policy or ratelimit.Policy()),
        )
        self.tasks = servicers.TasksServicer(guard=guard, upstreams=upstreams)
        self.agents = servicers.AgentsServicer(guard=guard, upstreams=upstreams)
        self.knowledge_api = servicers.KnowledgeServicer(guard=guard, upstreams=upstreams)
        self.keys = servicers.KeysServicer(guard=guard, store=None)

    def internal_calls(self) -> list[tuple[str, Any, float | None]]:
        return [*self.router.calls, *self.agent.calls, *self.knowledge.calls]


def _edge(agent_privacy: common_pb2.Privacy.ValueType = common_pb2.PRIVACY_ALLOW_API) -> Edge:
    return Edge(agent_privacy=agent_privacy)


TASK = tasks_pb2.TaskSpec(agent="demo", input="hello")

# Each public RPC, the role it needs, and how to call it on an Edge.
Call = Callable[[Edge, Context], Awaitable[Any]]


async def _drain(events: AsyncIterator[Any]) -> list[Any]:
    return [event async for event in events]


HEADER = knowledge_pb2.IngestChunk(
    header=knowledge_pb2.IngestHeader(
        knowledge_base="docs", document_id="big.txt", content_type="text/plain"
    )
)


async def _upload(*chunks: knowledge_pb2.IngestChunk) -> AsyncIterator[knowledge_pb2.IngestChunk]:
    for chunk in chunks:
        yield chunk


def _pieces(*data: bytes) -> list[knowledge_pb2.IngestChunk]:
    return [
        knowledge_pb2.IngestChunk(data=piece, last=i == len(data) - 1)
        for i, piece in enumerate(data)
    ]


RPCS: dict[str, tuple[settings.Role, Call]] = {
    "Tasks.Submit": ("user", lambda e, c: e.tasks.Submit(tasks_pb2.SubmitRequest(task=TASK), c)),  # type: ignore[arg-type]
    "Tasks.Stream(task)": (
        "user",
        lambda e, c: _drain(e.tasks.Stream(tasks_pb2.StreamRequest(task=TASK), c)),  # type: ignore[arg-type]
    ),
    "Tasks.Stream(task_id)": (
        "user",
        lambda e, c: _drain(e.tasks.Stream(tasks_pb2.StreamRequest(task_id="t1"), c)),  # type: ignore[arg-type]
    ),
    "Tasks.Get": ("viewer", lambda e, c: e.tasks.Get(tasks_pb2.GetTaskRequest(task_id="t1"), c)),  # type: ignore[arg-type]
    "Tasks.Cancel": (
        "user",
        lambda e, c: e.tasks.Cancel(tasks_pb2.CancelTaskRequest(task_id="t1"), c),  # type: ignore[arg-type]
    ),
    "Agents.List": ("viewer", lambda e, c: e.agents.List(agents_pb2.ListAgentsRequest(), c)),  # type: ignore[arg-type]
    "Agents.Get": ("viewer", lambda e, c: e.agents.Get(agents_pb2.GetAgentRequest(name="demo"), c)),  # type: ignore[arg-type]
    "Agents.Apply": ("admin", lambda e, c: e.agents.Apply(agents_pb2.ApplyAgentsRequest(), c)),  # type: ignore[arg-type]
    "Knowledge.Ingest": (
        "admin",
        lambda e, c: e.knowledge_api.Ingest(knowledge_pb2.IngestRequest(knowledge_base="docs"), c),  # type: ignore[arg-type]
    ),
    "Knowledge.IngestStream": (
        "admin",
        lambda e, c: e.knowledge_api.IngestStream(_upload(HEADER, *_pieces(b"abc")), c),  # type: ignore[arg-type]
    ),
    "Knowledge.Search": (
        "viewer",
        lambda e, c: e.knowledge_api.Search(
            knowledge_pb2.SearchRequest(knowledge_base="docs", query="q"),
            c,  # type: ignore[arg-type]
        ),
    ),
    "Knowledge.Delete": (
        "admin",
        lambda e, c: e.knowledge_api.Delete(
            knowledge_pb2.DeleteDocumentRequest(knowledge_base="docs"),
            c,  # type: ignore[arg-type]
        ),
    ),
    "Knowledge.GetDocument": (
        "viewer",
        lambda e, c: e.knowledge_api.GetDocument(
            knowledge_pb2.GetDocumentRequest(knowledge_base="docs"),
            c,  # type: ignore[arg-type]
        ),
    ),
    "Knowledge.ListDocuments": (
        "viewer",
        lambda e, c: e.knowledge_api.ListDocuments(
            knowledge_pb2.ListDocumentsRequest(knowledge_base="docs"),
            c,  # type: ignore[arg-type]
        ),
    ),
    "Knowledge.Embed": (
        "user",
        lambda e, c: e.knowledge_api.Embed(knowledge_pb2.EmbedRequest(texts=["q"]), c),  # type: ignore[arg-type]
    ),
    "Keys.Create": (
        "admin",
        lambda e, c: e.keys.Create(keys_pb2.CreateKeyRequest(name="ci", roles=["viewer"]), c),  # type: ignore[arg-type]
    ),
    "Keys.List": ("admin", lambda e, c: e.keys.List(keys_pb2.ListKeysRequest(), c)),  # type: ignore[arg-type]
    "Keys.Revoke": ("admin", lambda e, c: e.keys.Revoke(keys_pb2.RevokeKeyRequest(id="k1"), c)),  # type: ignore[arg-type]
}
FORWARDED = [name for name in RPCS if not name.startswith("Keys.")]
_BELOW: dict[settings.Role, settings.Role] = {"user": "viewer", "admin": "user"}
ABOVE_VIEWER = [name for name, (role, _) in RPCS.items() if role in _BELOW]


def test_every_public_rpc_is_in_the_table() -> None:
    public = {
        f"{svc.name}.{m.name}"
        for mod in (agents_pb2, keys_pb2, knowledge_pb2, tasks_pb2)
        for svc in mod.DESCRIPTOR.services_by_name.values()
        for m in svc.methods
    }
    covered = {name.split("(")[0] for name in RPCS}
    assert covered == public


@pytest.mark.parametrize("rpc", ABOVE_VIEWER)
async def test_a_role_below_the_rpcs_is_refused_before_any_internal_call(rpc: str) -> None:
    role, call = RPCS[rpc]
    edge = _edge()
    with pytest.raises(errors.PermissionDenied, match=f"needs the '{role}' role"):
        await call(edge, Context(KEYS[_BELOW[role]]))
    assert edge.internal_calls() == []


@pytest.mark.parametrize("rpc", list(RPCS))
async def test_no_credentials_is_unauthenticated(rpc: str) -> None:
    edge = _edge()
    with pytest.raises(errors.Unauthenticated):
        await RPCS[rpc][1](edge, Context(None))
    assert edge.internal_calls() == []


@pytest.mark.parametrize("rpc", FORWARDED)
async def test_the_rpcs_role_passes_and_the_callers_tenant_reaches_every_internal_call(
    rpc: str,
) -> None:
    role, call = RPCS[rpc]
    edge = _edge()
    await call(edge, Context(KEYS[role], deadline=12.5))
    made = edge.internal_calls()
    assert made
    for name, request, timeout in made:
        first = request[0] if isinstance(request, list) else request  # a client stream's
        assert first.tenant == TENANT, name
        assert timeout == 12.5, name  # forwarded within the caller's own deadline


async def test_an_upload_is_forwarded_piece_by_piece_with_the_tenant_on_its_header() -> None:
    edge = _edge()
    pieces = _pieces(b"one ", b"two ", b"")
    await edge.knowledge_api.IngestStream(_upload(HEADER, *pieces), Context(KEYS["admin"]))  # type: ignore[arg-type]
    ((name, forwarded, _),) = edge.internal_calls()
    assert name == "IngestStream"
    assert [m.tenant for m in forwarded] == [TENANT, "", "", ""]
    assert [m.chunk for m in forwarded] == [HEADER, *pieces]


async def test_an_open_upload_holds_a_place_among_the_tenants_streams() -> None:
    edge = Edge(
        agent_privacy=common_pb2.PRIVACY_ALLOW_API,
        policy=ratelimit.Policy(tenant_streams=1, key_streams=1),
    )
    reading, more = asyncio.Event(), asyncio.Event()

    async def slow() -> AsyncIterator[knowledge_pb2.IngestChunk]:
        reading.set()  # the gateway reads the header once it holds the place
        yield HEADER
        await more.wait()
        yield _pieces(b"late")[0]

    context: Any = Context(KEYS["admin"])
    first = asyncio.create_task(edge.knowledge_api.IngestStream(slow(), context))
    await reading.wait()
    with pytest.raises(errors.ResourceExhausted, match="too many open streams"):
        await edge.knowledge_api.IngestStream(_upload(HEADER, *_pieces(b"x")), context)
    more.set()
    await first
    await edge.knowledge_api.IngestStream(_upload(HEADER, *_pieces(b"x")), context)


@pytest.mark.parametrize(
    "chunks",
    [[], _pieces(b"bytes before the header"), [*_pieces(b"x"), HEADER]],
    ids=["empty", "no header", "header second"],
)
async def test_an_upload_without_its_header_first_is_refused_before_any_internal_call(
    chunks: list[knowledge_pb2.IngestChunk],
) -> None:
    edge = _edge()
    with pytest.raises(errors.InvalidArgument, match="first message must carry the header"):
        await edge.knowledge_api.IngestStream(_upload(*chunks), Context(KEYS["admin"]))  # type: ignore[arg-type]
    assert edge.internal_calls() == []


async def test_keys_pass_the_admin_role_and_say_how_to_configure_a_store() -> None:
    with pytest.raises(errors.FailedPrecondition, match="AION_GATEWAY_POSTGRES_DSN"):
        await RPCS["Keys.List"][1](_edge(), Context(KEYS["admin"]))


@pytest.mark.parametrize(
    "rpc", ["Tasks.Stream(task)", "Tasks.Stream(task_id)", "Knowledge.IngestStream"]
)
async def test_a_stream_without_a_deadline_is_refused_before_any_internal_call(rpc: str) -> None:
    edge = _edge()
    with pytest.raises(errors.InvalidArgument, match="Stream needs a deadline") as info:
        await RPCS[rpc][1](edge, Context(KEYS[RPCS[rpc][0]], deadline=None))
    assert info.value.field == "deadline"
    assert edge.internal_calls() == []


async def test_other_calls_need_no_deadline() -> None:
    edge = _edge()
    await RPCS["Tasks.Submit"][1](edge, Context(KEYS["user"], deadline=None))
    assert sorted(name for name, _, _ in edge.internal_calls()) == ["Decide", "GetAgent", "Submit"]


@pytest.mark.parametrize(
    ("agent", "asked"),
    [
        (common_pb2.PRIVACY_ALLOW_API, common_pb2.PRIVACY_LOCAL_ONLY),
        (common_pb2.PRIVACY_HYBRID, common_pb2.PRIVACY_UNSPECIFIED),
        # Looser than the agent: forwarded as asked; the router refuses it (one rule, one place).
        (common_pb2.PRIVACY_LOCAL_ONLY, common_pb2.PRIVACY_ALLOW_API),
    ],
)
async def test_the_agents_and_the_tasks_privacy_reach_the_router_untouched(
    agent: common_pb2.Privacy.ValueType, asked: common_pb2.Privacy.ValueType
) -> None:
    edge = _edge(agent)
    task = tasks_pb2.TaskSpec(
        agent="demo",
        input="hello",
        options=tasks_pb2.TaskOptions(privacy=asked, budget_usd=0.5, sla_ms=900),
    )
    await edge.tasks.Submit(tasks_pb2.SubmitRequest(task=task), Context(KEYS["user"]))  # type: ignore[arg-type]
    (decide,) = edge.router.requests("Decide")
    assert (decide.privacy, decide.requested_privacy) == (agent, asked)
    assert (decide.agent, decide.input_chars, decide.budget_usd, decide.sla_ms) == (
        "demo",
        5,
        0.5,
        900,
    )
    (run,) = edge.agent.requests("Submit")
    assert run.decision.engine == DECISION


@pytest.mark.parametrize(
    ("task_budget", "agent_budget", "decided"),
    [(0.5, 2.0, 0.5), (None, 2.0, 2.0), (None, None, None)],
)
async def test_the_router_checks_the_tasks_budget_else_its_agents(
    task_budget: float | None, agent_budget: float | None, decided: float | None
) -> None:
    edge = Edge(agent_privacy=common_pb2.PRIVACY_ALLOW_API, agent_budget=agent_budget)
    task = tasks_pb2.TaskSpec(
        agent="demo", input="hello", options=tasks_pb2.TaskOptions(budget_usd=task_budget)
    )
    await edge.tasks.Submit(tasks_pb2.SubmitRequest(task=task), Context(KEYS["user"]))  # type: ignore[arg-type]
    (decide,) = edge.router.requests("Decide")
    assert (decide.budget_usd if decide.HasField("budget_usd") else None) == decided


async def test_an_unknown_privacy_is_invalid_argument_before_any_internal_call() -> None:
    edge = _edge()
    task = tasks_pb2.TaskSpec(agent="demo", input="x", options=tasks_pb2.TaskOptions(privacy=42))  # type: ignore[arg-type]
    with pytest.raises(errors.InvalidArgument, match=r"task\.options\.privacy"):
        await edge.tasks.Submit(tasks_pb2.SubmitRequest(task=task), Context(KEYS["user"]))  # type: ignore[arg-type]
    assert edge.internal_calls() == []


# --- a request an HTTP door admitted (A2A, MCP): counted once ---------------------------


def _http(key: str, admitted: http_calls.Admission[auth.Principal] | None = None) -> Any:
    return http_calls.Call({"x-api-key": key}, timeout_s=30, admitted=admitted).context()


async def test_an_admission_pays_for_its_uses_then_calls_count_again() -> None:
    edge = Edge(
        agent_privacy=common_pb2.PRIVACY_ALLOW_API,
        policy=ratelimit.Policy(tenant_rate=0.001, tenant_burst=2),
    )
    admission = await edge.guard.admit(_http(KEYS["user"]), "viewer", uses=2)  # one call
    for _ in range(2):  # paid for by the admission
        await edge.tasks.Submit(tasks_pb2.SubmitRequest(task=TASK), _http(KEYS["user"], admission))
    await edge.agents.List(agents_pb2.ListAgentsRequest(), _http(KEYS["user"], admission))  # 2nd
    with pytest.raises(errors.ResourceExhausted, match="rate limit"):
        await edge.agents.List(agents_pb2.ListAgentsRequest(), _http(KEYS["user"], admission))
    with pytest.raises(errors.ResourceExhausted, match="rate limit"):
        await edge.guard.admit(_http(KEYS["user"]), "viewer")


async def test_an_admitted_call_still_needs_its_role_and_tokens_out_of_debt() -> None:
    edge = Edge(
        agent_privacy=common_pb2.PRIVACY_ALLOW_API,
        policy=ratelimit.Policy(tokens_per_minute=60),
    )
    viewer = await edge.guard.admit(_http(KEYS["viewer"]), "viewer")
    with pytest.raises(errors.PermissionDenied, match="needs the 'user' role"):
        await edge.tasks.Submit(tasks_pb2.SubmitRequest(task=TASK), _http(KEYS["viewer"], viewer))
    await edge.guard.limiter.spend_tokens(TENANT, 120)  # a minute's tokens and more: in debt
    user = await edge.guard.admit(_http(KEYS["user"]), "viewer", uses=2)
    with pytest.raises(errors.ResourceExhausted, match="tokens per minute"):
        await edge.tasks.Submit(tasks_pb2.SubmitRequest(task=TASK), _http(KEYS["user"], user))
    await edge.agents.List(agents_pb2.ListAgentsRequest(), _http(KEYS["user"], user))  # no task
    assert edge.agent.requests("Submit") == []


async def test_only_the_gateways_own_call_object_carries_an_admission() -> None:
    """A gRPC context (or anything else a caller could shape) is authenticated and counted
    whatever attributes it has."""
    edge = Edge(
        agent_privacy=common_pb2.PRIVACY_ALLOW_API,
        policy=ratelimit.Policy(tenant_rate=0.001, tenant_burst=1),
    )
    admission = await edge.guard.admit(_http(KEYS["user"]), "viewer")  # the one call
    forged = Context(KEYS["user"])
    forged.admitted = admission  # type: ignore[attr-defined]
    with pytest.raises(errors.ResourceExhausted):
        await edge.agents.List(agents_pb2.ListAgentsRequest(), forged)  # type: ignore[arg-type]
    anonymous = Context(None)
    anonymous.admitted = admission  # type: ignore[attr-defined]
    with pytest.raises(errors.Unauthenticated):
        await edge.agents.List(agents_pb2.ListAgentsRequest(), anonymous)  # type: ignore[arg-type]


def _sample(name: str, **labels: str) -> float:
    import prometheus_client

    return prometheus_client.REGISTRY.get_sample_value(name, labels) or 0.0


async def test_a_stream_that_starts_a_task_times_the_gateways_part_and_the_first_token() -> None:
    edge = _edge()
    token = tasks_pb2.TaskEvent(task_id="t1", seq=1, token=tasks_pb2.Token(text="hi"))
    edge.agent = FakeStub(
        GetAgent=agents_pb2.Agent(name="demo"),
        Run=[token, token, DONE],
        Follow=[token, DONE],
        Submit=tasks_pb2.SubmitResponse(task_id="t1"),
    )
    fakes: Any = (edge.router, edge.agent, edge.knowledge)
    upstreams = servicers.Upstreams(router=fakes[0], agent=fakes[1], knowledge=fakes[2])
    edge.tasks = servicers.TasksServicer(guard=edge.guard, upstreams=upstreams)
    added = "aion_gateway_added_latency_seconds_count"
    ttft = "aion_gateway_time_to_first_token_seconds_count"
    before = (_sample(added, grpc_method="Stream"), _sample(ttft))
    await _drain(edge.tasks.Stream(tasks_pb2.StreamRequest(task=TASK), Context(KEYS["user"])))  # type: ignore[arg-type]
    assert (_sample(added, grpc_method="Stream"), _sample(ttft)) == (before[0] + 1, before[1] + 1)
    # Following a task adds nothing of the gateway's and has no first token of its own.
    await _drain(edge.tasks.Stream(tasks_pb2.StreamRequest(task_id="t1"), Context(KEYS["user"])))  # type: ignore[arg-type]
    assert (_sample(added, grpc_method="Stream"), _sample(ttft)) == (before[0] + 1, before[1] + 1)
    submitted = _sample(added, grpc_method="Submit")
    await edge.tasks.Submit(tasks_pb2.SubmitRequest(task=TASK), Context(KEYS["user"]))  # type: ignore[arg-type]
    assert _sample(added, grpc_method="Submit") == submitted + 1


async def test_tasks_reuse_a_kept_agent_record_until_the_tenant_applies_agents_here() -> None:
    edge = _edge()
    fakes: Any = (edge.router, edge.agent, edge.knowledge)
    upstreams = servicers.Upstreams(router=fakes[0], agent=fakes[1], knowledge=fakes[2])
    records = servicers.AgentRecords(fakes[1], ttl_s=60)
    edge.tasks = servicers.TasksServicer(guard=edge.guard, upstreams=upstreams, records=records)
    edge.agents = servicers.AgentsServicer(guard=edge.guard, upstreams=upstreams, records=records)

    def asked() -> int:
        return sum(1 for name, _, _ in edge.agent.calls if name == "GetAgent")

    for _ in range(3):
        await edge.tasks.Submit(tasks_pb2.SubmitRequest(task=TASK), Context(KEYS["user"]))  # type: ignore[arg-type]
    assert asked() == 1  # the routing of three tasks: one GetAgent
    await edge.agents.Get(agents_pb2.GetAgentRequest(name="demo"), Context(KEYS["viewer"]))  # type: ignore[arg-type]
    assert asked() == 2  # a caller reading its agent always gets the agent service's answer
    await edge.agents.Apply(agents_pb2.ApplyAgentsRequest(), Context(KEYS["admin"]))  # type: ignore[arg-type]
    await edge.tasks.Submit(tasks_pb2.SubmitRequest(task=TASK), Context(KEYS["user"]))  # type: ignore[arg-type]
    assert asked() == 3  # applied here: the next task reads its agent afresh
