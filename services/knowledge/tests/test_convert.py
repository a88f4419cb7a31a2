"""The knowledge service's protobuf edge, in process: the tenant read once and required,
and the conversions of its domain types."""

from __future__ import annotations

import datetime

import pytest

from aion.api.knowledge.v1 import knowledge_pb2
from aion.api.v1 import knowledge_pb2 as public_pb2
from aion.core import errors
from aion.knowledge import convert, documents, qdrant_index

NOW = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)


@pytest.mark.parametrize(
    "request_type",
    [
        knowledge_pb2.IngestRequest,
        knowledge_pb2.SearchRequest,
        knowledge_pb2.DeleteRequest,
        knowledge_pb2.GetDocumentRequest,
        knowledge_pb2.ListDocumentsRequest,
    ],
)
def test_the_tenant_is_required_never_defaulted(request_type: type) -> None:
    with pytest.raises(errors.InvalidArgument, match="tenant is required") as info:
        convert.tenant_from_pb(request_type())
    assert info.value.field == "tenant"
    assert convert.tenant_from_pb(request_type(tenant="acme")) == "acme"


def test_an_unknown_search_mode_is_invalid_argument_and_unset_is_hybrid() -> None:
    assert convert.mode_from_pb(public_pb2.SEARCH_MODE_UNSPECIFIED) == "hybrid"
    assert convert.mode_from_pb(public_pb2.SEARCH_MODE_SPARSE) == "sparse"
    with pytest.raises(errors.InvalidArgument, match="not a SearchMode"):
        convert.mode_from_pb(99)


def _version(state: str) -> documents.Version:
    return documents.Version(
        id=1,
        tenant="acme",
        knowledge_base="docs",
        document_id="a.md",
        version=2,
        title="A",
        metadata={"k": "v"},
        content_type="text/markdown",
        size_bytes=10,
        content_sha256="ab",
        object_key="o",
        state=state,
        error="",
        chunks=3,
        chunks_done=1,
        attempts=0,
        worker=None,
        created_at=NOW,
        updated_at=NOW,
        ready_version=1,
    )


def test_a_version_becomes_the_public_document_and_ingest_answer() -> None:
    doc = convert.document_to_pb(_version(documents.INDEXING))
    assert (doc.state, doc.chunks, doc.chunks_done, doc.ready_version) == (
        public_pb2.DOCUMENT_STATE_INDEXING,
        3,
        1,
        1,
    )
    assert doc.created_at.ToDatetime(tzinfo=datetime.UTC) == NOW
    assert dict(doc.metadata) == {"k": "v"}
    # Chunks are only reported once the version is ready.
    assert convert.ingest_response(_version(documents.INDEXING), unchanged=False).chunks == 0
    ready = convert.ingest_response(_version(documents.READY), unchanged=True)
    assert (ready.state, ready.chunks, ready.unchanged) == (
        public_pb2.DOCUMENT_STATE_READY,
        3,
        True,
    )


def test_a_hit_carries_its_documents_title_and_metadata() -> None:
    hit = qdrant_index.Hit(
        knowledge_base="docs",
        document_id="a.md",
        version=2,
        index=4,
        text="t",
        start=5,
        end=6,
        score=0.5,
    )
    msg = convert.hit_to_pb(hit, "A", {"k": "v"})
    assert (msg.chunk_index, msg.char_start, msg.char_end, msg.title) == (4, 5, 6, "A")
    assert dict(msg.metadata) == {"k": "v"}
