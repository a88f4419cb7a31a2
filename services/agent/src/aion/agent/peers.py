"""Channels to the executors and the knowledge service, opened once and closed on exit."""

from __future__ import annotations

import itertools
import types
from collections.abc import AsyncIterator
from typing import Self

import grpc

from aion.api.executor.v1 import executor_pb2, executor_pb2_grpc
from aion.api.knowledge.v1 import knowledge_pb2, knowledge_pb2_grpc
from aion.api.v1 import knowledge_pb2 as public_knowledge_pb2
from aion.core import channels, errors


class Peers:
    """The agent service's clients: executors by address, and the knowledge service."""

    def __init__(self, *, knowledge_target: str | None) -> None:
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._turn = itertools.count()
        self._knowledge: knowledge_pb2_grpc.KnowledgeServiceAsyncStub | None = None
        if knowledge_target:
            self._knowledge = knowledge_pb2_grpc.KnowledgeServiceStub(
                self._channel(knowledge_target))

    def _channel(self, target: str) -> grpc.aio.Channel:
        if target not in self._channels:
            self._channels[target] = channels.connect(target)
        return self._channels[target]

    def executor(self, endpoints: tuple[str, ...]) -> executor_pb2_grpc.ExecutorAsyncStub:
        """A stub for one of ``endpoints``, taken in turn."""
        if not endpoints:
            raise errors.FailedPrecondition(
                "the agent has no ready executor yet; wait for its Ready condition")
        target = endpoints[next(self._turn) % len(endpoints)]
        return executor_pb2_grpc.ExecutorStub(self._channel(target))

    async def generate(self, endpoints: tuple[str, ...], request: executor_pb2.GenerateRequest,
                       *, timeout: float, metadata: tuple[tuple[str, str], ...] = (),
                       ) -> AsyncIterator[executor_pb2.GenerateChunk]:
        """Stream a generation from one of the agent's executors."""
        stub = self.executor(endpoints)
        with errors.remote("executor"):
            async for chunk in stub.Generate(request, timeout=timeout, metadata=metadata):
                yield chunk

    async def search(self, *, tenant: str, knowledge_base: str, query: str,
                     top_k: int, timeout: float) -> list[public_knowledge_pb2.SearchHit]:
        """Chunks of ``knowledge_base`` relevant to ``query``; none without a knowledge service."""
        if self._knowledge is None:
            return []
        req = knowledge_pb2.SearchRequest(tenant=tenant, request=public_knowledge_pb2.SearchRequest(
            knowledge_base=knowledge_base, query=query, top_k=top_k))
        with errors.remote("knowledge"):
            resp = await self._knowledge.Search(req, timeout=timeout)
        return list(resp.hits)

    async def close(self) -> None:
        """Close every channel; safe to call twice."""
        chans, self._channels = list(self._channels.values()), {}
        for chan in chans:
            await chan.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: types.TracebackType | None) -> None:
        await self.close()
