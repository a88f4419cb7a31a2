"""The gateway's composition root: ``python -m aion.gateway``.

The gRPC API always; the HTTP front door (OpenAI-compatible with its
OpenAPI document, A2A, and an MCP server) beside it in the same event loop when
``AION_GATEWAY_HTTP_PORT`` is set, over the same servicers. SIGTERM stops
both from accepting and lets in-flight calls finish.
"""

from __future__ import annotations

import asyncio
import contextlib

import grpc
from starlette import routing

from aion.api.v1 import (
    agents_pb2,
    agents_pb2_grpc,
    keys_pb2,
    keys_pb2_grpc,
    knowledge_pb2,
    knowledge_pb2_grpc,
    tasks_pb2,
    tasks_pb2_grpc,
)
from aion.core import (
    channels,
    http_server,
    lifecycle,
    metrics,
    server,
    settings,
    telemetry,
    tls,
)
from aion.gateway import (
    a2a_api,
    edge,
    http_app,
    mcp_server,
    openai_api,
    openapi,
    servicers,
)
from aion.gateway import settings as gateway_settings


def _public(
    grpc_server: server.GrpcServer,
    *,
    tasks: servicers.TasksServicer,
    agents: servicers.AgentsServicer,
    keys: servicers.KeysServicer,
    knowledge: servicers.KnowledgeServicer,
) -> None:
    """The public gRPC services on ``grpc_server``."""
    for register, servicer, module, name in (
        (tasks_pb2_grpc.add_TasksServicer_to_server, tasks, tasks_pb2, "Tasks"),
        (agents_pb2_grpc.add_AgentsServicer_to_server, agents, agents_pb2, "Agents"),
        (keys_pb2_grpc.add_KeysServicer_to_server, keys, keys_pb2, "Keys"),
        (knowledge_pb2_grpc.add_KnowledgeServicer_to_server, knowledge, knowledge_pb2, "Knowledge"),
    ):
        grpc_server.add(register, servicer, module.DESCRIPTOR.services_by_name[name].full_name)


def _http_routes(
    cfg: gateway_settings.GatewaySettings,
    mcp: mcp_server.McpApi,
    *,
    guard: servicers.Guard,
    tasks: servicers.TasksServicer,
    agents: servicers.AgentsServicer,
    knowledge: servicers.KnowledgeServicer,
) -> list[routing.BaseRoute]:
    """The HTTP front door's routes: OpenAI-compatible, A2A, MCP and the OpenAPI document."""
    timeout_s, max_body = cfg.http_timeout_s, cfg.http_max_body_bytes
    api = openai_api.OpenAIApi(
        tasks=tasks,
        agents=agents,
        knowledge=knowledge,
        timeout_s=timeout_s,
        max_body_bytes=max_body,
    )
    a2a = a2a_api.A2AApi(
        guard=guard, tasks=tasks, agents=agents, timeout_s=timeout_s, max_body_bytes=max_body
    )
    return [*api.routes, *a2a.routes, *mcp.routes, openapi.route()]


async def run(cfg: gateway_settings.GatewaySettings, material: tls.Tls) -> None:
    """Serve until SIGTERM or SIGINT, then drain; internal calls go over mTLS as ``material``."""
    async with contextlib.AsyncExitStack() as stack:

        async def connect(target: str, peer: str) -> grpc.aio.Channel:
            return await stack.enter_async_context(
                channels.connect(target, tls=material, peer=peer)
            )

        upstreams = servicers.Upstreams.over(
            router=await connect(cfg.router_target, "router"),
            agent=await connect(cfg.agent_target, "agent"),
            knowledge=await connect(cfg.knowledge_target, "knowledge"),
        )
        guard, store = await stack.enter_async_context(edge.guard(cfg))
        records = servicers.AgentRecords(upstreams.agent, ttl_s=cfg.agent_cache_s)
        tasks = servicers.TasksServicer(guard=guard, upstreams=upstreams, records=records)
        agents = servicers.AgentsServicer(guard=guard, upstreams=upstreams, records=records)
        knowledge = servicers.KnowledgeServicer(guard=guard, upstreams=upstreams)
        # The public port: plaintext here (TLS ends at the ingress), callers authenticated
        # by API key or JWT in ``guard``.
        grpc_server = server.GrpcServer.serving(
            "gateway", cfg, max_message_bytes=cfg.max_message_bytes
        )
        keys = servicers.KeysServicer(guard=guard, store=store)
        _public(grpc_server, tasks=tasks, agents=agents, keys=keys, knowledge=knowledge)
        if cfg.http_port is None:
            await lifecycle.serve(grpc_server, host=cfg.host, metrics_port=cfg.metrics_port)
            return
        mcp = mcp_server.McpApi(
            guard=guard,
            tasks=tasks,
            agents=agents,
            knowledge=knowledge,
            timeout_s=cfg.http_timeout_s,
        )
        await stack.enter_async_context(mcp.running())
        stack.enter_context(metrics.MetricsServer(host=cfg.host, port=cfg.metrics_port))
        # Bound (listening) before gRPC reports SERVING, so a ready gateway takes HTTP too.
        app = http_app.build(
            _http_routes(cfg, mcp, guard=guard, tasks=tasks, agents=agents, knowledge=knowledge)
        )
        http = await stack.enter_async_context(
            http_server.HttpServer(app, name="gateway http", host=cfg.host, port=cfg.http_port)
        )
        await stack.enter_async_context(grpc_server)
        async with asyncio.TaskGroup() as group:
            group.create_task(http.serve(), name="gateway http")
            await lifecycle.wait_for_signal()
            http.shutdown()
            await grpc_server.shutdown()


def main() -> None:
    """Entry point."""
    cfg = settings.load(gateway_settings.GatewaySettings)
    material = tls.load()
    telemetry.setup(service="gateway", log_level=cfg.log_level, otlp_endpoint=cfg.otlp_endpoint)
    lifecycle.freeze_heap()
    lifecycle.run(run(cfg, material))
