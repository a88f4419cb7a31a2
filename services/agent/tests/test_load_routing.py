"""Executor choice on live load, spill to the provider, backpressure and breakers, for real.

* Executor pods and their load reports: ``load_testing`` (real gRPC servers that
  count their streams; their load published to Kafka as the executor publishes it).
* The provider: a real executor's OpenAI-compatible HTTP endpoint (SmolLM2 on the
  CPU), reached through a TCP ``Relay`` the test can switch off to make it fail.
* The agent service: its real composition (conftest), on the real Postgres and Kafka.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeAlias

import prometheus_client
import pydantic
import pytest

from aion.agent import load_testing
from aion.agent import testing as agent_testing
from aion.api.agent.v1 import agent_pb2, agent_pb2_grpc
from aion.api.router.v1 import router_pb2
from aion.api.v1 import agents_pb2, common_pb2, tasks_pb2
from aion.executor import inference, validation
from aion.executor import settings as executor_settings
from aion.executor import testing as executor_testing
from aion.executor.generation import llama_backend

os.environ.setdefault("HF_HUB_OFFLINE", "1")

Stub: TypeAlias = "agent_pb2_grpc.AgentServiceAsyncStub"
TENANT = "load"
PROVIDER_MODEL = "smollm2-135m-instruct"
THRESHOLD = 2  # queued calls per pod at which it is full


async def _until(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out waiting"
        await asyncio.sleep(0.05)


@pytest.fixture(scope="module")
async def real_provider() -> AsyncIterator[executor_testing.Executor]:
    """A real executor's OpenAI-compatible HTTP API (SmolLM2), standing in for a cloud API."""
    model = llama_backend.LlamaBackend(
        executor_settings.bundled_model_path("generate"),
        n_ctx=512,
        n_threads=1,
        max_streams=2,
        n_batch=256,
    )
    model.load()
    limits = validation.Limits(default_max_tokens=4, max_tokens_limit=16, max_texts=4)
    service = inference.GenerationService(
        model, model_name=PROVIDER_MODEL, limits=limits, max_queue=8
    )
    async with executor_testing.serve(service) as running:
        yield running


class Relay:
    """A TCP relay to ``target``; switched off, it drops every connection at once."""

    def __init__(self, host: str, port: int) -> None:
        self._target = (host, port)
        self.on = True
        self.url = ""
        self._server: asyncio.Server | None = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.on:
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_connection(*self._target)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    async def __aenter__(self) -> Relay:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}/v1"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()


def _host_port(url: str) -> tuple[str, int]:
    host, _, port = url.removeprefix("http://").split("/")[0].rpartition(":")
    return host, int(port)


@contextlib.asynccontextmanager
async def _service(new_service: Callable[..., Any], **overrides: Any) -> AsyncIterator[Stub]:
    settings = {
        "spill_queue_threshold": THRESHOLD,
        "load_stale_s": 2.0,
        "breaker_failures": 3,
        "breaker_open_s": 1.0,
        "max_running_per_tenant": 16,
    }
    async with (
        new_service(**{**settings, **overrides}) as svc,
        agent_testing.channel(svc.address) as chan,
    ):
        yield agent_pb2_grpc.AgentServiceStub(chan)


async def _register(
    stub: Stub,
    name: str,
    pods: list[load_testing.Pod],
    privacy: common_pb2.Privacy.ValueType,
    **spec: Any,
) -> None:
    await stub.RegisterAgent(
        agent_pb2.RegisterAgentRequest(
            tenant=TENANT,
            privacy=privacy,
            agent=agents_pb2.Agent(name=name, model="m", **spec),
            executor_endpoints=["ipv4:" + ",".join(p.address for p in pods)],
        )
    )


