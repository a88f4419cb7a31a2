"""The Router gRPC service."""

from __future__ import annotations

import logging
from typing import Any

import grpc

from aion.api.router.v1 import router_pb2, router_pb2_grpc
from aion.router import convert, decide, policy

log = logging.getLogger(__name__)


class RouterServicer(router_pb2_grpc.RouterServicer):
    """Answers Decide with the current policy."""

    def __init__(self, policies: policy.PolicySource) -> None:
        self._policies = policies

    async def Decide(
        self, request: router_pb2.DecideRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> router_pb2.Decision:
        req = convert.request_from_pb(request)
        routing = decide.decide(req, self._policies.current())
        log.info(
            "decided",
            extra={
                "agent": req.agent,
                "tenant": req.tenant,
                "route": routing.route.value,
                "chosen_by": routing.chosen_by,
            },
        )
        return convert.routing_to_pb(routing)
