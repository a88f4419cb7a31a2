"""Test helpers for load-aware routing: executor pods whose load is real and reported.

A ``Pod`` is a real executor gRPC server (scripted replies) that counts the
streams it serves and serves ``max_streams`` at once (the rest count as
queued); ``pods`` starts some and publishes each one's load every 0.2 s to a
Kafka topic, as the executor's ``LoadReporter`` does (an ``aion.executor.load``
envelope around ``ExecutorLoad``), each naming itself by its ``host:port``
(one of the two id forms ``load.LoadBoard`` matches). ``hold`` loads a pod as
other clients would. Used by the tests and ``make bench-router``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import grpc

from aion.agent import testing
from aion.api.events.v1 import events_pb2
from aion.api.executor.v1 import executor_pb2, executor_pb2_grpc
from aion.core import channels, errors, events
from aion.core import kafka as core_kafka

REPORT_INTERVAL_S = 0.2


class Pod(executor_pb2_grpc.ExecutorServicer):
    """An executor pod serving ``max_streams`` streams at once (the rest queue); its
    words back, or, for an input starting "hold", its words once ``release`` is set.
    While ``failing``, it refuses every call UNAVAILABLE (a pod whose model broke)."""

    def __init__(self, *, max_streams: int = 1) -> None:
        self.max_streams = max_streams
        self.active = 0
        self.tasks = 0  # calls from the agent service (they carry a task id)
        self.release = asyncio.Event()
        self.p95_ms = 100.0
        self.address = ""
        self.failing = False
        self.refused = 0  # calls refused while failing

    async def Generate(
        self, request: executor_pb2.GenerateRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> Any:
        if self.failing:
            self.refused += 1
            raise errors.Unavailable("this pod is failing")
        if dict(context.invocation_metadata() or ()).get("x-aion-task-id"):
            self.tasks += 1
        self.active += 1
        try:
            text = next(m.content for m in request.messages if m.role == "user")
            if text.startswith("hold"):
                await self.release.wait()
            for word in text.split():
                yield executor_pb2.GenerateChunk(text=word + " ")
            yield executor_pb2.GenerateChunk(
                finish_reason=executor_pb2.FINISH_REASON_STOP,
                usage=executor_pb2.GenerateUsage(prompt_tokens=3, completion_tokens=2),
            )
        finally:
            self.active -= 1

    async def Embed(
        self, request: executor_pb2.EmbedRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> executor_pb2.EmbedResponse:
        raise errors.FailedPrecondition("this pod does not embed")

    async def Stats(
        self, request: executor_pb2.StatsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> executor_pb2.ExecutorStats:
        return executor_pb2.ExecutorStats(model="m", model_ready=True)

    def report(self) -> events_pb2.Envelope:
        """Its load report, as an executor publishes it."""
        return events.envelope(
            type_="aion.executor.load",
            source="executor",
            subject=self.address,
            data=events_pb2.ExecutorLoad(
                executor=self.address,
                model="m",
                queue_depth=max(0, self.active - self.max_streams),
                in_flight=min(self.active, self.max_streams),
                tokens_per_s=10.0,
                p95_latency_ms=self.p95_ms,
                model_ready=True,
            ),
        )


@contextlib.asynccontextmanager
async def pods(
    n: int, bootstrap: str, topic: str, *, interval_s: float = REPORT_INTERVAL_S
) -> AsyncIterator[list[Pod]]:
    """``n`` pods serving, and their load reports going to ``topic`` every ``interval_s``."""
    async with contextlib.AsyncExitStack() as stack:
        pods = []
        for _ in range(n):
            pod = Pod()
            srv = testing.executor_server(pod)
            await stack.enter_async_context(srv)
            pod.address = srv.address
            stack.callback(pod.release.set)  # no held stream outlives the test
            pods.append(pod)
        await core_kafka.ensure_topics(bootstrap, {topic: 1})
        producer = core_kafka.producer(bootstrap, enable_idempotence=False, acks=1, linger_ms=0)
        await producer.start()
        stack.push_async_callback(producer.stop)

        async def publish() -> None:
            while True:
                for pod in pods:
                    await core_kafka.send(producer, topic, pod.report())
                await asyncio.sleep(interval_s)

        publishing = asyncio.create_task(publish())
        try:
            yield pods
        finally:
            publishing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await publishing


@contextlib.asynccontextmanager
async def hold(pod: Pod, n: int) -> AsyncIterator[list[asyncio.Task[Any]]]:
    """``n`` streams held open on ``pod`` by another client, until the pod's release."""
    async with channels.connect(pod.address, tls=testing.CA.tls("agent"), peer="executor") as chan:
        stub = executor_pb2_grpc.ExecutorStub(chan)
        req = executor_pb2.GenerateRequest(
            model="m", messages=[executor_pb2.ChatMessage(role="user", content="hold on")]
        )

        async def call() -> list[Any]:
            return [c async for c in stub.Generate(req, timeout=60)]

        calls = [asyncio.create_task(call()) for _ in range(n)]
        try:
            yield calls
        finally:
            pod.release.set()
            await asyncio.gather(*calls, return_exceptions=True)
            pod.release.clear()
