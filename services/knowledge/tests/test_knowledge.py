"""Chunking, search relevance, tenant isolation and validation over real gRPC."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest

from aion.api.knowledge.v1 import knowledge_pb2, knowledge_pb2_grpc
from aion.api.v1 import knowledge_pb2 as public
from aion.core import errors, server
from aion.knowledge import chunking, qdrant_index, servicer, settings

DOC = b"""Kubernetes schedules pods onto nodes.

GPUs are advertised by the NVIDIA device plugin as nvidia.com/gpu.

Kafka keeps events in ordered partitions."""


def test_chunking_keeps_paragraphs_and_windows_long_ones() -> None:
    assert chunking.chunk("a\n\nb", size=100, overlap=10) == ["a\n\nb"]
    long = "x" * 250
    pieces = chunking.chunk(long, size=100, overlap=20)
    assert all(len(p) <= 100 for p in pieces)
    assert "".join(p[:80] for p in pieces[:-1]) + pieces[-1] == long


def test_unsupported_content_type_and_bad_utf8() -> None:
    with pytest.raises(errors.InvalidArgument, match="content_type"):
        chunking.extract_text(b"x", content_type="application/pdf")
    with pytest.raises(errors.InvalidArgument, match="UTF-8"):
        chunking.extract_text(b"\xff\xfe", content_type="text/plain")


@pytest.fixture
async def stub() -> AsyncIterator[knowledge_pb2_grpc.KnowledgeServiceAsyncStub]:
    cfg = settings.KnowledgeSettings(chunk_chars=100, chunk_overlap=10)
    async with qdrant_index.QdrantIndex.from_settings(cfg) as store:
        srv = server.GrpcServer(name="knowledge", host="127.0.0.1", port=0, grace_s=1)
        srv.add(knowledge_pb2_grpc.add_KnowledgeServiceServicer_to_server,
                servicer.KnowledgeServicer(store=store, cfg=cfg),
                "aion.knowledge.v1.KnowledgeService")
        async with srv, grpc.aio.insecure_channel(srv.address) as chan:
            yield knowledge_pb2_grpc.KnowledgeServiceStub(chan)


def _ingest(tenant: str, doc: str, content: bytes, **meta: str) -> knowledge_pb2.IngestRequest:
    return knowledge_pb2.IngestRequest(tenant=tenant, request=public.IngestRequest(
        knowledge_base="kb", document_id=doc, content=content, content_type="text/plain",
        metadata=meta))


def _search(tenant: str, query: str, **filters: str) -> knowledge_pb2.SearchRequest:
    return knowledge_pb2.SearchRequest(tenant=tenant, request=public.SearchRequest(
        knowledge_base="kb", query=query, top_k=2, filters=filters))


async def test_ingest_search_delete(stub: knowledge_pb2_grpc.KnowledgeServiceAsyncStub) -> None:
    resp = await stub.Ingest(_ingest("acme", "d1", DOC, team="infra"))
    assert resp.chunks == 3
    hits = (await stub.Search(_search("acme", "which GPU device plugin?"))).hits
    assert hits[0].text.startswith("GPUs are advertised")
    assert hits[0].metadata["team"] == "infra"
    assert not (await stub.Search(_search("acme", "GPU", team="other"))).hits
    assert not (await stub.Search(_search("globex", "GPU"))).hits  # another tenant sees nothing
    deleted = await stub.Delete(knowledge_pb2.DeleteRequest(
        tenant="acme", request=public.DeleteDocumentRequest(knowledge_base="kb",
                                                            document_id="d1")))
    assert deleted.chunks_removed == 3
    assert not (await stub.Search(_search("acme", "GPU"))).hits


@pytest.mark.parametrize(("request_", "field"), [
    (_ingest("t", "d", b""), "content"),
    (_ingest("t", "bad id!", b"x"), "document_id"),
    (_search("t", "  "), "query"),
])
async def test_bad_input_names_the_field(stub: knowledge_pb2_grpc.KnowledgeServiceAsyncStub,
                                         request_: object, field: str) -> None:
    method = stub.Ingest if isinstance(request_, knowledge_pb2.IngestRequest) else stub.Search
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await method(request_)  # type: ignore[arg-type]
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert errors.from_rpc_error(info.value).field == field


async def test_deleting_a_missing_document_is_not_found(
        stub: knowledge_pb2_grpc.KnowledgeServiceAsyncStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Delete(knowledge_pb2.DeleteRequest(
            tenant="t",
            request=public.DeleteDocumentRequest(knowledge_base="kb", document_id="nope")))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
