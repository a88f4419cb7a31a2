"""The KnowledgeService gRPC service: validation, then the stores.

Ingest stores the original in MinIO, records the version in Postgres and
publishes its event; the indexing workers do the rest (``indexer.py``).
IngestStream does the same once its last piece has arrived, holding the pieces
in memory until then (at most ``max_document_bytes``).
Search embeds the query (unless sparse), asks Qdrant, and adds each hit's
title and metadata from Postgres. Embed (the public API's, through the gateway)
embeds a caller's texts with the same model, within the configured count and
size. Protobuf conversions, the tenant included, are in
``convert.py``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import hashlib
import io
import json
import logging
import re
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc

from aion.api.knowledge.v1 import knowledge_pb2, knowledge_pb2_grpc
from aion.api.v1 import knowledge_pb2 as public_pb2
from aion.core import errors
from aion.knowledge import (
    chunking,
    convert,
    db,
    documents,
    embedder,
    extract,
    objects,
    qdrant_index,
)
from aion.knowledge import settings as knowledge_settings

log = logging.getLogger(__name__)

_Ctx = grpc.aio.ServicerContext[Any, Any]
_KB = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_DOC = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,255}$")
_MAX_TITLE = 512


def knowledge_base_name(value: str) -> str:
    """``value`` when it is a valid knowledge base name, else INVALID_ARGUMENT."""
    if not _KB.match(value):
        raise errors.InvalidArgument(
            f"knowledge_base {value!r} must be 1-128 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit",
            field="knowledge_base",
        )
    return value


def document_name(value: str) -> str:
    """``value`` when it is a valid document id, else INVALID_ARGUMENT."""
    parts = value.split("/")
    if not _DOC.match(value) or any(p in ("", ".", "..") for p in parts):
        raise errors.InvalidArgument(
            f"document_id {value!r} must be 1-256 letters, digits, '.', '_', '-' or '/', "
            "starting with a letter or digit, without empty, '.' or '..' path parts",
            field="document_id",
        )
    return value


@dataclasses.dataclass(frozen=True)
class _Upload:
    """A checked Ingest or IngestStream header: where the document goes, and how."""

    tenant: str
    knowledge_base: str
    document_id: str
    content_type: str
    title: str
    metadata: dict[str, str]
    wait: bool


class KnowledgeServicer(knowledge_pb2_grpc.KnowledgeServiceServicer):
    """Ingest, search, status and delete, scoped by tenant and knowledge base."""

    def __init__(
        self,
        *,
        pool: db.Pool,
        store: objects.ObjectStore,
        index: qdrant_index.Index,
        embed: embedder.Embedder,
        chunker: chunking.Chunker,
        publish: Any,
        cfg: knowledge_settings.KnowledgeSettings,
    ) -> None:
        self._pool = pool
        self._store = store
        self._index = index
        self._embed = embed
        self._chunker = chunker
        self._publish = publish
        self._cfg = cfg
        self._commits: set[asyncio.Task[tuple[documents.Version, bool]]] = set()

    def _metadata(self, metadata: dict[str, str], *, field: str) -> dict[str, str]:
        cfg = self._cfg
        if len(metadata) > cfg.max_metadata_pairs:
            raise errors.InvalidArgument(
                f"{field} has {len(metadata)} pairs; the limit is {cfg.max_metadata_pairs}",
                field=field,
            )
        for key, value in metadata.items():
            if "\x00" in key or "\x00" in value:  # Postgres (text, jsonb) holds no NUL
                raise errors.InvalidArgument(
                    f"{field} key {key[:40]!r} or its value holds a NUL character (\\0)",
                    field=field,
                )
            if not key or len(key) > cfg.max_metadata_key_chars:
                raise errors.InvalidArgument(
                    f"{field} key {key[:40]!r} must be 1-{cfg.max_metadata_key_chars} characters",
                    field=field,
                )
            if len(value.encode()) > cfg.max_metadata_value_bytes:
                raise errors.InvalidArgument(
                    f"{field} value of {key!r} is {len(value.encode())} bytes; the limit is "
                    f"{cfg.max_metadata_value_bytes}",
                    field=field,
                )
        return metadata

    def _upload(
        self,
        tenant: str,
        *,
        knowledge_base: str,
        document_id: str,
        title: str,
        content_type: str,
        metadata: dict[str, str],
        wait: bool,
    ) -> _Upload:
        """What an Ingest or IngestStream header asks for, checked (INVALID_ARGUMENT)."""
        kb = knowledge_base_name(knowledge_base)
        doc = document_name(document_id)
        kind = extract.content_type(content_type)
        if len(title) > _MAX_TITLE:
            raise errors.InvalidArgument(f"title is over {_MAX_TITLE} characters", field="title")
        if "\x00" in title:
            raise errors.InvalidArgument("title holds a NUL character (\\0)", field="title")
        return _Upload(
            tenant=tenant,
            knowledge_base=kb,
            document_id=doc,
            content_type=kind,
            title=title,
            metadata=self._metadata(metadata, field="metadata"),
            wait=wait,
        )

    async def Ingest(
        self, request: knowledge_pb2.IngestRequest, context: _Ctx
    ) -> public_pb2.IngestResponse:
        req = request.request
        upload = self._upload(
            convert.tenant_from_pb(request),
            knowledge_base=req.knowledge_base,
            document_id=req.document_id,
            title=req.title,
            content_type=req.content_type,
            metadata=dict(req.metadata),
            wait=req.wait,
        )
        if not req.content:
            raise errors.InvalidArgument("content is empty", field="content")
        if len(req.content) > self._cfg.max_document_bytes:
            raise errors.InvalidArgument(
                f"content is {len(req.content)} bytes; the limit is {self._cfg.max_document_bytes}",
                field="content",
            )
        content = io.BytesIO(req.content)
        return await self._ingest(upload, content, hashlib.sha256(req.content).hexdigest(), context)

    async def IngestStream(
        self, request_iterator: AsyncIterator[knowledge_pb2.IngestChunk], context: _Ctx
    ) -> public_pb2.IngestResponse:
        try:
            return await self._ingest_stream(request_iterator, context)
        except errors.AionError as err:
            # The refusal may end the call while the gateway still writes: sent ahead too,
            # where its grpc.aio client finds it (errors.remote_stream).
            await errors.send_ahead(context, err)
            raise

    async def _ingest_stream(
        self, request_iterator: AsyncIterator[knowledge_pb2.IngestChunk], context: _Ctx
    ) -> public_pb2.IngestResponse:
        """Ingest in pieces. The bytes are kept in memory, up to ``max_document_bytes``, until
        the message marked last: the original's key is their SHA-256, and nothing is stored
        for a stream that is refused or ends without that message."""
        messages = aiter(request_iterator)
        first = await anext(messages, None)
        if first is None or first.chunk.WhichOneof("part") != "header":
            raise errors.InvalidArgument(
                "the first message must carry the header (knowledge_base, document_id, "
                "content_type...); the document's bytes follow in data messages",
                field="header",
            )
        head = first.chunk.header
        upload = self._upload(
            convert.tenant_from_pb(first),
            knowledge_base=head.knowledge_base,
            document_id=head.document_id,
            title=head.title,
            content_type=head.content_type,
            metadata=dict(head.metadata),
            wait=head.wait,
        )
        limit = self._cfg.max_document_bytes
        if not 0 <= head.size_bytes <= limit:
            raise errors.InvalidArgument(
                f"size_bytes is {head.size_bytes}; the limit is {limit} bytes",
                field="size_bytes",
            )
        content, digest, size = io.BytesIO(), hashlib.sha256(), 0
        last = first.chunk.last
        while not last:
            message = await anext(messages, None)
            if message is None:
                # gRPC reads a caller that broke off as one that finished: only `last` tells.
                raise errors.InvalidArgument(
                    f"the stream ended after {size} bytes without a message marked last; "
                    "nothing was stored",
                    field="last",
                )
            if message.tenant:
                raise errors.InvalidArgument(
                    "tenant belongs on the first message only", field="tenant"
                )
            if message.chunk.WhichOneof("part") == "header":
                raise errors.InvalidArgument(
                    "only the first message carries a header; the others carry data",
                    field="header",
                )
            data = message.chunk.data
            size += len(data)
            if size > limit:
                raise errors.InvalidArgument(
                    f"content is over {limit} bytes, the limit ({size} received so far)",
                    field="content",
                )
            if head.size_bytes and size > head.size_bytes:
                raise errors.InvalidArgument(
                    f"the stream carries more bytes than its header said ({head.size_bytes}, "
                    "size_bytes)",
                    field="size_bytes",
                )
            content.write(data)
            digest.update(data)
            last = message.chunk.last
        if await anext(messages, None) is not None:
            raise errors.InvalidArgument("a message followed the one marked last", field="last")
        if size == 0:
            raise errors.InvalidArgument("content is empty", field="content")
        if head.size_bytes and size != head.size_bytes:
            raise errors.InvalidArgument(
                f"the stream carried {size} bytes; its header said {head.size_bytes} (size_bytes)",
                field="size_bytes",
            )
        return await self._ingest(upload, content, digest.hexdigest(), context)

    async def _ingest(
        self, upload: _Upload, content: io.BytesIO, sha: str, context: _Ctx
    ) -> public_pb2.IngestResponse:
        # Once every byte has arrived the upload is stored whole or not at all, even when the
        # caller leaves meanwhile: the commit is shielded from the call's cancellation.
        commit = asyncio.ensure_future(self._commit(upload, content, sha))
        self._commits.add(commit)  # a strong reference until it is done
        commit.add_done_callback(self._commits.discard)
        try:
            version, created = await asyncio.shield(commit)
        except asyncio.CancelledError:
            commit.add_done_callback(_log_failure)
            raise
        if upload.wait:
            version = await self._wait(version, context)
        return convert.ingest_response(version, unchanged=not created)

    async def _commit(
        self, upload: _Upload, content: io.BytesIO, sha: str
    ) -> tuple[documents.Version, bool]:
        """Store the original, record the version and queue it; the version and whether it is
        new (not when the latest version has the same bytes, title and metadata)."""
        tenant, kb, doc = upload.tenant, upload.knowledge_base, upload.document_id
        key = objects.key(tenant, kb, doc, sha)
        # The original first: a version is never recorded without its bytes. Bytes this call
        # put there are taken back when no version could be recorded for them.
        existed = await self._store.exists(key)
        size = await self._store.put(key, content, upload.content_type)
        try:
            version, created = await documents.record_upload(
                self._pool,
                tenant=tenant,
                knowledge_base=kb,
                document_id=doc,
                title=upload.title,
                metadata=upload.metadata,
                content_type=upload.content_type,
                size_bytes=size,
                sha256=sha,
                object_key=key,
            )
        except Exception:
            if not existed:
                await self._forget_original(key)
            raise
        if created:
            try:
                await self._publish(documents.event_key(tenant, kb, doc), version.id)
            except Exception as exc:  # recorded PENDING: the reaper queues it again
                log.warning(
                    "could not publish version %d of %s; the reaper will: %s",
                    version.version,
                    doc,
                    exc,
                )
        return version, created

    async def _forget_original(self, key: str) -> None:
        """Remove the original under ``key`` unless a version records it (a failed commit may
        still have landed). When the database cannot say, the object stays: an orphan is
        better than a version without its bytes."""
        try:
            if not await documents.references(self._pool, key):
                await self._store.remove([key])
        except errors.AionError as exc:
            log.warning("left the original %s in MinIO after a failed upload: %s", key, exc)

    async def _wait(self, version: documents.Version, context: _Ctx) -> documents.Version:
        left = context.time_remaining()
        deadline = time.monotonic() + (left - 0.5 if left is not None else 300.0)
        delay = 0.05
        while version.state in documents.OPEN and time.monotonic() + delay < deadline:
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, 0.5)
            found = await documents.by_id(self._pool, version.id)
            if found is None:
                raise errors.NotFound(f"document '{version.document_id}' was deleted meanwhile")
            version = found
        return version

    async def Search(
        self, request: knowledge_pb2.SearchRequest, context: _Ctx
    ) -> public_pb2.SearchResponse:
        req = request.request
        tenant = convert.tenant_from_pb(request)
        kb = knowledge_base_name(req.knowledge_base)
        if not req.query.strip():
            raise errors.InvalidArgument("query is empty", field="query")
        if len(req.query) > self._cfg.max_query_chars:
            raise errors.InvalidArgument(
                f"query is {len(req.query)} characters; the limit is {self._cfg.max_query_chars}",
                field="query",
            )
        if req.top_k < 0 or req.top_k > self._cfg.max_top_k:
            raise errors.InvalidArgument(
                f"top_k must be between 1 and {self._cfg.max_top_k} (0 means 5)", field="top_k"
            )
        mode = convert.mode_from_pb(req.mode)
        filters = self._metadata(dict(req.filters), field="filters")
        dense = None
        if mode != "sparse":
            left = context.time_remaining()
            query = self._chunker.truncate(req.query, self._cfg.chunk_tokens)
            dense = await self._embed.embed_query(
                query, timeout_s=min(10.0, left - 0.2 if left is not None else 10.0)
            )
        hits = await self._index.search(
            tenant,
            kb,
            mode=mode,
            dense=dense,
            text=req.query,
            top_k=req.top_k or 5,
            filters=filters,
            min_similarity=self._cfg.dense_min_similarity,
        )
        info = await documents.details(
            self._pool, tenant, sorted({(h.knowledge_base, h.document_id, h.version) for h in hits})
        )
        return public_pb2.SearchResponse(
            hits=[
                convert.hit_to_pb(
                    h, *info.get((h.knowledge_base, h.document_id, h.version), ("", {}))
                )
                for h in hits
            ]
        )

    async def Embed(
        self, request: knowledge_pb2.EmbedRequest, context: _Ctx
    ) -> public_pb2.EmbedResponse:
        req = request.request
        convert.tenant_from_pb(request)  # required, as on every call; vectors are no one's
        cfg = self._cfg
        if req.model and req.model.casefold() != cfg.embedding_model.casefold():
            raise errors.InvalidArgument(
                f"model {req.model!r} is not served; the embedding model is "
                f"{cfg.embedding_model!r}",
                field="model",
            )
        texts = list(req.texts)
        if not texts:
            raise errors.InvalidArgument("texts must hold at least one text", field="texts")
        if len(texts) > cfg.max_embed_texts:
            raise errors.InvalidArgument(
                f"texts holds {len(texts)} texts; the limit is {cfg.max_embed_texts}",
                field="texts",
            )
        size = 0
        for i, text in enumerate(texts):
            if not text.strip():
                raise errors.InvalidArgument(f"texts[{i}] is empty", field=f"texts[{i}]")
            size += len(text.encode())
        if size > cfg.max_embed_bytes:
            raise errors.InvalidArgument(
                f"texts hold {size} bytes; the limit is {cfg.max_embed_bytes}", field="texts"
            )
        left = context.time_remaining()
        limit = cfg.embed_timeout_s if left is None else min(cfg.embed_timeout_s, left - 0.2)
        embedded = await self._embed.embed_texts(texts, timeout_s=max(limit, 0.1))
        return public_pb2.EmbedResponse(
            embeddings=[public_pb2.Embedding(values=v) for v in embedded.vectors],
            model=cfg.embedding_model,
            dimensions=self._embed.dimensions,
            prompt_tokens=embedded.prompt_tokens,
        )

    async def Delete(
        self, request: knowledge_pb2.DeleteRequest, context: _Ctx
    ) -> public_pb2.DeleteDocumentResponse:
        req = request.request
        tenant = convert.tenant_from_pb(request)
        kb = knowledge_base_name(req.knowledge_base)
        doc = document_name(req.document_id)
        # Postgres first: a worker finishing this document meanwhile finds it gone.
        existed = await documents.delete(self._pool, tenant, kb, doc)
        removed = await self._index.delete_document(tenant, kb, doc)
        originals = await self._store.remove_prefix(objects.prefix(tenant, kb, doc))
        if not existed and not removed and not originals:
            raise errors.NotFound(f"document '{doc}' not found in knowledge base '{kb}'")
        return public_pb2.DeleteDocumentResponse(deleted=True, chunks_removed=removed)

    async def GetDocument(
        self, request: knowledge_pb2.GetDocumentRequest, context: _Ctx
    ) -> public_pb2.Document:
        req = request.request
        tenant = convert.tenant_from_pb(request)
        kb = knowledge_base_name(req.knowledge_base)
        doc = document_name(req.document_id)
        found = await documents.latest(self._pool, tenant, kb, doc)
        if found is None:
            raise errors.NotFound(f"document '{doc}' not found in knowledge base '{kb}'")
        return convert.document_to_pb(found)

    async def ListDocuments(
        self, request: knowledge_pb2.ListDocumentsRequest, context: _Ctx
    ) -> public_pb2.ListDocumentsResponse:
        req = request.request
        tenant = convert.tenant_from_pb(request)
        kb = knowledge_base_name(req.knowledge_base) if req.knowledge_base else ""
        if req.page_size < 0 or req.page_size > 500:
            raise errors.InvalidArgument(
                "page_size must be between 1 and 500 (0 means 100)", field="page_size"
            )
        size = req.page_size or 100
        after = _after(req.page_token) if req.page_token else None
        found = await documents.listing(self._pool, tenant, kb, limit=size + 1, after=after)
        token = ""
        if len(found) > size:
            found = found[:size]
            last = found[-1]
            token = base64.urlsafe_b64encode(
                json.dumps([last.knowledge_base, last.document_id]).encode()
            ).decode()
        return public_pb2.ListDocumentsResponse(
            documents=[convert.document_to_pb(v) for v in found], next_page_token=token
        )


def _log_failure(commit: asyncio.Future[Any]) -> None:
    """An upload whose caller left failed to commit: nobody else hears of it."""
    if not commit.cancelled() and commit.exception() is not None:
        log.warning("an upload whose caller left could not be stored: %s", commit.exception())


def _after(token: str) -> tuple[str, str]:
    try:
        kb, doc = json.loads(base64.urlsafe_b64decode(token.encode()))
        return str(kb), str(doc)
    except (ValueError, TypeError, binascii.Error):
        raise errors.InvalidArgument(
            "page_token is not one this service gave", field="page_token"
        ) from None
