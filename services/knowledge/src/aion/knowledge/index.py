"""Where chunks are kept and searched.

``Index`` is the seam the servicer talks to; ``qdrant_index.QdrantIndex`` is
the implementation (a Qdrant server, or qdrant-client's local mode).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Protocol


@dataclasses.dataclass(frozen=True)
class Chunk:
    """A piece of a document."""

    tenant: str
    knowledge_base: str
    document_id: str
    index: int
    text: str
    metadata: Mapping[str, str]


@dataclasses.dataclass(frozen=True)
class Hit:
    """A chunk and how well it matched."""

    chunk: Chunk
    score: float


class Index(Protocol):
    """Stores chunks per tenant and knowledge base, and searches them."""

    async def replace(self, tenant: str, knowledge_base: str, document_id: str,
                      chunks: list[Chunk]) -> None:
        """Put a document's chunks, replacing the ones it had."""
        ...

    async def search(self, tenant: str, knowledge_base: str, query: str, *, top_k: int,
                     filters: Mapping[str, str]) -> list[Hit]:
        """The best ``top_k`` chunks for ``query`` whose metadata has all of ``filters``."""
        ...

    async def delete(self, tenant: str, knowledge_base: str, document_id: str) -> int:
        """Remove a document; the number of chunks removed."""
        ...
