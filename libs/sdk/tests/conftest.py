"""A scripted peer of the public Tasks and Agents services on a real grpc.aio server.

The SDK's unit tests need something to talk to; the end-to-end tests use the
real gateway. The servicer records every call (metadata, deadline, time) and
fails as its ``failures`` script says before it answers.
"""

from __future__ import annotations

import collections
import dataclasses
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from aion.api.v1 import agents_pb2, agents_pb2_grpc, common_pb2, tasks_pb2, tasks_pb2_grpc
from aion.sdk import client, retry, sync_client

Context = grpc.aio.ServicerContext[Any, Any]
FAST = retry.RetryPolicy(max_attempts=3, initial_backoff_s=0.01, max_backoff_s=0.05)


@dataclasses.dataclass(frozen=True)
class Failure:
    """A status the servicer answers with, with google.rpc details as the gateway sends them."""

    code: grpc.StatusCode
    message: str
    field: str | None = None
    retry_after_s: float | None = None

    def status(self) -> grpc.Status:
        """The grpc.Status to abort with."""
        status = status_pb2.Status(code=self.code.value[0], message=self.message)
        if self.field is not None:
            status.details.add().Pack(error_details_pb2.BadRequest(field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=self.field,
                                                            description=self.message)]))
        if self.retry_after_s is not None:
            delay = duration_pb2.Duration()
            delay.FromNanoseconds(int(self.retry_after_s * 1e9))
            status.details.add().Pack(error_details_pb2.RetryInfo(retry_delay=delay))
        converted: grpc.Status = rpc_status.to_status(status)
        return converted


@dataclasses.dataclass(frozen=True)
class Seen:
    """One call as the servicer saw it."""

    method: str
    request: Any
    metadata: dict[str, str]
    time_remaining: float | None
    at: float


def result(task_id: str = "t-1", *,
           status: common_pb2.TaskStatus.ValueType = common_pb2.TASK_STATUS_OK,
           output: str = "Hello", error: common_pb2.TaskError | None = None,
           ) -> common_pb2.TaskResult:
    """A task result as the gateway would send it."""
    res = common_pb2.TaskResult(
        task_id=task_id, agent="demo", status=status, output=output,
        engine=common_pb2.Engine(route=common_pb2.ROUTE_LOCAL, chosen_by="policy:privacy",
                                 reason="the agent is local-only", model="smollm2"),
        usage=common_pb2.Usage(latency_ms=42, prompt_tokens=3, completion_tokens=2, tokens=5,
                               cost_usd=0.0),
        error=error)
    res.created_at.FromSeconds(1_700_000_000)
    res.finished_at.FromSeconds(1_700_000_001)
    return res


def ok_events(task_id: str = "t-1") -> list[tasks_pb2.TaskEvent]:
    """started, two tokens, done."""
    return [
        tasks_pb2.TaskEvent(task_id=task_id, seq=1, started=tasks_pb2.TaskStarted(
            engine=common_pb2.Engine(route=common_pb2.ROUTE_LOCAL))),
        tasks_pb2.TaskEvent(task_id=task_id, seq=2, token=tasks_pb2.Token(text="Hel")),
        tasks_pb2.TaskEvent(task_id=task_id, seq=3, token=tasks_pb2.Token(text="lo")),
        tasks_pb2.TaskEvent(task_id=task_id, seq=4, done=tasks_pb2.Done(result=result(task_id))),
    ]


