"""The agent loop: instructions, input and retrieved context, then model and tool calls.

Each model call is one step; when the agent has tools and the model replies
with a tool call, the tool runs as the next step and its result goes back to
the model, up to the agent's step limit. Tokens stream to the sink as they
come; every step is recorded with its tokens and cost, and a priced model call stops
when the task's spend reaches its budget (``budget``).

The loop's seams are Protocols: ``ModelBackend`` (where a model call goes:
``backends.ExecutorBackend`` or ``backends.ApiBackend``), ``Knowledge`` (retrieval)
and ``Sink`` (where a run's output goes), so it runs in a unit test with fakes.

Citations: every passage the loop puts into the model's context (the automatic
retrieval of an agent with knowledge bases, before its first model call, and each
``knowledge_search`` tool call) has its citation handed to the sink (``Sink.cite``) as
it goes in, so a task's result lists what its answer drew on, also when the run fails
later. An agent called as a tool hands its citations to its caller's sink: its answer,
which goes into the caller's context, drew on them, and both agents are the tenant's.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, Protocol

from aion.agent import a2a_tools, budget, mcp_tools, model, registry, tools
from aion.core import errors, privacy, telemetry

log = logging.getLogger(__name__)

MAX_DEPTH = 2  # an agent called as a tool may not call agents in turn beyond this
MCP_TIMEOUT_S = 30.0  # most an MCP server or A2A agent may take to list tools or answer


class ModelBackend(Protocol):
    """Where a model call goes: the agent's executor pods, or an external API."""

    def model_name(self, call: model.ModelCall) -> str:
        """The model that answers ``call``, as its step records it."""
        ...

    def cost_usd(self, prompt_tokens: int, completion_tokens: int) -> float:
        """What a call of that many tokens costs."""
        ...

    def generate(self, call: model.ModelCall) -> AsyncIterator[model.Chunk]:
        """Stream the reply; AionError when the call fails."""
        ...


# -- route choice (issue #15: live load, spill, SLA; implemented by placement.py) --------
@dataclasses.dataclass(frozen=True)
class Plan:
    """Where one model call goes: the backends to try in order (``local``, ``api``),
    each only when the one before failed before answering; ``chosen_by`` and ``reason``
    say why when the plan departs from the router's route (empty when it does not)."""

    order: tuple[str, ...]
    chosen_by: str = ""
    reason: str = ""


class Planner(Protocol):
    """Chooses each model call's backend within the router's route, on live load."""

    async def plan(
        self,
        agent: model.AgentRecord,
        route: privacy.Route,
        *,
        sla_ms: int | None,
        deadline: float,
        tokens: tuple[int, int],
        budget_left_usd: float | None,
    ) -> Plan:
        """The plan of the next call (``tokens``: its prompt and completion estimate;
        ``budget_left_usd``: what the task may still spend, None without a budget); may
        wait for room, or raise RESOURCE_EXHAUSTED."""
        ...

    async def served(self, task_id: str, plan: Plan, *, by: str, model_name: str) -> None:
        """Hear which backend (``local``, ``api``) served a call of ``plan``."""
        ...


def _no_provider() -> errors.FailedPrecondition:
    return errors.FailedPrecondition(
        "the router chose an external API, but this agent service has no provider; set "
        "AION_AGENT_PROVIDER_BASE_URL or the agent's privacy to local-only"
    )


# -- end of route choice ---------------------------------------------------------------


class Knowledge(Protocol):
    """Retrieval from the tenant's knowledge bases."""

    async def search(
        self, *, tenant: str, knowledge_base: str, query: str, top_k: int, timeout: float
    ) -> list[model.Passage]:
        """The passages of ``knowledge_base`` relevant to ``query``, best first, each with
        its citation."""
        ...


