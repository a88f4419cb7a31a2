"""The model backend seam: what the executor needs from an inference engine.

``GenerationBackend`` is the Protocol the scheduler and servicer use;
``llama_backend.LlamaBackend`` implements it with llama.cpp. The types here
are plain frozen dataclasses, free of protobuf and of any engine's types, so
another engine (a batching one, or an embedding model) fits the same seam.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import AsyncGenerator, Sequence
from typing import Protocol

ROLES = ("system", "user", "assistant")
# Seeds are 32-bit; llama.cpp reads the all-ones value as "pick a random seed".
MAX_SEED = 2**32 - 2


class ModelLoadError(Exception):
    """The model file could not be loaded; the message names the file and the cause."""


class FinishReason(enum.Enum):
    """Why a generation ended."""

    STOP = "stop"
    LENGTH = "length"


@dataclasses.dataclass(frozen=True)
class ChatMessage:
    """One turn of a conversation; ``role`` is one of ``ROLES``."""

    role: str
    content: str


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """How to sample: limits, randomness and stop sequences of one generation."""

    max_tokens: int
    temperature: float = 0.8
    top_p: float = 0.95
    stop: tuple[str, ...] = ()
    seed: int | None = None


@dataclasses.dataclass(frozen=True)
class Prompt:
    """A conversation rendered with the model's chat template and tokenized."""

    tokens: tuple[int, ...]

    @property
    def n_tokens(self) -> int:
        """How many tokens the prompt takes in the context."""
        return len(self.tokens)


@dataclasses.dataclass(frozen=True)
class Usage:
    """Tokens a generation consumed and produced."""

    prompt_tokens: int
    completion_tokens: int


@dataclasses.dataclass(frozen=True)
class Chunk:
    """A piece of generated text; the last chunk of a stream carries ``finish`` and ``usage``.

    ``tokens`` is how many completion tokens the piece covers (a character
    split across tokens, or text held back while it might start a stop
    sequence, makes one piece cover several).
    """

    text: str
    tokens: int
    finish: FinishReason | None = None
    usage: Usage | None = None


class GenerationBackend(Protocol):
    """A text-generation model: loaded once, then streams completions of chat prompts."""

    @property
    def device(self) -> str:
        """Where the model runs: ``"cuda"`` or ``"cpu"``."""
        ...

    @property
    def ready(self) -> bool:
        """Whether ``load`` has finished."""
        ...

    @property
    def context_size(self) -> int:
        """Tokens the context holds, prompt and completion together."""
        ...

    def load(self) -> None:
        """Load the model (blocking; call it in a thread); raises ``ModelLoadError``."""
        ...

    def encode_chat(self, messages: Sequence[ChatMessage]) -> Prompt:
        """Render ``messages`` with the model's chat template and tokenize them."""
        ...

    def stream(self, prompt: Prompt, params: SamplingParams) -> AsyncGenerator[Chunk, None]:
        """Generate a completion of ``prompt``, chunk by chunk.

        Closing the iterator early (or cancelling the task consuming it) stops
        the generation at the next token; once it is closed the model is free.
        """
        ...
