"""The agent service's composition root: ``python -m aion.agent``."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from aion.agent import peers, registry, runner, servicer, store
from aion.agent import settings as agent_settings
from aion.api.agent.v1 import agent_pb2, agent_pb2_grpc
from aion.core import lifecycle, metrics, server, settings, telemetry

log = logging.getLogger(__name__)


async def run(cfg: agent_settings.AgentSettings) -> None:
    """Serve until SIGTERM or SIGINT; then drain the server and the running tasks."""
    agents = registry.MemoryRegistry()
    if cfg.agents_file is not None:
        for agent in registry.load_file(cfg.agents_file, tenant=cfg.agents_tenant,
                                        executor_target=cfg.executor_target):
            await agents.put(agent)
            log.info("registered agent from file", extra={"agent": agent.name})
    tasks = store.MemoryTaskStore()
    async with contextlib.AsyncExitStack() as stack, asyncio.TaskGroup() as group:
        clients = await stack.enter_async_context(
            peers.Peers(knowledge_target=cfg.knowledge_target))
        task_runner = runner.Runner(
            tasks=tasks, agents=agents, clients=clients, spawn=group.create_task,
            max_input_chars=cfg.max_input_chars, max_tokens_limit=cfg.max_tokens_limit,
            retrieval_top_k=cfg.retrieval_top_k)
        grpc_server = server.GrpcServer(name="agent", host=cfg.host, port=cfg.port,
                                        grace_s=cfg.grace_s, drain_delay_s=cfg.drain_delay_s)
        grpc_server.add(agent_pb2_grpc.add_AgentServiceServicer_to_server,
                        servicer.AgentServicer(run=task_runner, tasks=tasks, agents=agents,
                                               default_timeout_s=cfg.default_timeout_s),
                        agent_pb2.DESCRIPTOR.services_by_name["AgentService"].full_name)
        stack.enter_context(metrics.MetricsServer(host=cfg.host, port=cfg.metrics_port))
        await stack.enter_async_context(grpc_server)
        await lifecycle.wait_for_signal()
        # Streams drain with the server; tasks get the same grace, then end CANCELED.
        await asyncio.gather(grpc_server.shutdown(), task_runner.wait_idle(cfg.grace_s))
        await task_runner.cancel_all()


def main() -> None:
    """Entry point."""
    cfg = settings.load(agent_settings.AgentSettings)
    telemetry.setup(service="agent", log_level=cfg.log_level, otlp_endpoint=cfg.otlp_endpoint)
    asyncio.run(run(cfg))
