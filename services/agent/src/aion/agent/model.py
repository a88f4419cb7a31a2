"""The agent service's domain types: agents, tasks, their events and steps, model chunks.

Everything below the servicer edge (the runner, the loop, the store, recovery,
following) speaks these types only; ``convert`` turns them into protobuf and back.
Privacy and routes are ``aion.core.privacy``'s, the one definition every service shares.
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
from collections.abc import Iterable, Sequence
from typing import Any

from aion.core import privacy as privacy_mod

# The owner of agents registered through the API (Agents.Apply) or the agents file.
API_OWNER = "api"


class Status(enum.Enum):
    """A task's state; the last four are final."""

    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    OK = "OK"
    ERROR = "ERROR"
    TIMEOUT = "TIMEOUT"
    CANCELED = "CANCELED"

    @property
    def final(self) -> bool:
        """True once the task has ended."""
        return self not in (Status.QUEUED, Status.RUNNING)


@dataclasses.dataclass(frozen=True)
class ToolCredential:
    """An HTTP header sent on every request to one MCP or A2A server of an agent's tools.

    ``url`` is the server's as the tools name it; ``value`` is secret: left out of the
    repr, never logged, never returned by GetAgent or ListAgents, never in a step.
    """

    url: str
    header: str
    value: str = dataclasses.field(repr=False)


@dataclasses.dataclass(frozen=True)
class AgentRecord:
    """A registered agent.

    ``owner`` says who registered it: ``"<namespace>/<uid>"`` of the Agent resource
    the operator registered it for, or ``API_OWNER`` (Agents.Apply, the agents file).
    """

    tenant: str
    name: str
    model: str
    model_task: str = "generate"
    instructions: str = ""
    description: str = ""
    privacy: privacy_mod.Privacy = privacy_mod.Privacy.LOCAL_ONLY
    knowledge_bases: tuple[str, ...] = ()
    executor_endpoints: tuple[str, ...] = ()
    max_tokens: int = 256
    node_pool: str = ""
    # Names of the tools the agent may call ("knowledge_search", "agent:<name>",
    # "mcp:<url>[#<tool>]", "a2a:<url>").
    tools: tuple[str, ...] = ()
    max_steps: int = 4
    owner: str = API_OWNER
    # The Agent's spec.routing targets; None when it names none. The budget is each
    # task's that names none of its own (``budget.for_task``).
    budget_usd_per_task: float | None = None
    p95_target_ms: int | None = None
    # Headers for the MCP and A2A servers of ``tools``: only the operator registers them.
    tool_credentials: tuple[ToolCredential, ...] = dataclasses.field(default=(), repr=False)

    @property
    def ready(self) -> bool:
        """An agent is ready once it has somewhere to run."""
        return bool(self.executor_endpoints)

    def headers(self, url: str) -> dict[str, str]:
        """The headers to send to the tool server at ``url`` (none without a credential)."""
        return {c.header: c.value for c in self.tool_credentials if c.url == url}


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """A validated request to run an agent."""

    tenant: str
    agent: str
    input: str
    idempotency_key: str = ""
    max_tokens: int | None = None
    temperature: float | None = None
    seed: int | None = None
    timeout_s: float = 300.0
    asynchronous: bool = False
    # Most the task may spend, in USD (None: its agent's budget, if any).
    budget_usd: float | None = None
    # The p95 latency the task asks of its route, in ms (None: its agent's p95 target).
    sla_ms: int | None = None


@dataclasses.dataclass(frozen=True)
class Decision:
    """The router's decision, as the agent service uses it.

    The router also estimates the cost of the task (``estimated_cost_usd``), to refuse
    the API route to a task whose budget it would not cover; the agent enforces the
    budget on the spend itself (``budget``), so the estimate is left on the wire.
    """

    route: privacy_mod.Route = privacy_mod.Route.LOCAL
    chosen_by: str = ""
    reason: str = ""
    provider: str = ""


@dataclasses.dataclass
class Usage:
    """Accounted per task."""

    latency_ms: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0

    def add(self, *, prompt_tokens: int, completion_tokens: int, cost_usd: float) -> None:
        """Account one step."""
        self.prompt_tokens += prompt_tokens
        self.completion_tokens += completion_tokens
        self.cost_usd += cost_usd


class EventKind(enum.Enum):
    """What a task event says."""

    STARTED = "started"
    TOKEN = "token"
    PARTIAL = "partial"
    DONE = "done"
    ERROR = "error"


