"""Knowledge service settings (environment prefix ``AION_KNOWLEDGE_``)."""

from __future__ import annotations

import pydantic
import pydantic_settings

from aion.core import settings


class KnowledgeSettings(settings.ServiceSettings):
    """Where the knowledge service listens, where it keeps chunks, and its limits.

    Chunks live in Qdrant, reached through qdrant-client:

    - ``AION_KNOWLEDGE_QDRANT_URL``: a Qdrant server (1.19 or later, for IDF
      per knowledge base), e.g. ``http://qdrant:6333``. Empty (the default)
      runs qdrant-client's local mode inside the process.
    - ``AION_KNOWLEDGE_QDRANT_PATH``: local mode only; the folder it persists
      to. Empty keeps everything in memory, lost on restart.
    - ``AION_KNOWLEDGE_QDRANT_API_KEY``: the server's API key, if it wants one.
    - ``AION_KNOWLEDGE_QDRANT_COLLECTION_PREFIX``: the collection is named
      ``<prefix>-chunks``, so several installations can share one server.
    """

    model_config = pydantic_settings.SettingsConfigDict(
        env_prefix="AION_KNOWLEDGE_", extra="ignore", frozen=True)

    port: int = pydantic.Field(default=50054, ge=0, le=65535)
    max_document_bytes: int = pydantic.Field(default=8 * 1024 * 1024, gt=0)
    chunk_chars: int = pydantic.Field(default=800, ge=100)
    chunk_overlap: int = pydantic.Field(default=100, ge=0)
    max_top_k: int = pydantic.Field(default=50, gt=0)
    qdrant_url: str = pydantic.Field(
        default="", description="Qdrant server URL; empty runs qdrant-client's local mode")
    qdrant_path: str = pydantic.Field(
        default="", description="local mode's storage folder; empty keeps it in memory")
    qdrant_api_key: pydantic.SecretStr | None = pydantic.Field(
        default=None, description="API key for the Qdrant server")
    qdrant_collection_prefix: str = pydantic.Field(
        default="aion", pattern=r"^[A-Za-z0-9_-]{1,64}$",
        description="the collection is <prefix>-chunks")
    executor_target: str = pydantic.Field(
        default="", description="gRPC address of the executor that embeds chunks and queries "
                                "(the chart's embedding Agent); empty: sparse retrieval only")
    embedding_model: str = pydantic.Field(
        default="", description="the embedding model's name, as that executor serves it")

    @pydantic.field_validator("qdrant_path")
    @classmethod
    def _path_only_in_local_mode(cls, value: str, info: pydantic.ValidationInfo) -> str:
        if value and info.data.get("qdrant_url"):
            raise ValueError("is for local mode; leave it empty when AION_KNOWLEDGE_QDRANT_URL "
                             "names a server")
        return value

    @pydantic.field_validator("qdrant_api_key", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        # A chart renders unset secrets as "": that must mean "none", never an empty key.
        return None if isinstance(value, str) and not value.strip() else value