async def _run(
    stub: Stub,
    agent: str,
    text: str,
    route: common_pb2.Route.ValueType,
    *,
    timeout: float = 30,
    sla_ms: int | None = None,
) -> common_pb2.TaskResult:
    decision = router_pb2.Decision(
        engine=common_pb2.Engine(route=route, chosen_by="policy", reason="the router's")
    )
    req = agent_pb2.RunRequest(
        tenant=TENANT,
        decision=decision,
        task=tasks_pb2.TaskSpec(
            agent=agent, input=text, options=tasks_pb2.TaskOptions(max_tokens=4, sla_ms=sla_ms)
        ),
    )
    got = [e async for e in stub.Run(req, timeout=timeout)]
    last = got[-1]
    return last.done.result if last.WhichOneof("event") == "done" else last.error.result


def _provided(topic: str, url: str, provider: executor_testing.Executor) -> dict[str, Any]:
    """Settings of a service reading ``topic``'s load reports, with ``provider`` (the real
    executor's HTTP API) at ``url`` (its own, or a relay's to it)."""
    return {
        "executor_load_topic": topic,
        "provider_base_url": url,
        "provider_api_key": pydantic.SecretStr(provider.http_token),
        "provider_model": PROVIDER_MODEL,
    }


def _sample(name: str, **labels: str) -> float:
    """A metric of the agent service (it runs in this process), 0 before its first count."""
    return prometheus_client.REGISTRY.get_sample_value(name, labels) or 0.0


def _topic() -> str:
    return f"load-{uuid.uuid4().hex[:8]}"


async def test_the_busier_executor_gets_fewer_tasks(
    new_service: Callable[..., Any], kafka: Any
) -> None:
    topic = _topic()
    async with (
        load_testing.pods(2, kafka.bootstrap, topic) as pods,
        _service(new_service, executor_load_topic=topic) as stub,
    ):
        await _register(stub, "pair", pods, common_pb2.PRIVACY_LOCAL_ONLY)
        busy, idle = pods
        async with load_testing.hold(busy, 2):
            await _until(lambda: busy.active == 2)
            await asyncio.sleep(1.0)  # a few reports of it
            results = [
                await _run(stub, "pair", f"task {i}", common_pb2.ROUTE_LOCAL) for i in range(8)
            ]
        assert [r.status for r in results] == [common_pb2.TASK_STATUS_OK] * 8
        assert busy.tasks < idle.tasks, (busy.tasks, idle.tasks)
        assert busy.tasks <= 1, (busy.tasks, idle.tasks)
        # Without load, both get tasks again.
        await asyncio.sleep(1.0)
        before = busy.tasks, idle.tasks
        for i in range(6):
            await _run(stub, "pair", f"again {i}", common_pb2.ROUTE_LOCAL)
        assert busy.tasks - before[0] >= 2
        assert idle.tasks - before[1] >= 2


