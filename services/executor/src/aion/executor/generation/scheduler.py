"""Admission and ordering of generation requests on one model.

At most ``max_queue`` requests are admitted at once, running and waiting
together; one more is refused with RESOURCE_EXHAUSTED and a retry delay, so
callers (the agent service) back off instead of piling up. Admitted
requests take one of the backend's ``max_streams`` slots in arrival order
and are decoded together; a stream that ends, fails or is cancelled gives
its slot to the next request at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, Callable, Iterator

from aion.executor import backend, stats

_MIN_RETRY_S = 1.0


class Scheduler:
    """Admits, queues and runs generations on a backend, and keeps the load figures."""

    def __init__(
        self,
        model: backend.GenerationBackend,
        *,
        max_queue: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._model = model
        self._max_queue = max_queue
        self._clock = clock
        self._slots = asyncio.Semaphore(model.max_streams)
        self._admitted = 0
        self._running = 0
        self._meter = stats.Meter(clock=clock, min_retry_s=_MIN_RETRY_S)

    def snapshot(self) -> stats.Load:
        """The current load."""
        return self._meter.load(
            model_ready=self._model.ready,
            queue_depth=self._admitted - self._running,
            in_flight=self._running,
            max_queue=self._max_queue,
            max_batch=self._model.max_streams,
        )

    def retry_after_s(self) -> float:
        """How long a refused caller should wait: about one request's latency here now."""
        return self._meter.retry_after_s()

    @contextlib.contextmanager
    def admit(self) -> Iterator[None]:
        """Hold one of the ``max_queue`` places (or raise ``errors.ResourceExhausted``):
        taken before the prompt is tokenised, so that work is bounded by the queue too."""
        if self._admitted >= self._max_queue:
            raise self._meter.queue_full(self._max_queue)
        self._admitted += 1
        try:
            yield
        finally:
            self._admitted -= 1

    async def generate(
        self, prompt: backend.Prompt, params: backend.SamplingParams
    ) -> AsyncGenerator[backend.Chunk, None]:
        """Admit the request (or raise ``errors.ResourceExhausted``), wait for a slot, stream.

        Closing the iterator, or cancelling its consumer, stops the generation
        and gives the slot to the next request.
        """
        with self.admit():
            async with contextlib.aclosing(self.admitted(prompt, params)) as chunks:
                async for chunk in chunks:
                    yield chunk

    async def admitted(
        self, prompt: backend.Prompt, params: backend.SamplingParams
    ) -> AsyncGenerator[backend.Chunk, None]:
        """Wait for a slot and stream, for a request that holds its place (``admit``)."""
        started = self._clock()
        async with self._slots:
            self._running += 1
            try:
                async with contextlib.aclosing(self._model.stream(prompt, params)) as chunks:
                    async for chunk in chunks:
                        now = self._clock()
                        self._meter.tokens.add(chunk.tokens, now=now)
                        stats.TOKENS.inc(chunk.tokens)
                        if chunk.finish is not None:
                            self._meter.latency.add(now - started, now=now)
                        yield chunk
            finally:
                self._running -= 1
