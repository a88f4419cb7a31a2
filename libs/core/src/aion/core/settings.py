"""The settings every aion service shares; each service extends ``ServiceSettings``.

Values come from the environment (prefix ``AION_<SERVICE>_``). ``load`` turns a
missing or malformed value into one readable line naming the variable, and
refuses a variable with the service's prefix that no setting reads (a typo, or
a setting that was renamed or removed), naming the known ones close to it.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from typing import TypeVar

import pydantic
import pydantic_settings

S = TypeVar("S", bound=pydantic_settings.BaseSettings)


class ServiceSettings(pydantic_settings.BaseSettings):
    """Where a service listens, how it logs and how it shuts down."""

    model_config = pydantic_settings.SettingsConfigDict(
        env_prefix="AION_", extra="ignore", frozen=True
    )

    host: str = "127.0.0.1"
    port: int = pydantic.Field(default=0, ge=0, le=65535, description="gRPC port; 0 picks one")
    metrics_port: int | None = pydantic.Field(
        default=None, ge=0, le=65535, description="Prometheus port; unset disables the endpoint"
    )
    log_level: str = "INFO"
    grace_s: float = pydantic.Field(
        default=8.0, gt=0, description="how long in-flight calls may finish after SIGTERM"
    )
    drain_delay_s: float = pydantic.Field(
        default=0.0,
        ge=0,
        description="how long to keep serving while NOT_SERVING, so load balancers notice",
    )
    otlp_endpoint: str | None = pydantic.Field(
        default=None, description="OTLP gRPC endpoint for traces; unset keeps traces in-process"
    )


class SettingsError(SystemExit):
    """Raised at start when the environment does not describe a valid configuration."""


def known_variables(cls: type[pydantic_settings.BaseSettings]) -> set[str]:
    """The environment variables ``cls`` reads: prefix + field name, and each alias."""
    prefix = str(cls.model_config.get("env_prefix", "")).upper()
    names: set[str] = set()
    for name, field in cls.model_fields.items():
        names.add(prefix + name.upper())
        alias = field.validation_alias
        choices = alias.choices if isinstance(alias, pydantic.AliasChoices) else [alias]
        names.update(c.upper() for c in choices if isinstance(c, str))
        if field.alias:
            names.add(prefix + field.alias.upper())
    return names


def unknown_variables(
    cls: type[pydantic_settings.BaseSettings], environ: Mapping[str, str] | None = None
) -> list[str]:
    """Lines naming each variable with ``cls``'s prefix that no setting reads, with the
    known variables close to it; empty when there is none."""
    prefix = str(cls.model_config.get("env_prefix", "")).upper()
    known = known_variables(cls)
    lines = []
    for name in sorted(os.environ if environ is None else environ):
        upper = name.upper()
        if not upper.startswith(prefix) or upper in known:
            continue
        # Compared without the prefix, which every name shares.
        by_rest = {k.removeprefix(prefix): k for k in sorted(known)}
        close = [
            by_rest[m]
            for m in difflib.get_close_matches(
                upper.removeprefix(prefix), list(by_rest), n=3, cutoff=0.6
            )
        ]
        hint = (
            f"did you mean {' or '.join(close)}?"
            if close
            else (f"{prefix}* settings are {', '.join(sorted(known))}")
        )
        lines.append(f"  {name}: no such setting; {hint}")
    return lines


def load(cls: type[S]) -> S:
    """Build ``cls`` from the environment, or exit with a message naming each bad variable
    (malformed, missing, or unknown with the service's prefix)."""
    unknown = unknown_variables(cls)
    if unknown:
        raise SettingsError(f"unknown {cls.__name__} variables:\n" + "\n".join(unknown))
    try:
        return cls()
    except pydantic.ValidationError as exc:
        prefix = str(cls.model_config.get("env_prefix", ""))
        lines = []
        for err in exc.errors():
            name = prefix + "_".join(str(p) for p in err["loc"]).upper()
            lines.append(f"  {name}: {err['msg']}")
        raise SettingsError(f"invalid {cls.__name__}:\n" + "\n".join(lines)) from None
