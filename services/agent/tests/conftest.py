"""The agent service against the real Postgres and Kafka, with a scripted executor.

The executor is a real gRPC server whose replies are scripted from the user's
message, so that tests decide what the model says (tokens, tool calls, a
hang); everything else (the service's composition, Postgres, Kafka) is real.
Each run gets its own database and its own topic prefix.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import aiokafka  # type: ignore[import-untyped]
import grpc
import pydantic
import pytest

from aion.agent import load, main, testing
from aion.agent import settings as agent_settings
from aion.api.agent.v1 import agent_pb2_grpc
from aion.api.executor.v1 import executor_pb2, executor_pb2_grpc
from aion.core import errors, server
from aion.infra.postgres import Postgres


class ScriptedExecutor(executor_pb2_grpc.ExecutorServicer):
    """Replies from the user's last message.

    "fail": RESOURCE_EXHAUSTED. "hang": its words, then waits forever.
    "slow ...": its words, each after ``release`` is set. "call:<tool> <json>": on
    the first step that tool call, then (after the tool's result) "answer: <result>".
    "raw:<text>": replies <text> as it is. Anything else: its words back.
    """

    def __init__(self) -> None:
        self.requests: list[executor_pb2.GenerateRequest] = []
        self.calls: list[tuple[str, str]] = []  # (task id, attempt) per Generate
        self.hanging = asyncio.Event()
        self.release = asyncio.Event()
        self.address = ""
        self.streaming = 0  # Generate calls under way (a cancelled one ends)
        self.sent = 0  # chunks of text put on the wire, by every call

    async def Generate(
        self,
        request: executor_pb2.GenerateRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[executor_pb2.GenerateChunk]:
        self.streaming += 1
        try:
            async for chunk in self._generate(request, context):
                yield chunk
                self.sent += bool(chunk.text)
        finally:
            self.streaming -= 1

    async def _generate(
        self,
        request: executor_pb2.GenerateRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[executor_pb2.GenerateChunk]:
        self.requests.append(request)
        meta = dict(context.invocation_metadata() or ())
        self.calls.append(
            (str(meta.get("x-aion-task-id", "")), str(meta.get("x-aion-attempt", "")))
        )
        first = next(m.content for m in request.messages if m.role == "user")
        last = request.messages[-1].content
        if first == "fail":
            raise errors.ResourceExhausted("executor queue is full", retry_after_s=1)
        if first.startswith("raw:"):
            words = [first.removeprefix("raw:")]
        elif first.startswith("call:"):
            if last.startswith("Tool "):
                words = ["answer: " + last.split("\n", 1)[1]]
            else:
                name, _, args = first.removeprefix("call:").partition(" ")
                words = [json.dumps({"tool": name, "arguments": json.loads(args)})]
        else:
            words = [w + " " for w in first.split()]
        max_tokens = request.max_tokens if request.HasField("max_tokens") else 256
        for word in words[:max_tokens]:
            if first.startswith("slow"):
                await self.release.wait()
            yield executor_pb2.GenerateChunk(text=word)
        if first == "hang":
            self.hanging.set()
            await asyncio.Event().wait()
        yield executor_pb2.GenerateChunk(
            finish_reason=executor_pb2.FINISH_REASON_STOP,
            usage=executor_pb2.GenerateUsage(prompt_tokens=7, completion_tokens=len(words)),
        )

    async def Embed(
        self, request: executor_pb2.EmbedRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> executor_pb2.EmbedResponse:
        raise errors.FailedPrecondition("this scripted executor does not embed")

    async def Stats(
        self, request: executor_pb2.StatsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> executor_pb2.ExecutorStats:
        return executor_pb2.ExecutorStats(model="m", model_ready=True)


@pytest.fixture(scope="session")
def agent_dsn(postgres: Postgres) -> Iterator[str]:
    """A database of its own for this test session, dropped at its end."""
    with postgres.scratch_database("agent_test") as dsn:
        yield dsn


@pytest.fixture(scope="session")
async def executor() -> AsyncIterator[ScriptedExecutor]:
    """The scripted executor, serving on a free port."""
    scripted = ScriptedExecutor()
    srv = testing.executor_server(scripted, grace_s=1)
    async with srv:
        scripted.address = srv.address
        yield scripted


@pytest.fixture
async def executor_pods() -> AsyncIterator[list[tuple[ScriptedExecutor, server.GrpcServer]]]:
    """Two more scripted executors, each on a port of its own: two pods of one Agent.
    A test may stop a server (``await srv.__aexit__(None, None, None)``) to lose a pod."""
    async with contextlib.AsyncExitStack() as stack:
        pods = []
        for _ in range(2):
            scripted = ScriptedExecutor()
            srv = testing.executor_server(scripted)
            await stack.enter_async_context(srv)
            scripted.address = srv.address
            pods.append((scripted, srv))
        yield pods


def settings(
    dsn: str,
    bootstrap: str,
    prefix: str,
    **overrides: Any,
) -> agent_settings.AgentSettings:
    """The service's settings for a test."""
    values: dict[str, Any] = {
        "postgres_dsn": pydantic.SecretStr(dsn),
        "kafka_bootstrap": bootstrap,
        "topic_prefix": prefix,
        "port": 0,
        "health_port": 0,
        "grace_s": 1.0,
        "max_input_chars": 100,
        "max_tokens_limit": 50,
        "retrieval_top_k": 0,
        "lease_s": 4.0,
        "heartbeat_s": 0.5,
        "reaper_interval_s": 0.5,
    }
    values.update(overrides)
    return agent_settings.AgentSettings(**values)


class Service:
    """The agent service's real composition, run in this process: its circuit breakers
    on ``breaker_clock``; ``board``, once it runs, its executors' load board."""

    def __init__(
        self,
        cfg: agent_settings.AgentSettings,
        executor: ScriptedExecutor,
        *,
        breaker_clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cfg = cfg
        self.executor = executor
        self.address = ""
        self.board: load.LoadBoard | None = None
        self._breaker_clock = breaker_clock
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Service:
        ready = asyncio.get_running_loop().create_future()

        def on_ready(address: str) -> None:
            self.address = address
            ready.set_result(address)

        def on_board(board: load.LoadBoard) -> None:
            self.board = board

        self._task = asyncio.create_task(
            main.run(
                self.cfg,
                testing.CA.tls("agent"),
                until=self._stop.wait(),
                on_ready=on_ready,
                on_board=on_board,
                breaker_clock=self._breaker_clock,
            )
        )
        done, _ = await asyncio.wait(
            [self._task, ready], timeout=60, return_when=asyncio.FIRST_COMPLETED
        )
        if self._task in done:
            self._task.result()  # raises why it stopped
        assert ready in done, "the agent service did not become ready in 60s"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        if self._task is None:
            return
        done, _ = await asyncio.wait([self._task], timeout=30)
        if not done:  # say what it still waits for
            stacks = [
                f"{task.get_name()}: "
                + " <- ".join(
                    f"{f.f_code.co_name} ({f.f_code.co_filename.rsplit('/', 1)[-1]}:{f.f_lineno})"
                    for f in reversed(task.get_stack(limit=16))
                )
                for task in asyncio.all_tasks()
            ]
            self._task.cancel()
            raise AssertionError(
                "the agent service did not stop within 30 s; its tasks:\n" + "\n".join(stacks)
            )
        self._task.result()


@pytest.fixture(scope="session")
def new_service(agent_dsn: str, kafka: Any, executor: ScriptedExecutor) -> Callable[..., Service]:
    """Makes an agent service with its own topics and these settings overrides (enter it
    with ``async with``), its breakers on ``breaker_clock``."""

    def make(*, breaker_clock: Callable[[], float] = time.monotonic, **overrides: Any) -> Service:
        overrides.setdefault("executor_target", executor.address)
        cfg = settings(agent_dsn, kafka.bootstrap, f"t{uuid.uuid4().hex[:8]}.", **overrides)
        return Service(cfg, executor, breaker_clock=breaker_clock)

    return make


@pytest.fixture(scope="module")
async def service(new_service: Callable[..., Service]) -> AsyncIterator[Service]:
    """One running agent service per test module, with its own topics."""
    async with new_service() as svc:
        yield svc


@pytest.fixture
async def stub(service: Service) -> AsyncIterator[agent_pb2_grpc.AgentServiceAsyncStub]:
    """A client of the running service."""
    async with testing.channel(service.address) as chan:
        yield agent_pb2_grpc.AgentServiceStub(chan)


async def read_topic(
    bootstrap: str,
    topic: str,
    *,
    until: Any,
    timeout: float = 60,
) -> list[Any]:
    """The records of ``topic`` from its beginning, read until ``until(records)`` holds
    (or ``timeout`` passes; the caller's assertion then shows what was read)."""
    consumer = aiokafka.AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        group_id=None,
        enable_auto_commit=False,
    )
    await consumer.start()
    records: list[Any] = []
    try:
        deadline = asyncio.get_running_loop().time() + timeout
        while not until(records) and asyncio.get_running_loop().time() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            for got in batch.values():
                records.extend(got)
    finally:
        await consumer.stop()
    return records


@pytest.fixture
def topic_reader() -> Any:
    """``read_topic``, for tests."""
    return read_topic
