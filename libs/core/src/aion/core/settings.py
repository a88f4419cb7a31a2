"""The settings every aion service shares; each service extends ``ServiceSettings``.

Values come from the environment (prefix ``AION_<SERVICE>_``). ``load`` turns a
missing or malformed value into one readable line naming the variable.
"""

from __future__ import annotations

from typing import TypeVar

import pydantic
import pydantic_settings

S = TypeVar("S", bound="ServiceSettings")


class ServiceSettings(pydantic_settings.BaseSettings):
    """Where a service listens, how it logs and how it shuts down."""

    model_config = pydantic_settings.SettingsConfigDict(
        env_prefix="AION_", extra="ignore", frozen=True)

    host: str = "127.0.0.1"
    port: int = pydantic.Field(default=0, ge=0, le=65535, description="gRPC port; 0 picks one")
    metrics_port: int | None = pydantic.Field(
        default=None, ge=0, le=65535, description="Prometheus port; unset disables the endpoint")
    log_level: str = "INFO"
    grace_s: float = pydantic.Field(
        default=8.0, gt=0, description="how long in-flight calls may finish after SIGTERM")
    drain_delay_s: float = pydantic.Field(
        default=0.0, ge=0,
        description="how long to keep serving while NOT_SERVING, so load balancers notice")
    otlp_endpoint: str | None = pydantic.Field(
        default=None, description="OTLP gRPC endpoint for traces; unset keeps traces in-process")


class SettingsError(SystemExit):
    """Raised at start when the environment does not describe a valid configuration."""


def load(cls: type[S]) -> S:
    """Build ``cls`` from the environment, or exit with a message naming each bad variable."""
    try:
        return cls()
    except pydantic.ValidationError as exc:
        prefix = str(cls.model_config.get("env_prefix", ""))
        lines = []
        for err in exc.errors():
            name = prefix + "_".join(str(p) for p in err["loc"]).upper()
            lines.append(f"  {name}: {err['msg']}")
        raise SettingsError(f"invalid {cls.__name__}:\n" + "\n".join(lines)) from None
