"""The AgentService gRPC service."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, cast

import grpc
from opentelemetry import trace

from aion.agent import convert, model, registry, runner, store
from aion.api.agent.v1 import agent_pb2, agent_pb2_grpc
from aion.api.v1 import agents_pb2, common_pb2, tasks_pb2
from aion.core import errors, telemetry

_Ctx = grpc.aio.ServicerContext[Any, Any]


class AgentServicer(agent_pb2_grpc.AgentServiceServicer):
    """Tasks and agents, for the gateway and the operator."""

    def __init__(
        self,
        *,
        run: runner.Runner,
        tasks: store.TaskStore,
        agents: registry.AgentRegistry,
        default_timeout_s: float,
        follow_poll_s: float = 2.0,
    ) -> None:
        self._runner = run
        self._tasks = tasks
        self._agents = agents
        self._default_timeout = default_timeout_s
        self._poll_s = follow_poll_s

    def _timeout(self, context: _Ctx, *, asynchronous: bool) -> float:
        remaining = None if asynchronous else context.time_remaining()
        if not remaining:
            return self._default_timeout
        # End the task a little before the caller's deadline, so that its TIMEOUT
        # result still reaches the caller instead of a bare DEADLINE_EXCEEDED.
        margin = min(1.0, remaining * 0.1)
        return max(0.05, min(self._default_timeout, remaining - margin))

    async def _start(
        self, request: agent_pb2.RunRequest, context: _Ctx, *, asynchronous: bool
    ) -> model.TaskRecord:
        spec = convert.spec_from_pb(
            request,
            timeout_s=self._timeout(context, asynchronous=asynchronous),
            asynchronous=asynchronous,
        )
        task = await self._runner.start(spec, convert.decision_from_pb(request.decision))
        trace.get_current_span().set_attribute(telemetry.TASK_ID, task.id)
        return task

    def _follow(self, task: model.TaskRecord) -> AsyncIterator[model.Event]:
        return self._tasks.follow(task, poll_s=self._poll_s, launched=self._runner.launched(task))

    async def _events(self, task: model.TaskRecord) -> AsyncIterator[tasks_pb2.TaskEvent]:
        async for event in self._follow(task):
            if event.kind in model.FINAL_KINDS:
                task = await self._tasks.ended(task)
            yield convert.event_to_pb(task, event)

    async def Run(
        self, request: agent_pb2.RunRequest, context: _Ctx
    ) -> AsyncIterator[tasks_pb2.TaskEvent]:
        task = await self._start(request, context, asynchronous=False)

        # The caller leaving before the end (the stream cancelled) stops the task. On the
        # RPC's end, not in a ``finally`` here: cancelled while sending, gRPC leaves this
        # generator suspended at its ``yield``, and a ``finally`` would wait for the
        # garbage collector to close it.
        def ended(_: _Ctx) -> None:
            self._runner.caller_left(task)

        context.add_done_callback(cast(Any, ended))  # the stubs type it as a class
        async for msg in self._events(task):
            yield msg

    async def Submit(
        self, request: agent_pb2.RunRequest, context: _Ctx
    ) -> tasks_pb2.SubmitResponse:
        task = await self._start(request, context, asynchronous=request.asynchronous)
        if not request.asynchronous:
            try:
                async for event in self._follow(task):
                    if event.kind in model.FINAL_KINDS:
                        task = await self._tasks.ended(task)
            finally:  # the caller left before the end (the call was cancelled): stop it
                self._runner.caller_left(task)
        return tasks_pb2.SubmitResponse(task_id=task.id, result=convert.result_to_pb(task))

    async def Follow(
        self, request: agent_pb2.TaskRef, context: _Ctx
    ) -> AsyncIterator[tasks_pb2.TaskEvent]:
        task = await self._tasks.get(convert.tenant(request), request.task_id)
        async for msg in self._events(task):
            yield msg

    async def GetTask(self, request: agent_pb2.TaskRef, context: _Ctx) -> common_pb2.TaskResult:
        task = await self._tasks.get(convert.tenant(request), request.task_id)
        return convert.result_to_pb(task)

    async def CancelTask(self, request: agent_pb2.TaskRef, context: _Ctx) -> common_pb2.TaskResult:
        task = await self._runner.cancel(convert.tenant(request), request.task_id)
        return convert.result_to_pb(task)

    async def ListAgents(
        self, request: agent_pb2.ListAgentsRequest, context: _Ctx
    ) -> agents_pb2.ListAgentsResponse:
        agents = await self._agents.list(convert.tenant(request))
        return agents_pb2.ListAgentsResponse(agents=[convert.agent_to_pb(a) for a in agents])

    async def GetAgent(self, request: agent_pb2.AgentRef, context: _Ctx) -> agents_pb2.Agent:
        return convert.agent_to_pb(await self._agents.get(convert.tenant(request), request.name))

    async def RegisterAgent(
        self, request: agent_pb2.RegisterAgentRequest, context: _Ctx
    ) -> agents_pb2.Agent:
        if not request.agent.name:
            raise errors.InvalidArgument("agent.name is required", field="agent.name")
        if not request.agent.model:
            raise errors.InvalidArgument("agent.model is required", field="agent.model")
        agent = await self._agents.put(convert.agent_from_pb(request))
        return convert.agent_to_pb(agent)

    async def DeregisterAgent(
        self, request: agent_pb2.DeregisterAgentRequest, context: _Ctx
    ) -> agent_pb2.DeregisterAgentResponse:
        removed = await self._agents.delete(
            convert.tenant(request), request.name, owner=convert.owner(request.owner)
        )
        return agent_pb2.DeregisterAgentResponse(deregistered=removed)

    async def ApplyAgents(
        self, request: agent_pb2.ApplyAgentsRequest, context: _Ctx
    ) -> agents_pb2.ApplyAgentsResponse:
        try:
            parsed = await asyncio.to_thread(  # CPU-bound: off the event loop
                registry.parse_manifest,
                request.request.manifest,
                tenant=convert.tenant(request),
                executor_target=None,
                max_tokens=self._runner.limits.max_tokens,
            )
        except (RecursionError, ValueError) as exc:
            # Nesting deeper than the parser goes, or an integer of thousands of digits.
            raise errors.InvalidArgument(
                f"not a valid Agent manifest: {type(exc).__name__}: {str(exc)[:200]}",
                field="manifest",
            ) from None
        for agent in parsed:  # what Postgres would refuse, refused before anything is written
            _storable(agent)
        applied = await self._agents.put_all(parsed)
        return agents_pb2.ApplyAgentsResponse(agents=[convert.agent_to_pb(a) for a in applied])


def _storable(agent: model.AgentRecord) -> None:
    """InvalidArgument unless the registry can store ``agent`` as it is."""
    texts = [
        agent.name,
        agent.model,
        agent.model_task,
        agent.instructions,
        agent.description,
        *agent.knowledge_bases,
        *agent.tools,
    ]
    if any("\x00" in t for t in texts):
        raise errors.InvalidArgument(
            f"agent {agent.name!r}: the manifest holds a NUL character (\\0)", field="manifest"
        )
