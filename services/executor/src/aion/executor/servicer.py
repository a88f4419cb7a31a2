"""The Executor gRPC service: Generate (streamed), Embed and Stats."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc

from aion.api.executor.v1 import executor_pb2, executor_pb2_grpc
from aion.core import errors
from aion.executor import backend, convert, scheduler

log = logging.getLogger(__name__)

TASK = "generate"


class ExecutorServicer(executor_pb2_grpc.ExecutorServicer):
    """Serves one generation model through the scheduler."""

    def __init__(self, model: backend.GenerationBackend, sched: scheduler.Scheduler, *,
                 model_name: str, default_max_tokens: int, max_tokens_limit: int) -> None:
        self._model = model
        self._scheduler = sched
        self._model_name = model_name
        self._default_max_tokens = default_max_tokens
        self._max_tokens_limit = max_tokens_limit

    async def Generate(self, request: executor_pb2.GenerateRequest,
                       context: grpc.aio.ServicerContext[Any, Any],
                       ) -> AsyncIterator[executor_pb2.GenerateChunk]:
        req = convert.generate_request_from_pb(
            request, default_max_tokens=self._default_max_tokens,
            max_tokens_limit=self._max_tokens_limit)
        self._check_model(req.model)
        if not self._model.ready:
            raise errors.Unavailable("model is loading", retry_after_s=1)
        # Tokenizing a long prompt takes a while; keep the event loop free meanwhile.
        prompt = await asyncio.to_thread(self._model.encode_chat, req.messages)
        if prompt.n_tokens >= self._model.context_size:
            raise errors.InvalidArgument(
                f"the prompt is {prompt.n_tokens} tokens but the context of {self._model_name} "
                f"holds {self._model.context_size}; shorten the messages", field="messages")
        async with contextlib.aclosing(self._scheduler.generate(prompt, req.params)) as chunks:
            async for chunk in chunks:
                if chunk.usage is not None:
                    log.info("generated", extra={
                        "prompt_tokens": chunk.usage.prompt_tokens,
                        "completion_tokens": chunk.usage.completion_tokens,
                        "finish_reason": chunk.finish.value if chunk.finish else ""})
                yield convert.chunk_to_pb(chunk)

    async def Embed(self, request: executor_pb2.EmbedRequest,
                    context: grpc.aio.ServicerContext[Any, Any]) -> executor_pb2.EmbedResponse:
        raise errors.FailedPrecondition(
            f"this executor serves model {self._model_name!r} for task {TASK!r}; embeddings "
            "need an executor whose model task is \"embed\"")

    async def Stats(self, request: executor_pb2.StatsRequest,
                    context: grpc.aio.ServicerContext[Any, Any]) -> executor_pb2.ExecutorStats:
        return convert.stats_to_pb(self._scheduler.snapshot(), model=self._model_name,
                                   device=self._model.device)

    def _check_model(self, name: str) -> None:
        if name and name != self._model_name:
            raise errors.NotFound(
                f"model {name!r} is not served here; this executor serves "
                f"{self._model_name!r} (leave model empty to use it)", field="model")
