"""Gateway settings (environment prefix ``AION_GATEWAY_``)."""

from __future__ import annotations

from typing import Literal

import pydantic
import pydantic_settings

from aion.core import settings

Role = Literal["viewer", "user", "admin"]


class ApiKey(pydantic.BaseModel):
    """A configured (bootstrap) API key, by its hash, and whom it stands for.

    ``hash`` is what ``python -m aion.gateway.keys hash`` prints for the key;
    a plaintext ``key`` is refused at start-up (the settings say how to hash it).
    """

    model_config = pydantic.ConfigDict(extra="forbid")

    hash: str = pydantic.Field(min_length=1)
    tenant: str = pydantic.Field(min_length=1)
    roles: list[Role] = pydantic.Field(min_length=1)
    name: str = ""

    @pydantic.field_validator("hash")
    @classmethod
    def _is_hash(cls, value: str) -> str:
        parts = value.split("$")
        if len(parts) != 7 or parts[0] != "scrypt":
            raise ValueError(
                "not an API key hash ('scrypt$<id>$<n>$<r>$<p>$<salt>$<digest>'); "
                "make one with `python -m aion.gateway.keys hash`"
            )
        return value

    @pydantic.model_validator(mode="before")
    @classmethod
    def _no_plaintext(cls, value: object) -> object:
        if isinstance(value, dict) and "key" in value:
            raise ValueError(
                "an API key is configured in plaintext ('key'); configure its hash instead "
                "('hash': the output of `python -m aion.gateway.keys hash`, or "
                "`aionctl keys hash`), or create keys with `aionctl keys create`"
            )
        return value


class GatewaySettings(settings.ServiceSettings):
    """Where the gateway listens, its peers, and how callers authenticate."""

    model_config = pydantic_settings.SettingsConfigDict(
        env_prefix="AION_GATEWAY_", extra="ignore", frozen=True
    )

    port: int = pydantic.Field(default=50051, ge=0, le=65535)
    router_target: str = "127.0.0.1:50052"
    agent_target: str = "127.0.0.1:50053"
    knowledge_target: str = "127.0.0.1:50054"
    api_keys: list[ApiKey] | None = pydantic.Field(
        default=None, description='JSON: [{"hash": ..., "tenant": ..., "roles": [...]}]'
    )
    jwt_secret: pydantic.SecretStr | None = pydantic.Field(
        default=None, min_length=32, description="HS256 secret (32 bytes at least)"
    )
    jwks_file: str | None = pydantic.Field(
        default=None, description="a JWKS file of the keys that sign JWTs (RS256/ES256)"
    )
    jwks_url: str | None = pydantic.Field(
        default=None, description="a JWKS URL of the keys that sign JWTs (RS256/ES256)"
    )
    jwks_cache_s: float = pydantic.Field(default=300.0, gt=0, le=86400)
    jwks_refresh_cooldown_s: float = pydantic.Field(
        default=30.0,
        ge=0,
        le=3600,
        description="least time between two fetches of the JWKS "
        "URL for tokens naming an unknown key",
    )
    jwt_audience: str | None = None
    jwt_issuer: str | None = None
    jwt_tenant_claim: str = "tenant"
    jwt_roles_claim: str = "roles"
    allow_anonymous: bool = pydantic.Field(
        default=False, description="treat unauthenticated calls as anonymous_tenant (dev only)"
    )
    anonymous_tenant: str = "default"

    @pydantic.field_validator(
        "api_keys", "jwt_secret", "jwks_file", "jwks_url", "postgres_dsn", mode="before"
    )
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
    key_rate_per_s: float = pydantic.Field(default=50.0, gt=0, description="calls/s per API key")
    key_rate_burst: int = pydantic.Field(default=100, gt=0)
    max_streams: int = pydantic.Field(default=64, gt=0, description="open streams per tenant")
    key_max_streams: int = pydantic.Field(default=32, gt=0, description="open streams per key")
    tokens_per_minute: int = pydantic.Field(
        default=200_000, gt=0, description="generated tokens per minute per tenant"
    )
    auth_failures_per_min: int = pydantic.Field(
        default=30, gt=0, description="failed authentications per minute per peer address"
    )

    postgres_dsn: str | None = pydantic.Field(
        default=None,
        description="Postgres for API keys and the shared rate limits; unset: "
        "configured keys only, and limits per replica",
    )
    key_cache_s: float = pydantic.Field(
        default=5.0,
        ge=0,
        le=300,
        description="how long a verified API key is trusted "
        "before it is looked up again (the delay before a revocation reaches every replica)",
    )
    agent_cache_s: float = pydantic.Field(
        default=2.0,
        ge=0,
        le=60,
        description="how long an agent's record (privacy, budget, max_tokens) is reused "
        "for routing tasks before it is asked again (the delay before an Agent changed "
        "by the operator reaches this gateway's routing; 0: ask on every task)",
    )
    max_idempotency_key_chars: int = pydantic.Field(default=256, gt=0, le=1024)
    max_message_bytes: int = pydantic.Field(
        default=16 * 1024 * 1024,
        ge=64 * 1024,
        le=64 * 1024 * 1024,
        description="the largest request message of the gRPC API (larger: RESOURCE_EXHAUSTED); "
        "larger documents go by Knowledge.IngestStream, in pieces",
    )

    http_port: int | None = pydantic.Field(
        default=None,
        ge=0,
        le=65535,
        description="port of the HTTP front door (OpenAI-compatible API, OpenAPI); unset: none",
    )
    http_timeout_s: float = pydantic.Field(
        default=300.0, gt=0, le=3600, description="deadline of each HTTP call's task"
    )
    http_max_body_bytes: int = pydantic.Field(default=1_048_576, gt=0, le=64 * 1_048_576)

    @pydantic.model_validator(mode="after")
    def _coherent(self) -> GatewaySettings:
        jwt_on = bool(self.jwt_secret or self.jwks_file or self.jwks_url)
        if self.allow_anonymous and (self.api_keys or jwt_on or self.postgres_dsn):
            raise ValueError(
                "allow_anonymous is a development mode: it cannot be combined with API keys, "
                "JWT verification or a key store (unset AION_GATEWAY_ALLOW_ANONYMOUS)"
            )
        if jwt_on and not (self.jwt_audience and self.jwt_issuer):
            raise ValueError(
                "JWTs are accepted only for a known audience and issuer: set "
                "AION_GATEWAY_JWT_AUDIENCE and AION_GATEWAY_JWT_ISSUER"
            )
        ids = [k.hash.split("$")[1] for k in self.api_keys or ()]
        if len(ids) != len(set(ids)):
            raise ValueError("api_keys lists the same key twice")
        if self.jwks_file and self.jwks_url:
            raise ValueError("set jwks_file or jwks_url, not both")
        return self

    @pydantic.field_validator("http_port", mode="before")
    @classmethod
    def _empty_port_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value
