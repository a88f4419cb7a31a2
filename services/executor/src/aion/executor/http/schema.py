"""The OpenAI-compatible request bodies, as pydantic models (untrusted JSON enters here).

Fields the executor does not act on (``user``, ``logit_bias``, ...) are
ignored, as OpenAI-compatible servers commonly do; fields whose meaning it
cannot honour (``n`` above 1, token-array inputs) are refused with 400.
"""

from __future__ import annotations

from typing import Literal

import pydantic

from aion.core import errors


class _Body(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="ignore", frozen=True)


class TextPart(_Body):
    """One part of a message's content."""

    type: str
    text: str = ""


class Message(_Body):
    """One chat message."""

    role: str
    content: str | list[TextPart] | None = None

    def text(self) -> str:
        """The content as one string (text parts joined)."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content if part.type == "text")


class StreamOptions(_Body):
    """``stream_options``."""

    include_usage: bool = False


class _Sampling(_Body):
    model: str = ""
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = 1

    def stops(self) -> list[str]:
        """``stop`` as a list."""
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    def check_n(self) -> None:
        """One choice per request."""
        if self.n != 1:
            raise errors.InvalidArgument(
                f"n is {self.n}; this executor returns one choice", field="n"
            )


class ChatCompletionRequest(_Sampling):
    """``POST /v1/chat/completions``."""

    messages: list[Message]
    max_completion_tokens: int | None = None

    def limit(self) -> int | None:
        """``max_completion_tokens``, or the older ``max_tokens``."""
        return (
            self.max_completion_tokens
            if self.max_completion_tokens is not None
            else self.max_tokens
        )


class CompletionRequest(_Sampling):
    """``POST /v1/completions``."""

    prompt: str | list[str]

    def text(self) -> str:
        """The one prompt."""
        if isinstance(self.prompt, str):
            return self.prompt
        if len(self.prompt) != 1:
            raise errors.InvalidArgument(
                f"prompt holds {len(self.prompt)} prompts; send one per request", field="prompt"
            )
        return self.prompt[0]


class EmbeddingRequest(_Body):
    """``POST /v1/embeddings``."""

    model: str = ""
    input: str | list[str]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None

    def texts(self) -> list[str]:
        """The inputs as a list."""
        return [self.input] if isinstance(self.input, str) else list(self.input)


def field_of(error: pydantic.ValidationError) -> tuple[str, str]:
    """The first invalid field of a body, dotted, and what is wrong with it."""
    first = error.errors()[0]
    loc = [str(p) for p in first["loc"] if not str(p).startswith(("str", "list["))]
    field = ""
    for part in loc:
        field += f"[{part}]" if part.isdigit() else (f".{part}" if field else part)
    return field or "body", str(first["msg"])
