"""Where the agent loop's model calls and searches go: the implementations of its seams.

``agent_loop.ModelBackend`` has two implementations: ``ExecutorBackend``, the agent's
own executor pods (``peers``, gRPC), and ``ApiBackend``, an external OpenAI-compatible
API (``provider``). ``KnowledgeService`` implements ``agent_loop.Knowledge`` with the
knowledge service. Protobuf stays in ``convert``; the loop sees ``model`` types only.
"""

from __future__ import annotations

import collections
import statistics
import time
from collections.abc import AsyncIterator

from aion.agent import breaker, convert, model, peers, provider
from aion.core import errors

# How many of the provider's recent calls its p95 is taken over.
LATENCY_WINDOW = 50


class ExecutorBackend:
    """Model calls on the agent's executor pods; they cost nothing per token."""

    def __init__(self, clients: peers.Peers) -> None:
        self._peers = clients

    def model_name(self, call: model.ModelCall) -> str:
        """The agent's own model."""
        return call.model

    def cost_usd(self, prompt_tokens: int, completion_tokens: int) -> float:
        """Nothing: the cluster's own hardware."""
        return 0.0

    async def generate(self, call: model.ModelCall) -> AsyncIterator[model.Chunk]:
        """Stream the reply from one of the agent's pods, labelled with its task."""
        metadata = (
            ("x-aion-task-id", call.task_id),
            ("x-aion-attempt", str(call.attempt)),
            ("x-aion-tenant", call.tenant),  # for the executor's log lines and spans
        )
        async for chunk in self._peers.generate(
            call.endpoints,
            convert.generate_request(call),
            timeout=call.timeout_s,
            metadata=metadata,
        ):
            yield convert.chunk_from_pb(chunk)


class ApiBackend:
    """Model calls on an external API, with its own model and price, behind a circuit
    breaker: after repeated failures calls fail at once (UNAVAILABLE, with when to
    retry) until a half-open probe succeeds. Its recent p95 latency is kept for the
    SLA part of the route choice."""

    def __init__(self, api: provider.Provider, *, guard: breaker.Breaker | None = None) -> None:
        self._api = api
        self.breaker = guard or breaker.Breaker()
        self._latencies: collections.deque[float] = collections.deque(maxlen=LATENCY_WINDOW)

    @property
    def name(self) -> str:
        """The provider's model."""
        return self._api.model

    def observed(self, latency_ms: float) -> None:
        """Count a served call's latency in the recent p95."""
        self._latencies.append(latency_ms)

    def p95_ms(self) -> float | None:
        """The p95 latency of its recent calls; None before it has served two."""
        if len(self._latencies) < 2:
            return None
        return statistics.quantiles(self._latencies, n=20, method="inclusive")[18]

    def model_name(self, call: model.ModelCall) -> str:
        """The provider's model, whatever the agent names."""
        return self._api.model

    def cost_usd(self, prompt_tokens: int, completion_tokens: int) -> float:
        """The provider's price of the tokens."""
        return (prompt_tokens + completion_tokens) / 1000 * self._api.cost_per_1k_tokens

    async def generate(self, call: model.ModelCall) -> AsyncIterator[model.Chunk]:
        """Stream the reply from the provider; UNAVAILABLE at once while its breaker is open."""
        if not self.breaker.attempt():
            raise errors.Unavailable(
                f"the model API ({self._api.model}) failed repeatedly and is left alone for "
                f"{self.breaker.retry_after_s():.1f}s more; retry then",
                retry_after_s=self.breaker.retry_after_s(),
            )
        started = time.perf_counter()
        ok = False
        try:
            async for chunk in self._api.generate(
                call.messages,
                max_tokens=call.max_tokens,
                temperature=call.temperature,
                seed=call.seed,
                timeout=call.timeout_s,
            ):
                yield chunk
            ok = True
        except errors.Unavailable:
            self.breaker.failure()
            raise
        finally:
            if ok:
                self.breaker.success()
                self.observed((time.perf_counter() - started) * 1000)
            else:
                self.breaker.release()


class KnowledgeService:
    """Searches through the knowledge service (none configured: no passages)."""

    def __init__(self, clients: peers.Peers) -> None:
        self._peers = clients

    async def search(
        self, *, tenant: str, knowledge_base: str, query: str, top_k: int, timeout: float
    ) -> list[model.Passage]:
        """The passages of ``knowledge_base`` relevant to ``query``, best first, each with
        its citation."""
        hits = await self._peers.search(
            tenant=tenant, knowledge_base=knowledge_base, query=query, top_k=top_k, timeout=timeout
        )
        return convert.passages(hits)
