"""Channels to the executors and the knowledge service, opened once and closed on exit.

Every channel is mTLS as the agent service's identity, and checks that the pod
it reaches is an ``executor`` (or the ``knowledge`` service), whatever its address.

Each executor pod gets a channel of its own, and ``endpoints.Endpoints`` picks
the pod of each call, so an Agent's tasks spread over all its pods. A call
that a pod refuses before its first token (unreachable, or its queue full) is
tried on the Agent's next pod. Each pod has a circuit breaker (``breaker``): one
that keeps refusing is left alone for a while, then probed; and ``load`` counts
the calls in flight on each pod, which the load-aware chooser reads.
"""

from __future__ import annotations

import asyncio
import types
from collections.abc import AsyncIterator
from typing import Self

import grpc

from aion.agent import breaker as breaker_mod
from aion.agent import endpoints as endpoints_mod
from aion.agent import load as load_mod
from aion.api.executor.v1 import executor_pb2, executor_pb2_grpc
from aion.api.knowledge.v1 import knowledge_pb2, knowledge_pb2_grpc
from aion.api.v1 import knowledge_pb2 as public_knowledge_pb2
from aion.core import channels, errors
from aion.core import tls as tls_mod

# How long the channel of a pod that left its Service stays open for the calls
# still running on it (a task's own timeout ends them sooner).
RETIRE_GRACE_S = 600.0


class Peers:
    """The agent service's clients: executors by address, and the knowledge service."""

    def __init__(
        self,
        *,
        tls: tls_mod.Tls,
        knowledge_target: str | None,
        chooser: endpoints_mod.Chooser | None = None,
        resolver: endpoints_mod.Resolver = endpoints_mod.resolve,
        refresh_s: float = 5.0,
        board: load_mod.LoadBoard | None = None,
        breakers: breaker_mod.Breakers | None = None,
    ) -> None:
        self._tls = tls
        self.board = board or load_mod.LoadBoard(stale_s=15.0)
        self.breakers = breakers or breaker_mod.Breakers()
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._retiring: dict[asyncio.Task[None], grpc.aio.Channel] = {}
        self.endpoints = endpoints_mod.Endpoints(
            chooser=chooser, resolver=resolver, refresh_s=refresh_s, on_gone=self._retire
        )
        self._knowledge: knowledge_pb2_grpc.KnowledgeServiceAsyncStub | None = None
        self._knowledge_channel: grpc.aio.Channel | None = None
        if knowledge_target:
            self._knowledge_channel = channels.connect(knowledge_target, tls=tls, peer="knowledge")
            self._knowledge = knowledge_pb2_grpc.KnowledgeServiceStub(self._knowledge_channel)

    def _channel(self, target: str) -> grpc.aio.Channel:
        if target not in self._channels:
            self._channels[target] = channels.connect(target, tls=self._tls, peer="executor")
        return self._channels[target]

    def _retire(self, address: str) -> None:
        chan = self._channels.pop(address, None)
        if chan is not None:
            task = asyncio.get_running_loop().create_task(chan.close(RETIRE_GRACE_S))
            self._retiring[task] = chan
            task.add_done_callback(lambda done: self._retiring.pop(done, None))

    def _failing(self) -> set[str]:
        return {
            address
            for address, chan in self._channels.items()
            if chan.get_state() == grpc.ChannelConnectivity.TRANSIENT_FAILURE
        }

    async def _choose(self, endpoints: tuple[str, ...], tried: set[str]) -> str | None:
        # Pods whose connection is failing, or whose breaker is open, are the last
        # choice, not excluded.
        return await self.endpoints.choose(
            endpoints, avoid=tried | self._failing() | self.breakers.blocked()
        ) or await self.endpoints.choose(endpoints, avoid=tried)

    async def generate(
        self,
        endpoints: tuple[str, ...],
        request: executor_pb2.GenerateRequest,
        *,
        timeout: float,
        metadata: tuple[tuple[str, str], ...] = (),
    ) -> AsyncIterator[executor_pb2.GenerateChunk]:
        """Stream a generation from one of the agent's executor pods; one that refuses
        the call before its first chunk (UNAVAILABLE, RESOURCE_EXHAUSTED) makes way
        for the next, within ``timeout``."""
        if not endpoints:
            raise errors.FailedPrecondition(
                "the agent has no ready executor yet; wait for its Ready condition"
            )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        tried: set[str] = set()
        last: errors.AionError = errors.Unavailable(
            f"executor address {', '.join(endpoints)} names no pod"
        )
        while True:
            address = await self._choose(endpoints, tried)
            if address is None:
                raise last
            stub = executor_pb2_grpc.ExecutorStub(self._channel(address))
            guard = self.breakers[address]
            guard.attempt()
            started = False
            call = stub.Generate(request, timeout=deadline - loop.time(), metadata=metadata)
            try:
                try:
                    with self.board.calling(address), errors.remote("executor"):
                        async for chunk in call:
                            started = True
                            yield chunk
                finally:
                    # Closed before its end (the run stopped while it handled a chunk):
                    # the executor stops generating now, not when this call is collected.
                    call.cancel()
                guard.success()
                return
            except (errors.Unavailable, errors.ResourceExhausted) as exc:
                # A full queue is load, not a fault: only UNAVAILABLE counts against it.
                if isinstance(exc, errors.Unavailable):
                    guard.failure()
                else:
                    guard.release()
                if started or deadline - loop.time() <= 0:
                    raise
                last = exc
                tried.add(address)
                if isinstance(exc, errors.Unavailable):
                    self.endpoints.forget(endpoints)
            except BaseException:
                guard.release()  # cancelled, or failed mid-stream for its own reasons
                raise

    async def search(
        self, *, tenant: str, knowledge_base: str, query: str, top_k: int, timeout: float
    ) -> list[public_knowledge_pb2.SearchHit]:
        """Chunks of ``knowledge_base`` relevant to ``query``; none without a knowledge service."""
        if self._knowledge is None:
            return []
        req = knowledge_pb2.SearchRequest(
            tenant=tenant,
            request=public_knowledge_pb2.SearchRequest(
                knowledge_base=knowledge_base, query=query, top_k=top_k
            ),
        )
        with errors.remote("knowledge"):
            resp = await self._knowledge.Search(req, timeout=timeout)
        return list(resp.hits)

    async def close(self) -> None:
        """Close every channel; safe to call twice."""
        chans, self._channels = list(self._channels.values()), {}
        retiring, self._retiring = self._retiring, {}
        for task, chan in retiring.items():
            task.cancel()
            chans.append(chan)
        if self._knowledge_channel is not None:
            chans.append(self._knowledge_channel)
            self._knowledge_channel = self._knowledge = None
        for chan in chans:
            await chan.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: types.TracebackType | None,
    ) -> None:
        await self.close()
