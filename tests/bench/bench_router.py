"""``make bench-router``: routing decisions per second, their p99, and how fast a pool spills.

Part one times whole routing decisions, as a task meets them: the router's
``Decide`` over real gRPC (in process, plaintext), then the agent service's
route choice on live load (``placement.LoadPlanner.plan``) and its choice of
executor replica (``LeastLoaded`` over ``BENCH_ROUTER_REPLICAS`` replicas with
fresh load reports). ``BENCH_ROUTER_CONCURRENCY`` callers make
``BENCH_ROUTER_DECISIONS`` decisions; ``decisions_per_s`` is their rate and
``decision_p99_ms`` the p99 of one decision's time.

Part two is the spill's reaction time, against the local Postgres and Kafka: the
agent service's real composition (in process), two executor pods that report
their real load to Kafka every ``BENCH_ROUTER_REPORT_INTERVAL_MS`` (the
executors' own default is 5 s: the reaction is about one interval), and an
OpenAI-compatible provider. Clients keep running hybrid tasks; then other
clients fill both pods past the queue threshold. ``spill_reaction_s`` is the
time from the pool saturating (both pods over the threshold) to the provider
receiving the first spilled task. Prints one JSON object.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
import psycopg
import pydantic
from psycopg import sql
from starlette import applications, requests, responses, routing

from aion.agent import (
    backends,
    breaker,
    load,
    load_testing,
    main,
    model,
    peers,
    placement,
    provider,
)
from aion.agent import settings as agent_settings
from aion.agent import testing as agent_testing
from aion.api.agent.v1 import agent_pb2, agent_pb2_grpc
from aion.api.router.v1 import router_pb2, router_pb2_grpc
from aion.api.v1 import agents_pb2, common_pb2, tasks_pb2
from aion.core import http_server, privacy, server
from aion.infra import bench
from aion.infra.paths import Layout
from aion.infra.registry import make
from aion.router import policy, servicer


def _knob(name: str, default: int) -> int:
    return bench.knob("ROUTER", name, default)


DECISIONS = _knob("DECISIONS", 3000)
CONCURRENCY = _knob("CONCURRENCY", 8)
REPLICAS = _knob("REPLICAS", 8)
REPORT_INTERVAL_MS = _knob("REPORT_INTERVAL_MS", 1000)
THRESHOLD = 2


_pct = bench.percentile


def _log(msg: str) -> None:
    print(f"bench-router: {msg}", file=sys.stderr, flush=True)


async def _no_record(task_id: str, **kw: object) -> None:
    return None


# -- part one: decisions -------------------------------------------------------------------
async def decisions_bench() -> dict[str, Any]:
    """Router Decide + placement plan + replica choice, timed per decision."""
    router = server.GrpcServer(name="router", host="127.0.0.1", port=0, grace_s=1)
    router.add(
        router_pb2_grpc.add_RouterServicer_to_server,
        servicer.RouterServicer(policy.PolicySource(None)),
        "router",
    )
    addresses = tuple(f"10.0.0.{i}:50055" for i in range(REPLICAS))

    async def resolver(target: str) -> tuple[str, ...]:
        return addresses

    board = load.LoadBoard(stale_s=3600.0)
    breakers = breaker.Breakers()
    async with (
        router,
        grpc.aio.insecure_channel(router.address) as chan,
        peers.Peers(
            tls=agent_testing.CA.tls("agent"),
            knowledge_target=None,
            resolver=resolver,
            chooser=load.LeastLoaded(board, breakers),
            board=board,
            breakers=breakers,
        ) as clients,
        provider.Provider(
            base_url="http://127.0.0.1:9", api_key="", model="cloud", cost_per_1k_tokens=0.0
        ) as api,
    ):
        stub = router_pb2_grpc.RouterStub(chan)
        for i, address in enumerate(addresses):
            clients.board.record(
                load.Report(executor=address.split(":")[0], in_flight=i % 3, p95_latency_ms=400)
            )
        choice = placement.LoadPlanner(
            clients=clients,
            api=backends.ApiBackend(api),
            queue_threshold=THRESHOLD,
            record=_no_record,
        )
        agent = model.AgentRecord(
            tenant="bench",
            name="a",
            model="m",
            privacy=privacy.Privacy.HYBRID,
            executor_endpoints=("svc:50055",),
        )
        req = router_pb2.DecideRequest(
            tenant="bench", agent="a", privacy=common_pb2.PRIVACY_HYBRID, input_chars=200
        )
        times: list[float] = []

        async def one() -> None:
            started = time.perf_counter()
            decision = await stub.Decide(req, timeout=10)
            route = privacy.route_from_pb(decision.engine.route) or privacy.Route.LOCAL
            plan = await choice.plan(agent, route, sla_ms=1000, deadline=time.monotonic() + 30)
            if plan.order[0] == "local":
                await clients.endpoints.choose(agent.executor_endpoints)
            times.append(time.perf_counter() - started)

        for _ in range(50):  # warm-up: the channel, the caches
            await one()
        times.clear()

        async def caller(n: int) -> None:
            for _ in range(n):
                await one()

        started = time.perf_counter()
        share = DECISIONS // CONCURRENCY
        await asyncio.gather(*(caller(share) for _ in range(CONCURRENCY)))
        wall = time.perf_counter() - started
    return {
        "decisions_per_s": round(len(times) / wall, 1),
        "decision_p50_ms": round(_pct(times, 50) * 1000, 3),
        "decision_p99_ms": round(_pct(times, 99) * 1000, 3),
        "decisions": len(times),
        "decision_concurrency": CONCURRENCY,
        "replicas": REPLICAS,
    }


# -- part two: the spill's reaction ------------------------------------------------------
class Provider:
    """An OpenAI-compatible chat endpoint that notes when its first request came."""

    def __init__(self) -> None:
        self.first: float | None = None
        self.reached = asyncio.Event()
        self.app = applications.Starlette(
            routes=[routing.Route("/v1/chat/completions", self.chat, methods=["POST"])]
        )

    async def chat(self, request: requests.Request) -> responses.Response:
        if self.first is None:
            self.first = time.perf_counter()
            self.reached.set()
        await request.body()
        events = [
            {"choices": [{"delta": {"content": "from the api"}, "finish_reason": "stop"}]},
            {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 3}},
        ]
        body = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
        return responses.Response(body, media_type="text/event-stream")


@contextlib.asynccontextmanager
async def _served(app: Provider) -> AsyncIterator[str]:
    async with http_server.HttpServer(app.app, name="provider", host="127.0.0.1", port=0) as http:
        serving = asyncio.create_task(http.serve())
        try:
            yield f"{http.url}/v1"
        finally:
            http.shutdown()
            await serving


@contextlib.asynccontextmanager
async def _agent_service(cfg: agent_settings.AgentSettings) -> AsyncIterator[str]:
    stop = asyncio.Event()
    ready: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    running = asyncio.create_task(
        main.run(cfg, agent_testing.CA.tls("agent"), until=stop.wait(), on_ready=ready.set_result)
    )
    waits: list[asyncio.Future[Any]] = [running, ready]
    done, _ = await asyncio.wait(waits, timeout=60, return_when="FIRST_COMPLETED")
    if running in done:
        running.result()
    try:
        yield await ready
    finally:
        stop.set()
        await asyncio.wait_for(running, 30)


async def spill_bench(dsn: str, bootstrap: str, prefix: str) -> dict[str, Any]:
    """Seconds from the pool saturating to the first task the provider receives."""
    topic = f"{prefix}executor.load"
    api = Provider()
    async with (
        _served(api) as url,
        load_testing.pods(2, bootstrap, topic, interval_s=REPORT_INTERVAL_MS / 1000) as pods,
    ):
        cfg = agent_settings.AgentSettings(
            postgres_dsn=pydantic.SecretStr(dsn),
            kafka_bootstrap=bootstrap,
            topic_prefix=prefix,
            port=0,
            health_port=0,
            metrics_port=0,
            executor_load_topic=topic,
            spill_queue_threshold=THRESHOLD,
            load_stale_s=max(3.0, 3 * REPORT_INTERVAL_MS / 1000),
            provider_base_url=url,
            provider_api_key=pydantic.SecretStr("k"),
            provider_model="cloud",
            max_running_per_tenant=64,
            max_concurrent_tasks=64,
        )
        async with (
            _agent_service(cfg) as address,
            agent_testing.channel(address) as chan,
        ):
            stub = agent_pb2_grpc.AgentServiceStub(chan)
            await stub.RegisterAgent(
                agent_pb2.RegisterAgentRequest(
                    tenant="bench",
                    privacy=common_pb2.PRIVACY_HYBRID,
                    agent=agents_pb2.Agent(name="mixed", model="m"),
                    executor_endpoints=["ipv4:" + ",".join(p.address for p in pods)],
                )
            )
            decision = router_pb2.Decision(
                engine=common_pb2.Engine(route=common_pb2.ROUTE_HYBRID, chosen_by="policy")
            )
            run = agent_pb2.RunRequest(
                tenant="bench",
                decision=decision,
                task=tasks_pb2.TaskSpec(agent="mixed", input="hello there"),
            )
            stop = asyncio.Event()

            async def client() -> None:
                while not stop.is_set():
                    async for _ in stub.Run(run, timeout=30):
                        pass
                    await asyncio.sleep(0.02)

            clients = [asyncio.create_task(client()) for _ in range(2)]  # under the threshold alone
            await asyncio.sleep(2 * REPORT_INTERVAL_MS / 1000 + 1)  # reports flowing, warm
            before = api.first
            async with (
                load_testing.hold(pods[0], THRESHOLD + 1),
                load_testing.hold(pods[1], THRESHOLD + 1),
            ):
                while True:  # the held calls reach the pods
                    if all(p.active > THRESHOLD for p in pods):
                        break
                    await asyncio.sleep(0.001)
                saturated = time.perf_counter()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(api.reached.wait(), 10 * REPORT_INTERVAL_MS / 1000 + 10)
                stop.set()
            await asyncio.gather(*clients, return_exceptions=True)
    if before is not None:
        raise SystemExit("the provider got a task before the pool saturated; see the log")
    if api.first is None:
        raise SystemExit("no task spilled to the provider after the pool saturated")
    return {
        "spill_reaction_s": round(api.first - saturated, 3),
        "report_interval_ms": REPORT_INTERVAL_MS,
        "spill_queue_threshold": THRESHOLD,
    }


async def run() -> dict[str, Any]:
    """Both parts, on a database and topic prefix of their own."""
    _log(f"{DECISIONS} decisions from {CONCURRENCY} callers over {REPLICAS} replicas")
    out = await decisions_bench()
    layout = Layout.from_env()
    kafka_c, pg = make("kafka", layout), make("postgres", layout)
    kafka_c.up()
    pg.up()
    admin = pg.endpoints()["AION_POSTGRES_DSN"]
    name = f"bench_router_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    dsn = admin.rsplit("/", 1)[0] + "/" + name
    try:
        _log("the spill's reaction: hybrid tasks running, then both pods filled")
        out.update(await spill_bench(dsn, kafka_c.endpoints()["AION_KAFKA_BOOTSTRAP"], f"{name}."))
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
    return out


if __name__ == "__main__":
    print(json.dumps(asyncio.run(run())))
