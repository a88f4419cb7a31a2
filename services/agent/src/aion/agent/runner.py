"""The task lifecycle and the agent loop.

``Runner.start`` validates a task, records it and runs it in the process's
task group; the run streams tokens into the task's event log and ends it
with exactly one final status: OK, ERROR (with the error's code), TIMEOUT
(its deadline passed) or CANCELED (``Runner.cancel`` or shutdown).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

from aion.agent import model, peers, registry, store
from aion.api.executor.v1 import executor_pb2
from aion.core import errors

log = logging.getLogger(__name__)

Spawn = Callable[[Coroutine[Any, Any, None]], asyncio.Task[None]]


class Runner:
    """Starts, runs and cancels tasks."""

    def __init__(self, *, tasks: store.TaskStore, agents: registry.AgentRegistry,
                 clients: peers.Peers, spawn: Spawn, max_input_chars: int,
                 max_tokens_limit: int, retrieval_top_k: int) -> None:
        self._tasks = tasks
        self._agents = agents
        self._peers = clients
        self._spawn = spawn
        self._max_input = max_input_chars
        self._max_tokens = max_tokens_limit
        self._top_k = retrieval_top_k
        self._running: dict[str, asyncio.Task[None]] = {}

    def validate(self, spec: model.TaskSpec) -> None:
        """Refuse a task that cannot run, saying which field to fix."""
        if not spec.agent:
            raise errors.InvalidArgument("agent is required", field="task.agent")
        if not spec.input.strip():
            raise errors.InvalidArgument("input is empty; give the agent something to do",
                                         field="task.input")
        if len(spec.input) > self._max_input:
            raise errors.InvalidArgument(
                f"input is {len(spec.input)} characters; the limit is {self._max_input}",
                field="task.input")
        if spec.max_tokens is not None and not 0 < spec.max_tokens <= self._max_tokens:
            raise errors.InvalidArgument(
                f"max_tokens must be between 1 and {self._max_tokens}, got {spec.max_tokens}",
                field="task.options.max_tokens")
        if spec.temperature is not None and not 0 <= spec.temperature <= 2:
            raise errors.InvalidArgument(
                f"temperature must be between 0 and 2, got {spec.temperature}",
                field="task.options.temperature")

    async def start(self, spec: model.TaskSpec, decision: model.Decision) -> store.Task:
        """Record the task and run it in the background; returns at once."""
        self.validate(spec)
        agent = await self._agents.get(spec.tenant, spec.agent)
        task, created = await self._tasks.create(spec, decision=decision, model_name=agent.model)
        if created:
            self._running[task.id] = self._spawn(self._run(task, agent))
        return task

    async def cancel(self, tenant: str, task_id: str) -> store.Task:
        """Stop a running task; a task that has ended is returned as it is."""
        task = await self._tasks.get(tenant, task_id)
        running = self._running.get(task.id)
        if running is not None and not task.status.final:
            running.cancel()
            await asyncio.wait([running])
        return task

    async def cancel_all(self) -> None:
        """Cancel every task still running (shutdown past its grace)."""
        running = [t for t in self._running.values() if not t.done()]
        for t in running:
            t.cancel()
        if running:
            await asyncio.wait(running)

    async def wait_idle(self, timeout: float) -> None:
        """Wait up to ``timeout`` for the running tasks to end by themselves."""
        running = [t for t in self._running.values() if not t.done()]
        if running:
            await asyncio.wait(running, timeout=timeout)

    async def _run(self, task: store.Task, agent: model.AgentRecord) -> None:
        started = time.perf_counter()
        try:
            async with asyncio.timeout(task.spec.timeout_s):
                await self._tasks.set_running(task)
                await self._tasks.append(task, store.EventKind.STARTED)
                await self._loop(task, agent)
            status, error = model.Status.OK, None
        except TimeoutError:
            status = model.Status.TIMEOUT
            error = store.TaskError("DEADLINE_EXCEEDED",
                                    f"the task ran past its {task.spec.timeout_s:g}s deadline",
                                    retriable=True)
        except asyncio.CancelledError:
            # Ending as CANCELED is the whole point of the cancellation: record it.
            status = model.Status.CANCELED
            error = store.TaskError("CANCELLED", "the task was canceled")
        except errors.AionError as exc:
            status = model.Status.ERROR
            error = store.TaskError(exc.code.name, exc.message, retriable=exc.retriable)
        except Exception:
            log.exception("task %s failed", task.id)
            status = model.Status.ERROR
            error = store.TaskError("INTERNAL", "the agent service failed; see its log")
        finally:
            task.usage.latency_ms = int((time.perf_counter() - started) * 1000)
            self._running.pop(task.id, None)
        await self._tasks.finish(task, status, error=error)
        log.info("task ended", extra={"task_id": task.id, "agent": agent.name,
                                      "status": status.value,
                                      "latency_ms": task.usage.latency_ms})

    async def _context(self, task: store.Task, agent: model.AgentRecord) -> str:
        if not agent.knowledge_bases or not self._top_k:
            return ""
        passages: list[str] = []
        for kb in agent.knowledge_bases:
            hits = await self._peers.search(tenant=task.spec.tenant, knowledge_base=kb,
                                            query=task.spec.input, top_k=self._top_k, timeout=10)
            passages.extend(h.text for h in hits)
        return "\n\n".join(passages[: self._top_k])

    async def _loop(self, task: store.Task, agent: model.AgentRecord) -> None:
        if task.decision.route == "api":
            raise errors.FailedPrecondition(
                "the router chose an external API, but this agent service has no provider "
                "client; set the agent's privacy to local-only")
        system = agent.instructions or "You are a helpful assistant."
        context = await self._context(task, agent)
        if context:
            system += "\n\nUse this context when it helps:\n" + context
        request = executor_pb2.GenerateRequest(
            model=agent.model,
            messages=[executor_pb2.ChatMessage(role="system", content=system),
                      executor_pb2.ChatMessage(role="user", content=task.spec.input)],
            max_tokens=task.spec.max_tokens or agent.max_tokens,
        )
        if task.spec.temperature is not None:
            request.temperature = task.spec.temperature
        if task.spec.seed is not None:
            request.seed = task.spec.seed
        async for chunk in self._peers.generate(agent.executor_endpoints, request,
                                                timeout=task.spec.timeout_s):
            if chunk.text:
                task.output += chunk.text
                await self._tasks.append(task, store.EventKind.TOKEN, text=chunk.text)
            if chunk.HasField("usage"):
                task.usage.prompt_tokens += chunk.usage.prompt_tokens
                task.usage.completion_tokens += chunk.usage.completion_tokens
        await self._tasks.append(task, store.EventKind.PARTIAL, text=task.output, step=1)
