"""The breaker, the load board, the least-loaded chooser and the route choice, as pure code.

The integration tests (``test_load_routing``) show the same against real executors,
Kafka and a real provider; these pin the rules down on a fake clock.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from aion.agent import agent_loop, backends, breaker, load, model, peers, placement, provider
from aion.agent import testing as agent_testing
from aion.core import errors, privacy


def _state(b: breaker.Breaker) -> breaker.State:
    return b.state  # read anew each time (mypy would narrow a property read twice)


def test_a_breaker_opens_after_repeated_failures_probes_once_and_closes_on_success() -> None:
    clock = agent_testing.Clock()
    b = breaker.Breaker(breaker.Rule(failures=3, open_s=5.0, clock=clock))
    for _ in range(2):
        assert b.attempt()
        b.failure()
    assert _state(b) is breaker.State.CLOSED
    b.attempt()
    b.failure()
    assert _state(b) is breaker.State.OPEN
    assert not b.attempt()
    assert b.retry_after_s() == 5.0
    clock.now += 5.0
    assert _state(b) is breaker.State.HALF_OPEN
    assert b.attempt()  # the probe
    assert not b.attempt()  # only one
    b.failure()  # a failed probe opens it again at once
    assert _state(b) is breaker.State.OPEN
    clock.now += 5.0
    assert b.attempt()
    b.success()
    assert _state(b) is breaker.State.CLOSED
    assert b.attempt()


def test_a_probe_that_ends_neither_way_frees_the_probe() -> None:
    clock = agent_testing.Clock()
    b = breaker.Breaker(breaker.Rule(failures=1, open_s=1.0, clock=clock))
    b.attempt()
    b.failure()
    clock.now += 1.0
    assert b.attempt()
    b.release()
    assert b.attempt()


def test_breakers_name_the_targets_they_block() -> None:
    clock = agent_testing.Clock()
    bs = breaker.Breakers(breaker.Rule(failures=1, open_s=1.0, clock=clock))
    bs["a:1"].failure()
    bs["b:1"].success()
    assert bs.blocked() == {"a:1"}
    clock.now += 1.0
    assert bs.blocked() == set()  # half-open: a probe may go


def test_reports_match_addresses_by_ip_or_host_port_and_age_out() -> None:
    clock = agent_testing.Clock()
    board = load.LoadBoard(stale_s=10.0, clock=clock)
    board.record(load.Report(executor="10.0.0.7", in_flight=2, queue_depth=3))
    board.record(load.Report(executor="127.0.0.1:5001", in_flight=1))
    assert board.load("10.0.0.7:50055").total == 5  # the pod-IP id the operator sets
    assert board.load("127.0.0.1:5001").total == 1  # a whole host:port id
    assert board.load("127.0.0.1:5002").report is None  # not the same executor
    clock.now += 10.1
    assert board.load("10.0.0.7:50055").report is None  # stale


def test_an_address_load_counts_own_calls_once() -> None:
    board = load.LoadBoard(stale_s=10.0, clock=agent_testing.Clock())
    with board.calling("10.0.0.7:1"), board.calling("10.0.0.7:1"):
        # The report was taken with our two calls running: two more are others'.
        board.record(load.Report(executor="10.0.0.7", in_flight=4))
        assert board.load("10.0.0.7:1").total == 4
        with board.calling("10.0.0.7:1"):
            assert board.load("10.0.0.7:1").total == 5
    assert board.load("10.0.0.7:1").total == 2


def test_the_chooser_takes_the_least_loaded_ready_address_whose_breaker_allows() -> None:
    clock = agent_testing.Clock()
    board = load.LoadBoard(stale_s=10.0, clock=clock)
    bs = breaker.Breakers(breaker.Rule(failures=1, open_s=5.0, clock=clock))
    chooser = load.LeastLoaded(board, bs)
    targets = ("t",)
    addresses = ["a:1", "b:1", "c:1"]
    board.record(load.Report(executor="a:1", in_flight=4))
    board.record(load.Report(executor="b:1", in_flight=1))
    board.record(load.Report(executor="c:1", in_flight=0, model_ready=False))
    assert {chooser.choose(targets, addresses) for _ in range(4)} == {"b:1"}
    bs["b:1"].failure()
    assert chooser.choose(targets, addresses) == "a:1"
    # Equal loads: in turn.
    clock.now += 11  # every report stale
    bs["b:1"].success()
    assert sorted(chooser.choose(targets, addresses) for _ in range(3)) == addresses


def _loads(*queues: int, p95_ms: float = 200.0, in_flight: int = 2) -> tuple[load.Load, ...]:
    return tuple(
        load.Load(
            address=f"10.0.0.{i}:1",
            own=0,
            report=load.Report(
                executor=f"10.0.0.{i}",
                queue_depth=q,
                in_flight=in_flight,
                p95_latency_ms=p95_ms,
            ),
            others=q + in_flight,
        )
        for i, q in enumerate(queues)
    )


def test_a_pool_is_saturated_when_every_replica_is_at_its_threshold() -> None:
    assert placement.Pool(_loads(4, 5), threshold=4).saturated
    assert not placement.Pool(_loads(4, 3), threshold=4).saturated
    assert not placement.Pool((), threshold=4).saturated
    pool = placement.Pool(_loads(4, 6, p95_ms=1000.0, in_flight=2), threshold=4)
    assert pool.wait_s() == pytest.approx(0.5)  # 1 over the threshold at 2 per second
    assert "10.0.0.0:1 queue 4, 10.0.0.1:1 queue 6" in pool.describe()


@pytest.fixture
async def clients() -> AsyncIterator[peers.Peers]:
    async def resolver(target: str) -> tuple[str, ...]:
        return ("10.0.0.1:1", "10.0.0.2:1")

    async with peers.Peers(
        tls=agent_testing.CA.tls("agent"), knowledge_target=None, resolver=resolver
    ) as p:
        yield p


@pytest.fixture
async def api() -> AsyncIterator[backends.ApiBackend]:
    async with provider.Provider(
        base_url="http://127.0.0.1:9", api_key="", model="cloud", cost_per_1k_tokens=0.0
    ) as p:
        yield backends.ApiBackend(p)


AGENT = model.AgentRecord(tenant="t", name="a", model="m", executor_endpoints=("svc:1",))


async def _nothing(task_id: str, **kw: object) -> None:
    return None


def _placement(clients: peers.Peers, api: backends.ApiBackend | None) -> placement.LoadPlanner:
    return placement.LoadPlanner(clients=clients, api=api, queue_threshold=4, record=_nothing)


async def test_the_sla_sends_a_hybrid_call_where_it_can_be_met(
    clients: peers.Peers, api: backends.ApiBackend
) -> None:
    for ip in ("10.0.0.1", "10.0.0.2"):
        clients.board.record(load.Report(executor=ip, p95_latency_ms=900.0))
    chooser = _placement(clients, api)
    far = 1e12
    # The provider has no record yet: the pool, as the router said.
    plan = await chooser.plan(AGENT, privacy.Route.HYBRID, sla_ms=500, deadline=far)
    assert plan == agent_loop.Plan(("local", "api"))
    for ms in (200.0, 300.0, 250.0):
        api.observed(ms)
    plan = await chooser.plan(AGENT, privacy.Route.HYBRID, sla_ms=500, deadline=far)
    assert (plan.order, plan.chosen_by) == (("api", "local"), "sla")
    assert "p95 900 ms cannot meet the SLA of 500 ms; the API's 295 ms can" in plan.reason
    # Neither meets it: the pool; no SLA: the pool; a local-only route: the pool.
    assert (await chooser.plan(AGENT, privacy.Route.HYBRID, sla_ms=100, deadline=far)).order[
        0
    ] == "local"
    assert (await chooser.plan(AGENT, privacy.Route.HYBRID, sla_ms=None, deadline=far)).order[
        0
    ] == "local"
    assert (await chooser.plan(AGENT, privacy.Route.LOCAL, sla_ms=500, deadline=far)).order == (
        "local",
    )


async def test_a_saturated_pool_spills_unless_the_provider_breaker_is_open(
    clients: peers.Peers, api: backends.ApiBackend
) -> None:
    for ip in ("10.0.0.1", "10.0.0.2"):
        clients.board.record(load.Report(executor=ip, queue_depth=5, p95_latency_ms=60_000.0))
    chooser = _placement(clients, api)
    plan = await chooser.plan(AGENT, privacy.Route.HYBRID, sla_ms=None, deadline=1e12)
    assert (plan.order, plan.chosen_by) == (("api", "local"), "load")
    for _ in range(3):
        api.breaker.failure()
    # The provider is left alone: the task waits like a local-only one, here past its
    # deadline, so it is refused with when to retry.
    with pytest.raises(errors.ResourceExhausted, match="saturated") as info:
        await chooser.plan(AGENT, privacy.Route.HYBRID, sla_ms=None, deadline=0.0)
    assert info.value.retry_after_s == 60.0


async def test_a_call_the_budget_cannot_cover_does_not_spill(clients: peers.Peers) -> None:
    for ip in ("10.0.0.1", "10.0.0.2"):
        clients.board.record(load.Report(executor=ip, queue_depth=5, p95_latency_ms=100.0))
    async with provider.Provider(
        base_url="http://127.0.0.1:9", api_key="", model="cloud", cost_per_1k_tokens=1.0
    ) as priced:
        chooser = _placement(clients, backends.ApiBackend(priced))
        plan = await chooser.plan(
            AGENT,
            privacy.Route.HYBRID,
            sla_ms=None,
            deadline=1e12,
            tokens=(100, 300),
            budget_left_usd=0.5,
        )
        assert plan.chosen_by == "load"  # $0.40 fits $0.50
        with pytest.raises(errors.ResourceExhausted, match="saturated"):
            await chooser.plan(
                AGENT,
                privacy.Route.HYBRID,
                sla_ms=None,
                deadline=0.0,
                tokens=(400, 300),
                budget_left_usd=0.5,
            )  # $0.70 does not: it waits like a local-only task (here past its deadline)


def test_a_breaker_says_when_it_opens_once_per_opening() -> None:
    clock = agent_testing.Clock()
    opened: list[float] = []
    b = breaker.Breaker(
        breaker.Rule(failures=2, open_s=1.0, clock=clock, on_open=lambda: opened.append(1))
    )
    b.failure()
    assert opened == []
    b.failure()
    b.failure()  # still open: not a new opening
    assert opened == [1]
    clock.now += 1.0
    b.attempt()
    b.failure()  # the probe failed: open again
    assert opened == [1, 1]
