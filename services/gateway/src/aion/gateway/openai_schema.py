"""The OpenAI-compatible request bodies the gateway accepts, as pydantic models.

For chat completions ``model`` names one of the caller's agents; the conversation becomes the
task's input (one message as it is; several as a transcript of
``role: text`` turns, since an agent keeps its own instructions). Fields
OpenAI clients send that an agent has no use for (``top_p``, ``user``,
``logit_bias`` ...) are ignored, as OpenAI-compatible servers commonly do;
those whose meaning it cannot honour (``n`` above 1, caller-defined
``tools``) are refused. aion's own task options ride in an ``aion`` object
(``extra_body={"aion": {...}}`` with the openai client).

For embeddings ``model`` names the platform's embedding model (the one its
knowledge bases are indexed with); ``input`` is one text or a list of texts
(token arrays are refused: the gateway embeds text).
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

import pydantic

from aion.api.v1 import knowledge_pb2, tasks_pb2
from aion.core import errors
from aion.core import privacy as privacy_levels  # the field below is called privacy

_INT32 = 2**31 - 1
_INT64 = 2**63 - 1
Int32 = Annotated[int, pydantic.Field(ge=-_INT32 - 1, le=_INT32)]
Finite = Annotated[float, pydantic.Field(allow_inf_nan=False)]

# Where a field of the task lives in the HTTP body, for errors the servicers raise.
PARAMS = {
    "task.agent": "model",
    "task.input": "messages",
    "task.idempotency_key": "Idempotency-Key",
    "task.options.max_tokens": "max_tokens",
    "task.options.temperature": "temperature",
    "task.options.seed": "seed",
    "task.options.budget_usd": "aion.budget_usd",
    "task.options.sla_ms": "aion.sla_ms",
    "task.options.privacy": "aion.privacy",
}


class _Body(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="ignore", frozen=True)


class TextPart(_Body):
    """One part of a message's content (only text parts carry anything to an agent)."""

    type: str
    text: str = ""


class Message(_Body):
    """One chat message."""

    role: Literal["system", "developer", "user", "assistant", "tool"]
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


class AionOptions(_Body):
    """aion's task options that OpenAI's body has no field for."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)
    budget_usd: Annotated[float, pydantic.Field(ge=0, allow_inf_nan=False)] | None = None
    sla_ms: Annotated[int, pydantic.Field(ge=1, le=_INT32)] | None = pydantic.Field(
        default=None,
        description="latency target in ms; passed to the router, which does not act on it yet",
    )
    privacy: privacy_levels.Privacy | None = None


class ChatCompletionRequest(_Body):
    """``POST /v1/chat/completions``."""

    model: str = pydantic.Field(min_length=1, description="the name of one of your agents")
    messages: list[Message] = pydantic.Field(min_length=1)
    max_tokens: Int32 | None = None
    max_completion_tokens: Int32 | None = None
    temperature: Finite | None = None
    seed: Annotated[int, pydantic.Field(ge=-_INT64 - 1, le=_INT64)] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: Int32 = 1
    tools: list[dict[str, Any]] | None = None
    aion: AionOptions | None = None

    def task(self, *, idempotency_key: str) -> tasks_pb2.TaskSpec:
        """The aion task this request asks for."""
        if self.n != 1:
            raise errors.InvalidArgument(f"n is {self.n}; an agent returns one choice", field="n")
        if self.tools:
            raise errors.InvalidArgument(
                "tools are not accepted here: an aion agent calls the tools its spec names",
                field="tools",
            )
        options = tasks_pb2.TaskOptions()
        limit = (
            self.max_completion_tokens
            if self.max_completion_tokens is not None
            else self.max_tokens
        )
        if limit is not None:
            options.max_tokens = limit
        if self.temperature is not None:
            options.temperature = self.temperature
        if self.seed is not None:
            options.seed = self.seed
        if self.aion is not None:
            if self.aion.budget_usd is not None:
                options.budget_usd = self.aion.budget_usd
            if self.aion.sla_ms is not None:
                options.sla_ms = self.aion.sla_ms
            if self.aion.privacy is not None:
                options.privacy = privacy_levels.to_pb(self.aion.privacy)
        return tasks_pb2.TaskSpec(
            agent=self.model, input=self.input(), idempotency_key=idempotency_key, options=options
        )

    def input(self) -> str:
        """The conversation as one task input."""
        turns = [(m.role, m.text()) for m in self.messages if m.text().strip()]
        if not turns:
            raise errors.InvalidArgument("messages: no message has any text", field="messages")
        if len(turns) == 1:
            return turns[0][1]
        return "\n\n".join(f"{role}: {text}" for role, text in turns)


_TEXTS = re.compile(r"^texts\b(\[\d+\])?")  # the Embed request's field, leading a message


class EmbeddingRequest(_Body):
    """``POST /v1/embeddings``."""

    model: str = pydantic.Field(
        min_length=1,
        description="the platform's embedding model: all-minilm-l6-v2 (any case), unless "
        "the install configured another",
    )
    input: str | list[str] = pydantic.Field(
        description="a text, or a list of texts (at most 256, 1 MiB in all); each within "
        "the model's input length (256 tokens for all-MiniLM-L6-v2)"
    )
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Int32 | None = pydantic.Field(
        default=None, description="the model's own (384 for all-MiniLM-L6-v2); no other"
    )

    @pydantic.field_validator("input", mode="before")
    @classmethod
    def _text_only(cls, value: Any) -> Any:
        first = value[0] if isinstance(value, list) and value else None
        if isinstance(first, int | list) and not isinstance(first, bool):
            raise ValueError("token arrays are not accepted here; send the text")
        return value

    def request(self) -> knowledge_pb2.EmbedRequest:
        """The Knowledge.Embed request this body asks for."""
        texts = [self.input] if isinstance(self.input, str) else list(self.input)
        return knowledge_pb2.EmbedRequest(texts=texts, model=self.model)

    def rename(self, err: errors.AionError) -> None:
        """Name the texts of the Embed request as this body's ``input``, in ``err``'s field
        and message (one text given as a string is ``input``, not ``input[0]``)."""

        def named(found: re.Match[str]) -> str:
            return "input" if isinstance(self.input, str) else "input" + (found.group(1) or "")

        err.message = _TEXTS.sub(named, err.message)
        if err.field is not None:
            err.field = _TEXTS.sub(named, err.field)


_UNION_TAGS = frozenset({"str", "int", "float", "bool", "dict", "list", "none"})


def field_of(error: pydantic.ValidationError) -> tuple[str, str]:
    """The first invalid field of a body, dotted, and what is wrong with it."""
    first = error.errors()[0]
    field = ""
    for part in (str(p) for p in first["loc"]):
        if part in _UNION_TAGS or "[" in part or "-" in part:
            continue  # the branch of a union ("str", "list[TextPart]"), not a field
        field += f"[{part}]" if part.isdigit() else (f".{part}" if field else part)
    return field or "body", str(first["msg"])
