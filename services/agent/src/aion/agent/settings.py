"""Agent service settings (environment prefix ``AION_AGENT_``)."""

from __future__ import annotations

from pathlib import Path

import pydantic
import pydantic_settings

from aion.core import settings


class AgentSettings(settings.ServiceSettings):
    """Where the agent service listens, what it loads and its task limits."""

    model_config = pydantic_settings.SettingsConfigDict(
        env_prefix="AION_AGENT_", extra="ignore", frozen=True)

    port: int = pydantic.Field(default=50053, ge=0, le=65535)
    agents_file: Path | None = pydantic.Field(
        default=None, description="YAML file of Agent resources registered at start")
    agents_tenant: str = pydantic.Field(
        default="default", description="tenant the agents of agents_file belong to")
    executor_target: str | None = pydantic.Field(
        default=None, description="executor host:port for agents_file agents")
    knowledge_target: str | None = pydantic.Field(
        default=None, description="knowledge service host:port; unset disables retrieval")
    max_input_chars: int = pydantic.Field(default=32_768, gt=0)
    default_timeout_s: float = pydantic.Field(default=300.0, gt=0)
    max_tokens_limit: int = pydantic.Field(default=2048, gt=0)
    retrieval_top_k: int = pydantic.Field(default=4, ge=0)
