"""Where each model call of a task goes: the agent's executor pool or the external API.

The router decides the route from privacy and cost (``local``, ``api``,
``hybrid``); this module applies live load and the SLA inside that route,
per model call:

* **local** runs on the pool. When every replica is over its queue threshold
  the call waits for room (backpressure), or, when the wait would outlast the
  task's deadline, fails RESOURCE_EXHAUSTED with a retry delay.
* **api** runs on the provider (its breaker may refuse it: UNAVAILABLE).
* **hybrid** runs on the pool, unless the pool is saturated (``chosen_by:
  load``) or its recent p95 cannot meet the SLA where the provider's can
  (``chosen_by: sla``): then it spills to the provider, if its breaker lets
  calls through. The pool failing before its first token still falls back to
  the provider, as before. A call whose price at the provider (estimated from
  its prompt and max tokens) exceeds what the task may still spend (its budget,
  else its Agent's, less its spend: ``budget``) does not spill.

The SLA is the task's ``sla_ms`` when it has one, else the Agent's
``p95TargetMs``. When the provider serves a call, ``Recorder`` rewrites the
task's engine so its result names the model that served it, and, when the
router meant the pool first, why (chosen_by, reason).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

from aion.agent import agent_loop, backends, load, metrics, model, peers
from aion.core import errors, privacy

_POLL_S = 0.05  # how often a call waiting for room looks again


class Recorder(Protocol):
    """Rewrites a task's engine once the provider served it."""

    def __call__(
        self, task_id: str, *, chosen_by: str | None, reason: str | None, model: str
    ) -> Awaitable[None]:
        """Record that ``model`` served ``task_id`` (chosen by ``chosen_by`` for ``reason``,
        when given; else the router's stand)."""
        ...


@dataclasses.dataclass(frozen=True)
class Pool:
    """The pool of one agent as it stands: each replica's load, and whether all are full."""

    loads: tuple[load.Load, ...]
    threshold: int

    @property
    def saturated(self) -> bool:
        """Every replica is over its queue threshold, or not serving."""
        return bool(self.loads) and all(
            not x.ready or x.queue_depth >= self.threshold for x in self.loads
        )

    @property
    def p95_ms(self) -> float | None:
        """The best recent p95 among replicas that report one."""
        known = [
            x.report.p95_latency_ms for x in self.loads if x.report and x.report.p95_latency_ms
        ]
        return min(known) if known else None

    def wait_s(self) -> float:
        """About how long until a replica has room: its excess queue at its p95 pace."""
        waits = [
            (x.queue_depth - self.threshold + 1)
            * max(0.1, (x.report.p95_latency_ms if x.report else 0) / 1000)
            / max(1, x.report.in_flight if x.report else 1)
            for x in self.loads
            if x.ready
        ]
        return min(waits) if waits else float("inf")

    def describe(self) -> str:
        """The numbers, for a result's reason."""
        queues = ", ".join(f"{x.address} queue {x.queue_depth}" for x in self.loads)
        return (
            f"all {len(self.loads)} replicas at or over queue threshold {self.threshold} ({queues})"
        )


class LoadPlanner:
    """The route choice of ``agent_loop.AgentLoop`` on live load (its ``Planner`` seam)."""

    def __init__(
        self,
        *,
        clients: peers.Peers,
        api: backends.ApiBackend | None,
        queue_threshold: int,
        record: Recorder,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._peers = clients
        self._api = api
        self._threshold = queue_threshold
        self._record = record
        self._clock = clock

    async def pool(self, agent: model.AgentRecord) -> Pool:
        """The agent's pool now."""
        addresses = await self._peers.endpoints.addresses(agent.executor_endpoints)
        board = self._peers.board
        return Pool(loads=tuple(board.load(a) for a in addresses), threshold=self._threshold)

    async def plan(
        self,
        agent: model.AgentRecord,
        route: privacy.Route,
        *,
        sla_ms: int | None,
        deadline: float,
        tokens: tuple[int, int] = (0, 0),
        budget_left_usd: float | None = None,
    ) -> agent_loop.Plan:
        """Where the next model call of a task on ``route`` goes (see the module); a
        call spills only when the API's price of ``tokens`` (its prompt and completion
        estimate) fits ``budget_left_usd``, what the task may still spend (None: no
        budget)."""
        if route is privacy.Route.API:
            return agent_loop.Plan(("api",))
        api_up = (
            route is privacy.Route.HYBRID
            and self._api is not None
            and self._api.breaker.allows()
            and self._affordable(tokens, budget_left_usd)
        )
        pool = await self.pool(agent)
        if api_up and pool.saturated:
            return self._spill("load", f"{pool.describe()}: spilled to the API")
        if api_up and sla_ms is not None:
            local, remote = pool.p95_ms, self._api.p95_ms() if self._api else None
            if local is not None and local > sla_ms and remote is not None and remote <= sla_ms:
                return self._spill(
                    "sla",
                    f"the pool's recent p95 {local:.0f} ms cannot meet the SLA of {sla_ms} ms; "
                    f"the API's {remote:.0f} ms can",
                )
        # The API as the pool's fallback, unless its breaker would refuse the call anyway
        # (the pool's own error then says what went wrong).
        fallback = (
            ("api",)
            if route is privacy.Route.HYBRID
            and self._api is not None
            and self._api.breaker.allows()
            else ()
        )
        if pool.saturated:
            await self._wait_for_room(agent, pool, deadline)
        return agent_loop.Plan(("local", *fallback))

    def _affordable(self, tokens: tuple[int, int], left_usd: float | None) -> bool:
        """Whether the API's price of the call fits what the task may still spend."""
        if left_usd is None or self._api is None:
            return True
        return self._api.cost_usd(*tokens) <= left_usd

    def _spill(self, chosen_by: str, reason: str) -> agent_loop.Plan:
        return agent_loop.Plan(("api", "local"), chosen_by=chosen_by, reason=reason)

    async def _wait_for_room(self, agent: model.AgentRecord, pool: Pool, deadline: float) -> None:
        """Wait until a replica has room; RESOURCE_EXHAUSTED when that would outlast
        ``deadline`` (the task's, on ``clock``)."""
        with metrics.WAITING_FOR_ROOM.track_inprogress():
            while pool.saturated:
                left = deadline - self._clock()
                wait = pool.wait_s()
                if wait > left:
                    metrics.SATURATED_REFUSALS.inc()
                    away = f"about {wait:.1f}s away" if wait < float("inf") else "not in sight"
                    raise errors.ResourceExhausted(
                        f"the agent '{agent.name}' is saturated ({pool.describe()}) and may "
                        f"not use the API now; room is {away}, past the task's deadline in "
                        f"{max(0.0, left):.1f}s: retry later or give the task more time",
                        retry_after_s=min(wait, 60.0),
                    )
                await asyncio.sleep(_POLL_S)
                pool = await self.pool(agent)

    async def served(
        self, task_id: str, plan: agent_loop.Plan, *, by: str, model_name: str
    ) -> None:
        """Record who served a call, when the API did: its model, and why when that was
        not the router's own choice (a spill, or the pool's failure)."""
        if by != "api" or not task_id:
            return
        if plan.order[0] == "api" and not plan.chosen_by:  # the router chose the API
            await self._record(task_id, chosen_by=None, reason=None, model=model_name)
            return
        chosen_by = plan.chosen_by or "fallback"
        metrics.SPILLS.labels(chosen_by=chosen_by).inc()
        reason = plan.reason or "the executor pool failed before its first token; the API served"
        await self._record(task_id, chosen_by=chosen_by, reason=reason, model=model_name)
