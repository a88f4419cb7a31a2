"""The routing decision, as a pure function of the request and the policy.

The privacy rule lives here and nowhere else in the request path: the agent's declared
privacy, narrowed by what the task asks for and by the tenant's cap
(:func:`aion.core.privacy.narrow`), chooses how far the task may reach. The gateway
forwards both levels untouched; the agent service only clamps the route it is handed
(:func:`aion.core.privacy.allowed_route`).
"""

from __future__ import annotations

import dataclasses

from aion.core import errors, privacy
from aion.router import policy as policy_mod


@dataclasses.dataclass(frozen=True)
class Request:
    """What the router knows about a task.

    ``declared`` is the agent's privacy, ``requested`` the task's own (``None``: not
    asked). ``budget_usd`` is the task's budget, else its agent's (the gateway picks): an
    API call estimated over it is not chosen; the agent service enforces it on the real
    spend while the task runs. ``sla_ms`` is carried but not read here: the router sees
    no live latency; the agent service's placement compares it (else the Agent's
    p95 target) with the pool's and the API's recent p95 for each model call.
    """

    tenant: str
    agent: str
    declared: privacy.Privacy
    input_chars: int
    budget_usd: float | None = None
    sla_ms: int | None = None
    requested: privacy.Privacy | None = None


@dataclasses.dataclass(frozen=True)
class Routing:
    """Where the task runs, who decided, and why, in words (``router_pb2.Decision`` on
    the wire)."""

    route: privacy.Route
    chosen_by: str
    reason: str
    provider: str = ""
    estimated_cost_usd: float = 0.0


def _estimate_tokens(input_chars: int) -> int:
    # About four characters a token, plus room for the answer.
    return input_chars // 4 + 256


def effective_privacy(req: Request, tenant_max: privacy.Privacy) -> privacy.Privacy:
    """The privacy the task runs under; INVALID_ARGUMENT when the task asks for a looser
    one than its agent declares (a task may only narrow)."""
    if req.requested is not None and not privacy.stricter_or_equal(req.requested, req.declared):
        raise errors.InvalidArgument(
            f"task.options.privacy {req.requested.value} is looser than agent "
            f"'{req.agent}' allows ({req.declared.value}): a task may only narrow its "
            "agent's privacy",
            field="task.options.privacy",
        )
    return privacy.narrow(req.declared, req.requested, tenant_max)


def _why_local(req: Request) -> str:
    if req.declared is privacy.Privacy.LOCAL_ONLY:
        return f"agent '{req.agent}' is local-only"
    if req.requested is privacy.Privacy.LOCAL_ONLY:
        return "the task asks for local-only"
    return "tenant policy caps privacy at local-only"


def decide(req: Request, pol: policy_mod.Policy) -> Routing:
    """Choose local, API or hybrid for one task."""
    tenant_max = pol.tenant(req.tenant).max_privacy
    level = effective_privacy(req, tenant_max)
    if level is privacy.Privacy.LOCAL_ONLY:
        return Routing(
            privacy.Route.LOCAL, "policy:privacy", f"{_why_local(req)}: data stays in the cluster"
        )
    provider = pol.provider
    if provider is None:
        return Routing(
            privacy.Route.LOCAL,
            "policy:no-provider",
            f"privacy {level.value} allows an external API, but none is "
            "configured: running on the local pool",
        )
    api_cost = _estimate_tokens(req.input_chars) / 1000 * provider.usd_per_1k_tokens
    if req.budget_usd is not None and api_cost > req.budget_usd:
        return Routing(
            privacy.Route.LOCAL,
            "budget",
            f"the {provider.name} API would cost about ${api_cost:.4f}, over the "
            f"task budget of ${req.budget_usd:.4f}: running on the local pool",
        )
    if level is privacy.Privacy.HYBRID:
        return Routing(
            privacy.Route.HYBRID,
            "policy:privacy",
            f"hybrid: local pool first, {provider.name} on overflow or failure",
            provider=provider.name,
            estimated_cost_usd=api_cost,
        )
    return Routing(
        privacy.Route.API,
        "policy:privacy",
        f"agent '{req.agent}' allows external APIs and {provider.name} fits the "
        f"budget (about ${api_cost:.4f})",
        provider=provider.name,
        estimated_cost_usd=api_cost,
    )
