"""The agent service's composition root: ``python -m aion.agent``."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable

from aion.agent import (
    agent_loop,
    backends,
    breaker,
    db,
    events,
    load,
    load_feed,
    outbox,
    peers,
    placement,
    provider,
    recovery,
    registry,
    runner,
    servicer,
    startup,
    store,
    work_queue,
    worker,
)
from aion.agent import metrics as agent_metrics
from aion.agent import settings as agent_settings
from aion.api.agent.v1 import agent_pb2, agent_pb2_grpc
from aion.core import authz, lifecycle, metrics, server, settings, telemetry, tls

log = logging.getLogger(__name__)

SERVICE = agent_pb2.DESCRIPTOR.services_by_name["AgentService"].full_name
# Who may call each RPC (their certificates' identities): the gateway runs tasks
# and serves the public Agents API; only the operator registers agents.
_GATEWAY = {
    "Run",
    "Submit",
    "Follow",
    "GetTask",
    "CancelTask",
    "ListAgents",
    "GetAgent",
    "ApplyAgents",
}
ALLOW = authz.methods(
    SERVICE,
    {
        **{name: {"gateway"} for name in _GATEWAY},
        "RegisterAgent": {"operator"},
        "DeregisterAgent": {"operator"},
    },
)


async def run(
    cfg: agent_settings.AgentSettings,
    material: tls.Tls,
    *,
    until: Awaitable[object] | None = None,
    on_ready: Callable[[str], None] | None = None,
    on_board: Callable[[load.LoadBoard], None] | None = None,
    breaker_clock: Callable[[], float] = time.monotonic,
) -> None:
    """Serve until SIGTERM or SIGINT (or ``until`` completes); then drain the server and
    hand running tasks back. ``on_ready`` gets the gRPC address once it serves;
    ``on_board`` (tests) the executors' load board; the circuit breakers run on
    ``breaker_clock`` (tests move it)."""
    topics = await startup.prepare(cfg)
    async with contextlib.AsyncExitStack() as stack:
        pool = await stack.enter_async_context(_pool(cfg))
        publisher = outbox.Publisher(
            pool=pool,
            bootstrap=cfg.kafka_bootstrap,
            security=cfg,
            linger_s=cfg.outbox_linger_s,
        )
        tasks = store.TaskStore(
            pool=pool, topics=topics, lease_s=cfg.lease_s, on_commit=publisher.wake
        )
        agents = registry.CachedRegistry(await _registry(cfg, pool))
        agents.listen(tasks.listener)
        board = load.LoadBoard(stale_s=cfg.load_stale_s)
        if on_board is not None:
            on_board(board)
        rule = breaker.Rule(
            failures=cfg.breaker_failures, open_s=cfg.breaker_open_s, clock=breaker_clock
        )
        loop = await _agent_loop(cfg, material, stack, tasks, agents, board, rule)
        task_runner = runner.Runner(
            tasks=tasks, agents=agents, loop=loop, worker_id=cfg.worker_id, limits=_limits(cfg)
        )
        grpc_server = server.GrpcServer.serving(
            "agent",
            cfg,
            tls=material,
            allow=ALLOW,
            health_port=cfg.health_port,
            extra_interceptors=[db.UnavailableInterceptor()],
        )
        grpc_server.add(
            agent_pb2_grpc.add_AgentServiceServicer_to_server,
            servicer.AgentServicer(
                run=task_runner,
                tasks=tasks,
                agents=agents,
                default_timeout_s=cfg.default_timeout_s,
                follow_poll_s=cfg.follow_poll_s,
            ),
            SERVICE,
        )
        background = worker.Worker(
            run=task_runner,
            publisher=publisher,
            grace_s=cfg.grace_s,
            recovery=_recovery(cfg, pool, topics, publisher),
            consumer=work_queue.consumer(
                run=task_runner,
                pool=pool,
                topics=topics,
                bootstrap=cfg.kafka_bootstrap,
                security=cfg,
            ),
            queue=topics.work,
            load_feed=load_feed.LoadFeed(
                board, bootstrap=cfg.kafka_bootstrap, topic=cfg.executor_load_topic, security=cfg
            ),
        )
        with metrics.MetricsServer(host=cfg.host, port=cfg.metrics_port):
            async with background, grpc_server:
                log.info("agent service ready", extra={"worker": cfg.worker_id})
                if on_ready is not None:
                    on_ready(grpc_server.address)
                await (until if until is not None else lifecycle.wait_for_signal())
                # Streams drain with the server while running tasks get the same grace.
                await background.shutdown(grpc_server.shutdown())


async def _agent_loop(
    cfg: agent_settings.AgentSettings,
    material: tls.Tls,
    stack: contextlib.AsyncExitStack,
    tasks: store.TaskStore,
    agents: registry.AgentRegistry,
    board: load.LoadBoard,
    rule: breaker.Rule,
) -> agent_loop.AgentLoop:
    """The agent loop and where its model calls go: the executor replicas (chosen on
    ``board``'s live load, each behind a breaker of ``rule``) and the external API (if
    any, behind its own), with the planner that spills between them."""

    def opens(target: str) -> breaker.Rule:
        return dataclasses.replace(rule, on_open=agent_metrics.BREAKER_OPENS.labels(target).inc)

    pods = breaker.Breakers(opens("executor"))
    clients = await stack.enter_async_context(
        peers.Peers(
            tls=material,
            knowledge_target=cfg.knowledge_target,
            chooser=load.LeastLoaded(board, pods),
            board=board,
            breakers=pods,
        )
    )
    api = None
    if cfg.provider_base_url:
        api = backends.ApiBackend(
            await stack.enter_async_context(_provider(cfg, cfg.provider_base_url)),
            guard=breaker.Breaker(opens("api")),
        )
    return agent_loop.AgentLoop(
        local=backends.ExecutorBackend(clients),
        api=api,
        knowledge=backends.KnowledgeService(clients),
        agents=agents,
        retrieval_top_k=cfg.retrieval_top_k,
        planner=placement.LoadPlanner(
            clients=clients,
            api=api,
            queue_threshold=cfg.spill_queue_threshold,
            record=tasks.record_engine,
        ),
    )


def _pool(cfg: agent_settings.AgentSettings) -> contextlib.AbstractAsyncContextManager[db.Pool]:
    return db.pool(
        cfg.postgres_dsn.get_secret_value(),
        min_size=cfg.pool_min_size,
        max_size=cfg.pool_max_size,
        timeout=cfg.pool_timeout_s,
    )


async def _registry(cfg: agent_settings.AgentSettings, pool: db.Pool) -> registry.PostgresRegistry:
    """The agent registry, with the agents of ``cfg.agents_file`` registered (dev)."""
    agents = registry.PostgresRegistry(
        pool, default_endpoints=(cfg.executor_target,) if cfg.executor_target else ()
    )
    if cfg.agents_file is not None:
        await registry.register_file(
            agents, cfg.agents_file, tenant=cfg.agents_tenant, executor_target=cfg.executor_target
        )
    return agents


def _recovery(
    cfg: agent_settings.AgentSettings,
    pool: db.Pool,
    topics: events.Topics,
    publisher: outbox.Publisher,
) -> recovery.Recovery:
    return recovery.Recovery(
        pool=pool,
        topics=topics,
        interval_s=cfg.reaper_interval_s,
        task_retention_s=cfg.task_retention_s,
        processed_event_retention_s=cfg.processed_event_retention_s,
        retention_interval_s=cfg.retention_interval_s,
        on_commit=publisher.wake,
    )


def _provider(cfg: agent_settings.AgentSettings, base_url: str) -> provider.Provider:
    key = cfg.provider_api_key.get_secret_value() if cfg.provider_api_key else ""
    return provider.Provider(
        base_url=base_url,
        api_key=key,
        model=cfg.provider_model,
        cost_per_1k_tokens=cfg.provider_cost_per_1k_tokens,
    )


def _limits(cfg: agent_settings.AgentSettings) -> runner.Limits:
    return runner.Limits(
        max_input_chars=cfg.max_input_chars,
        max_tokens=cfg.max_tokens_limit,
        max_attempts=cfg.max_attempts,
        max_concurrent=cfg.max_concurrent_tasks,
        heartbeat_s=cfg.heartbeat_s,
        lease_s=cfg.lease_s,
        max_running_per_tenant=cfg.max_running_per_tenant,
        max_idempotency_key_chars=cfg.max_idempotency_key_chars,
        dispatch_poll_s=cfg.dispatch_poll_s,
    )


def main() -> None:
    """Entry point."""
    cfg = settings.load(agent_settings.AgentSettings)
    material = tls.load()
    telemetry.setup(service="agent", log_level=cfg.log_level, otlp_endpoint=cfg.otlp_endpoint)
    lifecycle.freeze_heap()
    lifecycle.run(run(cfg, material))
