"""Protobuf at the edge: the router's messages to and from its dataclasses."""

from __future__ import annotations

from aion.api.router.v1 import router_pb2
from aion.api.v1 import common_pb2
from aion.core import authz, errors
from aion.router import decide

_PRIVACY = {
    common_pb2.PRIVACY_LOCAL_ONLY: decide.Privacy.LOCAL_ONLY,
    common_pb2.PRIVACY_ALLOW_API: decide.Privacy.ALLOW_API,
    common_pb2.PRIVACY_HYBRID: decide.Privacy.HYBRID,
}
_ROUTE = {
    decide.Route.LOCAL: common_pb2.ROUTE_LOCAL,
    decide.Route.API: common_pb2.ROUTE_API,
    decide.Route.HYBRID: common_pb2.ROUTE_HYBRID,
}


def request_from_pb(msg: router_pb2.DecideRequest) -> decide.Request:
    """Validate and convert a DecideRequest."""
    if not msg.agent:
        raise errors.InvalidArgument("agent is required", field="agent")
    if msg.input_chars < 0:
        raise errors.InvalidArgument("input_chars must be >= 0", field="input_chars")
    return decide.Request(
        tenant=authz.require_tenant(msg.tenant),
        agent=msg.agent,
        # An agent that says nothing about privacy keeps its data local.
        privacy=_PRIVACY.get(msg.privacy, decide.Privacy.LOCAL_ONLY),
        input_chars=msg.input_chars,
        budget_usd=msg.budget_usd if msg.HasField("budget_usd") else None,
        sla_ms=msg.sla_ms if msg.HasField("sla_ms") else None,
    )


def decision_to_pb(d: decide.Decision) -> router_pb2.Decision:
    """The Decision message for a decision."""
    return router_pb2.Decision(
        engine=common_pb2.Engine(route=_ROUTE[d.route], chosen_by=d.chosen_by, reason=d.reason),
        provider=d.provider,
        estimated_cost_usd=d.estimated_cost_usd,
    )
