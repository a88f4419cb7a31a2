"""``FakeGateway``: aion's public Tasks and Agents services, scripted, on a real gRPC server.

SDK users test their own code against it without running aion: it listens on
127.0.0.1 at a free port, in the test's event loop, and speaks the real wire
protocol, so the code under test uses an unmodified ``AsyncClient`` or
``Client`` (deadlines, metadata, retries and error details included). Each
request is recorded, then answered as scripted: a queued failure for that RPC
first, else the scripted result, stream or agents.

It is a test double, not a second gateway: it checks only what a test of
client code needs (an unknown agent is NOT_FOUND, a non-positive ``max_tokens``
INVALID_ARGUMENT) and does no authentication.
"""

from __future__ import annotations

import collections
import time
import types
from collections.abc import AsyncIterator
from typing import Any, Self

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from aion.api.v1 import agents_pb2, agents_pb2_grpc, common_pb2, tasks_pb2, tasks_pb2_grpc
from aion.sdk.testing import _messages

_Context = grpc.aio.ServicerContext[Any, Any]


class FakeGateway:
    """A scripted gateway for tests of code that uses the SDK.

    ``async with FakeGateway() as gateway:`` starts it; ``gateway.target`` is
    the address to give the client. Script it with ``fail``,
    ``fail_stream_after``, ``end_with_error`` and the ``result``, ``events`` and
    ``agents`` attributes; inspect what it received with ``calls`` and ``seen``.
    """

    def __init__(self, *, host: str = "127.0.0.1") -> None:
        self._host = host
        self._server: grpc.aio.Server | None = None
        self._target = ""
        self.calls: list[_messages.Call] = []
        """Every request received, in order."""
        self.result: common_pb2.TaskResult = _messages.task_result()
        """What Submit answers (when it waits) and Get answers for its task id."""
        self.queued_task_id = "t-9"
        """The task id an asynchronous Submit is given (its result is QUEUED)."""
        self.events: list[tasks_pb2.TaskEvent] = _messages.stream_events()
        """What Stream yields, in order (started, two tokens, done by default)."""
        self.agents: dict[str, agents_pb2.Agent] = _messages.demo_agents()
        """The agents it knows, by name (``demo`` and ``big`` by default)."""
        self._failures: dict[str, list[_messages.Failure]] = collections.defaultdict(list)
        # (index, failure): streams fail after yielding this many events.
        self._stream_failure: tuple[int, _messages.Failure] | None = None

    @property
    def target(self) -> str:
        """host:port to connect to (once started)."""
        if not self._target:
            raise RuntimeError("the fake gateway is not started: use `async with FakeGateway()`")
        return self._target

    async def start(self) -> None:
        """Serve Tasks, Agents and Health on a free port of ``host``."""
        if self._server is not None:
            return
        server = grpc.aio.server()
        tasks_pb2_grpc.add_TasksServicer_to_server(_Tasks(self), server)
        agents_pb2_grpc.add_AgentsServicer_to_server(_Agents(self), server)
        checker = health.aio.HealthServicer()
        await checker.set("", health_pb2.HealthCheckResponse.SERVING)
        health_pb2_grpc.add_HealthServicer_to_server(checker, server)
        port = server.add_insecure_port(f"{self._host}:0")
        await server.start()
        self._server, self._target = server, f"{self._host}:{port}"

    async def stop(self) -> None:
        """Stop serving, ending calls in flight (idempotent)."""
        server, self._server = self._server, None
        if server is not None:
            await server.stop(None)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: types.TracebackType | None,
    ) -> None:
        await self.stop()

    # Scripting.

    def fail(
        self,
        method: str,
        code: grpc.StatusCode,
        message: str,
        *,
        field: str | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        """Answer the next call of ``method`` with this status instead (queued: call it
        twice to fail two calls). ``field`` adds a BadRequest detail naming it,
        ``retry_after_s`` a RetryInfo delay."""
        self._failures[method].append(_messages.Failure(code, message, field, retry_after_s))

    def fail_stream_after(self, count: int, code: grpc.StatusCode, message: str) -> None:
        """Make every Stream end with this status after yielding ``count`` events."""
        self._stream_failure = (count, _messages.Failure(code, message))

    def end_with_error(self, code: str, message: str) -> None:
        """Make streams end with an ERROR event (the task failed) instead of done."""
        self.events = _messages.error_events(code, message)

    # Inspecting.

    def seen(self, method: str) -> list[_messages.Call]:
        """The calls of one method, in order."""
        return [c for c in self.calls if c.method == method]

    # Serving (called by the servicers below).

    async def _enter(self, method: str, request: Any, context: _Context) -> None:
        metadata = {key: str(value) for key, value in context.invocation_metadata() or ()}
        self.calls.append(
            _messages.Call(method, request, metadata, context.time_remaining(), time.monotonic())
        )
        if self._failures[method]:
            await context.abort_with_status(self._failures[method].pop(0).status())

    async def _check_task(self, spec: tasks_pb2.TaskSpec, context: _Context) -> None:
        if spec.agent not in self.agents:
            await context.abort_with_status(
                _messages.Failure(
                    grpc.StatusCode.NOT_FOUND, f"agent '{spec.agent}' not found"
                ).status()
            )
        if spec.options.HasField("max_tokens") and spec.options.max_tokens <= 0:
            await context.abort_with_status(
                _messages.Failure(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    "max_tokens must be positive",
                    field="max_tokens",
                ).status()
            )

    async def _not_found(self, what: str, context: _Context) -> None:
        await context.abort_with_status(
            _messages.Failure(grpc.StatusCode.NOT_FOUND, f"{what} not found").status()
        )


class _Tasks(tasks_pb2_grpc.TasksServicer):
    """The Tasks service of a FakeGateway."""

    def __init__(self, fake: FakeGateway) -> None:
        self._fake = fake

    async def Submit(
        self, request: tasks_pb2.SubmitRequest, context: _Context
    ) -> tasks_pb2.SubmitResponse:
        await self._fake._enter("Submit", request, context)
        await self._fake._check_task(request.task, context)
        if request.asynchronous:
            task_id = self._fake.queued_task_id
            queued = common_pb2.TaskResult(
                task_id=task_id, agent=request.task.agent, status=common_pb2.TASK_STATUS_QUEUED
            )
            return tasks_pb2.SubmitResponse(task_id=task_id, result=queued)
        return tasks_pb2.SubmitResponse(task_id=self._fake.result.task_id, result=self._fake.result)

    async def Stream(
        self, request: tasks_pb2.StreamRequest, context: _Context
    ) -> AsyncIterator[tasks_pb2.TaskEvent]:
        await self._fake._enter("Stream", request, context)
        if request.HasField("task"):
            await self._fake._check_task(request.task, context)
        failure = self._fake._stream_failure
        for index, event in enumerate(self._fake.events):
            if failure is not None and failure[0] == index:
                await context.abort_with_status(failure[1].status())
            yield event

    async def Get(
        self, request: tasks_pb2.GetTaskRequest, context: _Context
    ) -> common_pb2.TaskResult:
        await self._fake._enter("Get", request, context)
        if request.task_id != self._fake.result.task_id:
            await self._fake._not_found(f"task '{request.task_id}'", context)
        return self._fake.result

    async def Cancel(
        self, request: tasks_pb2.CancelTaskRequest, context: _Context
    ) -> common_pb2.TaskResult:
        await self._fake._enter("Cancel", request, context)
        return _messages.task_result(
            request.task_id,
            status=common_pb2.TASK_STATUS_CANCELED,
            output="",
            error=common_pb2.TaskError(code="CANCELLED", message="canceled by caller"),
        )


class _Agents(agents_pb2_grpc.AgentsServicer):
    """The Agents service of a FakeGateway (its calls are recorded as ``ListAgents``,
    ``GetAgent`` and ``ApplyAgents``: Agents.Get would clash with Tasks.Get)."""

    def __init__(self, fake: FakeGateway) -> None:
        self._fake = fake

    async def List(
        self, request: agents_pb2.ListAgentsRequest, context: _Context
    ) -> agents_pb2.ListAgentsResponse:
        await self._fake._enter("ListAgents", request, context)
        return agents_pb2.ListAgentsResponse(agents=list(self._fake.agents.values()))

    async def Get(self, request: agents_pb2.GetAgentRequest, context: _Context) -> agents_pb2.Agent:
        await self._fake._enter("GetAgent", request, context)
        if request.name not in self._fake.agents:
            await self._fake._not_found(f"agent '{request.name}'", context)
        return self._fake.agents[request.name]

    async def Apply(
        self, request: agents_pb2.ApplyAgentsRequest, context: _Context
    ) -> agents_pb2.ApplyAgentsResponse:
        await self._fake._enter("ApplyAgents", request, context)
        return agents_pb2.ApplyAgentsResponse()
