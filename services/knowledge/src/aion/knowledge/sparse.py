"""Text to sparse vectors: the lexical half of retrieval, before any embedding model.

A chunk becomes one sparse vector: each word's index is a stable hash of the
lower-cased word, its value the word's BM25 term-frequency weight. The query
gets 1.0 per distinct word. Qdrant multiplies in the IDF itself (the
collection's sparse vector has ``Modifier.IDF``), so the dot product of the
two is BM25. Nothing here needs a vocabulary, so indices are the same in
every process and every replica, and nothing needs rebuilding as documents
come and go.
"""

from __future__ import annotations

import collections
import hashlib
import re

from qdrant_client import models

_WORD = re.compile(r"\w+", re.UNICODE)

# BM25's usual constants. The average chunk length is fixed rather than
# measured, as FastEmbed's Bm25 does: a measured one would change every stored
# vector whenever a document is added. Chunks are ``chunk_chars`` (800 by
# default) long, about 130 words of English.
K1 = 1.2
B = 0.75
AVG_WORDS = 130.0

INDEX_SPACE = 2**31


def words(text: str) -> list[str]:
    """Lower-cased word tokens."""
    return [w.lower() for w in _WORD.findall(text)]


def term_index(word: str) -> int:
    """The word's index in the sparse space: a stable hash into ``[0, 2**31)``.

    blake2b rather than ``hash()``, which is salted per process. Two words may
    share an index (about one pair in 2**31); they then count as one word,
    which blurs their scores a little and breaks nothing.
    """
    digest = hashlib.blake2b(word.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % INDEX_SPACE


def document_vector(text: str) -> models.SparseVector:
    """The chunk's vector: BM25-saturated term frequency per index; empty without words."""
    tokens = words(text)
    # Counting by index, not by word, merges colliding words instead of
    # sending duplicate indices, which Qdrant refuses.
    counts = collections.Counter(term_index(w) for w in tokens)
    norm = K1 * (1 - B + B * len(tokens) / AVG_WORDS)
    indices = sorted(counts)
    return models.SparseVector(
        indices=indices, values=[counts[i] * (K1 + 1) / (counts[i] + norm) for i in indices]
    )


def query_vector(text: str) -> models.SparseVector:
    """The query's vector: 1.0 for each distinct index; empty without words."""
    indices = sorted({term_index(w) for w in words(text)})
    return models.SparseVector(indices=indices, values=[1.0] * len(indices))