async def test_a_saturated_pool_spills_hybrid_tasks_while_local_only_ones_wait(
    new_service: Callable[..., Any], kafka: Any, real_provider: executor_testing.Executor
) -> None:
    topic = _topic()
    async with (
        load_testing.pods(2, kafka.bootstrap, topic) as pods,
        _service(
            new_service, **_provided(topic, f"{real_provider.http_url}/v1", real_provider)
        ) as stub,
    ):
        await _register(stub, "mixed", pods, common_pb2.PRIVACY_HYBRID)
        await _register(stub, "private", pods, common_pb2.PRIVACY_LOCAL_ONLY)
        # Not saturated: hybrid runs locally, as the router said.
        local = await _run(stub, "mixed", "hello there", common_pb2.ROUTE_HYBRID)
        assert (local.status, local.engine.model, local.engine.chosen_by) == (
            common_pb2.TASK_STATUS_OK,
            "m",
            "policy",
        )
        async with (
            load_testing.hold(pods[0], 1 + THRESHOLD),
            load_testing.hold(pods[1], 1 + THRESHOLD),
        ):
            await _until(lambda: all(p.active == 1 + THRESHOLD for p in pods))
            await asyncio.sleep(1.0)
            served = [p.tasks for p in pods]
            spills = _sample("aion_agent_spills_total", chosen_by="load")
            spilled = await _run(stub, "mixed", "say hi", common_pb2.ROUTE_HYBRID)
            assert spilled.status == common_pb2.TASK_STATUS_OK, spilled.error
            assert spilled.engine.chosen_by == "load"
            assert spilled.engine.model == PROVIDER_MODEL
            assert f"queue threshold {THRESHOLD}" in spilled.engine.reason
            assert all(f"{p.address} queue {THRESHOLD}" in spilled.engine.reason for p in pods)
            assert spilled.engine.route == common_pb2.ROUTE_HYBRID
            assert [p.tasks for p in pods] == served  # no pod got it
            assert _sample("aion_agent_spills_total", chosen_by="load") == spills + 1

            # Local-only, where room is further away than its deadline: refused at once.
            for p in pods:
                p.p95_ms = 60_000.0
            await asyncio.sleep(0.6)
            refused = await _run(stub, "private", "secret stuff", common_pb2.ROUTE_LOCAL, timeout=5)
            assert refused.status == common_pb2.TASK_STATUS_ERROR
            assert refused.error.code == "RESOURCE_EXHAUSTED", refused.error
            assert refused.error.retriable
            assert "saturated" in refused.error.message
            assert [p.tasks for p in pods] == served

            # Local-only, with room within its deadline: it waits for it.
            for p in pods:
                p.p95_ms = 100.0
            await asyncio.sleep(0.6)
            waiting = asyncio.create_task(
                _run(stub, "private", "secret stuff", common_pb2.ROUTE_LOCAL, timeout=30)
            )
            await asyncio.sleep(1.0)
            assert not waiting.done()
            assert [p.tasks for p in pods] == served
        waited = await waiting
        assert waited.status == common_pb2.TASK_STATUS_OK, waited.error
        assert (waited.engine.model, waited.engine.chosen_by) == ("m", "policy")


async def test_a_failing_provider_opens_its_breaker_and_closes_after_recovery(
    new_service: Callable[..., Any], kafka: Any, real_provider: executor_testing.Executor
) -> None:
    topic = _topic()
    async with (
        Relay(*_host_port(real_provider.http_url)) as relay,
        load_testing.pods(1, kafka.bootstrap, topic) as pods,
        _service(new_service, **_provided(topic, relay.url, real_provider)) as stub,
    ):
        await _register(stub, "cloud", pods, common_pb2.PRIVACY_ALLOW_API)
        ok = await _run(stub, "cloud", "say hi", common_pb2.ROUTE_API)
        assert (ok.status, ok.engine.model) == (common_pb2.TASK_STATUS_OK, PROVIDER_MODEL)

        opens = _sample("aion_agent_breaker_opens_total", target="api")
        relay.on = False
        failing_since = time.monotonic()
        failures = [await _run(stub, "cloud", "say hi", common_pb2.ROUTE_API) for _ in range(3)]
        assert [f.error.code for f in failures] == ["UNAVAILABLE"] * 3
        assert all("left alone" not in f.error.message for f in failures)
        refused = await _run(stub, "cloud", "say hi", common_pb2.ROUTE_API)
        opened_after = time.monotonic() - failing_since
        assert refused.error.code == "UNAVAILABLE"
        assert "left alone" in refused.error.message, refused.error.message
        assert opened_after < 5.0
        assert _sample("aion_agent_breaker_opens_total", target="api") == opens + 1

        relay.on = True
        await asyncio.sleep(1.1)  # breaker_open_s: the next call is the probe
        probe = await _run(stub, "cloud", "say hi", common_pb2.ROUTE_API)
        assert probe.status == common_pb2.TASK_STATUS_OK, probe.error
        after = await _run(stub, "cloud", "say hi", common_pb2.ROUTE_API)
        assert after.status == common_pb2.TASK_STATUS_OK, after.error


