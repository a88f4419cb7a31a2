"""Chunks in Qdrant: a server, or qdrant-client's local mode in the process.

The layout, and why:

- One collection for every tenant and knowledge base, partitioned by payload
  (``tenant``, with a tenant payload index, and ``knowledge_base``), as
  Qdrant advises for multitenancy: a collection per knowledge base would cost
  a server its own segments, WAL and optimizer per knowledge base, and
  tenants create knowledge bases freely. What a collection per knowledge base
  would give for free, IDF over that knowledge base only, comes from
  scoping the IDF corpus of each search to the same tenant and knowledge base
  (``SearchParams.idf``, Qdrant 1.19), so one tenant's documents never move
  another's scores.
- Vectors are named. Today there is one, the sparse ``text`` vector
  (``sparse.py``) with ``Modifier.IDF``, so Qdrant weighs terms by rarity
  itself. The dense vector the executor's embeddings bring later is added
  beside it (``create_vector_name``, then ``update_vectors``) and combined in
  a prefetch + fusion query; nothing stored now has to be rewritten.
- A point is one chunk; its id is derived from (tenant, knowledge base,
  document, chunk index), so ingesting a document again overwrites its points
  in place, then deletes those past its new end.
- Metadata is stored as given (returned with hits) and once more as
  ``["key", "value"]`` JSON strings, the form filters match: a key may hold
  dots or quotes, which a payload path could not address.

Local mode runs its work on the event loop (it has no I/O to wait for, only
some computation and, with a path, SQLite writes); it is for development and
tests, as the DESIGN says. ``AsyncQdrantClient`` is used in both modes so
that one code path serves both.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Iterator, Mapping
from types import TracebackType
from typing import Any, Self

from qdrant_client import AsyncQdrantClient, models
from qdrant_client.http import exceptions as qdrant_errors

from aion.core import errors
from aion.knowledge import index, sparse
from aion.knowledge import settings as knowledge_settings

TEXT_VECTOR = "text"
# Points per upsert request, so that a large document stays well under the
# server's request size limit (32 MiB by default).
UPSERT_BATCH = 256
_POINT_IDS = uuid.UUID("6d2c53a4-3f6e-4f4b-9a53-7b7c2a1e0c5e")


def point_id(tenant: str, knowledge_base: str, document_id: str, chunk_index: int) -> str:
    """The chunk's point id: a UUID derived from what names the chunk, so rewrites overwrite."""
    name = json.dumps([tenant, knowledge_base, document_id, chunk_index])
    return str(uuid.uuid5(_POINT_IDS, name))


def _match(key: str, value: str | int) -> models.FieldCondition:
    return models.FieldCondition(key=key, match=models.MatchValue(value=value))


def _scope(tenant: str, knowledge_base: str) -> list[models.Condition]:
    return [_match("tenant", tenant), _match("knowledge_base", knowledge_base)]


def _metadata_terms(metadata: Mapping[str, str]) -> list[str]:
    return [json.dumps([k, v]) for k, v in sorted(metadata.items())]


@contextlib.contextmanager
def _unavailable_when_down(what: str) -> Iterator[None]:
    """Qdrant out of reach, or failing on its side, is UNAVAILABLE (retriable)."""
    try:
        yield
    except qdrant_errors.ResponseHandlingException as exc:
        raise errors.Unavailable(f"Qdrant is unreachable while {what}: {exc.source}") from exc
    except qdrant_errors.UnexpectedResponse as exc:
        if exc.status_code is not None and exc.status_code >= 500:
            raise errors.Unavailable(
                f"Qdrant failed while {what}: {exc.status_code} {exc.reason_phrase}") from exc
        raise


