"""The KnowledgeService gRPC service: validation, then the index."""

from __future__ import annotations

import re
from typing import Any

import grpc

from aion.api.knowledge.v1 import knowledge_pb2, knowledge_pb2_grpc
from aion.api.v1 import knowledge_pb2 as public_pb2
from aion.core import errors
from aion.knowledge import chunking, index
from aion.knowledge import settings as knowledge_settings

_Ctx = grpc.aio.ServicerContext[Any, Any]
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def _name(value: str, *, field: str) -> str:
    if not _NAME.match(value):
        raise errors.InvalidArgument(
            f"{field} {value!r} must be 1-128 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit", field=field)
    return value


class KnowledgeServicer(knowledge_pb2_grpc.KnowledgeServiceServicer):
    """Ingest, search and delete, scoped by tenant and knowledge base."""

    def __init__(self, *, store: index.Index,
                 cfg: knowledge_settings.KnowledgeSettings) -> None:
        self._index = store
        self._cfg = cfg

    async def Ingest(self, request: knowledge_pb2.IngestRequest,
                     context: _Ctx) -> public_pb2.IngestResponse:
        req = request.request
        kb = _name(req.knowledge_base, field="knowledge_base")
        doc = _name(req.document_id, field="document_id")
        if not req.content:
            raise errors.InvalidArgument("content is empty", field="content")
        if len(req.content) > self._cfg.max_document_bytes:
            raise errors.InvalidArgument(
                f"content is {len(req.content)} bytes; the limit is "
                f"{self._cfg.max_document_bytes}", field="content")
        text = chunking.extract_text(req.content, content_type=req.content_type)
        pieces = chunking.chunk(text, size=self._cfg.chunk_chars,
                                overlap=self._cfg.chunk_overlap)
        if not pieces:
            raise errors.InvalidArgument("content has no text", field="content")
        metadata = dict(req.metadata)
        if req.title:
            metadata.setdefault("title", req.title)
        chunks = [index.Chunk(tenant=request.tenant or "default", knowledge_base=kb,
                              document_id=doc, index=i, text=t, metadata=metadata)
                  for i, t in enumerate(pieces)]
        await self._index.replace(request.tenant or "default", kb, doc, chunks)
        return public_pb2.IngestResponse(document_id=doc, chunks=len(chunks))

    async def Search(self, request: knowledge_pb2.SearchRequest,
                     context: _Ctx) -> public_pb2.SearchResponse:
        req = request.request
        kb = _name(req.knowledge_base, field="knowledge_base")
        if not req.query.strip():
            raise errors.InvalidArgument("query is empty", field="query")
        if req.top_k < 0 or req.top_k > self._cfg.max_top_k:
            raise errors.InvalidArgument(
                f"top_k must be between 1 and {self._cfg.max_top_k} (0 means 5)", field="top_k")
        hits = await self._index.search(request.tenant or "default", kb, req.query,
                                        top_k=req.top_k or 5, filters=dict(req.filters))
        return public_pb2.SearchResponse(hits=[
            public_pb2.SearchHit(document_id=h.chunk.document_id, chunk_index=h.chunk.index,
                                 text=h.chunk.text, score=h.score, metadata=h.chunk.metadata)
            for h in hits])

    async def Delete(self, request: knowledge_pb2.DeleteRequest,
                     context: _Ctx) -> public_pb2.DeleteDocumentResponse:
        req = request.request
        kb = _name(req.knowledge_base, field="knowledge_base")
        doc = _name(req.document_id, field="document_id")
        removed = await self._index.delete(request.tenant or "default", kb, doc)
        if not removed:
            raise errors.NotFound(f"document '{doc}' not found in knowledge base '{kb}'")
        return public_pb2.DeleteDocumentResponse(deleted=True, chunks_removed=removed)
