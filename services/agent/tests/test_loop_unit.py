"""The agent loop in process, behind its seams: fake model backends, knowledge and sink.

No server, database or network: each test scripts what the model says and checks
what the loop did with it (the route it took, the tool calls, the step records).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, cast

import prometheus_client
import pytest

from aion.agent import agent_loop, budget, convert, follow, model, run_log, runner
from aion.core import errors, privacy

Reply = Callable[[model.ModelCall], list[str]]


class FakeBackend:
    """A model backend whose replies are scripted; records every call."""

    def __init__(
        self, name: str, reply: Reply, *, price: float = 0.0, fail: errors.AionError | None = None
    ) -> None:
        self.name = name
        self.calls: list[model.ModelCall] = []
        self._reply = reply
        self._price = price
        self._fail = fail

    def model_name(self, call: model.ModelCall) -> str:
        return self.name

    def cost_usd(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens + completion_tokens) * self._price

    async def generate(self, call: model.ModelCall) -> AsyncIterator[model.Chunk]:
        self.calls.append(call)
        if self._fail is not None:
            raise self._fail
        words = self._reply(call)
        for word in words:
            yield model.Chunk(text=word)
        yield model.Chunk(
            prompt_tokens=len(call.messages), completion_tokens=len(words), final=True
        )


def cite(kb: str, i: int) -> model.Citation:
    """The citation of FakeKnowledge's passage ``i`` of ``kb``."""
    return model.Citation(
        knowledge_base=kb,
        document_id=f"{kb}.md",
        version=1,
        chunk_index=i,
        char_start=100 * i,
        char_end=100 * i + 14,
        title=f"The {kb}",
        score=1 / (i + 1),
    )


class FakeKnowledge:
    """Two passages per knowledge base (chunks 0 and 1 of one document); records every
    search."""

    def __init__(self) -> None:
        self.searches: list[tuple[str, str, str]] = []

    async def search(
        self, *, tenant: str, knowledge_base: str, query: str, top_k: int, timeout: float
    ) -> list[model.Passage]:
        self.searches.append((tenant, knowledge_base, query))
        return [
            model.Passage(f"{knowledge_base} passage {i}", cite(knowledge_base, i))
            for i in range(2)
        ][:top_k]


@dataclasses.dataclass
class RecordingSink:
    """Keeps what a run sends."""

    tokens: list[str] = dataclasses.field(default_factory=list)
    partials: list[tuple[str, int]] = dataclasses.field(default_factory=list)
    steps: list[model.StepRecord] = dataclasses.field(default_factory=list)
    cited: list[list[model.Citation]] = dataclasses.field(default_factory=list)

    async def token(self, text: str) -> None:
        self.tokens.append(text)

    async def cite(self, citations: Sequence[model.Citation]) -> None:
        self.cited.append(list(citations))

    async def recorded(self) -> None:
        pass

    async def partial(self, text: str, step: int) -> None:
        self.partials.append((text, step))

    async def step(self, rec: model.StepRecord) -> None:
        self.steps.append(rec)


class FakeAgents:
    """An in-memory registry of one tenant's agents."""

    def __init__(self, *agents: model.AgentRecord) -> None:
        self._agents = {a.name: a for a in agents}

    async def get(self, tenant: str, name: str) -> model.AgentRecord:
        try:
            return self._agents[name]
        except KeyError:
            raise errors.NotFound(f"agent '{name}' not found") from None

    async def put(self, agent: model.AgentRecord) -> model.AgentRecord:
        raise NotImplementedError

    async def put_all(self, agents: object) -> list[model.AgentRecord]:
        raise NotImplementedError

    async def list(self, tenant: str) -> list[model.AgentRecord]:
        return list(self._agents.values())

    async def delete(self, tenant: str, name: str, *, owner: str) -> bool:
        raise NotImplementedError


def echo(call: model.ModelCall) -> list[str]:
    """The user's first message, word by word."""
    user = next(c for r, c in call.messages if r == "user")
    return [w + " " for w in user.split()]


def agent(**overrides: object) -> model.AgentRecord:
    values: dict[str, object] = {
        "tenant": "t",
        "name": "helper",
        "model": "local-model",
        "executor_endpoints": ("pod:1",),
        "max_tokens": 64,
    }
    values.update(overrides)
    return model.AgentRecord(**values)  # type: ignore[arg-type]


