"""What the executor does, whatever the protocol: the one model, its task, and its load.

Both edges (``servicer`` for gRPC, ``http_api`` for the OpenAI-compatible
HTTP API) validate with ``validation`` and then call ``Inference``, so a
request gets the same checks, the same queue and the same errors either way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator
from typing import Literal

from aion.core import errors
from aion.executor import backend, batcher, scheduler, stats, validation

log = logging.getLogger(__name__)

Task = Literal["generate", "embed"]


class Inference:
    """One executor's model: generation through the scheduler, or embeddings through the batcher."""

    def __init__(self, *, model_name: str, limits: validation.Limits,
                 generation: tuple[backend.GenerationBackend, scheduler.Scheduler] | None = None,
                 embedding: tuple[backend.EmbeddingBackend, batcher.EmbedBatcher] | None = None,
                 ) -> None:
        if (generation is None) == (embedding is None):
            raise ValueError("an executor serves exactly one model: generation or embedding")
        self.model_name = model_name
        self.limits = limits
        self._generation = generation
        self._embedding = embedding

    @property
    def task(self) -> Task:
        """``"generate"`` or ``"embed"``."""
        return "generate" if self._generation is not None else "embed"

    @property
    def device(self) -> str:
        """Where the model runs."""
        if self._generation is not None:
            return self._generation[0].device
        assert self._embedding is not None
        return self._embedding[0].device

    @property
    def ready(self) -> bool:
        """Whether the model is loaded."""
        if self._generation is not None:
            return self._generation[0].ready
        assert self._embedding is not None
        return self._embedding[0].ready

    def snapshot(self) -> stats.Load:
        """The current load."""
        if self._generation is not None:
            return self._generation[1].snapshot()
        assert self._embedding is not None
        return self._embedding[1].snapshot()

    async def generate(self, request: validation.GenerateRequest,
                       ) -> AsyncGenerator[backend.Chunk, None]:
        """Stream a completion; errors before the first chunk say what was wrong."""
        validation.check_model(request.model, served=self.model_name)
        if self._generation is None:
            raise errors.FailedPrecondition(
                f"this executor serves model {self.model_name!r} for task \"embed\"; "
                "generation needs an executor whose model task is \"generate\"")
        model, sched = self._generation
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
                    field=field)
            async with contextlib.aclosing(sched.admitted(prompt, request.params)) as chunks:
                async for chunk in chunks:
                    if chunk.usage is not None:
                        log.info("generated", extra={
                            "prompt_tokens": chunk.usage.prompt_tokens,
                            "completion_tokens": chunk.usage.completion_tokens,
                            "finish_reason": chunk.finish.value if chunk.finish else ""})
                    yield chunk

    async def embed(self, request: validation.EmbedRequest) -> batcher.Embedded:
        """The vectors of the request's texts."""
        validation.check_model(request.model, served=self.model_name)
        if self._embedding is None:
            raise errors.FailedPrecondition(
                f"this executor serves model {self.model_name!r} for task \"generate\"; "
                "embeddings need an executor whose model task is \"embed\"")
        model, batch = self._embedding
        if not model.ready:
            raise errors.Unavailable("model is loading", retry_after_s=1)
        return await batch.embed(request.texts)

    @property
    def dimensions(self) -> int:
        """The embedding length (embedding executors only)."""
        assert self._embedding is not None
        return self._embedding[0].dimensions
