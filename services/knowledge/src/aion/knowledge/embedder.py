"""Embeddings from the embedding executor's batched ``Embed`` RPC.

A document's chunks go in calls of ``batch`` texts, ``concurrency`` calls in
flight, so the executor's dynamic batcher stays fed. A busy executor
(RESOURCE_EXHAUSTED) or one still loading or restarting (UNAVAILABLE) is
retried with backoff until ``timeout_s`` runs out; then the call fails
``errors.Unavailable``, which the indexer treats as retriable. A caller's
texts (``embed_texts``, the public Knowledge.Embed) go in the same batches
but do not queue behind documents being indexed, and come back with the
tokens they took.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import time
from collections.abc import Sequence

import grpc

from aion.api.executor.v1 import executor_pb2, executor_pb2_grpc
from aion.core import errors

log = logging.getLogger(__name__)

_RETRIED = (
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.DEADLINE_EXCEEDED,
)
_NUMBERED = re.compile(r"\btexts\[(\d+)\]")  # a text the executor names, in its batch


@dataclasses.dataclass(frozen=True)
class Embedded:
    """Vectors in the order of their texts, and the tokens the texts took."""

    vectors: list[list[float]]
    prompt_tokens: int


class Embedder:
    """Turns texts into unit vectors through one executor channel."""

    def __init__(
        self,
        channel: grpc.aio.Channel,
        *,
        model: str,
        dimensions: int,
        batch: int = 64,
        concurrency: int = 4,
        timeout_s: float = 60.0,
    ) -> None:
        self._stub = executor_pb2_grpc.ExecutorStub(channel)
        self._model = model
        self.dimensions = dimensions
        self._batch = batch
        self._limit = asyncio.Semaphore(concurrency)
        self._timeout_s = timeout_s

    async def embed(
        self, texts: Sequence[str], *, timeout_s: float | None = None
    ) -> list[list[float]]:
        """One vector per text, in order; retried for ``timeout_s`` (the default when None)."""
        batches = [texts[i : i + self._batch] for i in range(0, len(texts), self._batch)]
        limit = timeout_s if timeout_s is not None else self._timeout_s
        done = await asyncio.gather(*(self._bounded(b, limit) for b in batches))
        return [v for embedded in done for v in embedded.vectors]

    async def embed_query(self, text: str, *, timeout_s: float) -> list[float]:
        """One text's vector, not waiting behind documents being indexed."""
        return (await self._call([text], timeout_s)).vectors[0]

    async def embed_texts(self, texts: Sequence[str], *, timeout_s: float) -> Embedded:
        """A caller's texts: their vectors in order and the tokens they took, not waiting
        behind documents being indexed (at most ``len(texts) / batch`` calls at once)."""
        starts = range(0, len(texts), self._batch)
        done = await asyncio.gather(
            *(self._numbered(texts[i : i + self._batch], i, timeout_s) for i in starts)
        )
        return Embedded(
            [v for embedded in done for v in embedded.vectors],
            sum(embedded.prompt_tokens for embedded in done),
        )

    async def _numbered(self, texts: Sequence[str], start: int, timeout_s: float) -> Embedded:
        """One batch of a caller's texts; a text the executor refuses is named by its place
        among all of them, not in its batch."""
        try:
            return await self._call(texts, timeout_s)
        except errors.InvalidArgument as err:
            if start == 0 or err.field is None:
                raise

            def shift(found: re.Match[str]) -> str:
                return f"texts[{int(found.group(1)) + start}]"

            raise errors.InvalidArgument(
                _NUMBERED.sub(shift, err.message), field=_NUMBERED.sub(shift, err.field)
            ) from err

    async def _bounded(self, texts: Sequence[str], timeout_s: float) -> Embedded:
        async with self._limit:
            return await self._call(texts, timeout_s)

    async def _call(self, texts: Sequence[str], timeout_s: float) -> Embedded:
        deadline = time.monotonic() + timeout_s
        delay = 0.1
        while True:
            left = deadline - time.monotonic()
            try:
                resp = await self._stub.Embed(
                    executor_pb2.EmbedRequest(texts=list(texts), model=self._model),
                    timeout=max(left, 0.1),
                )
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in _RETRIED:
                    with errors.remote("executor"):
                        raise
                if time.monotonic() + delay >= deadline:
                    raise errors.Unavailable(
                        f"the embedding executor did not answer within {timeout_s:g}s: "
                        f"{errors.code_name(exc.code())} {exc.details()}"
                    ) from exc
                log.info(
                    "embedding executor busy or away (%s); retrying in %.1fs",
                    errors.code_name(exc.code()),
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            if resp.dimensions != self.dimensions:
                raise errors.FailedPrecondition(
                    f"the embedding model {resp.model!r} gives {resp.dimensions} dimensions; "
                    f"the knowledge base is set up for {self.dimensions} "
                    "(AION_KNOWLEDGE_EMBEDDING_DIMENSIONS)"
                )
            return Embedded([list(e.values) for e in resp.embeddings], resp.prompt_tokens)
