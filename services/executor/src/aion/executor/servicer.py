"""The Executor gRPC service: Generate (streamed), Embed and Stats, over ``Inference``."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import grpc
from opentelemetry import trace

from aion.api.executor.v1 import executor_pb2, executor_pb2_grpc
from aion.core import authz, telemetry
from aion.executor import convert, inference

SERVICE = executor_pb2.DESCRIPTOR.services_by_name["Executor"].full_name
# Who may call each RPC (their certificates' identities): only the agent service
# generates; the knowledge service embeds documents and queries, the agent service
# may embed too.
ALLOW = authz.methods(
    SERVICE,
    {
        "Generate": {"agent"},
        "Stats": {"agent"},
        "Embed": {"knowledge", "agent"},
    },
)


class ExecutorServicer(executor_pb2_grpc.ExecutorServicer):
    """Serves the executor's one model."""

    def __init__(self, service: inference.Inference, *, executor_id: str) -> None:
        self._service = service
        self._executor_id = executor_id

    async def Generate(
        self,
        request: executor_pb2.GenerateRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[executor_pb2.GenerateChunk]:
        req = convert.generate_request_from_pb(request, limits=self._service.limits)
        metadata = dict(context.invocation_metadata() or ())
        # The agent service (only it may call Generate) names the task's tenant.
        telemetry.bind_tenant(str(metadata.get("x-aion-tenant", "")))
        # The generation's span (GenAI conventions), a child of the RPC's; kept out of the
        # context, since this generator yields inside it.
        with telemetry.model_call(
            req.model or self._service.model_name,
            operation="chat" if req.prompt is None else "text_completion",
            kind=trace.SpanKind.INTERNAL,
            current=False,
            attributes={
                "gen_ai.request.max_tokens": req.params.max_tokens,
                telemetry.TASK_ID: str(metadata.get("x-aion-task-id", "")),
                "aion.executor": self._executor_id,
            },
        ) as span:
            async with contextlib.aclosing(self._service.generate(req)) as chunks:
                async for chunk in chunks:
                    if chunk.usage is not None:
                        telemetry.model_usage(
                            span,
                            input_tokens=chunk.usage.prompt_tokens,
                            output_tokens=chunk.usage.completion_tokens,
                            finish_reasons=[chunk.finish.value] if chunk.finish else (),
                        )
                    yield convert.chunk_to_pb(chunk)

    async def Embed(
        self, request: executor_pb2.EmbedRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> executor_pb2.EmbedResponse:
        req = convert.embed_request_from_pb(request, limits=self._service.limits)
        result = await self._service.embed(req)
        return convert.embedded_to_pb(result, model=self._service.model_name)

    async def Stats(
        self, request: executor_pb2.StatsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> executor_pb2.ExecutorStats:
        return convert.stats_to_pb(
            self._service.snapshot(),
            model=self._service.model_name,
            device=self._service.device,
            task=self._service.task,
            executor=self._executor_id,
        )