def request(
    text: str = "hello there",
    *,
    route: privacy.Route = privacy.Route.LOCAL,
    max_tokens: int | None = None,
) -> agent_loop.Request:
    return agent_loop.Request(
        tenant="t",
        input=text,
        max_tokens=max_tokens,
        temperature=0.5,
        seed=7,
        route=route,
        timeout_s=30.0,
        task_id="task-1",
        attempt=2,
    )


def loop_with(
    *,
    local: FakeBackend,
    api: FakeBackend | None = None,
    knowledge: FakeKnowledge | None = None,
    top_k: int = 0,
    agents: FakeAgents | None = None,
) -> agent_loop.AgentLoop:
    return agent_loop.AgentLoop(
        local=local,
        api=api,
        knowledge=knowledge or FakeKnowledge(),
        agents=agents or FakeAgents(),
        retrieval_top_k=top_k,
    )


async def test_a_run_streams_tokens_and_records_the_model_step() -> None:
    local = FakeBackend("local-model", echo)
    sink = RecordingSink()
    answer = await loop_with(local=local).run(agent(), request(), sink)
    assert answer == "hello there "
    assert sink.tokens == ["hello ", "there "]
    assert sink.partials == [("hello there ", 1)]
    [rec] = sink.steps
    assert (rec.step, rec.kind, rec.name, rec.output) == (1, "model", "local-model", answer)
    assert (rec.prompt_tokens, rec.completion_tokens, rec.cost_usd) == (2, 2, 0.0)
    [call] = local.calls
    assert (call.model, call.endpoints, call.temperature, call.seed) == (
        "local-model",
        ("pod:1",),
        0.5,
        7,
    )
    assert (call.task_id, call.attempt) == ("task-1", 2)
    assert call.messages[0] == ("system", "You are a helpful assistant.")


async def test_max_tokens_is_the_tasks_else_the_agents() -> None:
    local = FakeBackend("local-model", echo)
    run = loop_with(local=local)
    await run.run(agent(max_tokens=64), request(max_tokens=5), RecordingSink())
    await run.run(agent(max_tokens=64), request(), RecordingSink())
    assert [c.max_tokens for c in local.calls] == [5, 64]


@pytest.mark.parametrize("route", list(privacy.Route))
async def test_a_local_only_agent_runs_local_whatever_the_route(route: privacy.Route) -> None:
    local, api = FakeBackend("local-model", echo), FakeBackend("api-model", echo, price=1.0)
    sink = RecordingSink()
    await loop_with(local=local, api=api).run(
        agent(privacy=privacy.Privacy.LOCAL_ONLY), request(route=route), sink
    )
    assert len(local.calls) == 1
    assert api.calls == []
    assert sink.steps[0].cost_usd == 0.0


async def test_an_allow_api_agent_takes_the_api_route_and_pays_for_it() -> None:
    local, api = FakeBackend("local-model", echo), FakeBackend("api-model", echo, price=0.5)
    sink = RecordingSink()
    await loop_with(local=local, api=api).run(
        agent(privacy=privacy.Privacy.ALLOW_API), request(route=privacy.Route.API), sink
    )
    assert local.calls == []
    [rec] = sink.steps
    assert (rec.name, rec.cost_usd) == ("api-model", 2.0)  # 2 + 2 tokens at 0.5


async def test_the_api_route_without_a_provider_says_what_to_set() -> None:
    with pytest.raises(errors.FailedPrecondition, match="AION_AGENT_PROVIDER_BASE_URL"):
        await loop_with(local=FakeBackend("local-model", echo)).run(
            agent(privacy=privacy.Privacy.ALLOW_API),
            request(route=privacy.Route.API),
            RecordingSink(),
        )


async def test_hybrid_falls_back_to_the_api_when_local_fails_before_answering() -> None:
    local = FakeBackend("local-model", echo, fail=errors.ResourceExhausted("queue full"))
    api = FakeBackend("api-model", echo)
    sink = RecordingSink()
    answer = await loop_with(local=local, api=api).run(
        agent(privacy=privacy.Privacy.HYBRID), request(route=privacy.Route.HYBRID), sink
    )
    assert answer == "hello there "
    assert (len(local.calls), len(api.calls)) == (1, 1)
    assert sink.steps[0].name == "api-model"


async def test_a_failing_backend_ends_the_run_with_its_error() -> None:
    local = FakeBackend("local-model", echo, fail=errors.Unavailable("no pod"))
    with pytest.raises(errors.Unavailable, match="no pod"):
        await loop_with(local=local).run(agent(), request(), RecordingSink())


