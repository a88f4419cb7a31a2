"""The task lifecycle: start, run under a lease, cancel, time out, recover.

``Runner.start`` validates a task and records it. A synchronous task is
claimed by this replica at once and run here; an asynchronous one waits on
the work topic for any replica's dispatcher (``dispatch``, fed by
``work_queue``). A run holds the task's lease, renewed by ``heartbeats``;
``recovery`` gives tasks whose lease ran out (their worker died) to another
worker, or ends them with a clear status. Every run ends with exactly one
final status: OK, ERROR (with the error's code), TIMEOUT (its deadline
passed) or CANCELED. The runs are this object's (``release_all`` stops them);
``worker.Worker`` runs its loops.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

import psycopg
from opentelemetry import propagate, trace

from aion.agent import agent_loop, budget, model, registry, run_log, store
from aion.core import errors, telemetry

log = logging.getLogger(__name__)
tracer = trace.get_tracer(__name__)

Spawn = Callable[[Coroutine[Any, Any, None]], asyncio.Task[None]]

# How long a refused start (its tenant at its limit) keeps the tenant's next starts from
# beginning their model calls before they are recorded (``Runner.start``).
REFUSALS_KEPT_S = 2.0


@dataclasses.dataclass(frozen=True)
class Limits:
    """What a task may ask for, and how runs hold their tasks."""

    max_input_chars: int = 32_768
    max_tokens: int = 2048
    max_attempts: int = 3
    max_concurrent: int = 16
    max_running_per_tenant: int = 8
    max_idempotency_key_chars: int = 256
    heartbeat_s: float = 3.0
    lease_s: float = 15.0
    dispatch_poll_s: float = 1.0


class _Sink:
    """A run's sink: tokens, partials, steps and citations go to its ``RunLog``, once
    its task is recorded (``recorded``, of a run started while it was: ``Runner.start``)."""

    def __init__(
        self, events: run_log.RunLog, recorded: asyncio.Future[bool] | None = None
    ) -> None:
        self._log = events
        self._recorded = recorded

    async def recorded(self) -> None:
        if self._recorded is not None and not self._recorded.done():
            # Shielded: the run's cancellation must not cancel what others wait for.
            await asyncio.shield(self._recorded)

    async def token(self, text: str) -> None:
        await self.recorded()
        await self._log.add(model.EventKind.TOKEN, text=text)

    async def partial(self, text: str, step: int) -> None:
        await self.recorded()
        await self._log.add(model.EventKind.PARTIAL, text=text, step=step)

    async def step(self, rec: model.StepRecord) -> None:
        await self.recorded()
        await self._log.step(rec)

    async def cite(self, citations: Sequence[model.Citation]) -> None:
        self._log.cite(citations)


class Runner:
    """Starts, runs, cancels and recovers tasks."""

    def __init__(
        self,
        *,
        tasks: store.TaskStore,
        agents: registry.AgentRegistry,
        loop: agent_loop.AgentLoop,
        worker_id: str,
        limits: Limits,
        spawn: Spawn = asyncio.create_task,
    ) -> None:
        self._tasks = tasks
        self._agents = agents
        self._agent_loop = loop
        self._spawn = spawn
        self.worker_id = worker_id
        self._limits = limits
        self._running: dict[str, asyncio.Task[None]] = {}
        self._why: dict[str, str] = {}  # task id -> why its run was stopped
        # sync task id -> what start gave its caller
        self._started: dict[str, model.TaskRecord] = {}
        self._recording: set[str] = set()  # sync task ids whose runs started unrecorded
        self._refused: dict[str, float] = {}  # tenant -> when a start was last refused
        self._room = asyncio.Condition()
        self._ready = asyncio.Event()  # set when a queued task may be ready to claim

    def validate(self, spec: model.TaskSpec) -> None:
        """Refuse a task that cannot run, saying which field to fix."""
        lim = self._limits
        if not spec.agent:
            raise errors.InvalidArgument("agent is required", field="task.agent")
        if not spec.input.strip():
            raise errors.InvalidArgument(
                "input is empty; give the agent something to do", field="task.input"
            )
        if len(spec.input) > lim.max_input_chars:
            raise errors.InvalidArgument(
                f"input is {len(spec.input)} characters; the limit is {lim.max_input_chars}",
                field="task.input",
            )
        if len(spec.idempotency_key) > lim.max_idempotency_key_chars:
            raise errors.InvalidArgument(
                f"idempotency_key is {len(spec.idempotency_key)} characters; the limit is "
                f"{lim.max_idempotency_key_chars}",
                field="task.idempotency_key",
            )
        if spec.max_tokens is not None and not 0 < spec.max_tokens <= lim.max_tokens:
            raise errors.InvalidArgument(
                f"max_tokens must be between 1 and {lim.max_tokens}, got {spec.max_tokens}",
                field="task.options.max_tokens",
            )
        if spec.temperature is not None and not 0 <= spec.temperature <= 2:
            raise errors.InvalidArgument(
                f"temperature must be between 0 and 2, got {spec.temperature}",
                field="task.options.temperature",
            )
        if spec.sla_ms is not None and spec.sla_ms <= 0:
            raise errors.InvalidArgument(
                f"sla_ms must be a positive number of milliseconds, got {spec.sla_ms}",
                field="task.options.sla_ms",
            )
        if spec.budget_usd is not None and not spec.budget_usd >= 0:  # NaN too
            raise errors.InvalidArgument(
                f"budget_usd must be at least 0, got {spec.budget_usd}",
                field="task.options.budget_usd",
            )

    # -- starting -------------------------------------------------------------------
    async def start(self, spec: model.TaskSpec, decision: model.Decision) -> model.TaskRecord:
        """Record the task; run it here (synchronous) or queue it for a worker (async).
        A synchronous task gets the admission a queued one waits for: when this replica
        runs its limit of tasks, or the tenant runs its limit, it is refused with
        RESOURCE_EXHAUSTED (and RetryInfo) and nothing is recorded.

        A synchronous task's run starts while the task is recorded, so that its model
        call is under way by the time the record commits: the run hands nothing out,
        writes nothing and calls no tool before that (``_Sink``, ``_end``), and is
        stopped without a trace when the task is not recorded (refused, or an earlier
        task has its idempotency key)."""
        self.validate(spec)
        agent = await self._agents.get(spec.tenant, spec.agent)
        if spec.asynchronous:
            new = self._tasks.new_task(spec, decision=decision, model_name=agent.model)
            task, _ = await self._tasks.create(new, max_attempts=self._limits.max_attempts)
            return task
        if len(self._running) >= self._limits.max_concurrent:
            raise errors.ResourceExhausted(
                f"this agent service replica runs {len(self._running)} tasks, its limit; retry "
                "shortly, or submit asynchronously to queue",
                retry_after_s=1.0,
            )
        new = self._tasks.new_task(
            spec, decision=decision, model_name=agent.model, worker_id=self.worker_id
        )
        if not self._may_run_unrecorded(spec):
            task, created = await self._create_claimed(new)
            if created:
                self._launch(task, agent)
                self._started[task.id] = task
            return task
        recorded: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._recording.add(new.id)
        self._launch(new, agent, recorded)
        creating = asyncio.ensure_future(self._create_claimed(new))

        def settled(done: asyncio.Future[tuple[model.TaskRecord, bool]]) -> None:
            self._recording.discard(new.id)
            ok = not done.cancelled() and done.exception() is None and done.result()[1]
            if ok:  # what the record got from Postgres, for the run's end to announce
                new.created_at, new.deadline = (
                    done.result()[0].created_at,
                    done.result()[0].deadline,
                )
            recorded.set_result(ok)
            if not ok:
                self._stop(new.id, "unrecorded")

        creating.add_done_callback(settled)
        try:
            # Shielded: the task is recorded, or not, whether its caller waits or not.
            task, created = await asyncio.shield(creating)
        except asyncio.CancelledError:
            self._stop(new.id, "cancel")  # the caller left: CANCELED, if it was recorded
            raise
        if created and task.id in self._running:
            self._started[task.id] = task
        return task

    def _may_run_unrecorded(self, spec: model.TaskSpec) -> bool:
        """Whether ``spec``'s run may start while it is recorded: not when its recording
        may well find an earlier task (its idempotency key: a retry) or be refused (its
        tenant was refused here within the last ``REFUSALS_KEPT_S``), so that neither
        costs the executor a model call begun for nothing."""
        if spec.idempotency_key:
            return False
        refused = self._refused.get(spec.tenant)
        return refused is None or time.monotonic() - refused > REFUSALS_KEPT_S

    async def _create_claimed(self, new: model.TaskRecord) -> tuple[model.TaskRecord, bool]:
        try:
            return await self._tasks.create(
                new,
                max_attempts=self._limits.max_attempts,
                tenant_cap=self._limits.max_running_per_tenant,
            )
        except errors.ResourceExhausted:
            now = time.monotonic()
            if len(self._refused) > 4096:  # the tenants refused long ago go
                self._refused = {
                    t: at for t, at in self._refused.items() if now - at <= REFUSALS_KEPT_S
                }
            self._refused[new.spec.tenant] = now
            raise

    async def wait_for_room(self) -> None:
        """Wait until this replica runs fewer tasks than its limit (the worker's gate)."""
        async with self._room:
            await self._room.wait_for(lambda: len(self._running) < self._limits.max_concurrent)

    def ready(self) -> None:
        """Wake the dispatcher: a queued task may be ready to claim."""
        self._ready.set()

    async def dispatch(self, queue: str) -> None:
        """Run ``queue``'s ready tasks until cancelled: whenever this replica has room,
        claim the next one fairly between tenants (``TaskStore.claim_next``). Woken by
        ``ready``, and polls, since other replicas free their tenants' slots too."""
        while True:
            await self.wait_for_room()
            self._ready.clear()
            try:
                task = await self._tasks.claim_next(
                    queue, worker_id=self.worker_id, tenant_cap=self._limits.max_running_per_tenant
                )
            except psycopg.Error as exc:
                log.warning("cannot take queued tasks now: %s", exc)
                task = None
            if task is not None:
                try:
                    await self.run_claimed(task)
                except (psycopg.Error, errors.AionError) as exc:
                    # Claimed but not started: its lease lapses and the reaper queues it again.
                    log.warning("task %s: cannot start it now: %s", task.id, exc)
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ready.wait(), self._limits.dispatch_poll_s)

    def launched(self, task: model.TaskRecord) -> bool:
        """Whether ``task`` is the one ``start`` created and launched here (its caller
        owns the run), and it still runs."""
        return self._started.get(task.id) is task

    def caller_left(self, task: model.TaskRecord) -> None:
        """The caller that started a synchronous task (``task`` is what ``start`` gave it)
        went away: stop it (CANCELED). A task submitted asynchronously survives its caller,
        and a caller given an existing task (its idempotency key) does not own it."""
        if not task.spec.asynchronous and self.launched(task):
            self._stop(task.id, "cancel")

    async def run_claimed(self, task: model.TaskRecord) -> None:
        """Run a task this replica claimed (once its claim committed)."""
        self._tasks.committed(task.id)
        try:
            agent = await self._agents.get(task.spec.tenant, task.spec.agent)
        except errors.NotFound as exc:
            await self._tasks.finish(
                task,
                model.Status.ERROR,
                output="",
                error=model.TaskError(exc.code.name, exc.message),
            )
            return
        self._launch(task, agent)

    def _launch(
        self,
        task: model.TaskRecord,
        agent: model.AgentRecord,
        recorded: asyncio.Future[bool] | None = None,
    ) -> None:
        self._running[task.id] = self._spawn(self._traced(task, agent, recorded))

    # -- stopping -------------------------------------------------------------------
    def _stop(self, task_id: str, why: str) -> bool:
        running = self._running.get(task_id)
        if running is None or running.done():
            return False
        self._why.setdefault(task_id, why)
        running.cancel()
        return True

    async def cancel(self, tenant: str, task_id: str, *, wait_s: float = 10.0) -> model.TaskRecord:
        """Stop a task wherever it runs; an ended task is returned as it is."""
        task = await self._tasks.get(tenant, task_id)
        if task.status.final:
            return task
        running = self._running.get(task.id)
        if running is not None and self._stop(task.id, "cancel"):
            await asyncio.wait([running])
            return await self._tasks.get(tenant, task_id)
        task = await self._tasks.request_cancel(tenant, task_id)
        # Another replica runs it: its heartbeat sees the request and stops the run.
        deadline = time.monotonic() + wait_s
        while not task.status.final and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            task = await self._tasks.get(tenant, task_id)
        return task

    async def release_all(self) -> None:
        """Stop every run of this replica and give its tasks back to the queue (shutdown)."""
        running = [t for tid, t in self._running.items() if self._stop(tid, "shutdown")]
        if running:
            await asyncio.wait(running)

    async def wait_idle(self, timeout: float) -> None:
        """Wait up to ``timeout`` for the running tasks to end by themselves."""
        running = [t for t in self._running.values() if not t.done()]
        if running:
            await asyncio.wait(running, timeout=timeout)

    @property
    def limits(self) -> Limits:
        """What tasks may ask for here."""
        return self._limits

    @property
    def tasks(self) -> store.TaskStore:
        """The store this runner records its tasks in."""
        return self._tasks

    @property
    def running(self) -> list[str]:
        """Ids of the tasks this replica runs now."""
        return list(self._running)

    # -- running --------------------------------------------------------------------
    async def _traced(
        self,
        task: model.TaskRecord,
        agent: model.AgentRecord,
        recorded: asyncio.Future[bool] | None,
    ) -> None:
        """Run the task in a span of its own trace (a child of the span that made it ready:
        the work topic's consumer, or the call that started it), for its tenant."""
        parent = propagate.extract(task.trace_context) if task.trace_context else None
        with tracer.start_as_current_span(
            f"invoke_agent {task.spec.agent}",
            context=parent,
            attributes={
                "gen_ai.operation.name": "invoke_agent",
                "gen_ai.agent.name": task.spec.agent,
                telemetry.TENANT: task.spec.tenant,
                telemetry.TASK_ID: task.id,
                "aion.task.attempt": task.attempts,
            },
        ):
            telemetry.bind_tenant(task.spec.tenant)
            await self._run(task, agent, recorded)

    async def _run(
        self,
        task: model.TaskRecord,
        agent: model.AgentRecord,
        recorded: asyncio.Future[bool] | None,
    ) -> None:
        started = time.perf_counter()
        output = ""
        # A task naming no max_tokens gets its agent's, within the service's limit (L9).
        max_tokens = task.spec.max_tokens or min(agent.max_tokens, self._limits.max_tokens)
        req = agent_loop.Request(
            tenant=task.spec.tenant,
            input=task.spec.input,
            max_tokens=max_tokens,
            temperature=task.spec.temperature,
            seed=task.spec.seed,
            route=task.decision.route,
            timeout_s=max(0.05, task.remaining_s),
            task_id=task.id,
            attempt=task.attempts,
            spend=budget.for_task(task, agent),
            sla_ms=task.spec.sla_ms,
        )
        status: model.Status | None = None
        error: model.TaskError | None = None
        why: str | None = None
        events = run_log.RunLog(self._tasks, task)
        try:
            async with asyncio.timeout(task.remaining_s):
                output = await self._agent_loop.run(agent, req, _Sink(events, recorded))
            status = model.Status.OK
        except TimeoutError:
            status = model.Status.TIMEOUT
            error = model.TaskError(
                "DEADLINE_EXCEEDED",
                f"the task ran past its {task.spec.timeout_s:g}s deadline",
                retriable=True,
            )
        except asyncio.CancelledError:
            if self._why.get(task.id, "shutdown") == "cancel":
                # Ending as CANCELED is the whole point of the cancellation: record it.
                status = model.Status.CANCELED
                error = model.TaskError("CANCELLED", "the task was canceled")
        except model.LeaseLost:
            log.warning("task %s: lease lost; another worker owns it now", task.id)
        except errors.AionError as exc:
            status = model.Status.ERROR
            error = model.TaskError(exc.code.name, exc.message, retriable=exc.retriable)
        except psycopg.Error as exc:
            # The database went away mid-run: the lease lapses and the reaper recovers it.
            log.warning("task %s: database error, leaving it to recovery: %s", task.id, exc)
        except Exception:
            log.exception("task %s failed", task.id)
            status = model.Status.ERROR
            error = model.TaskError("INTERNAL", "the agent service failed; see its log")
        finally:
            self._running.pop(task.id, None)
            self._started.pop(task.id, None)
            why = self._why.pop(task.id, None)
            async with self._room:
                self._room.notify_all()
            self._ready.set()
        latency = int((time.perf_counter() - started) * 1000)
        if status is model.Status.OK:
            events.output = output
        try:
            if recorded is None or await asyncio.shield(recorded):
                await self._end(task, events, status, error, latency_ms=latency, why=why)
        finally:
            await events.close()

    async def _end(
        self,
        task: model.TaskRecord,
        events: run_log.RunLog,
        status: model.Status | None,
        error: model.TaskError | None,
        *,
        latency_ms: int,
        why: str | None,
    ) -> None:
        try:
            if status is None:
                if why == "shutdown":
                    with contextlib.suppress(model.LeaseLost, psycopg.Error):
                        await events.flush()  # what was handed out, before the next attempt
                    await self._tasks.release(task)
                    log.info("task %s given back to the queue at shutdown", task.id)
                return
            ended = await events.finish(status, error=error, latency_ms=latency_ms)
        except model.LeaseLost:
            log.warning("task %s: not ended here, another worker owns it", task.id)
            return
        except psycopg.Error as exc:
            log.warning("task %s: cannot record its end (%s); recovery will", task.id, exc)
            return
        log.info(
            "task ended",
            extra={
                "task_id": task.id,
                "agent": task.spec.agent,
                "status": ended.status.value,
                "latency_ms": latency_ms,
                "attempt": task.attempts,
            },
        )

    # -- leases ---------------------------------------------------------------------
    async def heartbeats(self) -> None:
        """Renew this replica's leases until cancelled; stop runs that lost theirs (or were
        asked to cancel elsewhere); stop all when the leases cannot be renewed in time."""
        last_ok = time.monotonic()
        while True:
            await asyncio.sleep(self._limits.heartbeat_s)
            ids = [
                tid
                for tid, t in self._running.items()
                if not t.done() and tid not in self._recording
            ]
            if not ids:
                last_ok = time.monotonic()
                continue
            try:
                owned = await self._tasks.heartbeat(self.worker_id, ids)
            except psycopg.Error as exc:
                log.warning("cannot renew task leases: %s", exc)
                if time.monotonic() - last_ok > self._limits.lease_s * 0.8:
                    # Our leases are about to lapse: stop before another worker takes over.
                    for tid in ids:
                        self._stop(tid, "lease")
                continue
            last_ok = time.monotonic()
            for tid in ids:
                if tid not in owned:
                    self._stop(tid, "lease")
                elif owned[tid]:
                    self._stop(tid, "cancel")