class Sink(Protocol):
    """Where a run's tokens, step outputs and step records go."""

    async def token(self, text: str) -> None:
        """A piece of generated text."""
        ...

    async def partial(self, text: str, step: int) -> None:
        """A model step's whole output."""
        ...

    async def step(self, rec: model.StepRecord) -> None:
        """A finished step, with what it cost."""
        ...

    async def cite(self, citations: Sequence[model.Citation]) -> None:
        """The citations of passages the run has just put into the model's context, in
        that order; a passage cited again is kept once (``model.cited``)."""
        ...

    async def recorded(self) -> None:
        """Wait until the run's task is recorded (a run may start while it is): before
        the loop writes anything of its own (who served a call)."""
        ...


@dataclasses.dataclass
class _Quiet:
    """The sink of an agent called as a tool: keeps nothing but the cost, and hands its
    citations to its caller's sink."""

    caller: Sink
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0

    async def token(self, text: str) -> None:
        return None

    async def partial(self, text: str, step: int) -> None:
        return None

    async def step(self, rec: model.StepRecord) -> None:
        self.prompt_tokens += rec.prompt_tokens
        self.completion_tokens += rec.completion_tokens
        self.cost_usd += rec.cost_usd

    async def cite(self, citations: Sequence[model.Citation]) -> None:
        await self.caller.cite(citations)

    async def recorded(self) -> None:
        await self.caller.recorded()


@dataclasses.dataclass(frozen=True)
class Request:
    """What one run of the loop needs from its task."""

    tenant: str
    input: str
    max_tokens: int | None
    temperature: float | None
    seed: int | None
    route: privacy.Route
    timeout_s: float
    task_id: str = ""
    attempt: int = 0
    # The task's spend and budget, shared with the agents it calls (None: no budget).
    spend: budget.Spend | None = None
    # The task's own SLA (None: its Agent's p95 target applies) and when its run began
    # (time.monotonic), from which its deadline is ``started + timeout_s``.
    sla_ms: int | None = None
    started: float = dataclasses.field(default_factory=time.monotonic)


@dataclasses.dataclass
class _Reply:
    """A model reply as it streams in, with the time spent waiting for the model alone
    (not for the sink's writes between chunks): the executor's share of a step."""

    text: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    model_s: float = 0.0
    pieces: int = 0  # chunks of text so far: about a token each

    async def take(
        self,
        chunks: AsyncIterator[model.Chunk],
        sink: Sink,
        *,
        enough: Callable[[_Reply], bool] = lambda _: False,
    ) -> bool:
        """Stream ``chunks`` into the sink, adding them up; a failing sink ends the call.
        True when ``enough`` stopped it before its end (the call is closed)."""
        async with contextlib.aclosing(chunks):  # type: ignore[type-var]
            while True:
                asked = time.perf_counter()
                try:
                    chunk = await anext(chunks)
                except StopAsyncIteration:
                    return False
                finally:
                    self.model_s += time.perf_counter() - asked
                if chunk.text:
                    self.text += chunk.text
                    self.pieces += 1
                    await sink.token(chunk.text)
                self.prompt_tokens += chunk.prompt_tokens
                self.completion_tokens += chunk.completion_tokens
                if not chunk.final and enough(self):
                    return True

    def estimate(self, prompt_guess: int) -> tuple[int, int]:
        """(prompt, completion) tokens so far: as reported, else (the usage comes last)
        the prompt guessed and a token a chunk."""
        return self.prompt_tokens or prompt_guess, max(self.completion_tokens, self.pieces)


