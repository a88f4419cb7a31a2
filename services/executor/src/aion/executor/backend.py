"""The model backend seams: what the executor needs from an inference engine.

``GenerationBackend`` (llama.cpp, ``generation.llama_backend``) streams
completions and decodes many streams together; ``EmbeddingBackend``
(sentence-transformers, ``embedding.st_backend``) turns a batch of texts into
vectors; both are a ``Loadable`` model, loaded once. The types here are plain
frozen dataclasses, free of protobuf and of any engine's types, so the
scheduler, the batcher and both APIs (gRPC and HTTP) share them.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import AsyncGenerator, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import numpy.typing as npt

ROLES = ("system", "user", "assistant")
# Seeds are 32-bit; llama.cpp reads the all-ones value as "pick a random seed".
MAX_SEED = 2**32 - 2

Vectors = npt.NDArray[np.float32]


class ModelLoadError(Exception):
    """The model could not be loaded; the message names the model and the cause."""


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
    """Tokens to continue: a conversation rendered with the chat template, or raw text."""

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


@dataclasses.dataclass(frozen=True)
class Embedded:
    """The vectors of one request's texts, in order, and the tokens they took."""

    vectors: Vectors
    prompt_tokens: int


class Loadable(Protocol):
    """A model that loads once and is freed at the end (either backend)."""

    @property
    def path(self) -> Path:
        """Where the model is read from."""
        ...

    @property
    def device(self) -> str:
        """Where it runs."""
        ...

    def load(self) -> None:
        """Load it (blocking; call it in a thread); raises ``ModelLoadError``."""
        ...

    def close(self) -> None:
        """Free it; safe to call twice."""
        ...


class GenerationBackend(Loadable, Protocol):
    """A text-generation model: loaded once, then streams completions, several at a time."""

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
        """Tokens one stream's context holds, prompt and completion together."""
        ...

    @property
    def max_streams(self) -> int:
        """Streams decoded together at most."""
        ...

    def load(self) -> None:
        """Load the model (blocking; call it in a thread); raises ``ModelLoadError``."""
        ...

    def encode_chat(self, messages: Sequence[ChatMessage]) -> Prompt:
        """Render ``messages`` with the model's chat template and tokenize them."""
        ...

    def encode_text(self, text: str) -> Prompt:
        """Tokenize raw text to continue, without the chat template."""
        ...

    def stream(self, prompt: Prompt, params: SamplingParams) -> AsyncGenerator[Chunk, None]:
        """Generate a completion of ``prompt``, chunk by chunk, beside the other streams.

        At most ``max_streams`` may be open at once. Closing the iterator
        early (or cancelling the task consuming it) ends the generation at
        the next decoding step and frees its share of the context.
        """
        ...


class EmbeddingBackend(Loadable, Protocol):
    """A sentence-embedding model: loaded once, then embeds batches of texts."""

    @property
    def device(self) -> str:
        """Where the model runs: ``"cuda"`` or ``"cpu"``."""
        ...

    @property
    def ready(self) -> bool:
        """Whether ``load`` has finished."""
        ...

    @property
    def dimensions(self) -> int:
        """The length of each vector."""
        ...

    @property
    def max_input_tokens(self) -> int:
        """Tokens one text may take, special tokens included."""
        ...

    def load(self) -> None:
        """Load the model (blocking; call it in a thread); raises ``ModelLoadError``."""
        ...

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """How many tokens each text takes (blocking)."""
        ...

    def embed(self, texts: Sequence[str]) -> Vectors:
        """Unit-length vectors of ``texts``, one row each (blocking; call it in a thread)."""
        ...