async def test_a_hybrid_task_goes_where_its_sla_can_be_met(
    new_service: Callable[..., Any], kafka: Any, real_provider: executor_testing.Executor
) -> None:
    topic = _topic()
    async with (
        load_testing.pods(2, kafka.bootstrap, topic) as pods,
        _service(
            new_service, **_provided(topic, f"{real_provider.http_url}/v1", real_provider)
        ) as stub,
    ):
        await _register(stub, "quick", pods, common_pb2.PRIVACY_HYBRID, p95_target_ms=5000)
        await _register(stub, "cloud", pods, common_pb2.PRIVACY_ALLOW_API)
        for p in pods:
            p.p95_ms = 30_000.0  # the pool is slow, by its reports
        await asyncio.sleep(0.6)
        # The provider has no record yet: nothing says it would do better.
        first = await _run(stub, "quick", "say hi", common_pb2.ROUTE_HYBRID)
        assert (first.engine.chosen_by, first.engine.model) == ("policy", "m")
        for _ in range(2):  # the provider serves other tasks: its p95 is known
            served = await _run(stub, "cloud", "say hi", common_pb2.ROUTE_API)
            assert served.status == common_pb2.TASK_STATUS_OK, served.error
        moved = await _run(stub, "quick", "say hi", common_pb2.ROUTE_HYBRID)
        assert moved.status == common_pb2.TASK_STATUS_OK, moved.error
        assert (moved.engine.chosen_by, moved.engine.model) == ("sla", PROVIDER_MODEL)
        assert "recent p95 30000 ms cannot meet the SLA of 5000 ms" in moved.engine.reason
        # A task's own SLA wins over its Agent's: a looser one the pool meets stays local.
        relaxed = await _run(stub, "quick", "say hi", common_pb2.ROUTE_HYBRID, sla_ms=60_000)
        assert (relaxed.engine.chosen_by, relaxed.engine.model) == ("policy", "m")
        strict = await _run(stub, "quick", "say hi", common_pb2.ROUTE_HYBRID, sla_ms=20_000)
        assert "cannot meet the SLA of 20000 ms" in strict.engine.reason
        for p in pods:
            p.p95_ms = 100.0  # the pool meets it again
        await asyncio.sleep(0.6)
        back = await _run(stub, "quick", "say hi", common_pb2.ROUTE_HYBRID)
        assert (back.engine.chosen_by, back.engine.model) == ("policy", "m")


async def test_a_failing_replica_is_avoided_for_a_while_then_probed(
    new_service: Callable[..., Any], kafka: Any
) -> None:
    topic = _topic()
    async with (
        load_testing.pods(2, kafka.bootstrap, topic) as pods,
        _service(new_service, executor_load_topic=topic, breaker_open_s=4.0) as stub,
    ):
        await _register(stub, "shaky", pods, common_pb2.PRIVACY_LOCAL_ONLY)
        broken, healthy = pods
        broken.failing = True
        opens = _sample("aion_agent_breaker_opens_total", target="executor")
        results = [await _run(stub, "shaky", f"task {i}", common_pb2.ROUTE_LOCAL) for i in range(6)]
        # Every task ends OK on the healthy pod; the broken one is tried until its
        # breaker opens (3 failed calls in a row; gRPC retries each a few times)...
        assert [r.status for r in results] == [common_pb2.TASK_STATUS_OK] * 6
        assert healthy.tasks == 6
        assert _sample("aion_agent_breaker_opens_total", target="executor") == opens + 1
        # ... then left alone while it is open.
        refused = broken.refused
        for i in range(6):
            await _run(stub, "shaky", f"more {i}", common_pb2.ROUTE_LOCAL)
        assert (broken.refused, healthy.tasks) == (refused, 12)
        broken.failing = False
        await asyncio.sleep(4.1)  # breaker_open_s: the next call to it is a probe
        for i in range(6):
            await _run(stub, "shaky", f"again {i}", common_pb2.ROUTE_LOCAL)
        assert broken.tasks >= 2  # the probe succeeded: it is back in the rotation