async def test_retrieved_passages_go_into_the_system_prompt() -> None:
    local, knowledge = FakeBackend("local-model", echo), FakeKnowledge()
    await loop_with(local=local, knowledge=knowledge, top_k=3).run(
        agent(knowledge_bases=("docs", "faq")), request("what is aion"), RecordingSink()
    )
    assert knowledge.searches == [("t", "docs", "what is aion"), ("t", "faq", "what is aion")]
    system = local.calls[0].messages[0][1]
    assert "docs passage 0\n\ndocs passage 1\n\nfaq passage 0" in system
    assert "faq passage 1" not in system  # top_k passages in all


async def test_the_passages_put_into_the_context_are_cited_as_they_go_in() -> None:
    sink = RecordingSink()
    await loop_with(local=FakeBackend("local-model", echo), top_k=3).run(
        agent(knowledge_bases=("docs", "faq")), request("what is aion"), sink
    )
    # the three that went into the system prompt, in its order; not the one left out
    assert sink.cited == [[cite("docs", 0), cite("docs", 1), cite("faq", 0)]]
    nothing = RecordingSink()
    await loop_with(local=FakeBackend("local-model", echo), top_k=0).run(
        agent(knowledge_bases=("docs",)), request(), nothing
    )
    assert nothing.cited == []  # no retrieval, no citations


def calls_then_answers(tool: str, arguments: dict[str, object]) -> Reply:
    """A model that calls ``tool`` first, then answers with the tool's result."""

    def reply(call: model.ModelCall) -> list[str]:
        last = call.messages[-1][1]
        if last.startswith("Tool "):
            return ["answer: " + last.split("\n", 1)[1]]
        return [json.dumps({"tool": tool, "arguments": arguments})]

    return reply


async def test_a_tool_call_runs_the_tool_and_feeds_its_result_back() -> None:
    local, knowledge = (
        FakeBackend(
            "local-model", calls_then_answers("knowledge_search", {"query": "pricing", "top_k": 1})
        ),
        FakeKnowledge(),
    )
    sink = RecordingSink()
    answer = await loop_with(local=local, knowledge=knowledge).run(
        agent(knowledge_bases=("docs",), tools=("knowledge_search",)), request(), sink
    )
    assert answer == "answer: docs passage 0"
    assert knowledge.searches == [("t", "docs", "pricing")]
    assert [(r.step, r.kind, r.name) for r in sink.steps] == [
        (1, "model", "local-model"),
        (2, "tool", "knowledge_search"),
        (3, "model", "local-model"),
    ]
    assert sink.steps[1].input == {"query": "pricing", "top_k": 1}
    assert sink.steps[1].output == "docs passage 0"
    assert sink.cited == [[cite("docs", 0)]]  # what the tool returned, no more
    assert "knowledge_search" in local.calls[0].messages[0][1]  # the tools prompt


async def test_an_unknown_tool_is_a_failed_step_and_an_invalid_argument() -> None:
    local = FakeBackend("local-model", calls_then_answers("nope", {}))
    sink = RecordingSink()
    with pytest.raises(errors.InvalidArgument, match="tool 'nope'"):
        await loop_with(local=local).run(
            agent(knowledge_bases=("docs",), tools=("knowledge_search",)), request(), sink
        )
    assert sink.steps[-1].kind == "tool"
    assert sink.steps[-1].error is not None


async def test_an_agent_called_as_a_tool_adds_its_cost_to_the_callers_step() -> None:
    local = FakeBackend(
        "local-model",
        lambda call: (
            calls_then_answers("agent_other", {"input": "sub task"})(call)
            if any(c == "the main task" for _, c in call.messages)
            else echo(call)
        ),
    )
    other = agent(name="other")
    sink = RecordingSink()
    answer = await loop_with(local=local, agents=FakeAgents(other)).run(
        agent(tools=("agent:other",)), request("the main task"), sink
    )
    assert answer == "answer: sub task "
    tool = sink.steps[1]
    assert (tool.kind, tool.name, tool.output) == ("tool", "agent_other", "sub task ")
    assert (tool.prompt_tokens, tool.completion_tokens) == (2, 2)  # the other agent's step


async def test_a_run_that_never_answers_stops_at_the_step_limit() -> None:
    local = FakeBackend(
        "local-model",
        lambda call: [json.dumps({"tool": "knowledge_search", "arguments": {"query": "again"}})],
    )
    sink = RecordingSink()
    with pytest.raises(errors.FailedPrecondition, match="2 model calls"):
        await loop_with(local=local).run(
            agent(knowledge_bases=("docs",), tools=("knowledge_search",), max_steps=2),
            request(),
            sink,
        )
    assert [r.kind for r in sink.steps] == ["model", "tool", "model", "tool"]


