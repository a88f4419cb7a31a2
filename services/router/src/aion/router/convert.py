"""Protobuf at the edge: the router's messages to and from its dataclasses.

The tenant is read here, once, and required (:func:`tenant_from_pb`); privacy and route
values go through :mod:`aion.core.privacy`, the one table of their wire numbers.
"""

from __future__ import annotations

from aion.api.router.v1 import router_pb2
from aion.api.v1 import common_pb2
from aion.core import authz, errors, privacy
from aion.router import decide


def tenant_from_pb(msg: router_pb2.DecideRequest) -> str:
    """The calling tenant; INVALID_ARGUMENT when the gateway sent none (never a default)."""
    return authz.require_tenant(msg.tenant)


def request_from_pb(msg: router_pb2.DecideRequest) -> decide.Request:
    """Validate and convert a DecideRequest."""
    tenant = tenant_from_pb(msg)
    if not msg.agent:
        raise errors.InvalidArgument("agent is required", field="agent")
    if msg.input_chars < 0:
        raise errors.InvalidArgument("input_chars must be >= 0", field="input_chars")
    return decide.Request(
        tenant=tenant,
        agent=msg.agent,
        # An agent that says nothing about privacy keeps its data local.
        declared=privacy.from_pb(msg.privacy) or privacy.Privacy.LOCAL_ONLY,
        requested=privacy.from_pb(msg.requested_privacy, field="task.options.privacy"),
        input_chars=msg.input_chars,
        budget_usd=msg.budget_usd if msg.HasField("budget_usd") else None,
        sla_ms=msg.sla_ms if msg.HasField("sla_ms") else None,
    )


def routing_to_pb(d: decide.Routing) -> router_pb2.Decision:
    """The Decision message for a routing."""
    return router_pb2.Decision(
        engine=common_pb2.Engine(
            route=privacy.route_to_pb(d.route), chosen_by=d.chosen_by, reason=d.reason
        ),
        provider=d.provider,
        estimated_cost_usd=d.estimated_cost_usd,
    )
