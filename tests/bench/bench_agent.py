"""``make bench-agent``: tasks through gateway -> agent -> executor, and outbox speed.

Part one starts the five services as processes (``aion.infra.devstack.LocalSuite``
with the demo agent and the real SmolLM2 executor on the CPU) against the local
Postgres and Kafka, on a database and a topic prefix of its own. Clients submit
tasks with a short ``max_tokens`` through the gateway. Each task's end-to-end
time is measured at the client; its executor time is what the agent service
stored per model step in ``task_steps.model_ms`` (the time it waited for the
executor's chunks, apart from its own writes between them). The agent
service's added latency is the difference (it includes the gateway and the
router, which every task crosses too).

Part two measures the transactional outbox's publisher against raw aiokafka
produce with the same idempotent, acks=all producer settings, on warmed-up
topics, in alternating rounds. Prints one JSON object.

Knobs (environment): BENCH_AGENT_TASKS (60), BENCH_AGENT_CONCURRENCY (4),
BENCH_AGENT_MAX_TOKENS (8), BENCH_AGENT_EXECUTOR_THREADS (1),
BENCH_AGENT_EVENTS (20000), BENCH_AGENT_STREAM_TOKENS (96), BENCH_AGENT_STREAM_ROUNDS (2),
BENCH_AGENT_OUTBOX_ROUNDS (3).

Part one also runs 8 concurrent streams of STREAM_TOKENS tokens through the gateway
and the same 8 straight to the executor's ``Generate`` (the agent's messages, its
certificate), in alternating rounds of the same run: ``stream_ratio_8`` is the
gateway's tokens/s over the executor's.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import grpc
import psycopg
from aiokafka import admin as kafka_admin  # type: ignore[import-untyped]
from psycopg import sql

from aion.agent import db, events, kafka, outbox
from aion.api.events.v1 import events_pb2
from aion.api.executor.v1 import executor_pb2, executor_pb2_grpc
from aion.api.v1 import common_pb2
from aion.core import pki
from aion.core import tls as core_tls
from aion.infra import bench, devstack
from aion.infra.paths import Layout
from aion.infra.registry import make
from aion.sdk import AsyncClient

REPO = Path(__file__).resolve().parents[2]
DEMO_AGENT = REPO / "deploy" / "examples" / "demo-agent.yaml"


def _knob(name: str, default: int) -> int:
    return bench.knob("AGENT", name, default)


TASKS = _knob("TASKS", 60)
CONCURRENCY = _knob("CONCURRENCY", 4)
MAX_TOKENS = _knob("MAX_TOKENS", 8)
EXECUTOR_THREADS = _knob("EXECUTOR_THREADS", 1)
EVENTS = _knob("EVENTS", 20_000)
STREAMS = 8  # the figure names it: stream_ratio_8
STREAM_TOKENS = _knob("STREAM_TOKENS", 96)
STREAM_ROUNDS = _knob("STREAM_ROUNDS", 2)
OUTBOX_ROUNDS = _knob("OUTBOX_ROUNDS", 3)
WARMUP_TASKS = 3


_pct = bench.percentile


def _log(msg: str) -> None:
    print(f"bench-agent: {msg}", file=sys.stderr, flush=True)


# -- part one: tasks through the services ------------------------------------------------
async def _submit_all(gateway: str) -> tuple[list[tuple[str, float]], int, float]:
    """Submit TASKS tasks from CONCURRENCY clients; (task id, seconds) of the OK ones,
    how many did not end OK, and the wall time."""
    async with AsyncClient(gateway, task_timeout=120) as client:
        for i in range(WARMUP_TASKS):  # the model's first calls, the channels, the caches
            await client.submit("demo", f"Warm up {i}.", max_tokens=MAX_TOKENS, temperature=0)
        todo = list(range(TASKS))
        done: list[tuple[str, float]] = []
        failed = 0

        async def worker() -> None:
            nonlocal failed
            while todo:
                i = todo.pop()
                started = time.perf_counter()
                resp = await client.submit(
                    "demo",
                    f"Name one planet, number {i}.",
                    max_tokens=MAX_TOKENS,
                    temperature=0,
                    seed=i,
                )
                took = time.perf_counter() - started
                if resp.result.status == common_pb2.TASK_STATUS_OK:
                    done.append((resp.task_id, took))
                else:
                    failed += 1
                    _log(
                        f"task {resp.task_id} ended {resp.result.status}: "
                        f"{resp.result.error.message}"
                    )

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
        return done, failed, time.perf_counter() - started


async def _model_times(dsn: str, ids: list[str]) -> dict[str, tuple[int, int, int]]:
    """Per task: (executor ms over its model steps, its run's ms in the agent, steps)."""
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        cur = await conn.execute(
            "SELECT t.id::text, coalesce(sum(s.model_ms), 0), t.latency_ms, count(s.step)"
            " FROM tasks t LEFT JOIN task_steps s ON s.task_id = t.id AND s.kind = 'model'"
            " AND s.attempt = t.attempts WHERE t.id = ANY(%s::uuid[])"
            " GROUP BY t.id, t.latency_ms",
            (ids,),
        )
        return {r[0]: (int(r[1]), int(r[2]), int(r[3])) for r in await cur.fetchall()}


async def tasks_bench(dsn: str, bootstrap: str, prefix: str) -> dict[str, Any]:
    """Tasks/s and the added latency, through the five services."""
    log_dir = Path(tempfile.mkdtemp(prefix="aion-bench-agent-"))
    suite = devstack.LocalSuite(
        log_dir=log_dir,
        agents_file=DEMO_AGENT,
        extra_env={
            "AION_AGENT_POSTGRES_DSN": dsn,
            "AION_AGENT_KAFKA_BOOTSTRAP": bootstrap,
            "AION_AGENT_TOPIC_PREFIX": prefix,
            "AION_EXECUTOR_N_THREADS": str(EXECUTOR_THREADS),
        },
    )
    _log(f"starting the services (logs in {log_dir})")
    suite.start()
    try:
        await asyncio.to_thread(suite.wait_ready, timeout=300)
        _log(f"{TASKS} tasks, {CONCURRENCY} clients, max_tokens {MAX_TOKENS}")
        done, failed, elapsed = await _submit_all(suite.gateway)
        _log(f"{STREAMS} streams of {STREAM_TOKENS} tokens, gateway and executor in turn")
        streams = await streams_bench(suite)
    finally:
        await asyncio.to_thread(suite.stop)
    if not done:
        raise SystemExit(f"no task ended OK ({failed} failed); see the logs in {log_dir}")
    times = await _model_times(dsn, [t for t, _ in done])
    e2e = [took * 1000 for _, took in done]
    executor = [float(times[t][0]) for t, _ in done]
    added = [took * 1000 - times[t][0] for t, took in done]
    in_agent = [float(times[t][1] - times[t][0]) for t, _ in done]
    return {
        "tasks_per_s": round(len(done) / elapsed, 2),
        "added_latency_p50_ms": round(_pct(added, 50), 1),
        "added_latency_p99_ms": round(_pct(added, 99), 1),
        "end_to_end_p50_ms": round(_pct(e2e, 50), 1),
        "end_to_end_p99_ms": round(_pct(e2e, 99), 1),
        "executor_p50_ms": round(_pct(executor, 50), 1),
        # The agent service alone: its run's time minus the executor's.
        "agent_run_overhead_p50_ms": round(_pct(in_agent, 50), 1),
        "agent_run_overhead_p99_ms": round(_pct(in_agent, 99), 1),
        "model_steps_per_task": statistics.mean(times[t][2] for t, _ in done),
        "tasks": len(done),
        "tasks_failed": failed,
        "concurrency": CONCURRENCY,
        "max_tokens": MAX_TOKENS,
        "executor_threads": EXECUTOR_THREADS,
        **streams,
    }


# -- streams: through the gateway against straight from the executor ------------------------
STREAM_PROMPT = "Write a long story about a dragon who learns to bake bread."
DEMO_SYSTEM = "You are a helpful, concise assistant."  # demo-agent.yaml's instructions


async def _gateway_streams(gateway: str) -> tuple[int, float]:
    """STREAMS concurrent task streams through the gateway: (tokens, seconds)."""
    async with AsyncClient(gateway, task_timeout=300) as client:

        async def one(i: int) -> int:
            tokens = 0
            async for event in client.stream(
                "demo", STREAM_PROMPT, max_tokens=STREAM_TOKENS, temperature=0, seed=i
            ):
                tokens += event.WhichOneof("event") == "token"
            return tokens

        started = time.perf_counter()
        counts = await asyncio.gather(*(one(i) for i in range(STREAMS)))
        return sum(counts), time.perf_counter() - started


async def _direct_streams(suite: devstack.LocalSuite) -> tuple[int, float]:
    """The same streams straight to the executor's Generate (as the agent service calls
    it, with its certificate): (tokens, seconds)."""
    tls_dir = suite.tls_dir
    material = core_tls.Tls.of(
        (tls_dir / "ca.crt").read_bytes(),
        pki.KeyPair((tls_dir / "agent.crt").read_bytes(), (tls_dir / "agent.key").read_bytes()),
    )
    async with grpc.aio.secure_channel(
        suite.services["executor"].target,
        material.channel_credentials(),
        options=material.channel_options("executor"),
    ) as channel:
        stub = executor_pb2_grpc.ExecutorStub(channel)

        async def one(i: int) -> int:
            request = executor_pb2.GenerateRequest(
                model="smollm2-135m-instruct",
                max_tokens=STREAM_TOKENS,
                temperature=0,
                seed=i,
                messages=[
                    executor_pb2.ChatMessage(role="system", content=DEMO_SYSTEM),
                    executor_pb2.ChatMessage(role="user", content=STREAM_PROMPT),
                ],
            )
            return sum([bool(c.text) async for c in stub.Generate(request, timeout=300)])

        started = time.perf_counter()
        counts = await asyncio.gather(*(one(i) for i in range(STREAMS)))
        return sum(counts), time.perf_counter() - started


async def streams_bench(suite: devstack.LocalSuite) -> dict[str, Any]:
    """Tokens/s of STREAMS concurrent streams through the gateway against the same streams
    straight from the executor, alternating rounds in this one run, each round in the
    order the one before ended with (direct, gateway; gateway, direct; ...), so that
    neither side always runs on what the other left (a warm executor, a busy broker)."""
    rounds: list[tuple[tuple[int, float], tuple[int, float]]] = []
    for i in range(STREAM_ROUNDS):
        if i % 2 == 0:
            direct = await _direct_streams(suite)
            gateway = await _gateway_streams(suite.gateway)
        else:
            gateway = await _gateway_streams(suite.gateway)
            direct = await _direct_streams(suite)
        rounds.append((direct, gateway))
    straight = sum(d[0] for d, _ in rounds) / sum(d[1] for d, _ in rounds)
    via_gateway = sum(g[0] for _, g in rounds) / sum(g[1] for _, g in rounds)
    return {
        f"stream_tokens_per_s_{STREAMS}": round(via_gateway, 1),
        f"direct_tokens_per_s_{STREAMS}": round(straight, 1),
        f"stream_ratio_{STREAMS}": round(via_gateway / straight, 3),
        f"stream_ratios_{STREAMS}": [round((g[0] / g[1]) / (d[0] / d[1]), 3) for d, g in rounds],
        "stream_tokens": STREAM_TOKENS,
        "stream_rounds": STREAM_ROUNDS,
    }


# -- part two: the outbox against raw produce ---------------------------------------------
def _event(i: int) -> events_pb2.Envelope:
    return events.envelope(
        type_="aion.bench",
        tenant="bench",
        subject=f"k{i % 64}",
        data=events_pb2.TaskQueued(task_id=str(uuid.uuid4()), agent="bench", attempt=0),
    )


async def _raw_round(producer: Any, topic: str, payload: bytes) -> float:
    """Raw produce of EVENTS records: records per second."""
    started = time.perf_counter()
    futures = [
        await producer.send(topic, value=payload, key=f"k{i % 64}".encode()) for i in range(EVENTS)
    ]
    await asyncio.gather(*futures)
    return EVENTS / (time.perf_counter() - started)


async def _outbox_round(pool: db.Pool, publisher: outbox.Publisher, topic: str) -> float:
    """EVENTS rows committed to the outbox (off the clock), then published: rows per
    second."""
    async with pool.connection() as conn, conn.transaction():
        for i in range(EVENTS):
            await outbox.add(conn, topic=topic, env=_event(i))
    before = publisher.published
    started = time.perf_counter()
    await publisher.publish()
    return (publisher.published - before) / (time.perf_counter() - started)


async def outbox_bench(dsn: str, bootstrap: str, prefix: str) -> dict[str, Any]:
    """Outbox rows published per second against raw aiokafka produce, in alternating
    rounds (OUTBOX_ROUNDS) of the same run: the medians, and the median of the rounds'
    ratios."""
    raw_topic, outbox_topic = f"{prefix}bench.raw", f"{prefix}bench.outbox"
    await kafka.ensure_topics(bootstrap, {raw_topic: 8, outbox_topic: 8})
    payload = _event(0).SerializeToString()
    raws: list[float] = []
    rates: list[float] = []
    producer = kafka.producer(bootstrap)
    await producer.start()
    try:
        async with db.pool(dsn, max_size=4) as pool:
            publisher = outbox.Publisher(pool=pool, bootstrap=bootstrap)
            try:
                # Warm up, off the clock: the new topics' partition leaders, both producers'
                # metadata, and a whole raw round (a new topic's leaders may still move:
                # its first sends can be retried).
                await asyncio.gather(
                    *[
                        await producer.send(t, value=payload, key=f"k{i}".encode())
                        for t in (raw_topic, outbox_topic)
                        for i in range(64)
                    ]
                )
                await publisher.warm_up([outbox_topic])
                await _raw_round(producer, raw_topic, payload)
                for _ in range(OUTBOX_ROUNDS):
                    raws.append(await _raw_round(producer, raw_topic, payload))
                    rates.append(await _outbox_round(pool, publisher, outbox_topic))
            finally:
                await publisher.close()
    finally:
        await producer.stop()
    ratios = [r / w for r, w in zip(rates, raws, strict=True)]
    return {
        "outbox_events_per_s": round(statistics.median(rates), 1),
        "raw_produce_per_s": round(statistics.median(raws), 1),
        "outbox_ratio": round(statistics.median(ratios), 3),
        "outbox_ratios": [round(r, 3) for r in ratios],
        "events": EVENTS,
    }


async def _drop_topics(bootstrap: str, prefix: str) -> None:
    """Delete this run's topics (the services' and the outbox comparison's)."""
    admin = kafka_admin.AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=15000)
    await admin.start()
    try:
        mine = [t for t in await admin.list_topics() if t.startswith(prefix)]
        if mine:
            await admin.delete_topics(mine)
    except kafka.KafkaError as exc:
        _log(f"could not delete the topics under {prefix}: {exc}")
    finally:
        await admin.close()


async def run() -> dict[str, Any]:
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
        out = await tasks_bench(dsn, bootstrap, prefix)
        out.update(await outbox_bench(dsn, bootstrap, prefix))
        return out
    finally:
        await _drop_topics(bootstrap, prefix)
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


if __name__ == "__main__":
    print(json.dumps(asyncio.run(run())))
