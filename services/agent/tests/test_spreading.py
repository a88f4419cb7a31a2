"""An Agent's tasks spread over all its executor pods, and skip a pod that is gone.

Two real executor gRPC servers (the scripted one of conftest) stand for two
pods behind one address. In a cluster that address is the headless Service's
DNS name; here it is gRPC's static list form, which the agent service resolves
the same way, or a name whose resolver answer the test changes.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeAlias

import pytest

from aion.agent import endpoints, peers
from aion.agent import testing as agent_testing
from aion.api.agent.v1 import agent_pb2, agent_pb2_grpc
from aion.api.executor.v1 import executor_pb2
from aion.api.v1 import agents_pb2, common_pb2, tasks_pb2
from aion.core import errors, server

Stub: TypeAlias = "agent_pb2_grpc.AgentServiceAsyncStub"
TENANT = "spread"


class Pod:
    """An executor pod: a scripted executor and its server, which a test can stop."""

    def __init__(self, executor: Any, srv: server.GrpcServer) -> None:
        self.executor = executor
        self.server = srv

    @property
    def address(self) -> str:
        return self.server.address

    @property
    def port(self) -> int:
        return int(self.address.rsplit(":", 1)[1])

    @property
    def calls(self) -> int:
        return len(self.executor.requests)


@pytest.fixture
def pods(executor_pods: list[tuple[Any, server.GrpcServer]]) -> list[Pod]:
    """Two executor pods."""
    return [Pod(executor, srv) for executor, srv in executor_pods]


@pytest.fixture(scope="module")
async def spread_service(new_service: Callable[..., Any]) -> AsyncIterator[Any]:
    """An agent service of this module's own."""
    async with new_service(max_running_per_tenant=16) as svc:  # 12 sync runs at once
        yield svc


@pytest.fixture
async def stub(spread_service: Any) -> AsyncIterator[Stub]:
    async with agent_testing.channel(spread_service.address) as chan:
        yield agent_pb2_grpc.AgentServiceStub(chan)


async def _register(stub: Stub, name: str, target: str) -> None:
    await stub.RegisterAgent(
        agent_pb2.RegisterAgentRequest(
            tenant=TENANT, agent=agents_pb2.Agent(name=name, model="m"), executor_endpoints=[target]
        )
    )


async def _run(stub: Stub, agent: str, text: str) -> common_pb2.TaskResult:
    req = agent_pb2.RunRequest(tenant=TENANT, task=tasks_pb2.TaskSpec(agent=agent, input=text))
    events = [e async for e in stub.Run(req, timeout=30)]
    last = events[-1]
    return last.done.result if last.HasField("done") else last.error.result


async def test_tasks_of_one_agent_reach_every_pod_behind_its_address(
    stub: Stub, pods: list[Pod]
) -> None:
    await _register(stub, "two-pods", f"ipv4:127.0.0.1:{pods[0].port},127.0.0.1:{pods[1].port}")
    results = [await _run(stub, "two-pods", f"task {i}") for i in range(10)]
    assert [r.status for r in results] == [common_pb2.TASK_STATUS_OK] * 10
    assert [pod.calls for pod in pods] == [5, 5]  # in turn


async def test_concurrent_tasks_spread_too(stub: Stub, pods: list[Pod]) -> None:
    await _register(stub, "busy", f"ipv4:127.0.0.1:{pods[0].port},127.0.0.1:{pods[1].port}")
    results = await asyncio.gather(*(_run(stub, "busy", f"task {i}") for i in range(12)))
    assert all(r.status == common_pb2.TASK_STATUS_OK for r in results)
    # Least-loaded, not strictly in turn: a pod whose call ended sooner gets the next.
    assert sum(pod.calls for pod in pods) == 12
    assert all(4 <= pod.calls <= 8 for pod in pods), [pod.calls for pod in pods]


async def test_a_pod_that_is_gone_is_skipped_and_its_tasks_end_ok(
    stub: Stub, pods: list[Pod]
) -> None:
    await _register(stub, "one-gone", f"ipv4:127.0.0.1:{pods[0].port},127.0.0.1:{pods[1].port}")
    assert (await _run(stub, "one-gone", "warm up")).status == common_pb2.TASK_STATUS_OK
    await pods[1].server.__aexit__(None, None, None)
    results = [await _run(stub, "one-gone", f"task {i}") for i in range(6)]
    assert [r.status for r in results] == [common_pb2.TASK_STATUS_OK] * 6, results
    assert pods[0].calls >= 6


