"""The agent registry: who may be called, with what model, and where it runs.

``AgentRegistry`` is the seam; ``MemoryRegistry`` keeps agents in memory
(the durable-tasks issue moves them to Postgres). ``load_file`` reads Agent
resources (the CRD's YAML, ``aion.dev/v1alpha1``) so a machine without a
cluster can register agents the way the operator does.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal, Protocol

import pydantic
import yaml

from aion.agent import model
from aion.core import errors


class AgentRegistry(Protocol):
    """Where agents are registered and looked up, per tenant."""

    async def put(self, agent: model.AgentRecord) -> model.AgentRecord:
        """Register or replace an agent."""
        ...

    async def get(self, tenant: str, name: str) -> model.AgentRecord:
        """The agent, or NotFound."""
        ...

    async def list(self, tenant: str) -> list[model.AgentRecord]:
        """The tenant's agents, by name."""
        ...

    async def delete(self, tenant: str, name: str) -> bool:
        """Deregister; False when it was not registered."""
        ...


class MemoryRegistry:
    """An in-process registry."""

    def __init__(self) -> None:
        self._agents: dict[tuple[str, str], model.AgentRecord] = {}

    async def put(self, agent: model.AgentRecord) -> model.AgentRecord:
        """Register or replace an agent."""
        self._agents[(agent.tenant, agent.name)] = agent
        return agent

    async def get(self, tenant: str, name: str) -> model.AgentRecord:
        """The agent, or NotFound naming it."""
        try:
            return self._agents[(tenant, name)]
        except KeyError:
            raise errors.NotFound(f"agent '{name}' not found; `aionctl agents` lists the "
                                  "agents you can call") from None

    async def list(self, tenant: str) -> list[model.AgentRecord]:
        """The tenant's agents, by name."""
        return sorted((a for (t, _), a in self._agents.items() if t == tenant),
                      key=lambda a: a.name)

    async def delete(self, tenant: str, name: str) -> bool:
        """Deregister; False when it was not registered."""
        return self._agents.pop((tenant, name), None) is not None


class _Model(pydantic.BaseModel):
    name: str = pydantic.Field(min_length=1)
    source: str = ""
    task: Literal["generate", "embed"] = "generate"


class _Routing(pydantic.BaseModel):
    privacy: Literal["local-only", "allow-api", "hybrid"] = "local-only"


class _Spec(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(populate_by_name=True)

    model: _Model
    instructions: str = ""
    description: str = ""
    knowledge_bases: list[str] = pydantic.Field(default_factory=list, alias="knowledgeBases")
    routing: _Routing = pydantic.Field(default_factory=_Routing)
    max_tokens: int = pydantic.Field(default=256, gt=0, alias="maxTokens")


class _Metadata(pydantic.BaseModel):
    name: str = pydantic.Field(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length=63)


class _Resource(pydantic.BaseModel):
    api_version: Literal["aion.dev/v1alpha1"] = pydantic.Field(alias="apiVersion")
    kind: Literal["Agent"]
    metadata: _Metadata
    spec: _Spec


def load_file(path: Path, *, tenant: str, executor_target: str | None) -> list[model.AgentRecord]:
    """The Agent resources in a YAML file (one or more documents)."""
    try:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
        resources = [_Resource.model_validate(d) for d in docs]
    except (OSError, yaml.YAMLError, pydantic.ValidationError) as exc:
        raise errors.InvalidArgument(f"cannot load agents from {path}: {exc}") from exc
    endpoints = (executor_target,) if executor_target else ()
    return [
        model.AgentRecord(
            tenant=tenant, name=r.metadata.name, model=r.spec.model.name,
            model_task=r.spec.model.task, instructions=r.spec.instructions,
            description=r.spec.description, privacy=model.Privacy(r.spec.routing.privacy),
            knowledge_bases=tuple(r.spec.knowledge_bases), executor_endpoints=endpoints,
            max_tokens=r.spec.max_tokens, node_pool="local")
        for r in resources
    ]


def with_endpoints(agent: model.AgentRecord, endpoints: tuple[str, ...]) -> model.AgentRecord:
    """A copy of ``agent`` served by ``endpoints``."""
    return dataclasses.replace(agent, executor_endpoints=endpoints)