# -- budgets ----------------------------------------------------------------------------
def _spent(tenant: str) -> float:
    return (
        prometheus_client.REGISTRY.get_sample_value(
            "aion_tenant_spend_usd_total", {"tenant": tenant}
        )
        or 0.0
    )


def _long(call: model.ModelCall) -> list[str]:
    return ["word "] * 200


async def test_a_budget_stops_a_priced_generation_and_keeps_its_output() -> None:
    api = FakeBackend("api-model", _long, price=0.001)  # $0.001 a token
    sink = RecordingSink()
    spend = budget.Spend(tenant="budgeted", limit_usd=0.05)
    before = _spent("budgeted")
    req = dataclasses.replace(request(route=privacy.Route.API), spend=spend)
    with pytest.raises(budget.Exhausted, match=r"spent \$0\.05\d* of its \$0\.050000 budget"):
        await loop_with(local=FakeBackend("local-model", echo), api=api).run(
            agent(privacy=privacy.Privacy.ALLOW_API), req, sink
        )
    [rec] = sink.steps
    # The prompt guessed at 4 characters a token, a token a chunk: stopped at the chunk
    # whose price reached the budget, so at most one token over.
    assert 0.05 <= rec.cost_usd < 0.05 + 0.001
    assert rec.cost_usd == pytest.approx((rec.prompt_tokens + rec.completion_tokens) * 0.001)
    assert len(sink.tokens) == rec.completion_tokens < 200
    assert rec.output == "".join(sink.tokens)
    assert spend.spent_usd == pytest.approx(rec.cost_usd)
    assert _spent("budgeted") - before == pytest.approx(rec.cost_usd)
    assert not budget.Exhausted("x").retriable
    assert budget.Exhausted.code.name == "RESOURCE_EXHAUSTED"


async def test_a_budget_does_not_stop_the_free_local_pool() -> None:
    sink = RecordingSink()
    req = dataclasses.replace(request(), spend=budget.Spend(tenant="t", limit_usd=0.0))
    answer = await loop_with(local=FakeBackend("local-model", _long)).run(agent(), req, sink)
    assert answer == "word " * 200
    assert sink.steps[0].cost_usd == 0.0


async def test_a_call_under_its_budget_is_charged_its_reported_usage() -> None:
    api = FakeBackend("api-model", echo, price=0.5)
    spend = budget.Spend(tenant="t", limit_usd=100.0, spent_usd=1.0)  # an earlier attempt's
    req = dataclasses.replace(request(route=privacy.Route.API), spend=spend)
    sink = RecordingSink()
    await loop_with(local=FakeBackend("local-model", echo), api=api).run(
        agent(privacy=privacy.Privacy.ALLOW_API), req, sink
    )
    assert sink.steps[0].cost_usd == 2.0  # 2 + 2 tokens, as the backend reported
    assert spend.spent_usd == 3.0


def test_the_budget_is_the_tasks_else_its_agents() -> None:
    def task(budget_usd: float | None) -> model.TaskRecord:
        spec = model.TaskSpec(tenant="t", agent="helper", input="x", budget_usd=budget_usd)
        rec = model.TaskRecord(id="1", spec=spec, decision=model.Decision(), model_name="m")
        rec.usage.cost_usd = 0.25
        return rec

    own = budget.for_task(task(1.0), agent(budget_usd_per_task=2.0))
    assert (own.limit_usd, own.spent_usd) == (1.0, 0.25)
    assert budget.for_task(task(None), agent(budget_usd_per_task=2.0)).limit_usd == 2.0
    assert budget.for_task(task(None), agent()).limit_usd is None


async def test_an_agent_called_as_a_tool_draws_on_its_callers_budget() -> None:
    def reply(call: model.ModelCall) -> list[str]:
        if any(c == "the main task" for _, c in call.messages):
            return calls_then_answers("agent_other", {"input": "sub task"})(call)
        return _long(call)

    api = FakeBackend("api-model", reply, price=0.001)
    spend = budget.Spend(tenant="t", limit_usd=0.2)
    req = dataclasses.replace(request("the main task", route=privacy.Route.API), spend=spend)
    sink = RecordingSink()
    with pytest.raises(budget.Exhausted):
        await loop_with(
            local=FakeBackend("local-model", echo),
            api=api,
            agents=FakeAgents(agent(name="other", privacy=privacy.Privacy.ALLOW_API)),
        ).run(agent(tools=("agent:other",), privacy=privacy.Privacy.ALLOW_API), req, sink)
    asked, tool = sink.steps  # the caller's model step, then its failed tool step
    assert (tool.kind, tool.name) == ("tool", "agent_other")
    assert "budget" in (tool.error or "")
    # The callee stopped when the caller's spend and its own reached the one budget.
    assert 0.2 <= spend.spent_usd < 0.2 + 0.001
    assert spend.spent_usd > asked.cost_usd