class QdrantIndex:
    """``index.Index`` over one Qdrant collection; an async context manager that owns the client.

    Entering creates the collection if it is missing and checks that an
    existing one has the sparse ``text`` vector with IDF; leaving closes the
    client.
    """

    def __init__(self, client: AsyncQdrantClient, *, collection: str, server: bool) -> None:
        self._client = client
        self._collection = collection
        self._server = server
        self._closed = False

    @classmethod
    def from_settings(cls, cfg: knowledge_settings.KnowledgeSettings) -> QdrantIndex:
        """The index ``cfg`` describes: a server when ``qdrant_url`` is set, else local mode."""
        collection = f"{cfg.qdrant_collection_prefix}-chunks"
        if cfg.qdrant_url:
            key = cfg.qdrant_api_key.get_secret_value() if cfg.qdrant_api_key else None
            return cls(AsyncQdrantClient(url=cfg.qdrant_url, api_key=key),
                       collection=collection, server=True)
        if cfg.qdrant_path:
            return cls(AsyncQdrantClient(path=cfg.qdrant_path), collection=collection,
                       server=False)
        return cls(AsyncQdrantClient(location=":memory:"), collection=collection, server=False)

    async def __aenter__(self) -> Self:
        try:
            with _unavailable_when_down("opening the collection"):
                await self._ensure_collection()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the client; closing twice is a no-op."""
        if not self._closed:
            self._closed = True
            await self._client.close()

    async def _ensure_collection(self) -> None:
        if not await self._client.collection_exists(self._collection):
            try:
                await self._client.create_collection(
                    self._collection,
                    vectors_config={},
                    sparse_vectors_config={TEXT_VECTOR: models.SparseVectorParams(
                        modifier=models.Modifier.IDF)})
            except qdrant_errors.UnexpectedResponse as exc:
                if exc.status_code != 409:  # another replica created it first
                    raise
        info = await self._client.get_collection(self._collection)
        params = (info.config.params.sparse_vectors or {}).get(TEXT_VECTOR)
        if params is None or params.modifier != models.Modifier.IDF:
            raise errors.FailedPrecondition(
                f"Qdrant collection {self._collection!r} exists without the sparse vector "
                f"{TEXT_VECTOR!r} with modifier IDF; delete it or choose another "
                "AION_KNOWLEDGE_QDRANT_COLLECTION_PREFIX")
        if self._server:
            # Only the missing ones: a server may refuse an index that exists already.
            # Local mode scans everything and warns that payload indexes do nothing there.
            for field, schema in self._payload_indexes().items():
                if field not in info.payload_schema:
                    await self._client.create_payload_index(self._collection, field, schema)

    @staticmethod
    def _payload_indexes() -> dict[str, models.PayloadSchemaType | models.KeywordIndexParams]:
        return {
            "tenant": models.KeywordIndexParams(type=models.KeywordIndexType.KEYWORD,
                                                is_tenant=True),
            "knowledge_base": models.PayloadSchemaType.KEYWORD,
            "document_id": models.PayloadSchemaType.KEYWORD,
            "chunk_index": models.PayloadSchemaType.INTEGER,
            "metadata_terms": models.PayloadSchemaType.KEYWORD,
        }

    def _point(self, chunk: index.Chunk) -> models.PointStruct:
        vector = sparse.document_vector(chunk.text)
        return models.PointStruct(
            id=point_id(chunk.tenant, chunk.knowledge_base, chunk.document_id, chunk.index),
            # A chunk without words (only punctuation) gets no vector: it is
            # stored and counted, but no query can find it.
            vector={TEXT_VECTOR: vector} if vector.indices else {},
            payload={
                "tenant": chunk.tenant,
                "knowledge_base": chunk.knowledge_base,
                "document_id": chunk.document_id,
                "chunk_index": chunk.index,
                "text": chunk.text,
                "metadata": dict(chunk.metadata),
                "metadata_terms": _metadata_terms(chunk.metadata),
            })

    async def replace(self, tenant: str, knowledge_base: str, document_id: str,
                      chunks: list[index.Chunk]) -> None:
        """Put a document's chunks, replacing the ones it had.

        Points are overwritten in place, then the old ones past the new end
        are deleted, so searches never see the document missing. A failure
        between batches leaves old and new chunks mixed; ingesting again
        repairs it.
        """
        points = [self._point(c) for c in chunks]
        with _unavailable_when_down("storing chunks"):
            for start in range(0, len(points), UPSERT_BATCH):
                await self._client.upsert(self._collection,
                                          points=points[start:start + UPSERT_BATCH])
            await self._client.delete(self._collection, points_selector=models.Filter(must=[
                *_scope(tenant, knowledge_base), _match("document_id", document_id),
                models.FieldCondition(key="chunk_index", range=models.Range(gte=len(chunks))),
            ]))

    async def search(self, tenant: str, knowledge_base: str, query: str, *, top_k: int,
                     filters: Mapping[str, str]) -> list[index.Hit]:
        """The best ``top_k`` chunks for ``query`` whose metadata has all of ``filters``."""
        vector = sparse.query_vector(query)
        if not vector.indices:
            return []
        scope = _scope(tenant, knowledge_base)
        with _unavailable_when_down("searching"):
            found = await self._client.query_points(
                self._collection, query=vector, using=TEXT_VECTOR, limit=top_k,
                query_filter=models.Filter(must=[
                    *scope, *(_match("metadata_terms", t) for t in _metadata_terms(filters))]),
                # Rarity is measured within the knowledge base, never across tenants.
                search_params=models.SearchParams(
                    idf=models.IdfCorpusParams(corpus=models.Filter(must=scope))),
                with_payload=True)
        return [index.Hit(chunk=_chunk(p.payload or {}), score=p.score) for p in found.points]

    async def delete(self, tenant: str, knowledge_base: str, document_id: str) -> int:
        """Remove a document; the number of chunks removed."""
        selector = models.Filter(must=[*_scope(tenant, knowledge_base),
                                       _match("document_id", document_id)])
        with _unavailable_when_down("deleting a document"):
            removed = (await self._client.count(self._collection, count_filter=selector,
                                                exact=True)).count
            if removed:
                await self._client.delete(self._collection, points_selector=selector)
        return removed


def _chunk(payload: Mapping[str, Any]) -> index.Chunk:
    return index.Chunk(
        tenant=str(payload["tenant"]), knowledge_base=str(payload["knowledge_base"]),
        document_id=str(payload["document_id"]), index=int(payload["chunk_index"]),
        text=str(payload["text"]),
        metadata={str(k): str(v) for k, v in dict(payload.get("metadata") or {}).items()})
