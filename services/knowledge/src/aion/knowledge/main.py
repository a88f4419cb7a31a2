"""The knowledge service's composition root: ``python -m aion.knowledge``."""

from __future__ import annotations

import asyncio

from aion.api.knowledge.v1 import knowledge_pb2, knowledge_pb2_grpc
from aion.core import lifecycle, server, settings, telemetry
from aion.knowledge import qdrant_index, servicer
from aion.knowledge import settings as knowledge_settings


async def run(cfg: knowledge_settings.KnowledgeSettings) -> None:
    """Serve until SIGTERM or SIGINT, then drain; the Qdrant client closes last."""
    async with qdrant_index.QdrantIndex.from_settings(cfg) as store:
        grpc_server = server.GrpcServer(name="knowledge", host=cfg.host, port=cfg.port,
                                        grace_s=cfg.grace_s, drain_delay_s=cfg.drain_delay_s)
        grpc_server.add(knowledge_pb2_grpc.add_KnowledgeServiceServicer_to_server,
                        servicer.KnowledgeServicer(store=store, cfg=cfg),
                        knowledge_pb2.DESCRIPTOR.services_by_name["KnowledgeService"].full_name)
        await lifecycle.serve(grpc_server, host=cfg.host, metrics_port=cfg.metrics_port)


def main() -> None:
    """Entry point."""
    cfg = settings.load(knowledge_settings.KnowledgeSettings)
    telemetry.setup(service="knowledge", log_level=cfg.log_level,
                    otlp_endpoint=cfg.otlp_endpoint)
    asyncio.run(run(cfg))
