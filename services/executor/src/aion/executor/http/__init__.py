"""The OpenAI-compatible HTTP surface of an executor.

- ``api``: the Starlette routes (chat and text completions, embeddings,
  models, health) over an ``inference.Inference``, behind the bearer token.
- ``schema``: the request bodies as pydantic models (untrusted JSON enters here).
"""

__all__: list[str] = []
