"""Router settings (environment prefix ``AION_ROUTER_``)."""

from __future__ import annotations

from pathlib import Path

import pydantic
import pydantic_settings

from aion.core import settings


class RouterSettings(settings.ServiceSettings):
    """Where the router listens and where its policy file is."""

    model_config = pydantic_settings.SettingsConfigDict(
        env_prefix="AION_ROUTER_", extra="ignore", frozen=True
    )

    port: int = pydantic.Field(default=50052, ge=0, le=65535)
    health_port: int = pydantic.Field(
        default=51052,
        ge=0,
        le=65535,
        description="plaintext port answering grpc.health.v1.Health only (kubelet probes)",
    )
    policy_file: Path | None = pydantic.Field(
        default=None, description="YAML routing policy, re-read when it changes"
    )