FINAL_KINDS = (EventKind.DONE, EventKind.ERROR)


@dataclasses.dataclass(frozen=True)
class Event:
    """One event of a task, numbered from 1."""

    seq: int
    kind: EventKind
    text: str = ""
    step: int = 0


@dataclasses.dataclass(frozen=True)
class Citation:
    """Where a retrieved passage came from: characters ``[char_start, char_end)`` of the
    text extracted from ``version`` of ``document_id`` in ``knowledge_base``, its chunk
    ``chunk_index``; ``score`` is the search's."""

    knowledge_base: str
    document_id: str
    version: int
    chunk_index: int
    char_start: int = 0
    char_end: int = 0
    title: str = ""
    score: float = 0.0

    @property
    def key(self) -> tuple[str, str, int, int]:
        """The passage it names: two citations with the same key cite one passage."""
        return (self.knowledge_base, self.document_id, self.version, self.chunk_index)


@dataclasses.dataclass(frozen=True)
class Passage:
    """A passage of a knowledge base, as a search returned it, with its citation."""

    text: str
    citation: Citation


def cited(known: Sequence[Citation], new: Iterable[Citation]) -> tuple[Citation, ...]:
    """``known``, then the citations of ``new`` whose passage is not among them yet, in
    order: each passage once, where it was first used (with its score then)."""
    seen = {c.key for c in known}
    found = list(known)
    for c in new:
        if c.key not in seen:
            seen.add(c.key)
            found.append(c)
    return tuple(found)


@dataclasses.dataclass(frozen=True)
class TaskError:
    """Why a task did not end OK."""

    code: str
    message: str
    retriable: bool = False


class LeaseLost(Exception):
    """This worker no longer owns the task: another one took it over, or it ended."""


@dataclasses.dataclass
class TaskRecord:
    """A task as stored: its spec, the decision it runs with, and where it stands.

    ``worker_id`` is the replica holding the task's lease (column ``lease_owner``),
    None while nobody runs it.
    """

    id: str
    spec: TaskSpec
    decision: Decision
    model_name: str
    status: Status = Status.QUEUED
    attempts: int = 0
    worker_id: str | None = None
    deadline: datetime.datetime | None = None
    cancel_requested: bool = False
    output: str = ""
    usage: Usage = dataclasses.field(default_factory=Usage)
    error: TaskError | None = None
    created_at: datetime.datetime | None = None
    finished_at: datetime.datetime | None = None
    seq: int = 0  # the number of its last stored event, when read
    # The passages its run put into the model's context (``cited``), stored at its end.
    citations: tuple[Citation, ...] = ()
    # Its W3C trace context (``traceparent``, ``tracestate``): the trace it was created in.
    trace_context: dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def trace_id(self) -> str:
        """The id (32 hex digits) of the task's trace; "" when it was created in none."""
        parts = self.trace_context.get("traceparent", "").split("-")
        return parts[1] if len(parts) == 4 and len(parts[1]) == 32 else ""

    @property
    def remaining_s(self) -> float:
        """Seconds until the deadline (negative once past)."""
        assert self.deadline is not None
        return (self.deadline - datetime.datetime.now(datetime.UTC)).total_seconds()


@dataclasses.dataclass(frozen=True)
class StepRecord:
    """One model or tool call of the agent loop."""

    step: int
    kind: str
    name: str = ""
    input: dict[str, Any] = dataclasses.field(default_factory=dict)
    output: str = ""
    error: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    latency_ms: int = 0
    model_ms: int = 0  # of latency_ms, the wait for the model itself (model steps)


@dataclasses.dataclass(frozen=True)
class ModelCall:
    """One model call of the agent loop, whichever backend answers it.

    ``messages`` are (role, content) pairs; ``model`` and ``endpoints`` are the agent's
    (an external API uses its own model); ``task_id`` and ``attempt`` label the call.
    """

    model: str
    messages: tuple[tuple[str, str], ...]
    max_tokens: int
    temperature: float | None = None
    seed: int | None = None
    timeout_s: float = 300.0
    endpoints: tuple[str, ...] = ()
    task_id: str = ""
    attempt: int = 0
    tenant: str = ""


@dataclasses.dataclass(frozen=True)
class Chunk:
    """A piece of a model's reply, from any backend; usage only on the last one."""

    text: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    final: bool = False
