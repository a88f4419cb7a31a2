"""Knowledge service settings (environment prefix ``AION_KNOWLEDGE_``)."""

from __future__ import annotations

import pydantic
import pydantic_settings

from aion.core import settings


class KnowledgeSettings(settings.ServiceSettings):
    """Where the knowledge service listens and its limits."""

    model_config = pydantic_settings.SettingsConfigDict(
        env_prefix="AION_KNOWLEDGE_", extra="ignore", frozen=True)

    port: int = pydantic.Field(default=50054, ge=0, le=65535)
    max_document_bytes: int = pydantic.Field(default=8 * 1024 * 1024, gt=0)
    chunk_chars: int = pydantic.Field(default=800, ge=100)
    chunk_overlap: int = pydantic.Field(default=100, ge=0)
    max_top_k: int = pydantic.Field(default=50, gt=0)