class AgentLoop:
    """Runs agents: model calls on the executor or an external API, and their tools."""

    def __init__(
        self,
        *,
        local: ModelBackend,
        api: ModelBackend | None,
        knowledge: Knowledge,
        agents: registry.AgentRegistry,
        retrieval_top_k: int,
        mcp_timeout_s: float = MCP_TIMEOUT_S,
        planner: Planner | None = None,
    ) -> None:
        self._planner = planner
        self._local = local
        self._api = api
        self._knowledge = knowledge
        self._agents = agents
        self._top_k = retrieval_top_k
        self._mcp_timeout_s = mcp_timeout_s

    async def run(
        self, agent: model.AgentRecord, req: Request, sink: Sink, *, depth: int = 0
    ) -> str:
        """Run ``agent`` on ``req`` to its final answer.

        The route is narrowed to the agent's own privacy first, so a decision that
        would send a local-only agent's data out (a forged one, or a caller's route
        handed down to an agent it calls as a tool) runs it locally instead.
        """
        if req.spend is None:
            req = dataclasses.replace(req, spend=budget.Spend(tenant=req.tenant))
        route = privacy.allowed_route(agent.privacy, req.route)
        if route != req.route:
            log.warning(
                "route narrowed to the agent's privacy",
                extra={
                    "agent": agent.name,
                    "tenant": req.tenant,
                    "route": req.route,
                    "privacy": agent.privacy.value,
                    "runs": route,
                },
            )
            req = dataclasses.replace(req, route=route)
        system = agent.instructions or "You are a helpful assistant."
        context = await self._context(agent, req, sink)
        if context:
            system += "\n\nUse this context when it helps:\n" + context
        async with mcp_tools.Toolbox(
            mcp_tools.servers(agent.tools, headers=agent.headers),
            tenant=req.tenant,
            task_id=req.task_id,
            timeout_s=self._mcp_timeout_s,
        ) as toolbox:
            step = 0
            for url, why in toolbox.failures:
                step += 1  # a server left out is a failed step the task's record shows
                await sink.step(
                    model.StepRecord(
                        step=step,
                        kind="tool",
                        name=tools.MCP_PREFIX + url,
                        input={},
                        error=f"MCP server {url} {why}",
                    )
                )
            available = {**toolbox.tools, **self._tools(agent, req, sink, depth)}
            if available:
                system += "\n\n" + tools.prompt(available)
            messages: list[tuple[str, str]] = [("system", system), ("user", req.input)]
            for _ in range(agent.max_steps):
                step += 1
                reply = await self._model_step(agent, req, messages, sink, step)
                await sink.partial(reply, step)
                if not available:
                    return reply
                call = tools.parse_call(reply)
                if call is None:
                    return reply
                step += 1
                outcome = await self._tool_step(available, call, sink, step)
                said = (
                    f"Tool {call.tool} failed:\n{outcome.error}"
                    if outcome.error
                    else f"Tool {call.tool} returned:\n{outcome.text}"
                )
                messages += [("assistant", reply), ("user", said)]
        raise errors.FailedPrecondition(
            f"the agent made {agent.max_steps} model calls without a final answer; "
            "raise its step limit or simplify the task"
        )

    async def _context(self, agent: model.AgentRecord, req: Request, sink: Sink) -> str:
        if not agent.knowledge_bases or not self._top_k:
            return ""
        passages: list[model.Passage] = []
        for kb in agent.knowledge_bases:
            passages.extend(
                await self._knowledge.search(
                    tenant=req.tenant,
                    knowledge_base=kb,
                    query=req.input,
                    top_k=self._top_k,
                    timeout=10,
                )
            )
        return await _used(passages[: self._top_k], sink)

    # -- model calls ----------------------------------------------------------------
    async def _plan(
        self,
        agent: model.AgentRecord,
        req: Request,
        *,
        tokens: tuple[int, int],
        spend: budget.Spend,
    ) -> Plan:
        """The plan of a model call: the planner's (live load, SLA), else hybrid is
        local first, then the API."""
        if req.route is privacy.Route.API and self._api is None:
            raise _no_provider()
        if self._planner is not None:
            sla = req.sla_ms if req.sla_ms is not None else agent.p95_target_ms
            left = None if spend.limit_usd is None else spend.limit_usd - spend.spent_usd
            return await self._planner.plan(
                agent,
                req.route,
                sla_ms=sla,
                deadline=req.started + req.timeout_s,
                tokens=tokens,
                budget_left_usd=left,
            )
        if req.route is privacy.Route.API:
            return Plan(("api",))
        return Plan(("local", "api") if req.route is privacy.Route.HYBRID else ("local",))

    def _backends(self, order: tuple[str, ...]) -> list[tuple[str, ModelBackend]]:
        """The backends of a plan, in order, named; an absent API is left out."""
        found = {"local": self._local, "api": self._api}
        named = [(name, b) for name in order if (b := found[name]) is not None]
        if not named:
            raise _no_provider()
        return named

    async def _model_step(
        self,
        agent: model.AgentRecord,
        req: Request,
        messages: list[tuple[str, str]],
        sink: Sink,
        step: int,
    ) -> str:
        started = time.perf_counter()
        got = _Reply()
        call = model.ModelCall(
            model=agent.model,
            messages=tuple(messages),
            max_tokens=req.max_tokens or agent.max_tokens,
            temperature=req.temperature,
            seed=req.seed,
            timeout_s=req.timeout_s,
            endpoints=agent.executor_endpoints,
            task_id=req.task_id,
            attempt=req.attempt,
            tenant=req.tenant,
        )
        # Spend: each chunk of a priced call is checked against the task's budget.
        spend = req.spend or budget.Spend(tenant=req.tenant)
        guess = budget.prompt_tokens(messages)

        def enough(so_far: _Reply) -> bool:
            return spend.reached(backend.cost_usd(*so_far.estimate(guess)))

        # The model call's span (GenAI conventions): the executor's or the API's client
        # span is its child.
        with telemetry.model_call(
            agent.model,
            attributes={
                telemetry.TASK_ID: req.task_id,
                "gen_ai.request.max_tokens": call.max_tokens,
            },
        ) as span:
            # -- route choice (issue #15; see placement.py) --
            plan = await self._plan(agent, req, tokens=(guess, call.max_tokens), spend=spend)
            backends = self._backends(plan.order)
            for i, (by, backend) in enumerate(backends):
                try:
                    stopped = await got.take(backend.generate(call), sink, enough=enough)
                    served_by = by
                    break
                except errors.AionError:
                    # The next backend only when this one failed before answering.
                    if i == len(backends) - 1 or got.text:
                        raise
            if self._planner is not None:
                await sink.recorded()
                await self._planner.served(
                    req.task_id, plan, by=served_by, model_name=backend.model_name(call)
                )
            # -- end of route choice --
            # A call stopped at the budget never got its usage: it is estimated.
            prompt, completion = (
                got.estimate(guess) if stopped else (got.prompt_tokens, got.completion_tokens)
            )
            span.set_attribute("gen_ai.response.model", backend.model_name(call))
            span.set_attribute("aion.route", served_by)
            telemetry.model_usage(span, input_tokens=prompt, output_tokens=completion)
        cost = backend.cost_usd(prompt, completion)
        spend.charge(cost)
        await sink.step(
            model.StepRecord(
                step=step,
                kind="model",
                name=backend.model_name(call),
                input={"messages": len(messages)},
                output=got.text,
                prompt_tokens=prompt,
                completion_tokens=completion,
                cost_usd=cost,
                latency_ms=int((time.perf_counter() - started) * 1000),
                model_ms=int(got.model_s * 1000),
            )
        )
        if stopped:
            raise spend.exhausted(step, completion)
        return got.text

    # -- tools ------------------------------------------------------------------------
    def _tools(
        self, agent: model.AgentRecord, req: Request, sink: Sink, depth: int
    ) -> dict[str, tools.Tool]:
        found: dict[str, tools.Tool] = {}
        for name in agent.tools:
            if name == tools.KNOWLEDGE_SEARCH:
                found[name] = tools.Tool(
                    name=name,
                    arguments=tools.SearchArgs,
                    description="Searches the agent's knowledge bases for relevant passages.",
                    call=functools.partial(self._search, agent, req, sink),
                )
            elif name.startswith(a2a_tools.PREFIX):
                url = name.removeprefix(a2a_tools.PREFIX)
                remote = a2a_tools.tool(
                    url, timeout_s=self._mcp_timeout_s, headers=agent.headers(url)
                )
                found[remote.name] = remote
            elif name.startswith(tools.AGENT_PREFIX) and depth < MAX_DEPTH:
                other = name.removeprefix(tools.AGENT_PREFIX)
                tool_name = "agent_" + other.replace("-", "_")
                found[tool_name] = tools.Tool(
                    name=tool_name,
                    arguments=tools.AgentArgs,
                    description=f"Asks the agent '{other}' and returns its answer.",
                    call=functools.partial(self._ask, other, req, sink, depth=depth),
                )
        return found

    async def _tool_step(
        self, available: dict[str, tools.Tool], call: tools.Call, sink: Sink, step: int
    ) -> tools.Outcome:
        started = time.perf_counter()
        tool = available.get(call.tool)
        try:
            if tool is None:
                raise errors.InvalidArgument(
                    f"the model called tool '{call.tool}', which this agent does not have; "
                    f"it has: {', '.join(sorted(available))}",
                    field="reply.tool",
                )
            outcome = await tool.call(tools.arguments(tool, call.arguments))
        except errors.AionError as exc:
            await sink.step(
                model.StepRecord(
                    step=step,
                    kind="tool",
                    name=call.tool,
                    input=call.arguments,
                    error=exc.message,
                    latency_ms=int((time.perf_counter() - started) * 1000),
                )
            )
            raise
        await sink.step(
            model.StepRecord(
                step=step,
                kind="tool",
                name=call.tool,
                input=call.arguments,
                output=outcome.text,
                error=outcome.error or None,
                prompt_tokens=outcome.prompt_tokens,
                completion_tokens=outcome.completion_tokens,
                cost_usd=outcome.cost_usd,
                latency_ms=int((time.perf_counter() - started) * 1000),
            )
        )
        return outcome

    async def _search(
        self, agent: model.AgentRecord, req: Request, sink: Sink, args: Any
    ) -> tools.Outcome:
        kbs = [args.knowledge_base] if args.knowledge_base else list(agent.knowledge_bases)
        unknown = [kb for kb in kbs if kb not in agent.knowledge_bases]
        if unknown or not kbs:
            raise errors.InvalidArgument(
                f"knowledge_search: the agent may search {list(agent.knowledge_bases)}, "
                f"not {unknown or 'nothing'}",
                field="tools.knowledge_search.arguments",
            )
        passages: list[model.Passage] = []
        for kb in kbs:
            passages.extend(
                await self._knowledge.search(
                    tenant=req.tenant,
                    knowledge_base=kb,
                    query=args.query,
                    top_k=args.top_k,
                    timeout=10,
                )
            )
        return tools.Outcome(await _used(passages[: args.top_k], sink) or "(no passages found)")

    async def _ask(
        self, name: str, req: Request, sink: Sink, args: Any, *, depth: int
    ) -> tools.Outcome:
        other = await self._agents.get(req.tenant, name)
        quiet = _Quiet(caller=sink)
        child = dataclasses.replace(req, input=args.input, max_tokens=None)
        answer = await self.run(other, child, quiet, depth=depth + 1)
        return tools.Outcome(
            answer,
            prompt_tokens=quiet.prompt_tokens,
            completion_tokens=quiet.completion_tokens,
            cost_usd=quiet.cost_usd,
        )


async def _used(passages: Sequence[model.Passage], sink: Sink) -> str:
    """The text ``passages`` put into the model's context; their citations go to the sink."""
    if passages:
        await sink.cite([p.citation for p in passages])
    return "\n\n".join(p.text for p in passages)
