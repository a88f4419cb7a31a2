"""Where chunks are kept and searched.

``Index`` is the seam: the knowledge-service issue puts vectors in Qdrant,
embedded by the executor. ``LexicalIndex`` keeps chunks in memory and
scores them with BM25 over their words, which needs no model.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import re
from collections.abc import Mapping
from typing import Protocol

_WORD = re.compile(r"\w+", re.UNICODE)


def words(text: str) -> list[str]:
    """Lower-cased word tokens."""
    return [w.lower() for w in _WORD.findall(text)]


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
        """The best ``top_k`` chunks for ``query``."""
        ...

    async def delete(self, tenant: str, knowledge_base: str, document_id: str) -> int:
        """Remove a document; the number of chunks removed."""
        ...


class LexicalIndex:
    """BM25 over words, in memory."""

    k1 = 1.2
    b = 0.75

    def __init__(self) -> None:
        self._docs: dict[tuple[str, str, str], list[Chunk]] = {}

    async def replace(self, tenant: str, knowledge_base: str, document_id: str,
                      chunks: list[Chunk]) -> None:
        """Put a document's chunks, replacing the ones it had."""
        self._docs[(tenant, knowledge_base, document_id)] = list(chunks)

    async def delete(self, tenant: str, knowledge_base: str, document_id: str) -> int:
        """Remove a document; the number of chunks removed."""
        return len(self._docs.pop((tenant, knowledge_base, document_id), []))

    async def search(self, tenant: str, knowledge_base: str, query: str, *, top_k: int,
                     filters: Mapping[str, str]) -> list[Hit]:
        """The best ``top_k`` chunks for ``query`` among those matching ``filters``."""
        chunks = [c for (t, kb, _), cs in self._docs.items()
                  if t == tenant and kb == knowledge_base for c in cs
                  if all(c.metadata.get(k) == v for k, v in filters.items())]
        terms = set(words(query))
        if not chunks or not terms:
            return []
        tokenized = [collections.Counter(words(c.text)) for c in chunks]
        avg_len = sum(sum(t.values()) for t in tokenized) / len(tokenized) or 1.0
        df = {term: sum(1 for t in tokenized if term in t) for term in terms}
        n = len(chunks)
        hits = []
        for c, tf in zip(chunks, tokenized, strict=True):
            length = sum(tf.values())
            score = 0.0
            for term in terms:
                if tf[term]:
                    idf = math.log(1 + (n - df[term] + 0.5) / (df[term] + 0.5))
                    norm = tf[term] + self.k1 * (1 - self.b + self.b * length / avg_len)
                    score += idf * tf[term] * (self.k1 + 1) / norm
            if score > 0:
                hits.append(Hit(c, score))
        hits.sort(key=lambda h: h.score, reverse=True)
        return hits[:top_k]
