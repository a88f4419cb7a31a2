"""The routing decision, as a pure function of the request and the policy."""

from __future__ import annotations

import dataclasses
import enum

from aion.router import policy as policy_mod


class Route(enum.Enum):
    """Where a task runs."""

    LOCAL = "local"
    API = "api"
    HYBRID = "hybrid"


class Privacy(enum.Enum):
    """What may leave the cluster, from strictest to loosest."""

    LOCAL_ONLY = "local-only"
    HYBRID = "hybrid"
    ALLOW_API = "allow-api"


_STRICTNESS = [Privacy.LOCAL_ONLY, Privacy.HYBRID, Privacy.ALLOW_API]


@dataclasses.dataclass(frozen=True)
class Request:
    """What the router knows about a task."""

    tenant: str
    agent: str
    privacy: Privacy
    input_chars: int
    budget_usd: float | None = None
    sla_ms: int | None = None


@dataclasses.dataclass(frozen=True)
class Decision:
    """Where the task runs, who decided, and why, in words."""

    route: Route
    chosen_by: str
    reason: str
    provider: str = ""
    estimated_cost_usd: float = 0.0


def _estimate_tokens(input_chars: int) -> int:
    # About four characters a token, plus room for the answer.
    return input_chars // 4 + 256


def decide(req: Request, pol: policy_mod.Policy) -> Decision:
    """Choose local, API or hybrid for one task."""
    tenant_max = Privacy(pol.tenant(req.tenant).max_privacy)
    privacy = min(req.privacy, tenant_max, key=_STRICTNESS.index)
    if privacy is Privacy.LOCAL_ONLY:
        why = ("tenant policy caps privacy at local-only" if privacy is not req.privacy
               else f"agent '{req.agent}' is local-only")
        return Decision(Route.LOCAL, "policy:privacy", f"{why}: data stays in the cluster")
    provider = pol.provider
    if provider is None:
        return Decision(Route.LOCAL, "policy:no-provider",
                        f"privacy {privacy.value} allows an external API, but none is "
                        "configured: running on the local pool")
    api_cost = _estimate_tokens(req.input_chars) / 1000 * provider.usd_per_1k_tokens
    if req.budget_usd is not None and api_cost > req.budget_usd:
        return Decision(Route.LOCAL, "budget",
                        f"the {provider.name} API would cost about ${api_cost:.4f}, over the "
                        f"task budget of ${req.budget_usd:.4f}: running on the local pool")
    if privacy is Privacy.HYBRID:
        return Decision(Route.HYBRID, "policy:privacy",
                        f"hybrid: local pool first, {provider.name} on overflow or failure",
                        provider=provider.name, estimated_cost_usd=api_cost)
    return Decision(Route.API, "policy:privacy",
                    f"agent '{req.agent}' allows external APIs and {provider.name} fits the "
                    f"budget (about ${api_cost:.4f})",
                    provider=provider.name, estimated_cost_usd=api_cost)
