"""Operator settings (environment prefix ``AION_OPERATOR_``)."""

from __future__ import annotations

from typing import Annotated

import pydantic
import pydantic_settings

from aion.core import settings


class AionOperatorSettings(settings.ServiceSettings):
    """What the operator watches, how it places executors, and which image they run.

    Named apart from ``kopf.OperatorSettings``, which ``main`` builds from it.
    """

    model_config = pydantic_settings.SettingsConfigDict(
        env_prefix="AION_OPERATOR_", extra="ignore", frozen=True)

    executor_image: str = pydantic.Field(
        min_length=1, description="image of the executor Deployments the operator renders")
    namespaces: Annotated[tuple[str, ...], pydantic_settings.NoDecode] = pydantic.Field(
        default=(), description="comma-separated namespaces to watch; empty watches all")
    pool_label: str = pydantic.Field(
        default="aion.dev/node-pool", min_length=1,
        description="node label whose value names a node's pool")
    default_pool: str = pydantic.Field(
        default="default", min_length=1,
        description="pool used for Agents whose placement names none")
    retry_s: float = pydantic.Field(
        default=15.0, gt=0,
        description="seconds between placement attempts while every eligible pool is full")
    readiness_interval_s: float = pydantic.Field(
        default=5.0, gt=0,
        description="seconds between reads of each Agent's Deployment for its ready replicas")
    liveness_port: int = pydantic.Field(
        default=8080, ge=1, le=65535, description="HTTP port of kopf's /healthz endpoint")

    @pydantic.field_validator("namespaces", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @property
    def clusterwide(self) -> bool:
        """Whether the operator watches every namespace."""
        return not self.namespaces
