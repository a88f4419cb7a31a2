"""Dynamic batching of embedding requests: many callers' texts, one model call.

Requests are admitted up to ``max_queue`` (waiting and running together);
one more is refused with RESOURCE_EXHAUSTED and a retry delay. ``run`` takes
waiting requests in arrival order into a batch of at most ``max_batch``
texts, waiting at most ``max_wait_s`` after the oldest one arrived for the
batch to fill, and embeds it in the model's own thread while the next batch
gathers. A request larger than ``max_batch`` is embedded as a batch of its own.

Texts longer than the model's input are refused per request (INVALID_ARGUMENT
naming the text) inside the same batch step, so the others are not held up.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import dataclasses
import logging
import time
from collections.abc import Callable, Sequence

from aion.core import errors
from aion.executor import backend, stats

log = logging.getLogger(__name__)
_MIN_RETRY_S = 0.05


@dataclasses.dataclass(eq=False)
class _Request:
    texts: tuple[str, ...]
    future: asyncio.Future[backend.Embedded]
    arrived: float


@dataclasses.dataclass
class _Outcome:
    results: dict[int, backend.Embedded | errors.AionError]
    tokens: int


class EmbedBatcher:
    """Admits embedding requests and batches them onto an ``EmbeddingBackend``."""

    def __init__(
        self,
        model: backend.EmbeddingBackend,
        *,
        max_batch: int,
        max_wait_s: float,
        max_queue: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._model = model
        self._max_batch = max_batch
        self._max_wait_s = max_wait_s
        self._max_queue = max_queue
        self._clock = clock
        self._waiting: collections.deque[_Request] = collections.deque()
        self._arrived = asyncio.Event()
        self._admitted = 0
        self._running = 0
        self._meter = stats.Meter(clock=clock, min_retry_s=_MIN_RETRY_S)
        self._worker = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="embed"
        )

    def snapshot(self) -> stats.Load:
        """The current load."""
        return self._meter.load(
            model_ready=self._model.ready,
            queue_depth=self._admitted - self._running,
            in_flight=self._running,
            max_queue=self._max_queue,
            max_batch=self._max_batch,
        )

    def retry_after_s(self) -> float:
        """How long a refused caller should wait: about one request's latency here now."""
        return self._meter.retry_after_s()

    async def embed(self, texts: Sequence[str]) -> backend.Embedded:
        """Embed ``texts`` in the next batch; raise ``errors.ResourceExhausted`` when full."""
        if self._admitted >= self._max_queue:
            raise self._meter.queue_full(self._max_queue)
        request = _Request(tuple(texts), asyncio.get_running_loop().create_future(), self._clock())
        self._admitted += 1
        self._waiting.append(request)
        self._arrived.set()
        try:
            return await request.future
        finally:
            self._admitted -= 1
            if not request.future.done():
                request.future.cancel()  # run() skips it if it has not started

    async def run(self) -> None:
        """Form and embed batches until cancelled."""
        try:
            while True:
                batch = await self._next_batch()
                if batch:
                    await self._embed(batch)
        finally:
            self._worker.shutdown(wait=False, cancel_futures=True)

    async def _next_batch(self) -> list[_Request]:
        while not self._waiting:
            self._arrived.clear()
            await self._arrived.wait()
        deadline = self._waiting[0].arrived + self._max_wait_s
        while self._queued_texts() < self._max_batch:
            remaining = deadline - self._clock()
            if remaining <= 0:
                break
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except TimeoutError:
                break
        batch: list[_Request] = []
        size = 0
        while self._waiting:
            request = self._waiting[0]
            if request.future.done():
                self._waiting.popleft()  # its caller gave up while it waited
                continue
            if batch and size + len(request.texts) > self._max_batch:
                break
            batch.append(self._waiting.popleft())
            size += len(request.texts)
        return batch

    def _queued_texts(self) -> int:
        return sum(len(r.texts) for r in self._waiting if not r.future.done())

    async def _embed(self, batch: list[_Request]) -> None:
        self._running += len(batch)
        try:
            outcome = await asyncio.get_running_loop().run_in_executor(
                self._worker, self._embed_blocking, [r.texts for r in batch]
            )
        except Exception as exc:
            if isinstance(exc, errors.AionError):
                error = exc
            else:
                log.exception("embedding a batch failed")
                error = errors.Internal("embedding failed; see the executor log")
            for request in batch:
                if not request.future.done():
                    request.future.set_exception(error)
            return
        finally:
            self._running -= len(batch)
        now = self._clock()
        self._meter.tokens.add(outcome.tokens, now=now)
        stats.BATCH_SIZE.observe(sum(len(r.texts) for r in batch))
        for i, request in enumerate(batch):
            result = outcome.results[i]
            if request.future.done():
                continue
            if isinstance(result, errors.AionError):
                request.future.set_exception(result)
            else:
                stats.EMBEDDED_TEXTS.inc(len(request.texts))
                self._meter.latency.add(now - request.arrived, now=now)
                request.future.set_result(result)

    def _embed_blocking(self, requests: list[tuple[str, ...]]) -> _Outcome:
        """In the model's thread: check lengths, embed the texts that fit, split the rows."""
        counts = self._model.count_tokens([text for texts in requests for text in texts])
        limit = self._model.max_input_tokens
        results: dict[int, backend.Embedded | errors.AionError] = {}
        accepted: list[tuple[int, int]] = []  # (request, its tokens)
        offset = 0
        for i, texts in enumerate(requests):
            mine = counts[offset : offset + len(texts)]
            offset += len(texts)
            too_long = next((j for j, n in enumerate(mine) if n > limit), None)
            if too_long is None:
                accepted.append((i, sum(mine)))
            else:
                results[i] = errors.InvalidArgument(
                    f"texts[{too_long}] is {mine[too_long]} tokens; the model takes at most "
                    f"{limit}; split it into shorter texts",
                    field=f"texts[{too_long}]",
                )
        if not accepted:
            return _Outcome(results, 0)
        vectors = self._model.embed([t for i, _ in accepted for t in requests[i]])
        row = 0
        for i, tokens in accepted:
            n = len(requests[i])
            results[i] = backend.Embedded(vectors[row : row + n], tokens)
            row += n
        return _Outcome(results, sum(tokens for _, tokens in accepted))
