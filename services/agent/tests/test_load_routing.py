"""Executor choice on live load, spill to the provider, backpressure and breakers, for real.

* Executor pods and their load reports: ``load_testing`` (real gRPC servers that
  count their streams; their load published to Kafka as the executor publishes it).
* The provider: a real executor's OpenAI-compatible HTTP endpoint (SmolLM2 on the
  CPU), reached through a TCP ``Relay`` the test can switch off to make it fail.
* The agent service: its real composition (conftest), on the real Postgres and Kafka,
  its circuit breakers on a clock the test moves. The test waits, with a deadline, for
  its load board to hold the reports a step needs.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeAlias

import prometheus_client
import pydantic
import pytest

from aion.agent import load, load_testing
from aion.agent import testing as agent_testing
from aion.api.agent.v1 import agent_pb2, agent_pb2_grpc
from aion.api.events.v1 import events_pb2
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
BREAKER_OPEN_S = 1.0  # on the breakers' clock, which stands still until a test moves it


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


@dataclasses.dataclass
class Deployed:
    """Executor pods reporting their load, and an agent service reading their reports."""

    stub: Stub
    pods: list[load_testing.Pod]
    board: load.LoadBoard  # the service's own
    clock: agent_testing.Clock  # its circuit breakers' (the test moves it)
    service: Any  # conftest's Service

    async def announced(self, task_id: str, read_topic: Any) -> common_pb2.TaskResult:
        """The result the task's final state change carried on the task-events topic
        (``read_topic``: conftest's reader)."""

        def final(records: list[Any]) -> events_pb2.TaskStateChanged | None:
            for r in records:
                env = events_pb2.Envelope.FromString(r.value)
                data = events_pb2.TaskStateChanged()
                if env.subject == task_id and env.data.Unpack(data) and data.HasField("result"):
                    return data
            return None

        cfg = self.service.cfg
        records = await read_topic(
            cfg.kafka_bootstrap,
            cfg.topic_prefix + "task.events",
            until=lambda rs: final(rs) is not None,
        )
        got = final(records)
        assert got is not None, f"no final state change of {task_id} on the topic"
        return got.result

    async def reported(
        self, check: Callable[[load.Load], bool], pods: list[load_testing.Pod] | None = None
    ) -> None:
        """Until the service's board holds a report of each of ``pods`` (all by default)
        whose load passes ``check``."""

        def held() -> bool:
            loads = [self.board.load(p.address) for p in pods or self.pods]
            return all(x.report is not None and check(x) for x in loads)

        await _until(held)


def _p95_is(ms: float) -> Callable[[load.Load], bool]:
    return lambda x: x.report is not None and x.report.p95_latency_ms == ms


@contextlib.asynccontextmanager
async def _deployed(
    new_service: Callable[..., Any],
    kafka: Any,
    pods: int,
    *,
    provider: executor_testing.Executor | None = None,
    provider_url: str = "",
) -> AsyncIterator[Deployed]:
    """``pods`` executor pods, their load reports on a topic of their own, and an agent
    service reading them, with ``provider`` (the real executor's HTTP API) at
    ``provider_url`` (a relay's to it; by default its own) when given."""
    topic = f"load-{uuid.uuid4().hex[:8]}"
    settings: dict[str, Any] = {
        "executor_load_topic": topic,
        "spill_queue_threshold": THRESHOLD,
        "load_stale_s": 2.0,
        "breaker_failures": 3,
        "breaker_open_s": BREAKER_OPEN_S,
        "max_running_per_tenant": 16,
    }
    if provider is not None:
        settings |= {
            "provider_base_url": provider_url or f"{provider.http_url}/v1",
            "provider_api_key": pydantic.SecretStr(provider.http_token),
            "provider_model": PROVIDER_MODEL,
        }
    clock = agent_testing.Clock()
    async with (
        load_testing.pods(pods, kafka.bootstrap, topic) as running,
        new_service(breaker_clock=clock, **settings) as svc,
        agent_testing.channel(svc.address) as chan,
    ):
        assert svc.board is not None
        yield Deployed(agent_pb2_grpc.AgentServiceStub(chan), running, svc.board, clock, svc)


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


def _sample(name: str, **labels: str) -> float:
    """A metric of the agent service (it runs in this process), 0 before its first count."""
    return prometheus_client.REGISTRY.get_sample_value(name, labels) or 0.0


async def test_the_busier_executor_gets_fewer_tasks(
    new_service: Callable[..., Any], kafka: Any
) -> None:
    async with _deployed(new_service, kafka, 2) as d:
        await _register(d.stub, "pair", d.pods, common_pb2.PRIVACY_LOCAL_ONLY)
        busy, idle = d.pods
        async with load_testing.hold(busy, 2):
            await d.reported(lambda x: x.total == 2, [busy])  # one running, one queued
            results = [
                await _run(d.stub, "pair", f"task {i}", common_pb2.ROUTE_LOCAL) for i in range(8)
            ]
        assert [r.status for r in results] == [common_pb2.TASK_STATUS_OK] * 8
        assert busy.tasks < idle.tasks, (busy.tasks, idle.tasks)
        assert busy.tasks <= 1, (busy.tasks, idle.tasks)
        # Without load, both get tasks again.
        await d.reported(lambda x: x.total == 0, [busy])
        before = busy.tasks, idle.tasks
        for i in range(6):
            await _run(d.stub, "pair", f"again {i}", common_pb2.ROUTE_LOCAL)
        assert busy.tasks - before[0] >= 2
        assert idle.tasks - before[1] >= 2


async def test_a_saturated_pool_spills_hybrid_tasks_while_local_only_ones_wait(
    new_service: Callable[..., Any],
    kafka: Any,
    real_provider: executor_testing.Executor,
    topic_reader: Any,
) -> None:
    async with _deployed(new_service, kafka, 2, provider=real_provider) as d:
        stub, pods = d.stub, d.pods
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
            await d.reported(lambda x: x.queue_depth == THRESHOLD)
            served = [p.tasks for p in pods]
            spills = _sample("aion_agent_spills_total", chosen_by="load")
            spilled = await _run(stub, "mixed", "say hi", common_pb2.ROUTE_HYBRID)
            assert spilled.status == common_pb2.TASK_STATUS_OK, spilled.error
            assert spilled.engine.chosen_by == "load"
            assert spilled.engine.model == PROVIDER_MODEL
            assert f"queue threshold {THRESHOLD}" in spilled.engine.reason
            assert all(f"{p.address} queue {THRESHOLD}" in spilled.engine.reason for p in pods)
            assert spilled.engine.route == common_pb2.ROUTE_HYBRID
            # Its end, announced on the task-events topic, names who served it too.
            assert (await d.announced(spilled.task_id, topic_reader)).engine == spilled.engine
            assert [p.tasks for p in pods] == served  # no pod got it
            assert _sample("aion_agent_spills_total", chosen_by="load") == spills + 1

            # Local-only, where room is further away than its deadline: refused at once.
            for p in pods:
                p.p95_ms = 60_000.0
            await d.reported(_p95_is(60_000.0))
            refused = await _run(stub, "private", "secret stuff", common_pb2.ROUTE_LOCAL, timeout=5)
            assert refused.status == common_pb2.TASK_STATUS_ERROR
            assert refused.error.code == "RESOURCE_EXHAUSTED", refused.error
            assert refused.error.retriable
            assert "saturated" in refused.error.message
            assert [p.tasks for p in pods] == served

            # Local-only, with room within its deadline: it waits for it.
            for p in pods:
                p.p95_ms = 100.0
            await d.reported(_p95_is(100.0))
            waiters = _sample("aion_agent_calls_waiting_for_room")
            waiting = asyncio.create_task(
                _run(stub, "private", "secret stuff", common_pb2.ROUTE_LOCAL, timeout=30)
            )
            await _until(lambda: _sample("aion_agent_calls_waiting_for_room") == waiters + 1)
            assert not waiting.done()
            assert [p.tasks for p in pods] == served
        waited = await waiting
        assert waited.status == common_pb2.TASK_STATUS_OK, waited.error
        assert (waited.engine.model, waited.engine.chosen_by) == ("m", "policy")


async def test_a_failing_provider_opens_its_breaker_and_closes_after_recovery(
    new_service: Callable[..., Any], kafka: Any, real_provider: executor_testing.Executor
) -> None:
    async with (
        Relay(*_host_port(real_provider.http_url)) as relay,
        _deployed(new_service, kafka, 1, provider=real_provider, provider_url=relay.url) as d,
    ):
        stub = d.stub
        await _register(stub, "cloud", d.pods, common_pb2.PRIVACY_ALLOW_API)
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
        d.clock.now += BREAKER_OPEN_S  # its open period ends: the next call is the probe
        probe = await _run(stub, "cloud", "say hi", common_pb2.ROUTE_API)
        assert probe.status == common_pb2.TASK_STATUS_OK, probe.error
        after = await _run(stub, "cloud", "say hi", common_pb2.ROUTE_API)
        assert after.status == common_pb2.TASK_STATUS_OK, after.error


async def test_a_hybrid_task_goes_where_its_sla_can_be_met(
    new_service: Callable[..., Any], kafka: Any, real_provider: executor_testing.Executor
) -> None:
    async with _deployed(new_service, kafka, 2, provider=real_provider) as d:
        stub = d.stub
        await _register(stub, "quick", d.pods, common_pb2.PRIVACY_HYBRID, p95_target_ms=5000)
        await _register(stub, "cloud", d.pods, common_pb2.PRIVACY_ALLOW_API)
        for p in d.pods:
            p.p95_ms = 30_000.0  # the pool is slow, by its reports
        await d.reported(_p95_is(30_000.0))
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
        for p in d.pods:
            p.p95_ms = 100.0  # the pool meets it again
        await d.reported(_p95_is(100.0))
        back = await _run(stub, "quick", "say hi", common_pb2.ROUTE_HYBRID)
        assert (back.engine.chosen_by, back.engine.model) == ("policy", "m")


async def test_a_failing_replica_is_avoided_for_a_while_then_probed(
    new_service: Callable[..., Any], kafka: Any
) -> None:
    async with _deployed(new_service, kafka, 2) as d:
        await _register(d.stub, "shaky", d.pods, common_pb2.PRIVACY_LOCAL_ONLY)
        broken, healthy = d.pods
        broken.failing = True
        opens = _sample("aion_agent_breaker_opens_total", target="executor")
        results = [
            await _run(d.stub, "shaky", f"task {i}", common_pb2.ROUTE_LOCAL) for i in range(6)
        ]
        # Every task ends OK on the healthy pod; the broken one is tried until its
        # breaker opens (3 failed calls in a row; gRPC retries each a few times)...
        assert [r.status for r in results] == [common_pb2.TASK_STATUS_OK] * 6
        assert healthy.tasks == 6
        assert _sample("aion_agent_breaker_opens_total", target="executor") == opens + 1
        # ... then left alone while it is open (the breakers' clock stands still).
        refused = broken.refused
        for i in range(6):
            await _run(d.stub, "shaky", f"more {i}", common_pb2.ROUTE_LOCAL)
        assert (broken.refused, healthy.tasks) == (refused, 12)
        broken.failing = False
        d.clock.now += BREAKER_OPEN_S  # its open period ends: the next call to it is a probe
        for i in range(6):
            await _run(d.stub, "shaky", f"again {i}", common_pb2.ROUTE_LOCAL)
        assert broken.tasks >= 2  # the probe succeeded: it is back in the rotation
