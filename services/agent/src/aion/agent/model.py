"""The agent service's own types: agents, task specs and the decision a task runs with."""

from __future__ import annotations

import dataclasses
import enum

# The owner of agents registered through the API (Agents.Apply) or the agents file.
API_OWNER = "api"


class Privacy(enum.Enum):
    """What an agent allows to leave the cluster."""

    LOCAL_ONLY = "local-only"
    ALLOW_API = "allow-api"
    HYBRID = "hybrid"


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
    privacy: Privacy = Privacy.LOCAL_ONLY
    knowledge_bases: tuple[str, ...] = ()
    executor_endpoints: tuple[str, ...] = ()
    max_tokens: int = 256
    node_pool: str = ""
    # Names of the tools the agent may call ("knowledge_search", "agent:<name>").
    tools: tuple[str, ...] = ()
    max_steps: int = 4
    owner: str = API_OWNER
    # The Agent's spec.routing targets; None when it names none. Recorded for the router.
    budget_usd_per_task: float | None = None
    p95_target_ms: int | None = None

    @property
    def ready(self) -> bool:
        """An agent is ready once it has somewhere to run."""
        return bool(self.executor_endpoints)


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


@dataclasses.dataclass(frozen=True)
class Decision:
    """The router's decision, as the agent service uses it."""

    route: str = "local"
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
