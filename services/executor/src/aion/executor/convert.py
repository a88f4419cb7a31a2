"""Protobuf at the edge: the executor's messages to and from its dataclasses, with validation.

Checks that need no model live here; the prompt's length in tokens is
checked by the servicer once the model's tokenizer has counted it.
"""

from __future__ import annotations

import dataclasses
import math

from aion.api.executor.v1 import executor_pb2
from aion.core import errors
from aion.executor import backend, stats

MAX_STOP_SEQUENCES = 8
_FINISH = {
    backend.FinishReason.STOP: executor_pb2.FINISH_REASON_STOP,
    backend.FinishReason.LENGTH: executor_pb2.FINISH_REASON_LENGTH,
}


@dataclasses.dataclass(frozen=True)
class GenerateRequest:
    """A validated generation request."""

    model: str
    messages: tuple[backend.ChatMessage, ...]
    params: backend.SamplingParams


def generate_request_from_pb(msg: executor_pb2.GenerateRequest, *, default_max_tokens: int,
                             max_tokens_limit: int) -> GenerateRequest:
    """Validate and convert a GenerateRequest; errors name the offending field."""
    return GenerateRequest(
        model=msg.model,
        messages=_messages(msg),
        params=backend.SamplingParams(
            max_tokens=_max_tokens(msg, default=default_max_tokens, limit=max_tokens_limit),
            temperature=_temperature(msg),
            top_p=_top_p(msg),
            stop=_stop(msg),
            seed=_seed(msg),
        ),
    )


def _messages(msg: executor_pb2.GenerateRequest) -> tuple[backend.ChatMessage, ...]:
    if not msg.messages:
        raise errors.InvalidArgument("messages must hold at least one message", field="messages")
    for i, m in enumerate(msg.messages):
        if m.role not in backend.ROLES:
            raise errors.InvalidArgument(
                f"messages[{i}].role is {m.role!r}; use one of {', '.join(backend.ROLES)}",
                field=f"messages[{i}].role")
        if not m.content.strip():
            raise errors.InvalidArgument(
                f"messages[{i}].content is empty", field=f"messages[{i}].content")
    return tuple(backend.ChatMessage(m.role, m.content) for m in msg.messages)


def _max_tokens(msg: executor_pb2.GenerateRequest, *, default: int, limit: int) -> int:
    if not msg.HasField("max_tokens"):
        return default
    if not 1 <= msg.max_tokens <= limit:
        raise errors.InvalidArgument(
            f"max_tokens is {msg.max_tokens}; it must be between 1 and {limit}",
            field="max_tokens")
    return msg.max_tokens


def _temperature(msg: executor_pb2.GenerateRequest) -> float:
    if not msg.HasField("temperature"):
        return backend.SamplingParams.temperature
    if not math.isfinite(msg.temperature) or msg.temperature < 0:
        raise errors.InvalidArgument(
            f"temperature is {msg.temperature}; it must be >= 0 (0 picks the likeliest token)",
            field="temperature")
    return msg.temperature


def _top_p(msg: executor_pb2.GenerateRequest) -> float:
    if not msg.HasField("top_p"):
        return backend.SamplingParams.top_p
    if not 0 < msg.top_p <= 1:
        raise errors.InvalidArgument(
            f"top_p is {msg.top_p}; it must be in (0, 1]", field="top_p")
    return msg.top_p


def _stop(msg: executor_pb2.GenerateRequest) -> tuple[str, ...]:
    if len(msg.stop) > MAX_STOP_SEQUENCES:
        raise errors.InvalidArgument(
            f"stop holds {len(msg.stop)} sequences; at most {MAX_STOP_SEQUENCES} are allowed",
            field="stop")
    for i, s in enumerate(msg.stop):
        if not s:
            raise errors.InvalidArgument(f"stop[{i}] is empty", field=f"stop[{i}]")
    return tuple(msg.stop)


def _seed(msg: executor_pb2.GenerateRequest) -> int | None:
    if not msg.HasField("seed"):
        return None
    if not 0 <= msg.seed <= backend.MAX_SEED:
        raise errors.InvalidArgument(
            f"seed is {msg.seed}; it must be between 0 and {backend.MAX_SEED}",
            field="seed")
    return msg.seed


def chunk_to_pb(chunk: backend.Chunk) -> executor_pb2.GenerateChunk:
    """The GenerateChunk for a chunk; finish_reason and usage only on the last."""
    out = executor_pb2.GenerateChunk(text=chunk.text)
    if chunk.finish is not None:
        out.finish_reason = _FINISH[chunk.finish]
    if chunk.usage is not None:
        out.usage.prompt_tokens = chunk.usage.prompt_tokens
        out.usage.completion_tokens = chunk.usage.completion_tokens
    return out


def stats_to_pb(load: stats.Load, *, model: str, device: str) -> executor_pb2.ExecutorStats:
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
    )
