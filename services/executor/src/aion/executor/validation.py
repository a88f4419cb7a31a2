"""Validated requests, shared by the gRPC and the HTTP edge; errors name the field and why.

Checks that need no model live here; a prompt's length in tokens and a
text's length in tokens are checked once the model's tokenizer has counted
them (``inference`` and ``batcher``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

from aion.core import errors
from aion.executor import backend

MAX_STOP_SEQUENCES = 8


@dataclasses.dataclass(frozen=True)
class Limits:
    """What a request may ask for."""

    default_max_tokens: int
    max_tokens_limit: int
    max_texts: int
    # Checked before anything is tokenised (or queued): a prompt (or all messages
    # together, or one text to embed) in characters, and an HTTP body in bytes.
    max_prompt_chars: int = 256 * 1024
    max_body_bytes: int = 4 * 1024 * 1024


@dataclasses.dataclass(frozen=True)
class GenerateRequest:
    """A validated generation request: a conversation, or a raw prompt."""

    model: str
    messages: tuple[backend.ChatMessage, ...]
    prompt: str | None
    params: backend.SamplingParams


@dataclasses.dataclass(frozen=True)
class EmbedRequest:
    """A validated embedding request."""

    model: str
    texts: tuple[str, ...]


def generate(
    *,
    model: str,
    messages: Sequence[tuple[str, str]],
    prompt: str | None,
    max_tokens: int | None,
    temperature: float | None,
    top_p: float | None,
    stop: Sequence[str],
    seed: int | None,
    limits: Limits,
) -> GenerateRequest:
    """Validate a generation request."""
    chars = len(prompt) if prompt is not None else sum(len(c) for _, c in messages)
    if chars > limits.max_prompt_chars:
        field = "prompt" if prompt is not None else "messages"
        raise errors.InvalidArgument(
            f"the {field} hold {chars} characters; the limit is {limits.max_prompt_chars}",
            field=field,
        )
    return GenerateRequest(
        model=model,
        messages=_messages(messages, prompt),
        prompt=_prompt(messages, prompt),
        params=backend.SamplingParams(
            max_tokens=_max_tokens(max_tokens, limits),
            temperature=_temperature(temperature),
            top_p=_top_p(top_p),
            stop=_stop(stop),
            seed=_seed(seed),
        ),
    )


def embed(*, model: str, texts: Sequence[str], limits: Limits) -> EmbedRequest:
    """Validate an embedding request."""
    if not texts:
        raise errors.InvalidArgument("texts must hold at least one text", field="texts")
    if len(texts) > limits.max_texts:
        raise errors.InvalidArgument(
            f"texts holds {len(texts)} texts; at most {limits.max_texts} are allowed per request",
            field="texts",
        )
    for i, text in enumerate(texts):
        if not text.strip():
            raise errors.InvalidArgument(f"texts[{i}] is empty", field=f"texts[{i}]")
        if len(text) > limits.max_prompt_chars:
            raise errors.InvalidArgument(
                f"texts[{i}] is {len(text)} characters; the limit is {limits.max_prompt_chars}",
                field=f"texts[{i}]",
            )
    return EmbedRequest(model=model, texts=tuple(texts))


def check_model(name: str, *, served: str) -> None:
    """Accept the served model's name, or none (meaning it)."""
    if name and name != served:
        raise errors.InvalidArgument(
            f"model {name!r} is not served here; this executor serves {served!r} "
            "(or leave model empty)",
            field="model",
        )


def _messages(
    messages: Sequence[tuple[str, str]], prompt: str | None
) -> tuple[backend.ChatMessage, ...]:
    if prompt is not None:
        if messages:
            raise errors.InvalidArgument("set messages or prompt, not both", field="prompt")
        return ()
    if not messages:
        raise errors.InvalidArgument("messages must hold at least one message", field="messages")
    for i, (role, content) in enumerate(messages):
        if role not in backend.ROLES:
            raise errors.InvalidArgument(
                f"messages[{i}].role is {role!r}; use one of {', '.join(backend.ROLES)}",
                field=f"messages[{i}].role",
            )
        if not content.strip():
            raise errors.InvalidArgument(
                f"messages[{i}].content is empty", field=f"messages[{i}].content"
            )
    return tuple(backend.ChatMessage(role, content) for role, content in messages)


def _prompt(messages: Sequence[tuple[str, str]], prompt: str | None) -> str | None:
    if prompt is not None and not prompt.strip():
        raise errors.InvalidArgument("prompt is empty", field="prompt")
    return prompt


def _max_tokens(value: int | None, limits: Limits) -> int:
    if value is None:
        return limits.default_max_tokens
    if not 1 <= value <= limits.max_tokens_limit:
        raise errors.InvalidArgument(
            f"max_tokens is {value}; it must be between 1 and {limits.max_tokens_limit}",
            field="max_tokens",
        )
    return value


def _temperature(value: float | None) -> float:
    if value is None:
        return backend.SamplingParams.temperature
    if not math.isfinite(value) or value < 0:
        raise errors.InvalidArgument(
            f"temperature is {value}; it must be >= 0 (0 picks the likeliest token)",
            field="temperature",
        )
    return value


def _top_p(value: float | None) -> float:
    if value is None:
        return backend.SamplingParams.top_p
    if not 0 < value <= 1:
        raise errors.InvalidArgument(f"top_p is {value}; it must be in (0, 1]", field="top_p")
    return value


def _stop(stop: Sequence[str]) -> tuple[str, ...]:
    if len(stop) > MAX_STOP_SEQUENCES:
        raise errors.InvalidArgument(
            f"stop holds {len(stop)} sequences; at most {MAX_STOP_SEQUENCES} are allowed",
            field="stop",
        )
    for i, s in enumerate(stop):
        if not s:
            raise errors.InvalidArgument(f"stop[{i}] is empty", field=f"stop[{i}]")
    return tuple(stop)


def _seed(value: int | None) -> int | None:
    if value is None:
        return None
    if not 0 <= value <= backend.MAX_SEED:
        raise errors.InvalidArgument(
            f"seed is {value}; it must be between 0 and {backend.MAX_SEED}", field="seed"
        )
    return value
