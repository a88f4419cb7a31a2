"""The knowledge service's composition root: ``python -m aion.knowledge``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc

from aion.api.knowledge.v1 import knowledge_pb2, knowledge_pb2_grpc
from aion.core import authz, channels, lifecycle, metrics, server, settings, telemetry, tls
from aion.knowledge import (
    chunking,
    db,
    embedder,
    indexer,
    objects,
    qdrant_index,
    queue,
    servicer,
)
from aion.knowledge import settings as knowledge_settings

log = logging.getLogger(__name__)

SERVICE = knowledge_pb2.DESCRIPTOR.services_by_name["KnowledgeService"].full_name
# Who may call each RPC (their certificates' identities): the gateway for its
# public Knowledge API (Embed included: /v1/embeddings), the agent service for retrieval.
ALLOW = authz.methods(
    SERVICE,
    {
        "Ingest": {"gateway"},
        "IngestStream": {"gateway"},
        "Delete": {"gateway"},
        "GetDocument": {"gateway"},
        "ListDocuments": {"gateway"},
        "Embed": {"gateway"},
        "Search": {"gateway", "agent"},
    },
)


async def run(
    cfg: knowledge_settings.KnowledgeSettings,
    material: tls.Tls,
    *,
    until: Awaitable[object] | None = None,
    on_ready: Callable[[str], None] | None = None,
    on_index: Callable[[qdrant_index.Index], None] | None = None,
) -> None:
    """Serve until SIGTERM or SIGINT (or ``until`` completes), indexing in the background;
    then drain. ``on_ready`` gets the gRPC address once it serves; ``on_index`` (tests)
    the open Qdrant index."""
    dsn = cfg.postgres_dsn.get_secret_value()
    await db.migrate(dsn)
    await queue.ensure_topic(cfg.kafka_bootstrap, cfg.topic, cfg.topic_partitions, cfg)
    store = _object_store(cfg)
    await store.ensure_bucket()
    chunker = chunking.Chunker(
        cfg.tokenizer_path, size=cfg.chunk_tokens, overlap=cfg.chunk_overlap_tokens
    )
    async with contextlib.AsyncExitStack() as stack:
        pool = await stack.enter_async_context(db.pool(dsn, max_size=cfg.pool_max_size))
        index = await stack.enter_async_context(qdrant_index.open_index(cfg))
        if on_index is not None:
            on_index(index)
        channel = await stack.enter_async_context(
            channels.connect(cfg.executor_target, tls=material, peer="executor")
        )
        embed = _embedder(channel, cfg)
        publisher = queue.Publisher(cfg.kafka_bootstrap, cfg.topic, cfg)
        await publisher.start()
        stack.push_async_callback(publisher.stop)
        work = indexer.Indexer(
            pool=pool, store=store, index=index, embed=embed, chunker=chunker, cfg=cfg
        )
        reaper = indexer.Reaper(pool=pool, publish=publisher.publish, cfg=cfg)
        # Indexing stops after the server has drained, before the publisher and the pool.
        await stack.enter_async_context(_indexing(cfg, work, reaper))
        grpc_server = server.GrpcServer.serving(
            "knowledge", cfg, tls=material, allow=ALLOW, health_port=cfg.health_port
        )
        grpc_server.add(
            knowledge_pb2_grpc.add_KnowledgeServiceServicer_to_server,
            servicer.KnowledgeServicer(
                pool=pool,
                store=store,
                index=index,
                embed=embed,
                chunker=chunker,
                publish=publisher.publish,
                cfg=cfg,
            ),
            SERVICE,
        )
        with metrics.MetricsServer(host=cfg.host, port=cfg.metrics_port):
            async with grpc_server:
                log.info("knowledge service ready", extra={"worker": cfg.worker_id})
                if on_ready is not None:
                    on_ready(grpc_server.address)
                await (until if until is not None else lifecycle.wait_for_signal())
                await grpc_server.shutdown()


def _object_store(cfg: knowledge_settings.KnowledgeSettings) -> objects.ObjectStore:
    return objects.ObjectStore.connect(
        cfg.minio_endpoint,
        access_key=cfg.minio_access_key,
        secret_key=cfg.minio_secret_key.get_secret_value(),
        bucket=cfg.minio_bucket,
        secure=cfg.minio_secure,
    )


def _embedder(
    channel: grpc.aio.Channel, cfg: knowledge_settings.KnowledgeSettings
) -> embedder.Embedder:
    return embedder.Embedder(
        channel,
        model=cfg.embedding_model,
        dimensions=cfg.embedding_dimensions,
        batch=cfg.embed_batch,
        concurrency=cfg.embed_concurrency,
        timeout_s=cfg.embed_timeout_s,
    )


@contextlib.asynccontextmanager
async def _indexing(
    cfg: knowledge_settings.KnowledgeSettings, work: indexer.Indexer, reaper: indexer.Reaper
) -> AsyncIterator[None]:
    """The background of indexing, as named tasks: the reaper, which re-queues versions
    whose worker was lost, and ``cfg.workers`` consumers of the ingest topic. Cancelled
    and awaited on exit."""
    consumers = {
        f"knowledge-worker-{i}": queue.Worker(
            name=f"{cfg.worker_id}-{i}",
            bootstrap=cfg.kafka_bootstrap,
            topic=cfg.topic,
            group=cfg.group,
            handle=work.handle,
            security=cfg,
        ).run()
        for i in range(cfg.workers)
    }
    coros = {"knowledge-reaper": reaper.run(), **consumers}
    tasks = [asyncio.create_task(coro, name=name) for name, coro in coros.items()]
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def main() -> None:
    """Entry point."""
    cfg = settings.load(knowledge_settings.KnowledgeSettings)
    material = tls.load()
    telemetry.setup(service="knowledge", log_level=cfg.log_level, otlp_endpoint=cfg.otlp_endpoint)
    lifecycle.freeze_heap()
    lifecycle.run(run(cfg, material))
