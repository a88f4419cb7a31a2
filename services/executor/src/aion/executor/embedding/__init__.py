"""Sentence embeddings: many callers' texts batched onto one model.

- ``batcher``: ``EmbedBatcher``, admission and dynamic batching; the load
  figures of embedding.
- ``st_backend``: the ``backend.EmbeddingBackend`` over sentence-transformers.
"""

__all__: list[str] = []
