"""Protobuf at the edge: the executor's messages to and from its dataclasses, validated."""

from __future__ import annotations

from aion.api.executor.v1 import executor_pb2
from aion.executor import backend, stats, validation

_FINISH = {
    backend.FinishReason.STOP: executor_pb2.FINISH_REASON_STOP,
    backend.FinishReason.LENGTH: executor_pb2.FINISH_REASON_LENGTH,
}


def generate_request_from_pb(
    msg: executor_pb2.GenerateRequest, *, limits: validation.Limits
) -> validation.GenerateRequest:
    """Validate and convert a GenerateRequest; errors name the offending field."""
    return validation.generate(
        model=msg.model,
        messages=[(m.role, m.content) for m in msg.messages],
        prompt=msg.prompt if msg.prompt else None,
        max_tokens=msg.max_tokens if msg.HasField("max_tokens") else None,
        temperature=msg.temperature if msg.HasField("temperature") else None,
        top_p=msg.top_p if msg.HasField("top_p") else None,
        stop=list(msg.stop),
        seed=msg.seed if msg.HasField("seed") else None,
        limits=limits,
    )


def embed_request_from_pb(
    msg: executor_pb2.EmbedRequest, *, limits: validation.Limits
) -> validation.EmbedRequest:
    """Validate and convert an EmbedRequest."""
    return validation.embed(model=msg.model, texts=list(msg.texts), limits=limits)


def embedded_to_pb(result: backend.Embedded, *, model: str) -> executor_pb2.EmbedResponse:
    """The EmbedResponse for a request's vectors."""
    return executor_pb2.EmbedResponse(
        embeddings=[executor_pb2.Embedding(values=row.tolist()) for row in result.vectors],
        model=model,
        dimensions=int(result.vectors.shape[1]),
        prompt_tokens=result.prompt_tokens,
    )


def chunk_to_pb(chunk: backend.Chunk) -> executor_pb2.GenerateChunk:
    """The GenerateChunk for a chunk; finish_reason and usage only on the last."""
    out = executor_pb2.GenerateChunk(text=chunk.text)
    if chunk.finish is not None:
        out.finish_reason = _FINISH[chunk.finish]
    if chunk.usage is not None:
        out.usage.prompt_tokens = chunk.usage.prompt_tokens
        out.usage.completion_tokens = chunk.usage.completion_tokens
    return out


def stats_to_pb(
    load: stats.Load, *, model: str, device: str, task: str, executor: str
) -> executor_pb2.ExecutorStats:
    """The ExecutorStats message for a load snapshot."""
    return executor_pb2.ExecutorStats(
        model=model,
        model_ready=load.model_ready,
        device=device,
        queue_depth=load.queue_depth,
        in_flight=load.in_flight,
        tokens_per_s=load.tokens_per_s,
        p95_latency_ms=(load.p95_latency_s or 0.0) * 1000,
        max_queue=load.max_queue,
        task=task,
        max_batch=load.max_batch,
        executor=executor,
    )
