"""``make bench-agent``: the agent service's throughput, added latency and outbox speed.

Runs the agent service's real composition in this process against the local
Kafka and Postgres (started or reused), with an executor that answers at once
and times itself, so the added latency is end to end minus executor time.
Then it measures outbox publishing against raw aiokafka produce (the same
idempotent, acks=all settings) in the same run. Prints one JSON object.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
import psycopg
import pydantic
from psycopg import sql

from aion.agent import db, events, kafka, main, outbox
from aion.agent import settings as agent_settings
from aion.api.agent.v1 import agent_pb2, agent_pb2_grpc
from aion.api.executor.v1 import executor_pb2, executor_pb2_grpc
from aion.api.v1 import agents_pb2, tasks_pb2
from aion.core import server
from aion.infra.paths import Layout
from aion.infra.registry import make

TASKS, CONCURRENCY, EVENTS = 300, 8, 20_000


class InstantExecutor(executor_pb2_grpc.ExecutorServicer):
    """Four tokens at once; remembers how long each Generate took, per task."""

    def __init__(self) -> None:
        self.spent: dict[str, float] = {}

    async def Generate(self, request: executor_pb2.GenerateRequest,
                       context: grpc.aio.ServicerContext[Any, Any],
                       ) -> AsyncIterator[executor_pb2.GenerateChunk]:
        started = time.perf_counter()
        task_id = dict(context.invocation_metadata() or ()).get("x-aion-task-id", "")
        for word in ("one ", "two ", "three ", "four "):
            yield executor_pb2.GenerateChunk(text=word)
        yield executor_pb2.GenerateChunk(
            finish_reason=executor_pb2.FINISH_REASON_STOP,
            usage=executor_pb2.GenerateUsage(prompt_tokens=5, completion_tokens=4))
        self.spent[str(task_id)] = time.perf_counter() - started

    async def Embed(self, request: executor_pb2.EmbedRequest,
                    context: grpc.aio.ServicerContext[Any, Any]) -> executor_pb2.EmbedResponse:
        raise NotImplementedError

    async def Stats(self, request: executor_pb2.StatsRequest,
                    context: grpc.aio.ServicerContext[Any, Any]) -> executor_pb2.ExecutorStats:
        return executor_pb2.ExecutorStats(model="m", model_ready=True)


async def tasks_bench(cfg: agent_settings.AgentSettings, executor: InstantExecutor,
                      executor_target: str) -> dict[str, float]:
    stop = asyncio.Event()
    ready: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    service = asyncio.create_task(main.run(cfg, until=stop.wait(), on_ready=ready.set_result))
    address = await asyncio.wait_for(ready, 60)
    latencies: list[tuple[str, float]] = []
    async with grpc.aio.insecure_channel(address) as chan:
        stub: agent_pb2_grpc.AgentServiceAsyncStub = agent_pb2_grpc.AgentServiceStub(chan)
        await stub.RegisterAgent(agent_pb2.RegisterAgentRequest(
            tenant="bench", agent=agents_pb2.Agent(name="bench", model="m"),
            executor_endpoints=[executor_target]))
        todo = asyncio.Queue[int]()
        for i in range(TASKS):
            todo.put_nowait(i)

        async def client() -> None:
            while not todo.empty():
                i = todo.get_nowait()
                t0 = time.perf_counter()
                spec = tasks_pb2.TaskSpec(agent="bench", input=f"task {i}",
                                          options=tasks_pb2.TaskOptions(max_tokens=4))
                resp = await stub.Submit(agent_pb2.RunRequest(tenant="bench", task=spec),
                                         timeout=60)
                latencies.append((resp.task_id, time.perf_counter() - t0))

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(CONCURRENCY)))
        elapsed = time.perf_counter() - started
    stop.set()
    await service
    added = sorted((lat - executor.spent.get(tid, 0.0)) * 1000 for tid, lat in latencies)
    return {"tasks_per_s": round(TASKS / elapsed, 1),
            "added_latency_p50_ms": round(statistics.median(added), 2),
            "added_latency_p99_ms": round(added[int(len(added) * 0.99) - 1], 2)}


async def outbox_bench(dsn: str, bootstrap: str, prefix: str) -> dict[str, float]:
    topic = f"{prefix}bench.outbox"
    await kafka.ensure_topics(bootstrap, {topic: 8, f"{prefix}bench.raw": 8})
    env = events.envelope(type_="aion.bench", tenant="bench", subject="s",
                          data=events_pb2_any())
    payload = env.SerializeToString()
    # Raw produce: the same producer settings, every message awaited.
    producer = kafka.producer(bootstrap)
    await producer.start()
    try:
        # Warm up: the new topics' leaders and the producer's metadata, for both paths.
        for warm in (f"{prefix}bench.raw", topic):
            await asyncio.gather(*[await producer.send(warm, value=payload, key=f"k{i}".encode())
                                   for i in range(64)])
        started = time.perf_counter()
        futures = [await producer.send(f"{prefix}bench.raw", value=payload,
                                       key=f"k{i % 64}".encode()) for i in range(EVENTS)]
        await asyncio.gather(*futures)
        raw = EVENTS / (time.perf_counter() - started)
    finally:
        await producer.stop()
    async with db.pool(dsn, max_size=4) as pool:
        async with pool.connection() as conn, conn.transaction():
            for i in range(EVENTS):
                e = events.envelope(type_="aion.bench", tenant="bench", subject=f"k{i % 64}",
                                    data=events_pb2_any())
                await outbox.add(conn, topic=topic, env=e)
        publisher = outbox.Publisher(pool=pool, bootstrap=bootstrap)
        started = time.perf_counter()
        while await publisher.publish_once():
            pass
        rate = publisher.published / (time.perf_counter() - started)
        await publisher.close()
    return {"outbox_events_per_s": round(rate, 1), "raw_produce_per_s": round(raw, 1),
            "outbox_ratio": round(rate / raw, 3)}


def events_pb2_any() -> Any:
    from aion.api.events.v1 import events_pb2

    return events_pb2.TaskQueued(task_id=str(uuid.uuid4()), agent="bench", attempt=0)


async def run() -> dict[str, float]:
    layout = Layout.from_env()
    kafka_c, pg = make("kafka", layout), make("postgres", layout)
    kafka_c.up()
    pg.up()
    admin = pg.endpoints()["AION_POSTGRES_DSN"]
    name = f"bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    dsn = admin.rsplit("/", 1)[0] + "/" + name
    bootstrap = kafka_c.endpoints()["AION_KAFKA_BOOTSTRAP"]
    prefix = f"{name}."
    try:
        executor = InstantExecutor()
        srv = server.GrpcServer(name="executor", host="127.0.0.1", port=0, grace_s=1)
        srv.add(executor_pb2_grpc.add_ExecutorServicer_to_server, executor,
                "aion.executor.v1.Executor")
        async with srv:
            cfg = agent_settings.AgentSettings(
                postgres_dsn=pydantic.SecretStr(dsn), kafka_bootstrap=bootstrap,
                topic_prefix=prefix, port=0,
                grace_s=1.0, retrieval_top_k=0, log_level="WARNING")
            out = await tasks_bench(cfg, executor, srv.address)
        out.update(await outbox_bench(dsn, bootstrap, prefix))
        return out
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(name)))


if __name__ == "__main__":
    print(json.dumps(asyncio.run(run())))
