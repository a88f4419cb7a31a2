"""The routing policy: which external provider exists, what it costs, and per-tenant rules.

It is read from a YAML file (validated with pydantic, since platform teams
write it by hand) and re-read whenever the file changes, so a policy edit
takes effect on the next decision without a restart.

Which external provider a task may use, its model and its price are decided here: this
file is the authoritative definition of the external provider for routing. The agent
service's ``AION_AGENT_PROVIDER_*`` settings say how to reach it (base URL, API key) and
repeat the model and price it reports; the Helm chart renders both from its one
``provider`` value, so an install cannot set them apart.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pydantic
import yaml

from aion.core import errors, privacy

log = logging.getLogger(__name__)


class Provider(pydantic.BaseModel):
    """An external OpenAI-compatible model API: the one place its model and price live."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

    name: str
    base_url: str
    model: str
    usd_per_1k_tokens: float = pydantic.Field(ge=0)


class TenantPolicy(pydantic.BaseModel):
    """What one tenant allows; narrows (never widens) each agent's privacy."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

    max_privacy: privacy.Privacy = privacy.Privacy.ALLOW_API


class Policy(pydantic.BaseModel):
    """The whole policy file."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

    provider: Provider | None = None
    local_usd_per_1k_tokens: float = pydantic.Field(default=0.0, ge=0)
    tenants: dict[str, TenantPolicy] = pydantic.Field(default_factory=dict)

    def tenant(self, name: str) -> TenantPolicy:
        """The tenant's policy, or the default one."""
        return self.tenants.get(name, TenantPolicy())


def parse(text: str, *, source: str) -> Policy:
    """Validate a policy document; errors name the file and the field."""
    try:
        data = yaml.safe_load(text) or {}
        return Policy.model_validate(data)
    except (yaml.YAMLError, pydantic.ValidationError) as exc:
        raise errors.InvalidArgument(f"invalid routing policy {source}: {exc}") from exc


class PolicySource:
    """The current policy, re-read from ``path`` when its modification time changes.

    A file that becomes invalid keeps the last good policy and logs why.
    """

    def __init__(self, path: Path | None) -> None:
        self._path = path
        self._mtime: float | None = None
        self._policy = Policy()
        if path is not None:
            self._policy = parse(path.read_text(), source=str(path))
            self._mtime = path.stat().st_mtime

    def current(self) -> Policy:
        """The policy in force now."""
        if self._path is None:
            return self._policy
        try:
            mtime = self._path.stat().st_mtime
            if mtime != self._mtime:
                self._policy = parse(self._path.read_text(), source=str(self._path))
                self._mtime = mtime
                log.info("routing policy reloaded", extra={"path": str(self._path)})
        except (OSError, errors.InvalidArgument) as exc:
            log.error("keeping the last good routing policy: %s", exc)
        return self._policy