async def test_a_full_pod_hands_the_call_to_the_next(stub: Stub, pods: list[Pod]) -> None:
    await _register(stub, "full", f"ipv4:127.0.0.1:{pods[0].port},127.0.0.1:{pods[1].port}")
    # "fail" makes a scripted executor answer RESOURCE_EXHAUSTED (its queue is full):
    # each pod is asked once, then the task ends with that error.
    result = await _run(stub, "full", "fail")
    assert result.status == common_pb2.TASK_STATUS_ERROR
    assert result.error.code == "RESOURCE_EXHAUSTED"
    assert [pod.calls for pod in pods] == [1, 1]


async def test_a_host_name_resolves_like_a_headless_service(stub: Stub, pods: list[Pod]) -> None:
    await _register(stub, "by-name", f"localhost:{pods[0].port}")
    assert (await _run(stub, "by-name", "hello")).status == common_pb2.TASK_STATUS_OK
    assert pods[0].calls == 1


async def test_pods_that_join_get_calls_after_the_next_resolution(pods: list[Pod]) -> None:
    answers: dict[str, tuple[str, ...]] = {"exec.test": (pods[0].address,)}

    async def resolve(target: str) -> tuple[str, ...]:
        return answers[target.rsplit(":", 1)[0]]

    request = executor_pb2.GenerateRequest(
        model="m", messages=[executor_pb2.ChatMessage(role="user", content="hi")]
    )
    async with peers.Peers(
        tls=agent_testing.CA.tls("agent"), knowledge_target=None, resolver=resolve, refresh_s=0.2
    ) as clients:

        async def call() -> None:
            async for _ in clients.generate(("exec.test:50055",), request, timeout=10):
                pass

        for _ in range(4):
            await call()
        assert [pod.calls for pod in pods] == [4, 0]
        answers["exec.test"] = (pods[0].address, pods[1].address)
        deadline = asyncio.get_running_loop().time() + 10
        while pods[1].calls == 0 and asyncio.get_running_loop().time() < deadline:
            await call()
        assert pods[1].calls > 0
        # A pod that leaves the Service gets no more calls.
        answers["exec.test"] = (pods[1].address,)
        clients.endpoints.forget(("exec.test:50055",))
        before = pods[0].calls
        for _ in range(4):
            await call()
        assert pods[0].calls == before


async def test_resolve_forms() -> None:
    assert await endpoints.resolve("ipv4:10.0.0.1:50055,10.0.0.2:50055") == (
        "10.0.0.1:50055",
        "10.0.0.2:50055",
    )
    assert await endpoints.resolve("ipv6:[fd00::1]:50055") == ("[fd00::1]:50055",)
    assert await endpoints.resolve("dns:///localhost:7") == ("127.0.0.1:7",)
    assert await endpoints.resolve("127.0.0.1:8") == ("127.0.0.1:8",)
    with pytest.raises(errors.Unavailable, match=r"aion-executor-x\.nowhere\.invalid:1"):
        await endpoints.resolve("aion-executor-x.nowhere.invalid:1")
    with pytest.raises(errors.FailedPrecondition, match="not host:port"):
        await endpoints.resolve("no-port")


async def test_round_robin_keeps_a_turn_per_agent() -> None:
    chooser = endpoints.RoundRobin()
    picks: dict[str, list[str]] = collections.defaultdict(list)
    for _ in range(4):  # two agents alternating must not each see one pod only
        for agent in ("a", "b"):
            picks[agent].append(chooser.choose((agent,), ["p1", "p2"]))
    assert picks == {"a": ["p1", "p2", "p1", "p2"], "b": ["p1", "p2", "p1", "p2"]}


async def test_a_stale_answer_is_kept_while_the_resolver_fails(pods: list[Pod]) -> None:
    now = [0.0]
    failing = [False]

    async def resolve(target: str) -> tuple[str, ...]:
        if failing[0]:
            raise errors.Unavailable("dns is down")
        return ("10.0.0.1:1", "10.0.0.2:1")

    gone: list[str] = []
    found = endpoints.Endpoints(
        resolver=resolve, refresh_s=5, on_gone=gone.append, clock=lambda: now[0]
    )
    assert await found.addresses(("svc:1",)) == ("10.0.0.1:1", "10.0.0.2:1")
    failing[0] = True
    now[0] = 10.0
    assert await found.addresses(("svc:1",)) == ("10.0.0.1:1", "10.0.0.2:1")
    assert await found.choose(("svc:1",), avoid={"10.0.0.1:1", "10.0.0.2:1"}) is None
    assert gone == []
