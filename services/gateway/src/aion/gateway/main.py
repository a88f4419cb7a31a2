"""The gateway's composition root: ``python -m aion.gateway``."""

from __future__ import annotations

import asyncio
import contextlib

from aion.api.v1 import (
    agents_pb2,
    agents_pb2_grpc,
    knowledge_pb2,
    knowledge_pb2_grpc,
    tasks_pb2,
    tasks_pb2_grpc,
)
from aion.core import channels, lifecycle, server, settings, telemetry
from aion.gateway import auth, ratelimit, servicers
from aion.gateway import settings as gateway_settings


async def run(cfg: gateway_settings.GatewaySettings) -> None:
    """Serve until SIGTERM or SIGINT, then drain."""
    async with contextlib.AsyncExitStack() as stack:
        peers = servicers.Peers(
            router=await stack.enter_async_context(channels.connect(cfg.router_target)),
            agent=await stack.enter_async_context(channels.connect(cfg.agent_target)),
            knowledge=await stack.enter_async_context(channels.connect(cfg.knowledge_target)))
        guard = servicers.Guard(
            authenticator=auth.Authenticator(cfg),
            limiter=ratelimit.RateLimiter(rate=cfg.rate_per_s, burst=cfg.rate_burst))
        grpc_server = server.GrpcServer(name="gateway", host=cfg.host, port=cfg.port,
                                        grace_s=cfg.grace_s, drain_delay_s=cfg.drain_delay_s)
        grpc_server.add(tasks_pb2_grpc.add_TasksServicer_to_server,
                        servicers.TasksServicer(guard=guard, peers=peers),
                        tasks_pb2.DESCRIPTOR.services_by_name["Tasks"].full_name)
        grpc_server.add(agents_pb2_grpc.add_AgentsServicer_to_server,
                        servicers.AgentsServicer(guard=guard, peers=peers),
                        agents_pb2.DESCRIPTOR.services_by_name["Agents"].full_name)
        grpc_server.add(knowledge_pb2_grpc.add_KnowledgeServicer_to_server,
                        servicers.KnowledgeServicer(guard=guard, peers=peers),
                        knowledge_pb2.DESCRIPTOR.services_by_name["Knowledge"].full_name)
        await lifecycle.serve(grpc_server, host=cfg.host, metrics_port=cfg.metrics_port)


def main() -> None:
    """Entry point."""
    cfg = settings.load(gateway_settings.GatewaySettings)
    telemetry.setup(service="gateway", log_level=cfg.log_level, otlp_endpoint=cfg.otlp_endpoint)
    asyncio.run(run(cfg))