class FakeTaskStore:
    """Where a run's log writes (the run's side of ``store.TaskStore``): keeps what its
    end stores."""

    def __init__(self) -> None:
        self.followers = follow.Followers(self._read)

    def running_here(self, task: model.TaskRecord) -> None:
        pass

    def ran(self, task: model.TaskRecord) -> None:
        pass

    async def _read(self, task_id: str, after: int) -> list[model.Event]:
        return []

    async def write(self, task: model.TaskRecord, logged: list[model.Event], **kw: Any) -> None:
        return None

    async def finish(
        self,
        task: model.TaskRecord,
        status: model.Status,
        *,
        output: str,
        error: model.TaskError | None,
        latency_ms: int,
        logged: list[model.Event],
        citations: Sequence[model.Citation] = (),
        steps: Sequence[model.StepRecord] = (),
    ) -> model.TaskRecord:
        return dataclasses.replace(
            task, status=status, output=output, error=error, citations=tuple(citations)
        )


def running_task() -> model.TaskRecord:
    return model.TaskRecord(
        id="task-1",
        spec=model.TaskSpec(tenant="t", agent="helper", input="hello there"),
        decision=model.Decision(),
        model_name="local-model",
        status=model.Status.RUNNING,
        attempts=1,
        worker_id="w",
        seq=1,
    )


async def test_citations_reach_the_result_once_each_in_order_of_use() -> None:
    """Retrieval, then a knowledge_search call that finds a passage again and a new one:
    the task's result (through the runner's sink and its run log) cites each once."""
    local = FakeBackend(
        "local-model", calls_then_answers("knowledge_search", {"query": "more", "top_k": 3})
    )
    events = run_log.RunLog(cast(Any, FakeTaskStore()), running_task(), flush_s=60)
    answer = await loop_with(local=local, top_k=1).run(
        agent(knowledge_bases=("docs", "faq"), tools=("knowledge_search",)),
        request(),
        runner._Sink(events),
    )
    events.output = answer
    ended = await events.finish(model.Status.OK, error=None, latency_ms=1)
    await events.close()
    # retrieval put docs 0 in; the tool returned docs 0 (again), docs 1 and faq 0
    assert ended.citations == (cite("docs", 0), cite("docs", 1), cite("faq", 0))
    result = convert.result_to_pb(ended)
    assert [
        (c.knowledge_base, c.document_id, c.version, c.chunk_index) for c in result.citations
    ] == [
        ("docs", "docs.md", 1, 0),
        ("docs", "docs.md", 1, 1),
        ("faq", "faq.md", 1, 0),
    ]
    first = result.citations[0]
    assert (first.char_start, first.char_end, first.title, first.score) == (0, 14, "The docs", 1.0)


async def test_a_run_that_fails_after_retrieval_still_cites_what_it_used() -> None:
    events = run_log.RunLog(cast(Any, FakeTaskStore()), running_task(), flush_s=60)
    local = FakeBackend("local-model", echo, fail=errors.Unavailable("no pod"))
    with pytest.raises(errors.Unavailable):
        await loop_with(local=local, top_k=1).run(
            agent(knowledge_bases=("docs",)), request(), runner._Sink(events)
        )
    ended = await events.finish(model.Status.ERROR, error=None, latency_ms=1)
    await events.close()
    assert ended.citations == (cite("docs", 0),)


async def test_an_agent_called_as_a_tool_hands_its_citations_to_its_caller() -> None:
    local = FakeBackend(
        "local-model",
        lambda call: (
            calls_then_answers("agent_other", {"input": "sub task"})(call)
            if any(c == "the main task" for _, c in call.messages)
            else echo(call)
        ),
    )
    other = agent(name="other", knowledge_bases=("faq",))
    sink = RecordingSink()
    await loop_with(local=local, agents=FakeAgents(other), top_k=1).run(
        agent(knowledge_bases=("docs",), tools=("agent:other",)), request("the main task"), sink
    )
    # the caller's retrieval, then the called agent's (its answer drew on it)
    assert sink.cited == [[cite("docs", 0)], [cite("faq", 0)]]