class Scripted(tasks_pb2_grpc.TasksServicer):
    """Answers like a small gateway, after failing as ``failures[method]`` lists."""

    def __init__(self) -> None:
        self.target = ""
        self.calls: list[Seen] = []
        self.failures: dict[str, list[Failure]] = collections.defaultdict(list)
        self.events = ok_events()
        # (index, failure): the stream fails after yielding this many events.
        self.stream_failure: tuple[int, Failure] | None = None
        self.agents = {
            "demo": agents_pb2.Agent(name="demo", model="smollm2", model_task="generate",
                                     privacy=common_pb2.PRIVACY_LOCAL_ONLY, ready=True,
                                     max_tokens=256),
            "big": agents_pb2.Agent(name="big", model="llama-70b", ready=False,
                                    privacy=common_pb2.PRIVACY_HYBRID),
        }

    def seen(self, method: str) -> list[Seen]:
        """The calls of one method."""
        return [c for c in self.calls if c.method == method]

    def fail(self, method: str, code: grpc.StatusCode, message: str, *,
             field: str | None = None, retry_after_s: float | None = None) -> None:
        """Answer the next call of ``method`` with this status instead."""
        self.failures[method].append(Failure(code, message, field, retry_after_s))

    def fail_stream_after(self, count: int, code: grpc.StatusCode, message: str) -> None:
        """Make streams fail with this status after yielding ``count`` events."""
        self.stream_failure = (count, Failure(code, message))

    def end_with_error(self, code: str, message: str) -> None:
        """Make streams end with an ERROR event instead of done."""
        failed = result(status=common_pb2.TASK_STATUS_ERROR, output="",
                        error=common_pb2.TaskError(code=code, message=message))
        self.events = [*self.events[:1], tasks_pb2.TaskEvent(
            task_id="t-1", seq=2, error=tasks_pb2.ErrorEvent(result=failed))]

    async def _enter(self, method: str, request: Any, context: Context) -> None:
        metadata = {key: str(value) for key, value in context.invocation_metadata() or ()}
        self.calls.append(Seen(method, request, metadata,
                               context.time_remaining(), time.monotonic()))
        if self.failures[method]:
            await context.abort_with_status(self.failures[method].pop(0).status())

    async def _check_task(self, spec: tasks_pb2.TaskSpec, context: Context) -> None:
        if spec.agent not in self.agents:
            await context.abort_with_status(Failure(
                grpc.StatusCode.NOT_FOUND, f"agent '{spec.agent}' not found").status())
        if spec.options.HasField("max_tokens") and spec.options.max_tokens <= 0:
            await context.abort_with_status(Failure(
                grpc.StatusCode.INVALID_ARGUMENT, "max_tokens must be positive",
                field="max_tokens").status())

    async def Submit(self, request: tasks_pb2.SubmitRequest,
                     context: Context) -> tasks_pb2.SubmitResponse:
        await self._enter("Submit", request, context)
        await self._check_task(request.task, context)
        if request.asynchronous:
            queued = common_pb2.TaskResult(task_id="t-9", agent=request.task.agent,
                                           status=common_pb2.TASK_STATUS_QUEUED)
            return tasks_pb2.SubmitResponse(task_id="t-9", result=queued)
        return tasks_pb2.SubmitResponse(task_id="t-1", result=result())

    async def Stream(self, request: tasks_pb2.StreamRequest,
                     context: Context) -> AsyncIterator[tasks_pb2.TaskEvent]:
        await self._enter("Stream", request, context)
        if request.HasField("task"):
            await self._check_task(request.task, context)
        for index, event in enumerate(self.events):
            if self.stream_failure is not None and self.stream_failure[0] == index:
                await context.abort_with_status(self.stream_failure[1].status())
            yield event

    async def Get(self, request: tasks_pb2.GetTaskRequest,
                  context: Context) -> common_pb2.TaskResult:
        await self._enter("Get", request, context)
        if request.task_id != "t-1":
            await context.abort_with_status(Failure(
                grpc.StatusCode.NOT_FOUND, f"task '{request.task_id}' not found").status())
        return result()

    async def Cancel(self, request: tasks_pb2.CancelTaskRequest,
                     context: Context) -> common_pb2.TaskResult:
        await self._enter("Cancel", request, context)
        return result(request.task_id, status=common_pb2.TASK_STATUS_CANCELED, output="",
                      error=common_pb2.TaskError(code="CANCELLED", message="canceled by caller"))

    async def list_agents(self, request: agents_pb2.ListAgentsRequest,
                          context: Context) -> agents_pb2.ListAgentsResponse:
        """Agents.List."""
        await self._enter("List", request, context)
        return agents_pb2.ListAgentsResponse(agents=list(self.agents.values()))

    async def get_agent(self, request: agents_pb2.GetAgentRequest,
                        context: Context) -> agents_pb2.Agent:
        """Agents.Get."""
        await self._enter("GetAgent", request, context)
        if request.name not in self.agents:
            await context.abort_with_status(Failure(
                grpc.StatusCode.NOT_FOUND, f"agent '{request.name}' not found").status())
        return self.agents[request.name]


@pytest.fixture(autouse=True)
def _no_aion_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AION_TARGET", "AION_API_KEY", "AION_TOKEN", "AION_TLS"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
async def gateway() -> AsyncIterator[Scripted]:
    """The scripted servicer, served on 127.0.0.1 at a free port (``gateway.target``)."""
    servicer = Scripted()
    server = grpc.aio.server()
    tasks_pb2_grpc.add_TasksServicer_to_server(servicer, server)
    agents_pb2_grpc.add_AgentsServicer_to_server(_AgentsView(servicer), server)
    checker = health.aio.HealthServicer()
    await checker.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(checker, server)
    servicer.target = f"127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}"
    await server.start()
    yield servicer
    await server.stop(None)


class _AgentsView(agents_pb2_grpc.AgentsServicer):
    """The Agents service of the scripted servicer (Agents.Get would clash with Tasks.Get)."""

    def __init__(self, servicer: Scripted) -> None:
        self._servicer = servicer

    async def List(self, request: agents_pb2.ListAgentsRequest,
                   context: Context) -> agents_pb2.ListAgentsResponse:
        return await self._servicer.list_agents(request, context)

    async def Get(self, request: agents_pb2.GetAgentRequest,
                  context: Context) -> agents_pb2.Agent:
        return await self._servicer.get_agent(request, context)

    async def Apply(self, request: agents_pb2.ApplyAgentsRequest,
                    context: Context) -> agents_pb2.ApplyAgentsResponse:
        return agents_pb2.ApplyAgentsResponse()


@pytest.fixture
async def aclient(gateway: Scripted) -> AsyncIterator[client.AsyncClient]:
    """An async client of the scripted gateway, with quick retries."""
    async with client.AsyncClient(gateway.target, retries=FAST) as c:
        yield c


@pytest.fixture
def sclient(gateway: Scripted) -> Iterator[sync_client.Client]:
    """A sync client of the scripted gateway, with quick retries (call it off the loop)."""
    with sync_client.Client(gateway.target, retries=FAST) as c:
        yield c
