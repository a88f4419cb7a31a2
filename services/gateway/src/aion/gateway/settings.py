"""Gateway settings (environment prefix ``AION_GATEWAY_``)."""

from __future__ import annotations

from typing import Literal

import pydantic
import pydantic_settings

from aion.core import settings

Role = Literal["viewer", "user", "admin"]


class ApiKey(pydantic.BaseModel):
    """An API key and whom it stands for."""

    key: pydantic.SecretStr
    tenant: str = pydantic.Field(min_length=1)
    roles: list[Role] = pydantic.Field(default_factory=lambda: list[Role](["user"]))
    name: str = ""


class GatewaySettings(settings.ServiceSettings):
    """Where the gateway listens, its peers, and how callers authenticate."""

    model_config = pydantic_settings.SettingsConfigDict(
        env_prefix="AION_GATEWAY_", extra="ignore", frozen=True)

    port: int = pydantic.Field(default=50051, ge=0, le=65535)
    router_target: str = "127.0.0.1:50052"
    agent_target: str = "127.0.0.1:50053"
    knowledge_target: str = "127.0.0.1:50054"
    api_keys: list[ApiKey] | None = pydantic.Field(
        default=None, description='JSON: [{"key": ..., "tenant": ..., "roles": [...]}]')
    jwt_secret: pydantic.SecretStr | None = pydantic.Field(
        default=None, description="HS256 secret; set it to accept JWTs")
    jwt_audience: str | None = None
    jwt_issuer: str | None = None
    jwt_tenant_claim: str = "tenant"
    jwt_roles_claim: str = "roles"
    allow_anonymous: bool = pydantic.Field(
        default=False, description="treat unauthenticated calls as anonymous_tenant (dev only)")
    anonymous_tenant: str = "default"
    @pydantic.field_validator("api_keys", "jwt_secret", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        # A chart renders unset secrets as "": that must mean "none", never an empty key.
        if isinstance(value, str) and not value.strip():
            return None
        if isinstance(value, pydantic.SecretStr) and not value.get_secret_value():
            return None
        return value

    rate_per_s: float = pydantic.Field(default=50.0, gt=0, description="calls/s per tenant")
    rate_burst: int = pydantic.Field(default=100, gt=0)

    http_port: int | None = pydantic.Field(
        default=None, ge=0, le=65535,
        description="port of the HTTP front door (OpenAI-compatible API, OpenAPI); unset: none")
    http_timeout_s: float = pydantic.Field(
        default=300.0, gt=0, le=3600, description="deadline of each HTTP call's task")
    http_max_body_bytes: int = pydantic.Field(default=1_048_576, gt=0, le=64 * 1_048_576)

    @pydantic.field_validator("http_port", mode="before")
    @classmethod
    def _empty_port_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value
