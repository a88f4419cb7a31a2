"""Protobuf at the edge: the knowledge service's requests and answers to and from its
domain types (``documents.Version``, ``qdrant_index.Hit``).

The tenant is read here, once per call, and required (:func:`tenant_from_pb`): the
gateway always sends the caller's, and an internal call without one is a bug to report,
never a default tenant's data.
"""

from __future__ import annotations

import datetime
from typing import Protocol

from google.protobuf import timestamp_pb2

from aion.api.v1 import knowledge_pb2 as public_pb2
from aion.core import authz, errors
from aion.knowledge import documents, qdrant_index


class _Tenanted(Protocol):
    @property
    def tenant(self) -> str: ...


def tenant_from_pb(msg: _Tenanted) -> str:
    """The calling tenant of an internal request; INVALID_ARGUMENT when it is empty."""
    return authz.require_tenant(msg.tenant)


_STATES = {
    documents.PENDING: public_pb2.DOCUMENT_STATE_PENDING,
    documents.INDEXING: public_pb2.DOCUMENT_STATE_INDEXING,
    documents.READY: public_pb2.DOCUMENT_STATE_READY,
    documents.FAILED: public_pb2.DOCUMENT_STATE_FAILED,
    documents.SUPERSEDED: public_pb2.DOCUMENT_STATE_SUPERSEDED,
}
_MODES: dict[int, qdrant_index.Mode] = {
    public_pb2.SEARCH_MODE_UNSPECIFIED: "hybrid",
    public_pb2.SEARCH_MODE_HYBRID: "hybrid",
    public_pb2.SEARCH_MODE_DENSE: "dense",
    public_pb2.SEARCH_MODE_SPARSE: "sparse",
}


def mode_from_pb(value: int) -> qdrant_index.Mode:
    """The search mode asked for (unset: hybrid); INVALID_ARGUMENT for an unknown one."""
    try:
        return _MODES[value]
    except KeyError:
        raise errors.InvalidArgument(f"mode {value} is not a SearchMode", field="mode") from None


def _timestamp(value: datetime.datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)
    return stamp


def document_to_pb(v: documents.Version) -> public_pb2.Document:
    """The public view of a document's latest version."""
    return public_pb2.Document(
        knowledge_base=v.knowledge_base,
        document_id=v.document_id,
        title=v.title,
        version=v.version,
        state=_STATES[v.state],
        error=v.error,
        chunks=v.chunks,
        chunks_done=v.chunks_done,
        content_type=v.content_type,
        size_bytes=v.size_bytes,
        content_sha256=v.content_sha256,
        metadata=dict(v.metadata),
        ready_version=v.ready_version,
        created_at=_timestamp(v.created_at),
        updated_at=_timestamp(v.updated_at),
    )


def ingest_response(v: documents.Version, *, unchanged: bool) -> public_pb2.IngestResponse:
    """What Ingest answers about the version it recorded (or found unchanged)."""
    return public_pb2.IngestResponse(
        document_id=v.document_id,
        version=v.version,
        state=_STATES[v.state],
        chunks=v.chunks if v.state == documents.READY else 0,
        content_sha256=v.content_sha256,
        unchanged=unchanged,
        error=v.error,
    )


def hit_to_pb(h: qdrant_index.Hit, title: str, metadata: dict[str, str]) -> public_pb2.SearchHit:
    """One search hit, with its document's title and metadata."""
    return public_pb2.SearchHit(
        knowledge_base=h.knowledge_base,
        document_id=h.document_id,
        version=h.version,
        chunk_index=h.index,
        text=h.text,
        score=h.score,
        char_start=h.start,
        char_end=h.end,
        title=title,
        metadata=metadata,
    )
