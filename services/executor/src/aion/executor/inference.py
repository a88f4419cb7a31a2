"""What the executor does, whatever the protocol: the one model, its task, and its load.

An executor serves one model for one task: a ``GenerationService`` (a
generation backend behind the ``Scheduler``) or an ``EmbeddingService`` (an
embedding backend behind the ``EmbedBatcher``). Both are an ``Inference``,
which is all the edges see: ``servicer`` (gRPC) and ``http`` (the
OpenAI-compatible HTTP API) validate with ``validation`` and then call it, so
a request gets the same checks, the same queue and the same errors either
way. Asking a service for the other task is FAILED_PRECONDITION naming the
task it serves.

Each service also owns its model's life (``load`` in a thread, logging
progress; ``close``) and names the loops it needs run (``loops``: the
embedding batcher; generation decodes in the backend's own thread).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, Callable, Coroutine
from pathlib import Path
from typing import Any, Literal, Protocol

from aion.core import errors
from aion.executor import backend, stats, validation
from aion.executor.embedding import batcher
from aion.executor.generation import scheduler

log = logging.getLogger(__name__)

ModelTask = Literal["generate", "embed"]
Loop = Callable[[], Coroutine[Any, Any, None]]


class Inference(Protocol):
    """One executor's model as the edges use it (either service)."""

    @property
    def model_name(self) -> str:
        """The name the model is served under."""
        ...

    @property
    def limits(self) -> validation.Limits:
        """What a request may ask for."""
        ...

    @property
    def task(self) -> ModelTask:
        """``"generate"`` or ``"embed"``."""
        ...

    @property
    def device(self) -> str:
        """Where the model runs."""
        ...

    @property
    def ready(self) -> bool:
        """Whether the model is loaded."""
        ...

    def snapshot(self) -> stats.Load:
        """The current load."""
        ...

    def generate(
        self,
        request: validation.GenerateRequest,
    ) -> AsyncGenerator[backend.Chunk, None]:
        """Stream a completion (generation services only)."""
        ...

    async def embed(self, request: validation.EmbedRequest) -> backend.Embedded:
        """The vectors of the request's texts (embedding services only)."""
        ...


class _Service:
    """What both services share: the model's name, limits and life."""

    task: ModelTask

    def __init__(
        self, model: backend.Loadable, *, model_name: str, limits: validation.Limits
    ) -> None:
        self._model = model
        self.model_name = model_name
        self.limits = limits

    @property
    def device(self) -> str:
        """Where the model runs."""
        return self._model.device

    async def load(self) -> None:
        """Load the model in a thread, logging its size, where it runs and how long it took."""
        model = self._model
        log.info(
            "loading model",
            extra={
                "path": str(model.path),
                "size_mb": _size_mb(model.path),
                "device": model.device,
            },
        )
        started = time.perf_counter()
        await asyncio.to_thread(model.load)
        seconds = time.perf_counter() - started
        log.info(
            "model loaded in %.2f s",
            seconds,
            extra={"path": str(model.path), "seconds": round(seconds, 2), "device": model.device},
        )

    def close(self) -> None:
        """Free the model; safe to call twice."""
        self._model.close()


class GenerationService(_Service):
    """Generation: requests admitted and queued by the ``Scheduler``, streamed by the model."""

    task: ModelTask = "generate"

    def __init__(
        self,
        model: backend.GenerationBackend,
        *,
        model_name: str,
        limits: validation.Limits,
        max_queue: int,
    ) -> None:
        super().__init__(model, model_name=model_name, limits=limits)
        self._generator = model
        self._scheduler = scheduler.Scheduler(model, max_queue=max_queue)

    @property
    def ready(self) -> bool:
        """Whether the model is loaded."""
        return self._generator.ready

    def snapshot(self) -> stats.Load:
        """The current load."""
        return self._scheduler.snapshot()

    def loops(self) -> dict[str, Loop]:
        """None: the backend decodes in its own thread."""
        return {}

    async def generate(
        self,
        request: validation.GenerateRequest,
    ) -> AsyncGenerator[backend.Chunk, None]:
        """Stream a completion; errors before the first chunk say what was wrong."""
        validation.check_model(request.model, served=self.model_name)
        model, sched = self._generator, self._scheduler
        if not model.ready:
            raise errors.Unavailable("model is loading", retry_after_s=1)
        # Admitted first: tokenising takes a while, and only admitted requests do it
        # (off the event loop); a full queue refuses before any of that work.
        with sched.admit():
            if request.prompt is not None:
                prompt = await asyncio.to_thread(model.encode_text, request.prompt)
                field = "prompt"
            else:
                prompt = await asyncio.to_thread(model.encode_chat, request.messages)
                field = "messages"
            if prompt.n_tokens >= model.context_size:
                raise errors.InvalidArgument(
                    f"the prompt is {prompt.n_tokens} tokens but the context of "
                    f"{self.model_name} holds {model.context_size}; shorten the {field}",
                    field=field,
                )
            async with contextlib.aclosing(sched.admitted(prompt, request.params)) as chunks:
                async for chunk in chunks:
                    if chunk.usage is not None:
                        log.info(
                            "generated",
                            extra={
                                "prompt_tokens": chunk.usage.prompt_tokens,
                                "completion_tokens": chunk.usage.completion_tokens,
                                "finish_reason": chunk.finish.value if chunk.finish else "",
                            },
                        )
                    yield chunk

    async def embed(self, request: validation.EmbedRequest) -> backend.Embedded:
        """Refused: this executor generates."""
        validation.check_model(request.model, served=self.model_name)
        raise errors.FailedPrecondition(
            f'this executor serves model {self.model_name!r} for task "generate"; '
            'embeddings need an executor whose model task is "embed"'
        )


class EmbeddingService(_Service):
    """Embeddings: many callers' texts batched by the ``EmbedBatcher`` onto the model."""

    task: ModelTask = "embed"

    def __init__(
        self,
        model: backend.EmbeddingBackend,
        *,
        model_name: str,
        limits: validation.Limits,
        max_queue: int,
        max_batch: int,
        max_wait_s: float,
    ) -> None:
        super().__init__(model, model_name=model_name, limits=limits)
        self._embedder = model
        self._batcher = batcher.EmbedBatcher(
            model, max_batch=max_batch, max_wait_s=max_wait_s, max_queue=max_queue
        )

    @property
    def ready(self) -> bool:
        """Whether the model is loaded."""
        return self._embedder.ready

    def snapshot(self) -> stats.Load:
        """The current load."""
        return self._batcher.snapshot()

    def loops(self) -> dict[str, Loop]:
        """The batcher, which forms and embeds batches until cancelled."""
        return {"embed batcher": self._batcher.run}

    async def generate(
        self,
        request: validation.GenerateRequest,
    ) -> AsyncGenerator[backend.Chunk, None]:
        """Refused: this executor embeds."""
        validation.check_model(request.model, served=self.model_name)
        raise errors.FailedPrecondition(
            f'this executor serves model {self.model_name!r} for task "embed"; '
            'generation needs an executor whose model task is "generate"'
        )
        yield  # an async generator, like GenerationService.generate

    async def embed(self, request: validation.EmbedRequest) -> backend.Embedded:
        """The vectors of the request's texts."""
        validation.check_model(request.model, served=self.model_name)
        if not self._embedder.ready:
            raise errors.Unavailable("model is loading", retry_after_s=1)
        return await self._batcher.embed(request.texts)


Service = GenerationService | EmbeddingService


def _size_mb(path: Path) -> float:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return round(sum(f.stat().st_size for f in files) / 2**20, 1)
